"""HTTP correctness of the engine, end to end: a real proxy process, real backends, raw
sockets. Keep-alive on both sides, bodies both ways, framing, 1xx, HEAD/204/304,
hop-by-hop stripping, X-Forwarded-* trust, pipelining."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from ..conftest import Backend, Backends, Conn, Proxies, Proxy, standalone_args


def echoed(resp: Any) -> dict[str, Any]:
    data: dict[str, Any] = resp.json()
    return data


def header_names(echo: dict[str, Any]) -> list[str]:
    return [k.lower() for k, _ in echo["headers"]]


def header_values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


@pytest.fixture
def one(backends: Backends, proxy: Proxies) -> tuple[Backend, Proxy]:
    b = backends.start("b1")
    return b, proxy.start(*standalone_args(b))


def test_keep_alive_both_sides(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        first = c.request("GET", "/a")
        assert first.status == 200
        assert first.header("Connection") is None
        ports = {echoed(c.request("GET", f"/n{i}"))["peer_port"] for i in range(20)}
    # Twenty requests on one client connection, served over one pooled upstream connection.
    assert ports == {echoed(first)["peer_port"]}
    engine = p.stats()["engine"]
    assert engine["connections_accepted"] == 1
    assert engine["upstream_connects"] == 1
    assert engine["upstream_reuses"] == 20


def test_request_bodies_content_length_and_chunked(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    body = bytes(range(256)) * 1000
    with Conn(p.address) as c:
        r = echoed(c.request("POST", "/cl", body=body))
        assert r["body_bytes"] == len(body)
        assert r["body_sha256"] == hashlib.sha256(body).hexdigest()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(x), x) for x in (b"hello ", b"chunked ", b"world"))
        r2 = c.request(
            "POST",
            "/chunked",
            headers={"Transfer-Encoding": "chunked"},
            body=chunks + b"0\r\nX-Trailer: t\r\n\r\n",
        )
        e2 = echoed(r2)
        assert e2["body_bytes"] == len(b"hello chunked world")
        assert e2["body_sha256"] == hashlib.sha256(b"hello chunked world").hexdigest()
        assert header_values(e2, "transfer-encoding") == ["chunked"]


@pytest.mark.parametrize("mode", ["cl", "chunked", "eof"])
def test_response_framing(one: tuple[Backend, Proxy], mode: str) -> None:
    _, p = one
    size = 300_000
    with Conn(p.address) as c:
        r = c.request("GET", f"/download?size={size}&mode={mode}")
        assert r.status == 200
        assert len(r.body) == size
        assert r.body == (bytes(range(256)) * 256 * 5)[:size]
        if mode == "cl":
            assert r.header("Content-Length") == str(size)
        else:
            # Chunked and close-delimited answers reach an HTTP/1.1 client re-chunked,
            # so its connection survives.
            assert r.header("Transfer-Encoding") == "chunked"
            assert r.header("Content-Length") is None
        assert c.request("GET", "/after").status == 200


def test_http10_client_gets_close_delimited_body(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET /download?size=1000&mode=chunked HTTP/1.0\r\nHost: x\r\n\r\n")
        status, _, _, head = c.read_head()
        assert status == 200
        assert b"Transfer-Encoding" not in head
        assert c.closed_by_peer()
        assert len(c.buf) == 1000


def test_head_204_304(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        h = c.request("HEAD", "/download?size=5000&mode=cl")
        assert h.status == 200
        assert h.header("Content-Length") == "5000"
        assert h.body == b""
        for code in (204, 304):
            r = c.request("GET", f"/status/{code}")
            assert r.status == code
            assert r.body == b""
        # The connection is still in sync after all bodiless answers.
        assert echoed(c.request("GET", "/tail"))["path"] == "/tail"


def test_head_answers_keep_the_backend_connection(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    ports: set[str] = set()
    with Conn(p.address) as c:
        for i in range(8):
            h = c.request("HEAD", f"/head-{i}")
            assert h.status == 200
            assert h.body == b""
            assert h.header("Content-Length") not in (None, "0")  # the GET's length
            ports.add(h.header("X-Peer-Port") or "")
            if i % 3 == 0:  # interleaved GETs: the response parser is back in step
                g = c.request("GET", f"/get-{i}")
                assert echoed(g)["path"] == f"/get-{i}"
                ports.add(str(echoed(g)["peer_port"]))
        # A 1xx before the final head of a HEAD answer (the backend sends 100 Continue).
        c.send(b"HEAD /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n")
        assert c.read_head()[0] == 100
        e = c.read_response(head_request=True)
        assert e.status == 200
        assert e.body == b""
        ports.add(e.header("X-Peer-Port") or "")
        ports.add(str(echoed(c.request("GET", "/tail"))["peer_port"]))
    # One backend connection served every HEAD and every GET.
    assert len(ports) == 1
    assert "" not in ports
    engine = p.wait_idle()
    assert engine["upstream_connects"] == 1
    assert engine["upstream_reuses"] == engine["requests"] - 1


def test_head_answer_with_a_stray_body_is_not_relayed(one: tuple[Backend, Proxy]) -> None:
    # The test backend's /download writes its body even for HEAD: the proxy relays the
    # head only, and the connection's next answers stay correct.
    _, p = one
    with Conn(p.address) as c:
        for round_ in range(5):
            for mode in ("cl", "chunked"):
                d = c.request("HEAD", f"/download?size=5000&mode={mode}")
                assert d.status == 200
                assert d.body == b""
                g = c.request("GET", f"/after-{round_}-{mode}")
                assert g.status == 200
                assert echoed(g)["path"] == f"/after-{round_}-{mode}"
    engine = p.wait_idle()
    assert engine["local_responses"] == {}  # no 502: nothing was answered by the proxy


def test_expect_100_continue_relayed(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _, _ = c.read_head()
        assert status == 100
        c.send(b"hello")
        r = c.read_response()
        assert r.status == 200
        assert echoed(r)["body_bytes"] == 5


def test_informational_answer_relayed(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET /early-hints HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, headers, _ = c.read_head()
        assert status == 103
        assert ("Link", "</style.css>; rel=preload") in headers
        r = c.read_response()
        assert r.status == 200
        assert r.body == b"ok"


def test_expect_rejected_by_backend(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(
            b"POST /reject-expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        r = c.read_response()
        assert r.status == 417
        # The body was never sent, so the connection cannot be trusted: it is closed.
        assert r.header("Connection") == "close"
        assert c.closed_by_peer()


def test_response_trailers_forwarded(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(b"GET /trailers HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, headers, _ = c.read_head()
        assert status == 200
        assert ("Trailer", "X-Sum") not in headers  # hop-by-hop
        while b"0\r\n" not in c.buf or not c.buf.endswith(b"\r\n\r\n"):
            assert c._fill()
        assert c.buf == b"5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n"


def test_hop_by_hop_headers_stripped_both_ways(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        r = c.request(
            "GET",
            "/hop",
            headers=[
                ("Connection", "keep-alive, X-Private"),
                ("X-Private", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Trailer", "X-Foo"),
                ("Upgrade", "h2c"),
                ("X-Kept", "yes"),
            ],
        )
        names = header_names(echoed(r))
        for gone in (
            "connection",
            "x-private",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ):
            assert gone not in names, gone
        assert "x-kept" in names
        # Response side: the backend's "Connection: close" does not reach the client,
        # whose connection stays open.
        closing = c.request("GET", "/close")
        assert closing.status == 200
        assert closing.header("Connection") is None
        assert c.request("GET", "/still-open").status == 200


def test_x_forwarded_untrusted_peer(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        e = echoed(
            c.request(
                "GET",
                "/xff",
                headers={
                    "X-Forwarded-For": "6.6.6.6",
                    "X-Forwarded-Proto": "https",
                    "X-Forwarded-Host": "evil.example",
                    "Forwarded": "for=6.6.6.6",
                },
                host="shop.local",
            )
        )
    assert header_values(e, "x-forwarded-for") == ["127.0.0.1"]
    assert header_values(e, "x-forwarded-proto") == ["http"]
    assert header_values(e, "x-forwarded-host") == ["shop.local"]
    assert header_values(e, "forwarded") == []


def test_x_forwarded_trusted_peer(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--trusted-proxy", "127.0.0.0/8")
    with Conn(p.address) as c:
        e = echoed(
            c.request(
                "GET",
                "/xff",
                headers=[
                    ("X-Forwarded-For", "203.0.113.7"),
                    ("X-Forwarded-For", "10.0.0.1"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "shop.example"),
                ],
            )
        )
    assert header_values(e, "x-forwarded-for") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]
    assert header_values(e, "x-forwarded-proto") == ["https"]
    assert header_values(e, "x-forwarded-host") == ["shop.example"]


def test_pipelined_requests_answered_in_order(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        c.send(
            b"GET /sleep?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /p3 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        paths = [echoed(c.read_response())["path"] for _ in range(3)]
    assert paths == ["/sleep?s=0.2", "/p2", "/p3"]


def test_absolute_form_target(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        e = echoed(c.request("GET", "http://test.local/abs/path?q=1"))
    assert e["path"] == "/abs/path?q=1"


def test_client_connection_close_honoured(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    with Conn(p.address) as c:
        r = c.request("GET", "/bye", headers={"Connection": "close"})
        assert r.status == 200
        assert r.header("Connection") == "close"
        assert c.closed_by_peer()


def test_idle_keep_alive_timeout(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--idle-timeout", "0.5")
    with Conn(p.address) as c:
        assert c.request("GET", "/one").status == 200
        assert c.closed_by_peer(timeout=5.0)
    assert p.stats()["engine"]["timeouts"].get("idle", 0) >= 1


def test_many_clients_share_the_pool(one: tuple[Backend, Proxy]) -> None:
    _, p = one
    socks = [Conn(p.address) for _ in range(10)]
    try:
        for _ in range(3):
            for c in socks:
                assert c.request("GET", "/m").status == 200
    finally:
        for c in socks:
            c.close()
    engine = p.stats()["engine"]
    assert engine["requests"] == 30
    assert engine["upstream_connects"] <= 10


def test_address_override_dials_the_mapped_address(
    backends: Backends, proxy: Proxies, tmp_path: Path
) -> None:
    b = backends.start("b1")
    # The plan names an address nothing listens on (still loopback, so a broken override
    # could never send traffic anywhere else); the override maps it to the backend.
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"127.0.0.2:9": f"127.0.0.1:{b.port}"}))
    p = proxy.start("--backend", "pod=127.0.0.2:9", "--address-override", str(override))
    with Conn(p.address) as c:
        r = c.request("GET", "/via-override")
    assert r.status == 200
    assert r.json()["backend"] == "b1"
    without = proxy.start("--backend", "pod=127.0.0.2:9")
    with Conn(without.address) as c:
        assert c.request("GET", "/direct").status in (502, 503)
