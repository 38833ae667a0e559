"""The admin API of a real ``limpet proxy`` process under a hostile or careless client:
bad tokens, malformed requests, huge bodies, wrong content types and methods, over raw
sockets (so the bytes are exactly the attacker's).

Every request must get a clear answer (401 with ``WWW-Authenticate``, 400, 405 or 413,
each with its reason), none may change the plan, the proxy's log must stay readable (one
line per bad request, no traceback a client can trigger), and traffic must keep flowing.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..conftest import Backends, Conn, Proxies, Proxy

TOKEN = "t\u00f6ken-\u6f22-1"  # a token outside ASCII: compared as UTF-8 bytes


def complete(answer: bytes) -> bool:
    """Whether ``answer`` holds a whole response (head and Content-Length body)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    return m is not None and len(body) >= int(m[1])


def exchange(p: Proxy, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``data`` to the admin port; read one answer, or until the server closes.
    (An answer given before the body was read is followed by aiohttp's lingering read of
    the rest, so the connection may stay open a while after it.)"""
    with socket.create_connection(("127.0.0.1", p.admin_port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # closed early: read what it answered
            s.sendall(data)
        out = b""
        while not complete(out):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            out += chunk
        return out


def request(p: Proxy, method: str, path: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n".encode()
    return exchange(p, head + headers + b"\r\n" + body)


def bearer(token: bytes) -> bytes:
    return b"Authorization: Bearer " + token + b"\r\n"


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


def plan_version(p: Proxy) -> int:
    answer = request(p, "GET", "/v1/stats", bearer(TOKEN.encode()))
    assert status(answer) == 200, answer[:300]
    version: int = json.loads(body_of(answer))["planVersion"]
    return version


def test_bad_tokens_get_401_on_every_protected_route_and_change_nothing(
    backends: Backends, proxy: Proxies
) -> None:
    a, b = backends.start("a"), backends.start("b")
    p = proxy.start("--backend", f"a={a.address}", token=TOKEN)
    good = TOKEN.encode()
    plan = json.dumps(
        {
            "schemaVersion": 1,
            "version": 9,
            "backends": [{"id": "b", "address": "127.0.0.1", "port": b.port,
                          "state": "Active", "weight": 1}],
            "affinity": {"type": "Header", "header": {"name": "X-S"}},
        }
    ).encode()  # fmt: skip
    bad_auth = {
        "none": b"",
        "wrong": bearer(b"nope"),
        "empty": bearer(b""),
        "prefix of the token": bearer(good[:-1]),
        "token and more": bearer(good + b"x"),
        "latin-1 spelling": bearer(TOKEN.encode("utf-8").decode("latin-1").encode("latin-1")[1:]),
        "Basic scheme": b"Authorization: Basic " + good + b"\r\n",
        "no scheme": b"Authorization: " + good + b"\r\n",
        "wrong one first": bearer(b"nope") + bearer(good),
    }
    for what, auth in bad_auth.items():
        for method, path, body in (
            ("GET", "/v1/stats", b""),
            ("GET", "/metrics", b""),
            ("PUT", "/v1/plan", plan),
            ("GET", "/nope", b""),
        ):
            length = f"Content-Length: {len(body)}\r\n".encode() if body else b""
            answer = request(p, method, path, auth + length, body)
            assert status(answer) == 401, (what, path, answer[:300])
            assert b'WWW-Authenticate: Bearer realm="limpet-admin"' in answer
    assert status(request(p, "GET", "/v1/stats", bearer(good))) == 200
    assert plan_version(p) == 1
    with Conn(p.address) as c:
        assert c.request("GET", "/who").json()["backend"] == "a"
    # /healthz and /readyz stay open to the kubelet, with or without a token.
    assert status(request(p, "GET", "/healthz", bearer(b"nope"))) == 200
    assert status(request(p, "GET", "/readyz")) == 200
    # And the right token still works for a push.
    length = f"Content-Length: {len(plan)}\r\n".encode()
    answer = request(p, "PUT", "/v1/plan", bearer(good) + length, plan)
    assert status(answer) == 200, answer
    with Conn(p.address) as c:
        assert c.request("GET", "/who", headers={"X-S": "1"}).json()["backend"] == "b"
    assert "Traceback" not in p.log_text()


def test_malformed_huge_and_mistyped_requests_get_clear_errors(
    backends: Backends, proxy: Proxies
) -> None:
    a = backends.start("a")
    p = proxy.start("--backend", f"a={a.address}", token=TOKEN)
    auth = bearer(TOKEN.encode())
    malformed = {
        "NUL in a header": bearer(b"\x00"),
        "control bytes in a header": bearer(b"\x01\x7f"),
        "a 100 KB header": bearer(b"a" * 100_000),
        "negative Content-Length": auth + b"Content-Length: -1\r\n",
        "two Content-Lengths": auth + b"Content-Length: 1\r\nContent-Length: 2\r\n",
    }
    for what, headers in malformed.items():
        answer = request(p, "PUT", "/v1/plan", headers, b"{}")
        assert status(answer) == 400, (what, answer[:300])
    # A body declared bigger than a plan may be: 413 from the head, not a wait for it.
    answer = request(p, "PUT", "/v1/plan", auth + b"Content-Length: 1000000000000\r\n", b"{")
    assert status(answer) == 413, answer[:300]
    assert json.loads(body_of(answer))["error"].startswith("plan larger than 33554432 bytes")
    # The same sent chunked, 33 MiB of it: 413 once the limit is crossed.
    head = b"PUT /v1/plan HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n" + auth
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    with socket.create_connection(("127.0.0.1", p.admin_port), timeout=20) as s:
        s.sendall(head + b"\r\n")
        try:
            for _ in range(33):
                s.sendall(chunk)
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server may close before the whole body is sent
        answer = s.recv(1 << 16)
    assert status(answer) == 413, answer[:300]
    # Wrong content types and bodies that are not JSON: the parser's clear 400.
    # (The Content-Type is not consulted: the body is read as JSON, whose own encoding
    # detection takes UTF-16 with a byte-order mark.)
    not_json = "invalid plan: plan JSON: not valid JSON"
    for ctype, body, expected in (
        (b"text/plain", b"plan please", not_json),
        (b"application/x-www-form-urlencoded", b"version=2&backends=a", not_json),
        (b"multipart/form-data; boundary=x", b"--x\r\n\r\n{}\r\n--x--", not_json),
        (b"application/json", b'{"schemaVersion": 1, "version": 2, "backends": [}', not_json),
        (b"application/json; charset=utf-16", "{}".encode("utf-16"), "invalid plan: schemaVersion"),
    ):
        headers = auth + b"Content-Type: " + ctype + f"\r\nContent-Length: {len(body)}\r\n".encode()
        answer = request(p, "PUT", "/v1/plan", headers, body)
        assert status(answer) == 400, (ctype, answer[:300])
        assert json.loads(body_of(answer))["error"].startswith(expected), (ctype, answer)
    for method in ("GET", "POST", "DELETE"):
        assert status(request(p, method, "/v1/plan", auth)) == 405
    # Nothing changed, the log holds one line per bad request, and traffic flows.
    assert plan_version(p) == 1
    with Conn(p.address) as c:
        assert c.request("GET", "/who").json()["backend"] == "a"
    log = p.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("Error handling request") >= len(malformed)
    assert p.proc.poll() is None


def test_a_burst_of_concurrent_pushes_loses_no_plan(
    backends: Backends, proxy: Proxies, tmp_path: Path
) -> None:
    """40 pushes at once, versions 2..41 in a shuffled order, each twice: every one is
    answered 200 (applied, or the same plan again) or 409 (older than one applied), the
    proxy ends on the highest version, and that is the plan saved in --state-dir."""
    a = backends.start("a")
    state = tmp_path / "state"
    p = proxy.start("--backend", f"a={a.address}", "--state-dir", str(state), token=TOKEN)

    def body(version: int) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 1,
                "version": version,
                "backends": [{"id": "a", "address": "127.0.0.1", "port": a.port,
                              "state": "Active", "weight": version}],
                "affinity": {"type": "Header", "header": {"name": "X-S"}},
            }
        ).encode()  # fmt: skip

    def push(version: int) -> int:
        b = body(version)
        headers = bearer(TOKEN.encode()) + f"Content-Length: {len(b)}\r\n".encode()
        return status(request(p, "PUT", "/v1/plan", headers, b))

    versions = [v for v in range(2, 42) for _ in range(2)]
    random.Random(7).shuffle(versions)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(push, versions))
    assert set(answers) <= {200, 409}, answers
    assert answers.count(200) >= 2  # at least the first arrival and version 41
    assert plan_version(p) == 41
    saved = json.loads((state / "plan.json").read_bytes())
    assert saved["version"] == 41
    assert saved["backends"][0]["weight"] == 41
    with Conn(p.address) as c:
        assert c.request("GET", "/who", headers={"X-S": "1"}).json()["backend"] == "a"
    assert "Traceback" not in p.log_text()


def test_connections_that_hold_the_admin_port_are_closed_after_the_deadline(
    backends: Backends, proxy: Proxies
) -> None:
    """Slowloris on the admin port, which needs no token: 200 connections that send
    half a head, trickle a body, or nothing at all, and one idle after its answer. Each
    is closed once the deadline (30 s without an answer) passes, while good requests are
    answered throughout."""
    a = backends.start("a")
    p = proxy.start("--backend", f"a={a.address}", token=TOKEN)
    auth = bearer(TOKEN.encode())
    held: list[socket.socket] = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", p.admin_port), timeout=10)
        if i % 3 == 1:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        elif i % 3 == 2:
            s.sendall(
                b"PUT /v1/plan HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Length: 99\r\n\r\n{"
            )
        held.append(s)
    idle = socket.create_connection(("127.0.0.1", p.admin_port), timeout=10)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(idle.recv(4096)) == 200
    started = time.monotonic()
    while time.monotonic() - started < 25:  # good requests meanwhile, and a trickle
        assert status(request(p, "GET", "/readyz")) == 200
        for s in held[2::3]:
            s.sendall(b" ")
        time.sleep(5)
    for s in (*held, idle):
        s.settimeout(20)  # a TimeoutError here: the server kept the connection
        with contextlib.suppress(ConnectionResetError):
            while s.recv(4096):
                pass  # whatever it says first, it must then close
        s.close()
    assert time.monotonic() - started < 60
    assert status(request(p, "GET", "/v1/stats", auth)) == 200
    assert p.proc.poll() is None
    assert "Traceback" not in p.log_text()
