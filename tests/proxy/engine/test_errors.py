"""Bad input and failures, end to end: malformed requests, limits, slowloris, connection
limits, broken/truncated/slow/dead backends. The proxy must answer (or close) correctly,
keep serving, and leak no connection."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import socket
import time
from typing import Any

import pytest

from ..conftest import Backend, Backends, Conn, Proxies, Proxy, established_to, standalone_args
from ..fuzzing import Harness


@pytest.fixture
def one(backends: Backends, proxy: Proxies) -> tuple[Backend, Proxy]:
    b = backends.start("b1")
    return b, proxy.start(
        *standalone_args(b),
        "--head-timeout",
        "1",
        "--response-timeout",
        "1",
        "--max-connections",
        "50",
    )


BAD_REQUESTS = {
    "garbage": b"BLAH\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-header-name": b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    "cl-and-te": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "negative-length": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "te-not-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bad-absolute-target": b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_malformed_request_gets_400_and_close(one: tuple[Backend, Proxy], name: str) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(BAD_REQUESTS[name])
        status, _, headers, _ = c.read_head()
        assert status == 400
        assert ("Connection", "close") in headers
        assert c.closed_by_peer()
    with Conn(p.address) as c:
        assert c.request("GET", "/still-serving").status == 200
    assert p.wait_idle()["connections_active"] == 0


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 505),  # an HTTP/0.9 simple request
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    ],
)
def test_unsupported_version_and_connect(
    one: tuple[Backend, Proxy], request_bytes: bytes, status: int
) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(request_bytes)
        got, _, _, _ = c.read_head()
        assert got == status
        assert c.closed_by_peer()


def test_oversize_header_431(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
        status, _, _, _ = c.read_head()
        assert status == 431
        assert c.closed_by_peer()


def test_too_many_headers_431(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    with Conn(p.address) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        status, _, _, _ = c.read_head()
        assert status == 431


def test_endless_header_line_is_cut_off(one: tuple[Backend, Proxy]) -> None:
    """One header that never ends, sent in pieces: the proxy must not buffer it forever."""
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 10_000_000:
                c.sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        # Loopback socket buffers absorb a few MB before the reset reaches the sender.
        assert sent < 10_000_000
        assert c.closed_by_peer()
    assert p.stats()["engine"]["local_responses"].get("431", 0) >= 1


def test_long_request_line_414(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _, _ = c.read_head()
        assert status == 414
        assert c.closed_by_peer()


def test_slowloris_closed_after_head_timeout(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        started = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for i in range(40):
            try:
                c.sock.sendall(b"X-%d: y\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            c.sock.setblocking(False)
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            finally:
                c.sock.setblocking(True)
            if data is not None:
                c.buf += data
                closed = True
                break
        elapsed = time.monotonic() - started
        assert closed, "a trickling head must not keep the connection forever"
        assert elapsed < 3.5
        assert c.buf == b"" or c.buf.startswith(b"HTTP/1.1 408 ")
    assert p.stats()["engine"]["timeouts"].get("head", 0) >= 1


def test_silent_connection_closed_after_head_timeout(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        assert c.closed_by_peer(timeout=5.0)


def test_connection_limit(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--max-connections", "3")
    held = [Conn(p.address) for _ in range(3)]
    try:
        for c in held:
            assert c.request("GET", "/held").status == 200
        with Conn(p.address) as extra:
            status, _, _, _ = extra.read_head()
            assert status == 503
            assert extra.closed_by_peer()
    finally:
        for c in held:
            c.close()
    p.wait_idle()
    with Conn(p.address) as c:
        assert c.request("GET", "/after").status == 200
    assert p.stats()["engine"]["connections_rejected"] == 1


def test_broken_backend_answer_502_and_not_reused(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        first = c.request("GET", "/warm").json()["peer_port"]
        r = c.request("GET", "/broken")
        assert r.status == 502
        assert r.body.startswith(b"bad gateway")
    with Conn(p.address) as c:
        after = c.request("GET", "/again")
        assert after.status == 200
    engine = p.stats()["engine"]
    assert engine["broken_responses"] == 1
    # The connection that carried the broken answer was dropped, the other one reused.
    assert after.json()["peer_port"] != first or engine["upstream_connects"] >= 2


def test_truncated_backend_answer_cuts_the_client(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c, pytest.raises(ConnectionError):
        c.request("GET", "/truncate")
    with Conn(p.address) as c:
        assert c.request("GET", "/fine").status == 200


def test_response_timeout_504(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        started = time.monotonic()
        r = c.request("GET", "/sleep?s=5")
        assert r.status == 504
        assert 1.0 <= time.monotonic() - started < 4  # never early, though the clock is coarse
    assert p.stats()["engine"]["timeouts"].get("response", 0) == 1


def test_no_plan_503(proxy: Proxies) -> None:
    p = proxy.start("--state-dir", str(proxy.tmp / "state"))
    with Conn(p.address) as c:
        r = c.request("GET", "/")
        assert r.status == 503
        assert (
            r.header(
                "Content-Type",
            )
            == "text/plain; charset=utf-8"
        )
        assert r.body == b"no backend available\n"
        # A bodiless request keeps its connection even when refused.
        assert c.request("GET", "/again").status == 503
    status, _ = p.admin("GET", "/readyz")
    assert status == 503


def session_on(c: Conn, backend: str, *, path: str = "/close") -> str:
    """A new cookie session that routes to ``backend``: the ``Cookie`` value to send.

    It is found with ``path`` answers. ``/close`` answers leave the proxy no pooled
    keep-alive connection, so the next request to that backend has to dial; any other
    path leaves one in the pool.
    """
    for _ in range(50):
        r = c.request("GET", path, headers={"Cookie": ""})
        assert r.status == 200
        if r.json()["backend"] == backend:
            cookie = r.header("Set-Cookie")
            assert cookie is not None
            return cookie.split(";")[0]
    raise AssertionError(f"no new session landed on {backend}")


def test_backend_killed_failover_and_retry(backends: Backends, proxy: Proxies) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2))
    with Conn(p.address) as c:
        # A session on b1, found over keep-alive: the proxy pools a connection to b1.
        value = session_on(c, "b1", path="/who")
        assert c.request("GET", "/pinned", headers={"Cookie": value}).json()["backend"] == "b1"
        b1.kill()
        # The first GET marks b1 down, so the POST below goes straight to b2. The POST
        # retry is test_post_retried_on_another_backend_after_a_connect_failure.
        for method, body in (("GET", None), ("POST", b"payload"), ("GET", None)):
            r = c.request(method, "/after-kill", headers={"Cookie": value}, body=body)
            assert r.status == 200
            assert r.json()["backend"] == "b2"
    stats = p.stats()
    assert stats["backends"]["s1"]["health"] == "down"
    assert stats["migrations"]["failover"] >= 1


def resets_seen(b: Backend) -> list[dict[str, Any]]:
    """The requests that reached ``b``'s ``/reset`` (asked of the backend directly)."""
    with Conn(("127.0.0.1", b.port)) as c:
        r = c.request("GET", "/resets")
        assert r.status == 200
        seen: list[dict[str, Any]] = json.loads(r.body)
        return seen


