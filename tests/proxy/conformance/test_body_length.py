"""RFC 9112 section 6.3, message body length, for requests (responses:
``test_responses.py``). Every framing the proxy cannot decide for certain is refused
before a single byte goes to the backend (the rig also checks that no partial message
reached it)."""

from __future__ import annotations

import pytest

from .conftest import Rig

H = b"POST /b HTTP/1.1\r\nHost: x\r\n"

REFUSED = {
    # 6.3 item 3: Transfer-Encoding and Content-Length together (CL.TE / TE.CL).
    "cl-te": H + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-cl": H + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "te-cl-zero": H + b"Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
    # 6.3 item 4: chunked is not the final coding, or the coding is not one at all.
    "te-gzip": H + b"Transfer-Encoding: gzip\r\n\r\n",
    "te-identity": H + b"Transfer-Encoding: identity\r\n\r\nabc",
    "te-xchunked": H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-chunkedx": H + b"Transfer-Encoding: chunkedx\r\n\r\n0\r\n\r\n",
    "te-quoted": H + b'Transfer-Encoding: "chunked"\r\n\r\n0\r\n\r\n',
    "te-chunked-gzip": H + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    "te-chunked-twice": H + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "te-two-fields": H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
    "te-empty": H + b"Transfer-Encoding: \r\n\r\n",
    "te-vertical-tab": H + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    # llhttp does not read a tab inside the list as a separator: the head must not leave
    # before it refuses the body (a pooled connection used to get it).
    "te-trailing-tab": H + b"Transfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-tab-comma": H + b"Transfer-Encoding: chunked\t,\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-space-name": H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-param": H + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
    "te-http10": b"POST /b HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    # 6.3 item 5: an invalid Content-Length.
    "cl-negative": H + b"Content-Length: -1\r\n\r\n",
    "cl-plus": H + b"Content-Length: +3\r\n\r\nabc",
    "cl-hex": H + b"Content-Length: 0x3\r\n\r\nabc",
    "cl-space-inside": H + b"Content-Length: 1 2\r\n\r\n",
    "cl-two-different": H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list-different": H + b"Content-Length: 3, 4\r\n\r\nabcd",
    "cl-overflow": H + b"Content-Length: 99999999999999999999999\r\n\r\n",
    "cl-empty": H + b"Content-Length: \r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ambiguous_framing_refused_before_forwarding(rig: Rig, name: str) -> None:
    rig.warm()
    client, received = rig.exchange(REFUSED[name], method=b"POST")
    assert client.status == 400, client
    assert received == []
    assert client.closed


def test_unknown_coding_before_chunked_is_501(rig: Rig) -> None:
    client, received = rig.exchange(H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
    assert client.status == 501, client
    assert received == []


FORWARDED = {
    "cl": (H + b"Content-Length: 5\r\n\r\nhello", b"hello"),
    "cl-zero": (H + b"Content-Length: 0\r\n\r\n", b""),
    "cl-leading-zeros": (H + b"Content-Length: 005\r\n\r\nhello", b"hello"),
    "no-framing": (H + b"\r\n", b""),  # 6.3 item 7: a request without framing has no body
    "chunked": (H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"hello"),
    "chunked-upper": (H + b"Transfer-Encoding: CHUNKED\r\n\r\n2\r\nhi\r\n0\r\n\r\n", b"hi"),
    "get-with-body": (b"GET /g HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", b"hi"),
}


@pytest.mark.parametrize("name", sorted(FORWARDED))
def test_framed_body_forwarded_exactly(rig: Rig, name: str) -> None:
    data, body = FORWARDED[name]
    client, received = rig.exchange(data, method=b"POST")
    assert client.status == 200, client
    assert [m.body for m in received] == [body]


def test_body_split_across_reads(rig: Rig) -> None:
    data = H + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    client, received = rig.exchange(data, chunks=[data[i : i + 7] for i in range(0, len(data), 7)])
    assert client.status == 200
    assert [m.body for m in received] == [b"helloabc"]


def test_bytes_after_the_body_are_not_smuggled(rig: Rig) -> None:
    """A second request behind a Content-Length body is a pipelined request, answered
    in turn with its own routing and X-Forwarded-For, never part of the first."""
    smuggled = b"GET /second HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    data = H + b"Content-Length: 5\r\n\r\nhello" + smuggled
    client, received = rig.exchange(data, oracle=False)
    assert client.status == 200
    assert [(m.target, m.body) for m in received] == [(b"/b", b"hello"), (b"/second", b"")]
    assert received[1].header(b"x-forwarded-for") == [b"127.0.0.1"]


def test_empty_coding_list_elements_forwarded_as_plain_chunked(rig: Rig) -> None:
    """RFC 9110 5.6.1: empty list elements are allowed (h11 refuses them, so no oracle
    here); the backend gets the canonical ``Transfer-Encoding: chunked``."""
    data = H + b"Transfer-Encoding: , chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    client, received = rig.exchange(data, method=b"POST", oracle=False)
    assert client.status == 200
    assert [(m.body, m.header(b"transfer-encoding")) for m in received] == [(b"hi", [b"chunked"])]
