"""Unit tests of ``limpet.proxy.engine.response_head``: a backend's head scanned field by
field, framing, the client's head and canned answers (pure functions)."""

from __future__ import annotations

import pytest

from limpet.proxy.engine import fields, response_head


def response_scan(headers: list[tuple[bytes, bytes]]) -> response_head.ResponseScan:
    r = response_head.ResponseScan(kept=[b"stale: line\r\n"], content_length=5, upgrade=b"stale")
    classes = fields.HeaderClasses()
    response_head.begin_response_scan(r)  # field by field, as the response machine scans
    for name, value in headers:
        response_head.scan_response_field(r, classes.get(name), name, value)
    response_head.end_response_scan(r)
    return r


def test_response_hop_by_hop_and_set_cookie() -> None:
    r = response_scan(
        [
            (b"Content-Type", b"text/plain"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Set-Cookie", b"APP=1"),
            (b"Content-Length", b"2"),
        ]
    )
    assert r.set_cookies == [b"APP=1"]
    framing = response_head.response_framing(200, head_request=False, scan=r, http11=True)
    assert framing == response_head.FRAME_RAW
    head = response_head.build_response_head(
        200,
        b"OK",
        r,
        framing=framing,
        set_cookie=b"LIMPET=v; Path=/",
        keep_alive=True,
        http11=True,
    )
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"Set-Cookie: APP=1",
        b"Content-Length: 2",
        b"Set-Cookie: LIMPET=v; Path=/",
        b"",
        b"",
    ]


@pytest.mark.parametrize(
    ("status", "head_request", "headers", "http11", "expected"),
    [
        (200, False, [(b"Content-Length", b"5")], True, response_head.FRAME_RAW),
        (200, False, [(b"Transfer-Encoding", b"chunked")], True, response_head.FRAME_CHUNKED),
        (200, False, [(b"Transfer-Encoding", b"chunked")], False, response_head.FRAME_CLOSE),
        (200, False, [], True, response_head.FRAME_CHUNKED),
        (200, False, [], False, response_head.FRAME_CLOSE),
        (200, True, [(b"Content-Length", b"5")], True, response_head.FRAME_NONE),
        (204, False, [], True, response_head.FRAME_NONE),
        (304, False, [(b"Content-Length", b"5")], True, response_head.FRAME_NONE),
        (103, False, [], True, response_head.FRAME_NONE),
    ],
)
def test_response_framing(
    status: int,
    head_request: bool,
    headers: list[tuple[bytes, bytes]],
    http11: bool,
    expected: int,
) -> None:
    r = response_scan(headers)
    assert response_head.response_framing(
        status, head_request=head_request, scan=r, http11=http11
    ) == (expected)


def test_connection_close_and_http10_keep_alive() -> None:
    r = response_scan([(b"Content-Length", b"0")])
    close = response_head.build_response_head(
        200,
        b"OK",
        r,
        framing=response_head.FRAME_RAW,
        set_cookie=None,
        keep_alive=False,
        http11=True,
    )
    assert close.endswith(b"Connection: close\r\n\r\n")
    ka10 = response_head.build_response_head(
        200,
        b"OK",
        r,
        framing=response_head.FRAME_RAW,
        set_cookie=None,
        keep_alive=True,
        http11=False,
    )
    assert ka10.endswith(b"Connection: keep-alive\r\n\r\n")


def test_error_responses_are_complete() -> None:
    for status in (400, 408, 414, 431, 502, 503, 504, 505):
        data = response_head.error_response(status, close=True)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"Content-Length: %d" % len(body) in head
        assert b"Connection: close" in head
    assert response_head.error_response(503, close=False).endswith(
        b"\r\n\r\nno backend available\n"
    )