@pytest.mark.parametrize("size", [7, 1_000_003])
def test_post_retried_on_another_backend_after_a_connect_failure(
    backends: Backends, proxy: Proxies, size: int
) -> None:
    """The first request after the kill is a POST pinned to the dead backend: nothing of
    it was sent (the dial was refused), so it goes to the other backend, body and all.
    The large body is more than the proxy buffers while dialling (its reading pauses)."""
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2))
    body = random.Random(size).randbytes(size)
    with Conn(p.address) as c:
        cookie = session_on(c, "b1")
        before = p.stats()["engine"]
        assert before["upstream_idle"] == 0  # the POST must dial b1, not reuse
        b1.kill()
        r = c.request("POST", "/after-kill", headers={"Cookie": cookie}, body=body)
        assert r.status == 200, r.body
        echo = r.json()
        assert echo["backend"] == "b2"
        assert echo["method"] == "POST"
        assert echo["body_bytes"] == size
        assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
        stats = p.stats()
        assert stats["backends"]["s1"]["health"] == "down"
        after = stats["engine"]
        assert after["retries"] - before["retries"] == 1
        assert after["upstream_connect_failures"] - before["upstream_connect_failures"] == 1
        # The session now lives on b2.
        assert c.request("GET", "/next", headers={"Cookie": cookie}).json()["backend"] == "b2"


