"""RFC 9112 sections 2-5 and RFC 9110 section 9: the request line and field syntax.

Each vector is one client message on a fresh connection; the rig checks the oracle's rule
(exactly one equal backend message, or an error and nothing forwarded) and each test
checks the client's status and what the backend saw.
"""

from __future__ import annotations

import socket

import pytest

from .conftest import Rig

# Refused with 400 and never forwarded. Sources: RFC 9112 2.2 (bare CR, bare LF),
# 3 (request line), 3.2 (Host), 5.1 (no whitespace before the colon), 5.2 (obs-fold);
# RFC 9110 5.5 (NUL and CR/LF in values); and request-smuggling research (whitespace
# and control bytes that some parsers drop and others keep).
REFUSED = {
    "bare-lf": b"GET / HTTP/1.1\nHost: x\n\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost: x\r\nX-A\t: 1\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n",
    "leading-space-field": b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "empty-field-name": b"GET / HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n",
    "space-in-field-name": b"GET / HTTP/1.1\r\nHost: x\r\nX A: v\r\n\r\n",
    "space-in-target": b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    "ctl-in-target": b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment": b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment-only": b"GET /#/../admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-version": b"GET / http/1.1\r\nHost: x\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\n\r\n",
    "two-hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host-list": b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
    "host-with-space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "host-with-userinfo": b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
    "host-with-path": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "host-bad-port": b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n",
    "target-not-origin": b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n",
    "star-not-options": b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_request_refused(rig: Rig, name: str) -> None:
    rig.warm()
    client, received = rig.exchange(REFUSED[name])
    assert client.status == 400, client
    assert received == []
    assert client.closed


# RFC 9110 9.1: a method token the proxy does not know (methods are case-sensitive) is
# answered 501, never a 400 and never forwarded half-parsed.
@pytest.mark.parametrize("method", [b"FOO", b"get", b"Post", b"X-CUSTOM.1"])
def test_unknown_method_token_501(rig: Rig, method: bytes) -> None:
    client, received = rig.exchange(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.status == 501, client
    assert received == []


# Forwarded: exactly one backend message with the same method, target, body and
# end-to-end fields (the rig's oracle checks all of that; here the specifics).
ACCEPTED = {
    "plain": (b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n", b"GET", b"/a?b=c"),
    "http10-no-host": (b"GET /a HTTP/1.0\r\n\r\n", b"GET", b"/a"),
    "options-star": (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", b"OPTIONS", b"*"),
    "patch": (b"PATCH /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz", b"PATCH", b"/p"),
    "purge": (b"PURGE /p HTTP/1.1\r\nHost: x\r\n\r\n", b"PURGE", b"/p"),
    "host-port": (b"GET / HTTP/1.1\r\nHost: a.b:8080\r\n\r\n", b"GET", b"/"),
    "host-ipv6": (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", b"GET", b"/"),
    "host-empty-http10": (b"GET / HTTP/1.0\r\nHost: \r\n\r\n", b"GET", b"/"),
    "ows-around-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: \t v \t\r\n\r\n", b"GET", b"/"),
    "obs-text-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\n\r\n", b"GET", b"/"),
    "percent-target": (b"GET /%2e%2e/%00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET", b"/%2e%2e/%00"),
    "repeated-field": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n", b"GET", b"/"),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_valid_request_forwarded_once(rig: Rig, name: str) -> None:
    data, method, target = ACCEPTED[name]
    client, received = rig.exchange(data)
    assert client.status == 200, client
    assert [(m.method, m.target) for m in received] == [(method, target)]


# Allowed by RFC 9112 but refused by h11, which is stricter: the proxy accepts them and
# forwards one canonical message (checked here instead of by the oracle).
LENIENT = {
    # 2.2: a server SHOULD ignore at least one empty line before the request line.
    "leading-crlf": b"\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    # 3: recipients MAY parse the request line on whitespace-delimited word boundaries.
    "double-space": b"GET  /a HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_request_line_forwarded_canonical(rig: Rig, name: str) -> None:
    client, received = rig.exchange(LENIENT[name], oracle=False)
    assert client.status == 200, client
    assert [(m.method, m.target, m.header(b"host")) for m in received] == [(b"GET", b"/a", [b"x"])]


def test_http10_without_host_gets_an_empty_host(rig: Rig) -> None:
    """Forwarded as HTTP/1.1, which needs a Host: an empty one, as RFC 9112 3.2 says
    for a target URI without an authority."""
    _, received = rig.exchange(b"GET /a HTTP/1.0\r\n\r\n")
    assert [m.header(b"host") for m in received] == [[b""]]


def test_repeated_fields_keep_their_order(rig: Rig) -> None:
    _, received = rig.exchange(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 0\r\nX-A: 2\r\n\r\n")
    assert received[0].header(b"x-a") == [b"1", b"2"]


def test_untrusted_forwarding_fields_are_replaced(rig: Rig) -> None:
    _, received = rig.exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\n\r\n"
    )
    (msg,) = received
    assert msg.header(b"x-forwarded-for") == [b"127.0.0.1"]
    assert msg.header(b"x-forwarded-host") == [b"x"]
    assert msg.header(b"forwarded") == []


def test_trailing_whitespace_is_not_part_of_host_or_cookie(rig: Rig) -> None:
    """RFC 9110 5.5: OWS after a value is not part of it (llhttp keeps it; found by the
    fuzzer as a joined Cookie ``a=1 ; b=2``)."""
    data = b"GET / HTTP/1.1\r\nHost: shop \t\r\nCookie: a=1 \r\nCookie: b=2\r\n\r\n"
    client, received = rig.exchange(data)
    assert client.status == 200
    assert [(m.header(b"host"), m.header(b"cookie")) for m in received] == [
        ([b"shop"], [b"a=1; b=2"])
    ]


def test_garbage_after_a_complete_request_is_answered_after_it(rig: Rig) -> None:
    """A complete request followed, in the same read, by bytes that are not HTTP: the
    backend got the request, so the client gets its answer first, then the 400 (as
    nginx does), never a 400 for a request that was executed (found by the fuzzer)."""
    rig.warm()
    data = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n\x00garbage\r\n\r\n"
    with socket.create_connection(rig.proxy.address, timeout=5) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert [m.target for m in rig.backend.take()] == [b"/first"]
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 400 " in raw
