"""Unit tests of ``limpet.proxy.engine.request_head``: the request scan and the head sent
upstream (pure functions)."""

from __future__ import annotations

import pytest

from limpet.proxy.engine import fields, request_head


def scan(headers: list[tuple[bytes, bytes]], *, trusted: bool = False) -> request_head.RequestScan:
    # A scan is reused for every request: start from a dirty one.
    s = request_head.RequestScan(
        kept=[b"stale: line\r\n"], host=b"stale", cookie=b"x", has_body=True
    )
    request_head.scan_request(s, headers, fields.HeaderClasses(), trusted=trusted)
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
    head = request_head.build_request_head(
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
    head = request_head.build_request_head(
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
    head = request_head.build_request_head(
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
    head = request_head.build_request_head(
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


H = (b"Host", b"example.com")


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "upgrade", "expected"),
    [
        (b"GET", b"/a?b", "1.1", [H], False, (0, b"/a?b")),
        (b"GET", b"/", "1.0", [], False, (0, b"/")),  # HTTP/1.0 needs no Host
        (b"GET", b"/", "2.0", [H], False, (505, b"")),
        (b"GET", b"/", "0.9", [H], False, (505, b"")),
        (b"CONNECT", b"example.com:443", "1.1", [H], False, (405, b"")),
        (b"GET", b"/", "1.1", [], False, (400, b"")),  # HTTP/1.1 without Host
        (b"GET", b"/", "1.0", [H, H], False, (400, b"")),  # two Hosts, any version
        (b"GET", b"/", "1.1", [(b"Host", b"a b")], False, (400, b"")),
        (b"GET", b"/", "1.1", [(b"Host", b"u@h")], False, (400, b"")),
        (b"GET", b"/p#frag", "1.1", [H], False, (400, b"")),
        (b"GET", b"http://other.example/x?y", "1.1", [H], False, (0, b"/x?y")),
        (b"GET", b"http://other.example?y", "1.1", [H], False, (0, b"/?y")),
        (b"GET", b"ftp://other.example/x", "1.1", [H], False, (400, b"")),
        (b"GET", b"http://user@other.example/", "1.1", [H], False, (400, b"")),
        (b"OPTIONS", b"*", "1.1", [H], False, (0, b"*")),
        (b"GET", b"*", "1.1", [H], False, (400, b"")),
        (b"GET", b"p", "1.1", [H], False, (400, b"")),
        (b"POST", b"/", "1.1", [H, (b"Transfer-Encoding", b"chunked")], False, (0, b"/")),
        (b"POST", b"/", "1.0", [H, (b"Transfer-Encoding", b"chunked")], False, (400, b"/")),
        (
            b"POST",
            b"/",
            "1.1",
            [H, (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
            False,
            (400, b"/"),
        ),
        (b"POST", b"/", "1.1", [H, (b"Transfer-Encoding", b"gzip, chunked")], False, (501, b"/")),
        (b"POST", b"/", "1.1", [H, (b"Transfer-Encoding", b"chunked, gzip")], False, (400, b"/")),
        (b"POST", b"/", "1.1", [H, (b"Transfer-Encoding", b"chunked\t")], False, (400, b"/")),
        (b"POST", b"/", "1.1", [H, (b"Transfer-Encoding", b"chunked\t,")], False, (400, b"/")),
        (b"GET", b"/ws", "1.1", [H, (b"Upgrade", b"websocket")], True, (0, b"/ws")),
        (
            b"POST",
            b"/ws",
            "1.1",
            [H, (b"Upgrade", b"websocket"), (b"Content-Length", b"2")],
            True,
            (400, b"/ws"),
        ),
    ],
)
def test_check_request(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    upgrade: bool,
    expected: tuple[int, bytes],
) -> None:
    s = scan(headers)
    assert request_head.check_request(s, method, target, version, upgrade=upgrade) == expected


def test_an_absolute_target_replaces_the_host() -> None:
    s = scan([H, (b"X-Kept", b"1")])
    assert request_head.check_request(s, b"GET", b"https://b.example:8443", "1.1", upgrade=False)
    assert s.host == b"b.example:8443"
    assert b"".join(s.kept) == b"X-Kept: 1\r\nHost: b.example:8443\r\n"


def test_the_host_found_valid_is_kept_across_requests_and_only_matches_itself() -> None:
    s = scan([H])
    assert request_head.check_request(s, b"GET", b"/", "1.1", upgrade=False) == (0, b"/")
    assert s.host_valid == b"example.com"
    for host, status in [(b"bad host", 400), (b"example.com", 0), (b"b.example", 0)]:
        request_head.scan_request(s, [(b"Host", host)], fields.HeaderClasses(), trusted=False)
        assert request_head.check_request(s, b"GET", b"/", "1.1", upgrade=False)[0] == status
    assert s.host_valid == b"b.example"
