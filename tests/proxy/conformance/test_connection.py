"""RFC 9110 section 7.6.1: Connection and the other hop-by-hop fields.

The proxy removes what ``Connection`` lists, except the fields that frame, route or
identify a message (Content-Length, Transfer-Encoding, Host, Cookie, and the forwarding
fields it writes itself): those would let a client unframe its own body or dodge the
proxy's rewriting (issue 10, flaws 1 and 5)."""

from __future__ import annotations

import pytest

from .conftest import Rig

SMUGGLED = b"GET /SMUGGLED HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"


@pytest.mark.parametrize(
    "connection", [b"Content-Length", b"keep-alive, content-length", b"close, CONTENT-LENGTH"]
)
def test_connection_cannot_remove_content_length(rig: Rig, connection: bytes) -> None:
    """The reproducer of flaw 1: the body must stay the body of the first request."""
    data = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n"
        % (len(SMUGGLED), connection)
    ) + SMUGGLED
    client, received = rig.exchange(data, method=b"POST")
    assert client.status == 200
    assert [(m.target, m.body) for m in received] == [(b"/a", SMUGGLED)]
    assert received[0].header(b"content-length") == [b"%d" % len(SMUGGLED)]


def test_connection_cannot_remove_transfer_encoding(rig: Rig) -> None:
    data = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: Transfer-Encoding\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)
    )
    client, received = rig.exchange(data, method=b"POST")
    assert client.status == 200
    assert [(m.target, m.body) for m in received] == [(b"/a", SMUGGLED)]


def test_connection_cannot_remove_host(rig: Rig) -> None:
    """Flaw 5: an HTTP/1.1 request must not reach the backend without its Host."""
    client, received = rig.exchange(b"GET /h HTTP/1.1\r\nHost: shop\r\nConnection: Host\r\n\r\n")
    assert client.status == 200
    assert [m.header(b"host") for m in received] == [[b"shop"]]


@pytest.mark.parametrize(
    "field", [b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Cookie"]
)
def test_connection_cannot_remove_forwarding_or_cookie_fields(rig: Rig, field: bytes) -> None:
    data = b"GET /f HTTP/1.1\r\nHost: shop\r\nCookie: app=1\r\nConnection: %s\r\n\r\n" % field
    client, received = rig.exchange(data)
    assert client.status == 200
    (msg,) = received
    assert msg.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert msg.header(b"x-forwarded-proto") == [b"http"]
    assert msg.header(b"x-forwarded-host") == [b"shop"]
    assert msg.header(b"cookie") == [b"app=1"]


def test_listed_end_to_end_fields_are_removed(rig: Rig) -> None:
    data = (
        b"GET /l HTTP/1.1\r\nHost: x\r\nConnection: X-Secret, x-other\r\nX-Secret: 1\r\n"
        b"X-Other: 2\r\nX-Kept: 3\r\n\r\n"
    )
    _, received = rig.exchange(data)
    (msg,) = received
    assert (msg.header(b"x-secret"), msg.header(b"x-other")) == ([], [])
    assert msg.header(b"x-kept") == [b"3"]


def test_hop_by_hop_fields_are_not_forwarded(rig: Rig) -> None:
    data = (
        b"GET /hop HTTP/1.1\r\nHost: x\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
        b"Trailer: X-T\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\n"
        b"Upgrade: websocket\r\n\r\n"
    )
    _, received = rig.exchange(data)
    (msg,) = received
    names = {k for k, _ in msg.headers}
    assert names.isdisjoint(
        {b"keep-alive", b"te", b"trailer", b"proxy-authorization", b"proxy-connection"}
    )
    assert b"upgrade" not in names  # Upgrade without Connection: upgrade asks for nothing
    assert msg.header(b"connection") == []


def test_connection_close_closes_after_the_answer(rig: Rig) -> None:
    client, received = rig.exchange(b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert client.status == 200
    assert client.closed
    assert len(received) == 1
