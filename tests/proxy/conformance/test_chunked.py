"""RFC 9112 section 7: chunked transfer coding and trailer sections, in requests.

Chunk framing is where request smuggling lives (chunk-size overflow, extensions, bare
CR/LF, missing CRLF after data); trailers are where fields stripped from the head could
sneak back in (RFC 9110 6.5.1)."""

from __future__ import annotations

import pytest

from .conftest import Rig

H = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

REFUSED = {
    "size-overflow": H + b"10000000000000000\r\n" + b"a" * 16 + b"\r\n0\r\n\r\n",
    "size-overflow-wrap": H + b"1ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
    "size-negative": H + b"-1\r\nabc\r\n0\r\n\r\n",
    "size-hex-prefix": H + b"0x3\r\nabc\r\n0\r\n\r\n",
    "size-not-hex": H + b"zz\r\nabc\r\n0\r\n\r\n",
    "size-empty": H + b"\r\nabc\r\n0\r\n\r\n",
    "size-bare-lf": H + b"3\nabc\r\n0\r\n\r\n",
    "data-too-long": H + b"3\r\nabcd\r\n0\r\n\r\n",
    "data-no-crlf": H + b"3\r\nabc0\r\n\r\n",
    "data-bare-lf": H + b"3\r\nabc\n0\r\n\r\n",
    "data-bare-cr": H + b"3\r\nabc\r0\r\n\r\n",
    "extension-bare-lf": H + b"3;a=b\nabc\r\n0\r\n\r\n",
    "extension-ctl": H + b"3;a=\x01\r\nabc\r\n0\r\n\r\n",
    "last-chunk-bare-lf": H + b"3\r\nabc\r\n0\n\n",
    "trailer-obs-fold": H + b"0\r\nX-T: 1\r\n 2\r\n\r\n",
    "trailer-no-colon": H + b"0\r\nX-T\r\n\r\n",
    "trailer-space-before-colon": H + b"0\r\nX-T : 1\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_broken_chunk_framing_never_completes_a_message(rig: Rig, name: str) -> None:
    """The head may already be on its way (chunks stream), but the message never
    completes at the backend: the connection to it is dropped, never reused."""
    client, received = rig.exchange(REFUSED[name], method=b"POST", streamed=True)
    assert client.status in (400, None), client
    assert received == []
    # The next request gets a clean backend connection and is answered normally.
    ok, after = rig.exchange(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.status == 200
    assert [m.target for m in after] == [b"/next"]


@pytest.mark.parametrize("name", ["size-not-hex", "data-too-long", "trailer-no-colon"])
def test_broken_chunk_framing_in_the_heads_read_forwards_nothing(rig: Rig, name: str) -> None:
    """Refused in the read that brought its head: not even the head reaches the backend,
    on a pooled connection that would have taken it at once (the rig asserts that no
    incomplete message, nor a reset that could hide one, reached it)."""
    rig.warm()
    client, received = rig.exchange(REFUSED[name], method=b"POST")
    assert client.status == 400, client
    assert received == []
    assert client.closed


FORWARDED = {
    "one-chunk": (H + b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "many-chunks": (H + b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n", b"abcdef"),
    "upper-hex": (H + b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    "leading-zeros": (H + b"0003\r\nabc\r\n0\r\n\r\n", b"abc"),
    "extension": (H + b"3;name=value\r\nabc\r\n0\r\n\r\n", b"abc"),
    "quoted-extension": (H + b'3;n="v;x"\r\nabc\r\n0\r\n\r\n', b"abc"),
    "empty-body": (H + b"0\r\n\r\n", b""),
}


@pytest.mark.parametrize("name", sorted(FORWARDED))
def test_chunked_body_forwarded_exactly(rig: Rig, name: str) -> None:
    data, body = FORWARDED[name]
    client, received = rig.exchange(data, method=b"POST")
    assert client.status == 200, client
    assert [m.body for m in received] == [body]
    # Extensions are hop-by-hop framing: the proxy re-chunks without them.
    assert received[0].header(b"transfer-encoding") == [b"chunked"]


def test_trailers_forwarded_without_framing_routing_forwarding_or_cookie_fields(
    rig: Rig,
) -> None:
    trailer = (
        b"0\r\nX-Checksum: abc\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil\r\n"
        b"Cookie: session=stolen\r\nForwarded: for=6.6.6.6\r\nTrailer: X-Checksum\r\n"
        b"Keep-Alive: 1\r\nConnection: close\r\nSet-Cookie: a=b\r\n"
        b"Authorization: Basic eA==\r\nLimpet-Session-Moved: fake\r\n\r\n"
    )
    client, received = rig.exchange(H + b"2\r\nhi\r\n" + trailer, method=b"POST")
    assert client.status == 200
    (msg,) = received
    assert msg.body == b"hi"
    assert msg.trailers == ((b"x-checksum", b"abc"),)


@pytest.mark.parametrize(
    "trailer",
    [
        b"".join(b"X-T%d: v\r\n" % i for i in range(60)),  # more fields than --max-headers
        b"X-Big: " + b"v" * 9000 + b"\r\n",  # larger than --max-header-bytes
        b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 400) for i in range(25)),  # together
    ],
    ids=["count", "one-large", "sum"],
)
def test_trailer_section_has_the_header_limits(rig: Rig, trailer: bytes) -> None:
    data = H + b"2\r\nhi\r\n0\r\n" + trailer + b"\r\n"
    client, received = rig.exchange(data, method=b"POST", streamed=True)
    assert client.status == 431, client
    assert received == []


@pytest.mark.parametrize("field", [b"Content-Length: 99", b"Transfer-Encoding: chunked"])
def test_framing_fields_in_trailers_never_reach_the_backend(rig: Rig, field: bytes) -> None:
    """llhttp refuses these in a trailer section; were one accepted, it would be dropped."""
    data = H + b"2\r\nhi\r\n0\r\n" + field + b"\r\n\r\n"
    client, received = rig.exchange(data, method=b"POST", streamed=True)
    if client.status == 200:
        assert [m.trailers for m in received] == [()]
    else:
        assert client.status == 400
        assert received == []