@pytest.mark.parametrize(
    ("method", "body", "attempts"),
    [
        # Idempotent and nothing sent beyond the head: dialled afresh once, reset again.
        ("GET", None, 2),
        # Idempotent, but its body went out: not resent.
        ("PUT", b"p" * 100_000, 1),
        # Not idempotent: never resent, whether its body went out or it had none.
        ("POST", b"q" * 100_000, 1),
        ("POST", b"", 1),
    ],
    ids=["get", "put-with-body", "post-with-body", "post-empty"],
)
def test_backend_reset_is_502_and_marks_it_down(
    backends: Backends, proxy: Proxies, method: str, body: bytes | None, attempts: int
) -> None:
    """A backend that accepts the request, reads it, then resets the connection."""
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2))
    with Conn(p.address) as c:
        cookie = session_on(c, "b1")
        before = p.stats()["engine"]
        r = c.request(method, "/reset", headers={"Cookie": cookie}, body=body)
        assert r.status == 502
        assert r.header("Content-Type") == "text/plain; charset=utf-8"
        assert r.body == b"bad gateway: the backend failed\n"
        # Read at once: the first down period is one second.
        stats = p.stats()
        metrics = p.metrics()
        assert stats["backends"]["s1"]["health"] == "down"
        assert stats["backends"]["s2"]["health"] == "up"
        assert metrics['limpet_proxy_backend_up{backend="s1"}'] == 0
        assert metrics['limpet_proxy_backend_up{backend="s2"}'] == 1
        assert stats["engine"]["retries"] - before["retries"] == attempts - 1
        # The 502 kept the client connection; the session fails over to b2.
        after = c.request("GET", "/next", headers={"Cookie": cookie})
        assert after.status == 200
        assert after.json()["backend"] == "b2"
    seen = resets_seen(b1)
    assert [s["method"] for s in seen] == [method] * attempts
    size = len(body or b"")
    digest = hashlib.sha256(body or b"").hexdigest()
    assert all(s["body_bytes"] == size and s["body_sha256"] == digest for s in seen), seen
    assert resets_seen(b2) == []


def test_all_backends_dead_then_503(backends: Backends, proxy: Proxies) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2))
    with Conn(p.address) as c:
        assert c.request("GET", "/warm").status == 200
    b1.kill()
    b2.kill()
    with Conn(p.address) as c:
        # The first request finds both backends failing (502) and marks them down; from
        # then on there is nothing to route to (503). Bounded, so a proxy that never
        # gets there fails here instead of looping.
        statuses = []
        for i in range(5):
            r = c.request("GET", f"/x{i}")
            statuses.append(r.status)
            if r.status == 503:
                break
        assert statuses[-1] == 503, statuses
        assert set(statuses[:-1]) <= {502}, statuses
        assert r.header("Content-Type") == "text/plain; charset=utf-8"
        assert r.body == b"no backend available\n"
        assert r.header("Content-Length") == str(len(r.body))
    with Conn(p.address) as c:
        r = c.request("GET", "/z")
        assert r.status == 503
        assert r.header("Content-Type") == "text/plain; charset=utf-8"
        assert r.body == b"no backend available\n"


