"""RFC 9110 7.8 (Upgrade), 10.1.1 (Expect) and RFC 9112 3.2.2 (absolute-form targets).

An upgrade request with a body is refused (400): llhttp, like Node.js, reads no body on
an upgrade request, so the body would otherwise be held back while the backend waits
for it (issue 10, flaw 2); WebSocket handshakes never have one. A backend connection
that carried an upgrade request is never pooled unless the backend answered 101 (and
then it is a tunnel, closed at its end)."""

from __future__ import annotations

import pytest

from .conftest import Rig

UPGRADE = b"Host: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"Content-Length: 5\r\n\r\nhello",
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_upgrade_request_with_a_body_is_refused(rig: Rig, body: bytes) -> None:
    client, received = rig.exchange(b"POST /ws HTTP/1.1\r\n" + UPGRADE + body, method=b"POST")
    assert client.status == 400
    assert received == []


def test_upgrade_not_answered_101_is_not_pooled(rig: Rig) -> None:
    """The backend answers the upgrade request with a plain 200. The next request must
    get a fresh backend connection, not the one that carried the upgrade request."""
    rig.exchange(b"GET /warm HTTP/1.1\r\nHost: x\r\n\r\n")
    client, received = rig.exchange(b"GET /ws HTTP/1.1\r\n" + UPGRADE + b"\r\n", oracle=False)
    assert client.status == 200
    assert client.closed  # the client connection cannot go on either
    (upgrade,) = received
    assert upgrade.header(b"upgrade") == [b"websocket"]
    _, after = rig.exchange(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [m.target for m in after] == [b"/next"]
    assert after[0].conn != upgrade.conn


def test_upgrade_request_with_zero_length_is_forwarded(rig: Rig) -> None:
    data = b"GET /ws HTTP/1.1\r\n" + UPGRADE + b"Content-Length: 0\r\n\r\n"
    client, received = rig.exchange(data, oracle=False)
    assert client.status == 200
    assert [m.target for m in received] == [b"/ws"]


def test_expect_100_continue_forwarded_with_the_body(rig: Rig) -> None:
    data = b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    client, received = rig.exchange(data + b"body", chunks=[data, b"body"], method=b"PUT")
    assert client.status == 200
    assert [(m.body, m.header(b"expect")) for m in received] == [(b"body", [b"100-continue"])]


ABSOLUTE = {
    "host-replaced": (b"http://real.example/p?q=1", b"other", b"/p?q=1", b"real.example"),
    "port": (b"http://real.example:8080/p", b"real.example", b"/p", b"real.example:8080"),
    "no-path": (b"http://real.example", b"x", b"/", b"real.example"),
    "query-only": (b"http://real.example?a", b"x", b"/?a", b"real.example"),
    "https": (b"HTTPS://real.example/s", b"x", b"/s", b"real.example"),
}


@pytest.mark.parametrize("name", sorted(ABSOLUTE))
def test_absolute_form_takes_host_from_the_target(rig: Rig, name: str) -> None:
    target, host, origin, authority = ABSOLUTE[name]
    data = b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, host)
    client, received = rig.exchange(data)
    assert client.status == 200
    assert [(m.target, m.header(b"host")) for m in received] == [(origin, [authority])]
    assert received[0].header(b"x-forwarded-host") == [authority]


@pytest.mark.parametrize(
    "target",
    [
        b"http://user:pw@real.example/",
        b"http://user@real.example/",
        b"ftp://real.example/",
        b"http:///p",
        b"http://real example/",
    ],
)
def test_bad_absolute_form_refused(rig: Rig, target: bytes) -> None:
    client, received = rig.exchange(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    assert client.status == 400, client
    assert received == []


def test_connect_is_not_supported(rig: Rig) -> None:
    client, received = rig.exchange(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n")
    assert client.status == 405
    assert received == []
