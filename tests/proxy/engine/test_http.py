"""Unit tests of the head rewriting in ``limpet.proxy.engine.http`` (pure functions)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.proxy.engine import http


def scan(headers: list[tuple[bytes, bytes]], *, trusted: bool = False) -> http.RequestScan:
    # A scan is reused for every request: start from a dirty one.
    s = http.RequestScan(kept=[b"stale: line\r\n"], host=b"stale", cookie=b"x", has_body=True)
    http.scan_request(s, headers, http.HeaderClasses(), trusted=trusted)
    return s


def lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")


def test_hop_by_hop_request_headers_are_dropped() -> None:
    s = scan(
        [
            (b"Host", b"a"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"PROXY-Connection", b"keep-alive"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-T"),
            (b"Upgrade", b"h2c"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Kept", b"yes"),
        ]
    )
    assert b"".join(s.kept) == b"Host: a\r\nX-Kept: yes\r\n"
    assert s.transfer_encoding == b"chunked"
    head = http.build_request_head(
        s, b"POST", b"/p", peer=b"10.1.2.3", cookie=None, add_headers=(), upgrade=False
    )
    assert lines(head) == [
        b"POST /p HTTP/1.1",
        b"Host: a",
        b"X-Kept: yes",
        b"X-Forwarded-For: 10.1.2.3",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: a",
        b"Transfer-Encoding: chunked",
        b"",
        b"",
    ]


def test_cookie_headers_joined_and_rewritten() -> None:
    s = scan([(b"Host", b"a"), (b"Cookie", b"a=1"), (b"cookie", b"LIMPET=x; b=2")])
    assert s.cookie == b"a=1; LIMPET=x; b=2"
    head = http.build_request_head(
        s,
        b"GET",
        b"/",
        peer=b"1.2.3.4",
        cookie=b"a=1; b=2",
        add_headers=((b"Limpet-Session-Moved", b"drain; from=x"),),
        upgrade=False,
    )
    assert b"Cookie: a=1; b=2\r\n" in head
    assert head.count(b"Cookie:") == 1
    assert b"Limpet-Session-Moved: drain; from=x\r\n" in head


@pytest.mark.parametrize("trusted", [False, True])
def test_forwarded_headers(trusted: bool) -> None:
    s = scan(
        [
            (b"Host", b"shop"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"X-Forwarded-For", b"2.2.2.2"),
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"outer"),
            (b"Forwarded", b"for=1.1.1.1"),
        ],
        trusted=trusted,
    )
    head = http.build_request_head(
        s, b"GET", b"/", peer=b"10.0.0.9", cookie=None, add_headers=(), upgrade=False
    )
    if trusted:
        assert b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\n" in head
        assert b"X-Forwarded-Proto: https\r\n" in head
        assert b"X-Forwarded-Host: outer\r\n" in head
        assert b"Forwarded: for=1.1.1.1\r\n" in head
    else:
        assert b"X-Forwarded-For: 10.0.0.9\r\n" in head
        assert b"X-Forwarded-Proto: http\r\n" in head
        assert b"X-Forwarded-Host: shop\r\n" in head
        assert b"Forwarded:" not in head
    assert head.count(b"X-Forwarded-For") == 1


def test_upgrade_request_keeps_upgrade() -> None:
    s = scan([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    head = http.build_request_head(
        s, b"GET", b"/ws", peer=b"1.2.3.4", cookie=None, add_headers=(), upgrade=True
    )
    assert head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n")


def test_expect_and_lengths() -> None:
    s = scan([(b"Host", b"a"), (b"Content-Length", b"12"), (b"Expect", b"100-Continue")])
    # Expect is end-to-end here: the backend answers 100 Continue itself.
    assert b"Expect: 100-Continue\r\n" in b"".join(s.kept)
    assert s.content_length == 12
    assert s.has_body
    assert not scan([(b"Host", b"a")]).has_body


def response_scan(headers: list[tuple[bytes, bytes]]) -> http.ResponseScan:
    r = http.ResponseScan(kept=[b"stale: line\r\n"], content_length=5, upgrade=b"stale")
    classes = http.HeaderClasses()
    http.begin_response_scan(r)  # field by field, as the response machine scans
    for name, value in headers:
        http.scan_response_field(r, classes.get(name), name, value)
    http.end_response_scan(r)
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
    framing = http.response_framing(200, head_request=False, scan=r, http11=True)
    assert framing == http.FRAME_RAW
    head = http.build_response_head(
        200,
        b"OK",
        r,
        framing=framing,
        set_cookie=b"LIMPET=v; Path=/",
        keep_alive=True,
        http11=True,
    )
    assert lines(head) == [
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
        (200, False, [(b"Content-Length", b"5")], True, http.FRAME_RAW),
        (200, False, [(b"Transfer-Encoding", b"chunked")], True, http.FRAME_CHUNKED),
        (200, False, [(b"Transfer-Encoding", b"chunked")], False, http.FRAME_CLOSE),
        (200, False, [], True, http.FRAME_CHUNKED),
        (200, False, [], False, http.FRAME_CLOSE),
        (200, True, [(b"Content-Length", b"5")], True, http.FRAME_NONE),
        (204, False, [], True, http.FRAME_NONE),
        (304, False, [(b"Content-Length", b"5")], True, http.FRAME_NONE),
        (103, False, [], True, http.FRAME_NONE),
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
    assert http.response_framing(status, head_request=head_request, scan=r, http11=http11) == (
        expected
    )


def test_connection_close_and_http10_keep_alive() -> None:
    r = response_scan([(b"Content-Length", b"0")])
    close = http.build_response_head(
        200, b"OK", r, framing=http.FRAME_RAW, set_cookie=None, keep_alive=False, http11=True
    )
    assert close.endswith(b"Connection: close\r\n\r\n")
    ka10 = http.build_response_head(
        200, b"OK", r, framing=http.FRAME_RAW, set_cookie=None, keep_alive=True, http11=False
    )
    assert ka10.endswith(b"Connection: keep-alive\r\n\r\n")


def test_error_responses_are_complete() -> None:
    for status in (400, 408, 414, 431, 502, 503, 504, 505):
        data = http.error_response(status, close=True)
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"Content-Length: %d" % len(body) in head
        assert b"Connection: close" in head
    assert http.error_response(503, close=False).endswith(b"\r\n\r\nno backend available\n")


def test_header_class_cache_is_bounded() -> None:
    classes = http.HeaderClasses(limit=10)
    for i in range(100):
        # As long as X-Forwarded-For and with its first letter: looked up, then cached.
        assert classes.get(b"X-Forwarded-%03d" % i) == http.OTHER
    assert len(classes.cache) == 10
    assert classes.get(b"PROXY-anything") == http.DROP


@settings(max_examples=500)
@given(st.binary(max_size=24) | st.text("0123456789 \t_+-x\r\n", max_size=12).map(str.encode))
def test_content_length_reads_as_int_does(value: bytes) -> None:
    try:
        want: int | type[ValueError] = int(value)
    except ValueError:
        want = ValueError
    try:
        got: int | type[ValueError] = http.content_length(value)
    except ValueError:
        got = ValueError
    assert got == want


_NAMES = st.sampled_from(
    [
        b"Host",
        b"cookie",
        b"CONTENT-LENGTH",
        b"X-Forwarded-Proto",
        b"TE",
        b"Proxy-Authorization",
        b"proxy-",
        b"proxy",
        b"Server",
        b"Date",
        b"Content-Type",
        b"X-Forwarded-Hosts",
        # The usual spellings get compares first, and names of the same lengths.
        b"Cookie",
        b"Connection",
        b"Set-Cookie",
        b"Keep-Alive",
        b"connection",
        b"Content-Length",
        b"Content-Lengtx",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Trailer",
        b"X-Forwarded-For",
        b"X-Forwarded-Fox",
        b"X_Forwarded_For",
        b"Content_Length",
        b"Proxy",
        b"proxy_authorization",
    ]
) | st.binary(min_size=1, max_size=20)


@settings(max_examples=500)
@given(st.lists(_NAMES, max_size=30))
def test_header_classes_match_the_table(names: list[bytes]) -> None:
    # HeaderClasses.get skips the lookup for names that cannot have a class: each answer
    # must be the class the table (and the proxy- prefix) gives the lower-cased name.
    classes = http.HeaderClasses(limit=8)
    for name in names:
        assert classes.get(name) == _class_of(name)


@pytest.mark.parametrize(
    ("cookies", "want"),
    [
        ([], None),
        ([b"a=1"], b"a=1"),
        ([b"a=1 \t"], b"a=1"),
        ([b"a=1\t", b"b=2"], b"a=1; b=2"),
        ([b"a=1", b"b=2 ", b"c=3"], b"a=1; b=2; c=3"),
        ([b""], b""),
    ],
)
def test_cookie_fields_are_joined_without_trailing_blanks(
    cookies: list[bytes], want: bytes | None
) -> None:
    s = scan([(b"Host", b"h \t"), *((b"Cookie", c) for c in cookies)])
    assert s.cookie == want
    assert s.host == b"h"
    assert b"".join(s.kept) == b"Host: h\r\n"


def _spellings(name: bytes, rnd: random.Random, most: int) -> set[bytes]:
    """Every upper/lower-case spelling of ``name`` (or ``most`` random ones)."""
    letters = [i for i, b in enumerate(name) if chr(b).isalpha()]
    if 2 ** len(letters) <= most:
        masks = range(2 ** len(letters))
    else:
        masks = [rnd.getrandbits(len(letters)) for _ in range(most)]  # type: ignore[assignment]
    out = set()
    for mask in masks:
        b = bytearray(name)
        for bit, i in enumerate(letters):
            if mask >> bit & 1:
                b[i] ^= 0x20
        out.add(bytes(b))
    return out


def _class_of(name: bytes) -> int:
    lower = name.lower()
    if lower in http._CLASSES:
        return http._CLASSES[lower]
    # Proxy-*, Proxy (httpoxy), and a classed or Proxy-* name with "_" for "-" (read as
    # that field by CGI/WSGI gateways) are dropped.
    dashed = lower.replace(b"_", b"-")
    if dashed == b"proxy" or dashed.startswith(b"proxy-") or dashed in http._CLASSES:
        return http.DROP
    return http.OTHER


def test_every_spelling_of_every_classed_name_gets_its_class() -> None:
    # HeaderClasses.get answers the usual spelling of a length without a lookup (8a439e1):
    # every other case spelling, and every name one byte off a classed one, must still
    # get the class the table gives (a cold and a warm cache, and one that is full).
    rnd = random.Random(10)
    names: set[bytes] = set()
    for classed in [*http._CLASSES, b"proxy-authorization", b"proxy"]:
        names |= _spellings(classed, rnd, 2048)
        for i in range(len(classed)):
            for byte in (0x00, 0x09, 0x2D, 0x5F, 0x7F, 0xC3, classed[i] ^ 0x01, classed[i] ^ 0x20):
                names.add(classed[:i] + bytes([byte]) + classed[i + 1 :])
        names.add(classed + b"x")
        names.add(classed[:-1])
    for classes in (http.HeaderClasses(), http.HeaderClasses(limit=0)):
        for _ in range(2):  # the second pass reads what the first cached
            for name in sorted(names):
                assert classes.get(name) == _class_of(name), name