def test_bad_chunked_body_after_dispatch(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(
            b"POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.2)
        c.send(b"not-a-chunk-size\r\n")
        status, _, _, _ = c.read_head()
        assert status == 400
        assert c.closed_by_peer()
    assert p.wait_idle()["connections_active"] == 0


def test_client_vanishes_mid_request(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    for _ in range(5):
        s = socket.create_connection(p.address)
        s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        s.close()
    s = socket.create_connection(p.address)
    s.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()  # reset while the backend is still answering
    time.sleep(0.5)
    assert p.wait_idle()["connections_active"] == 0
    with Conn(p.address) as c:
        assert c.request("GET", "/ok").status == 200
    assert p.proc.poll() is None


def test_stale_pooled_connection_retried_for_idempotent_only(
    backends: Backends, proxy: Proxies
) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b))
    with Conn(p.address) as c:
        # The backend will close this pooled connection when the next request arrives.
        assert c.request("GET", "/arm-stale").status == 200
        r = c.request("GET", "/idempotent")
        assert r.status == 200
        assert r.json()["path"] == "/idempotent"
        assert c.request("GET", "/arm-stale").status == 200
        r = c.request("POST", "/not-idempotent", body=b"x")
        assert r.status == 502
    engine = p.stats()["engine"]
    assert engine["retries"] == 1
    assert p.stats()["backends"]["s1"]["health"] == "up"


def test_nothing_after_a_closing_answer_is_served(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(
            b"GET /first HTTP/2.0\r\nHost: x\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        status, _, _, _ = c.read_head()
        assert status == 505
        assert c.closed_by_peer()
        assert b"HTTP/1.1" not in c.buf
    engine = p.wait_idle()
    assert engine["requests"] == 1
    assert engine["upstream_connects"] == 0


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = [
        b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: LIMPET=abc; k=v\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ]
    alphabet = b"\r\n :;\x00\x7f\xff\tA0"
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 4)):
            if not data:
                data = bytearray(b"G")
            op = rng.randrange(4)
            i = rng.randrange(len(data))
            if op == 0:
                data[i] = rng.choice(alphabet)
            elif op == 1:
                data.insert(i, rng.choice(alphabet))
            elif op == 2:
                del data[i]
            else:
                data = data[: max(1, i)]
        out.append(bytes(data))
    return out


def test_mutated_requests_never_break_the_proxy(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    for data in _mutations(20261128, 300):
        s = socket.create_connection(p.address, timeout=10)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # EOF: the proxy must not wait for more
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        finally:
            s.close()
    assert p.wait_idle()["connections_active"] == 0
    with Conn(p.address) as c:
        assert c.request("GET", "/after-fuzz").status == 200
    assert p.proc.poll() is None
    log = p.log_text()
    assert "Traceback" not in log, log
    assert "Exception" not in log, log


def test_upstream_connect_timeout(proxy: Proxies) -> None:
    # A loopback listener that never accepts, with its accept queue full: further
    # connection attempts get no answer at all, so connecting to it times out.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.2)
        p = proxy.start("--backend", f"hole=127.0.0.1:{port}", "--connect-timeout", "0.5")
        with Conn(p.address) as c:
            started = time.monotonic()
            r = c.request("GET", "/")
            elapsed = time.monotonic() - started
        assert r.status == 503
        assert 0.4 < elapsed < 3.0
        engine = p.stats()["engine"]
        assert engine["upstream_connect_failures"] == 1
        assert p.stats()["backends"]["hole"]["health"] == "down"
    finally:
        for f in fillers:
            f.close()
        hole.close()


def test_a_client_that_stops_reading_is_cut_after_the_send_timeout(
    backends: Backends, proxy: Proxies
) -> None:
    """A client that never reads an answer holds it back (the backend is paused, and its
    response timeout with it): after --send-timeout the proxy cuts the client and drops
    the backend connection, where before both stayed open for ever (slow-read DoS)."""
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--send-timeout", "1", "--response-timeout", "1")
    size = 64 << 20
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(p.address)
        s.sendall(b"GET /download?size=%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        deadline = time.monotonic() + 20
        while p.stats()["engine"]["timeouts"].get("send", 0) == 0:
            assert time.monotonic() < deadline, p.stats()["engine"]
            time.sleep(0.2)
        while established_to(b.port):  # the backend connection goes with the client
            assert time.monotonic() < deadline, "backend connection still open"
            time.sleep(0.1)
        s.settimeout(10)
        got = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        assert got < size  # cut: the rest of the answer never came
    with Conn(p.address) as c:  # and the proxy serves the next client as usual
        assert c.request("GET", "/after").status == 200


class _FailingRouter:
    """The session router, but its dispatch raises, as a bug behind it would."""

    def __init__(self, real: object) -> None:
        self.real = real

    def dispatch(self, req: object, *, shared: bool = True) -> None:
        raise RuntimeError("a bug in the router")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_router_that_raises_is_a_logged_500_not_the_clients_400(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The real engine on memory transports (tests/proxy/fuzzing.py): httptools turns an
    # exception in a callback into a parse error, which read as the client's 400 and
    # logged nothing before.
    h = Harness()
    try:
        h.server.router = _FailingRouter(h.server.router)
        client, transport = h.client()
        with caplog.at_level(logging.ERROR, logger="limpet.proxy.engine.client"):
            client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert bytes(transport.out).startswith(b"HTTP/1.1 500 "), bytes(transport.out)
        assert "handling a request failed (answered 500)" in caplog.text
        assert "a bug in the router" in caplog.text
        client.connection_lost(None)
    finally:
        h.close()


class _FailingAnswers(_FailingRouter):
    """The session router, but learning from an answer's Set-Cookie raises."""

    def dispatch(self, req: object, *, shared: bool = True) -> Any:
        return self.real.dispatch(req, shared=shared)  # type: ignore[attr-defined]

    def on_response(self, route: object, set_cookies: object) -> Any:
        raise RuntimeError("a bug in on_response")


def test_a_router_that_raises_on_an_answer_is_a_logged_502(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    try:
        h.server.router = h.pool.router = _FailingAnswers(h.server.router)
        up, _ = h.idle_backend()
        client, transport = h.client()
        client.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with caplog.at_level(logging.ERROR, logger="limpet.proxy.engine.upstream"):
            up.data_received(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 2\r\n\r\nok")
        assert bytes(transport.out).startswith(b"HTTP/1.1 502 "), bytes(transport.out)
        client.connection_lost(None)
        assert "relaying a backend's answer failed" in caplog.text
        assert "a bug in on_response" in caplog.text
    finally:
        h.close()
