"""The same rules for answers from backends: RFC 9112 sections 4-7 and RFC 9110 7.6.1,
applied to what a backend sends. The recording backend answers ``/raw/<name>`` with the
bytes of a vector; the oracle (h11 in the client role, :func:`check_response`) says
what the client must get: the same status, body and end-to-end fields, or a 502 (or a
cut connection once the answer has started) when h11 rejects the answer."""

from __future__ import annotations

import socket

import pytest

from ..oracle import check_response
from .conftest import Rig

OK = b"HTTP/1.1 200 OK\r\n"

ACCEPTED = {
    "content-length": OK + b"Content-Length: 5\r\n\r\nhello",
    "chunked": OK + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
    "connection-content-length": OK
    + b"Content-Length: 5\r\nConnection: Content-Length\r\n\r\nhello",
    "connection-keep-alive-content-length": OK
    + b"Content-Length: 5\r\nConnection: keep-alive, content-length\r\n\r\nhello",
    "connection-listed-field": OK
    + b"Content-Length: 2\r\nConnection: X-Secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\r\nok",
    "hop-by-hop": OK + b"Content-Length: 2\r\nKeep-Alive: timeout=5\r\nUpgrade: h2c\r\n\r\nok",
    "no-content": b"HTTP/1.1 204 No Content\r\n\r\n",
    "not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n',
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    + OK
    + b"Content-Length: 2\r\n\r\nok",
    "http10-keep-alive": (
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
    ),
    "repeated-fields": OK + b"X-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok",
}
CLOSE_DELIMITED = {
    "no-framing": OK + b"\r\nhello",
    "http10": b"HTTP/1.0 200 OK\r\n\r\nhello",
}
REFUSED = {
    "cl-te": OK + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-lengths": OK + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "negative-length": OK + b"Content-Length: -5\r\n\r\n",
    "bad-status-line": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH\r\n\r\n",
    "space-before-colon": OK + b"Content-Length : 5\r\n\r\nhello",
    "obs-fold": OK + b"X-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
    "nul-in-value": OK + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    "unrequested-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    # No status below 100 exists (RFC 9110 15); llhttp frames a 0xx answer's body as a
    # final one's, which relayed as interim would reach the client unframed.
    "status-099-with-body": b"HTTP/1.1 099 x\r\nContent-Length: 61\r\n\r\n"
    + b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\nX-Injected: 1\r\n\r\ninjected",
    "status-000": b"HTTP/1.1 000 x\r\nContent-Length: 0\r\n\r\n",
    # llhttp reads these as not chunked (body until close), h11 as chunked (the fuzzer).
    "te-trailing-tab": OK + b"Transfer-Encoding: Chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "te-empty-last-element": OK + b"Transfer-Encoding: chunked, \t\r\n\r\n0\r\n\r\n",
    "te-parameter": OK + b"Transfer-Encoding: chunked;x=1\r\n\r\n0\r\n\r\n",
    # chunked not last: the body runs to the close and would be chunked twice (RFC 9112 6.1).
    "te-chunked-then-identity": OK + b"Transfer-Encoding: chunked, identity\r\n\r\nabc",
    "te-chunked-then-gzip-fields": OK
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\nabc",
}
CUT = {
    "chunk-size-overflow": OK + b"Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nab\r\n",
    "chunk-no-crlf": OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc0\r\n\r\n",
    "truncated": OK + b"Content-Length: 10\r\n\r\nhello",
}


def _answer(rig: Rig, name: str, raw: bytes, *, keep: bool) -> tuple[bytes, object]:
    target = b"/raw/" + name.encode()
    rig.backend.respond_raw(target, raw, keep=keep)
    client, received = rig.exchange(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target, oracle=False)
    assert [m.target for m in received] == [target]
    return target, client


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_valid_answer_relayed(rig: Rig, name: str) -> None:
    raw = ACCEPTED[name]
    _, client = _answer(rig, name, raw, keep=True)
    problem = check_response(raw, client)  # type: ignore[arg-type]
    assert problem is None, problem
    assert not client.closed  # type: ignore[attr-defined]


def test_connection_cannot_unframe_an_answer(rig: Rig) -> None:
    """Flaw 1, response side: a listed Content-Length stays, so the kept-alive client
    connection knows where the answer ends."""
    _, client = _answer(rig, "unframe", ACCEPTED["connection-content-length"], keep=True)
    assert client.header(b"content-length") == [b"5"]  # type: ignore[attr-defined]
    assert client.body == b"hello"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(CLOSE_DELIMITED))
def test_close_delimited_answer_rechunked(rig: Rig, name: str) -> None:
    raw = CLOSE_DELIMITED[name]
    _, client = _answer(rig, name, raw, keep=False)
    assert check_response(raw, client) is None  # type: ignore[arg-type]
    assert client.header(b"transfer-encoding") == [b"chunked"]  # type: ignore[attr-defined]


def test_unknown_coding_close_delimited_gets_chunked_last(rig: Rig) -> None:
    """A ``gzip`` body delimited by close is chunked for a kept-alive client: the coding
    list must then end in chunked (h11 cannot read it, so the raw bytes are checked)."""
    rig.backend.respond_raw(b"/raw/gzip", OK + b"Transfer-Encoding: gzip\r\n\r\nabc")
    with socket.create_connection(rig.proxy.address, timeout=5) as sock:
        sock.sendall(b"GET /raw/gzip HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in raw
    assert raw.endswith(b"\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    rig.backend.take()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_broken_answer_is_502_and_not_relayed(rig: Rig, name: str) -> None:
    raw = REFUSED[name]
    _, client = _answer(rig, name, raw, keep=False)
    assert client.status == 502, client  # type: ignore[attr-defined]
    assert check_response(raw, client) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(CUT))
def test_answer_broken_midway_cuts_the_client(rig: Rig, name: str) -> None:
    _, client = _answer(rig, name, CUT[name], keep=False)
    _cut_or_502(client)


def _cut_or_502(client: object) -> None:
    """Broken before the head reached the client: a 502; after: the client is cut."""
    status, error = client.status, client.error  # type: ignore[attr-defined]
    assert status == 502 or (status == 200 and error is not None), client


def test_answer_trailers_filtered(rig: Rig) -> None:
    raw = (
        OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Checksum: 1\r\n"
        b"Set-Cookie: evil=1\r\nConnection: close\r\nContent-Type: text/evil\r\n\r\n"
    )
    _, client = _answer(rig, "trailers", raw, keep=True)
    assert client.body == b"ok"  # type: ignore[attr-defined]
    tail = client.raw.partition(b"\r\n\r\n")[2]  # type: ignore[attr-defined]
    assert tail == b"2\r\nok\r\n0\r\nX-Checksum: 1\r\n\r\n"


def test_answer_trailers_have_the_header_limits(rig: Rig) -> None:
    fields = b"".join(b"X-T%d: v\r\n" % i for i in range(60))
    raw = OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n" + fields + b"\r\n"
    _, client = _answer(rig, "trailer-limit", raw, keep=False)
    _cut_or_502(client)
