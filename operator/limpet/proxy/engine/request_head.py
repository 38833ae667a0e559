"""The request head: one pass over the client's fields, the checks that decide framing
and target, and the head sent to the backend.

Data flow: the client state machine (``h1/request.py``) collects the raw ``(name, value)``
pairs that httptools reports; the exchange calls :func:`scan_request` once per request,
then :func:`check_request` (version, method, Host, target form and body framing) before
anything goes to a backend, and after routing :func:`build_request_head` for the bytes
sent upstream. Pure and synchronous; the state is the connection's ``RequestScan``
(which keeps the Host last found valid) and the bounded cache of Host values checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from limpet.proxy.engine.fields import (
    CONNECTION,
    CONTENT_LENGTH,
    COOKIE,
    DROP,
    EXPECT,
    FORWARDED,
    HOST,
    OTHER,
    SET_COOKIE,
    TRANSFER_ENCODING,
    UPGRADE,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    HeaderClasses,
    content_length,
    is_token,
    keep,
    listed_fields,
    lists_headers,
    without_fields,
)

IDEMPOTENT_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"},
)


@dataclass(slots=True)
class RequestScan:
    """What one pass over the request headers found. One instance per client connection,
    overwritten for every request (no per-request allocation)."""

    kept: list[bytes]  # the forwarded fields, in order, as parts: see keep
    host: bytes | None = None
    host_count: int = 0
    cookie: bytes | None = None
    content_length: int = -1
    transfer_encoding: bytes | None = None
    upgrade: bytes | None = None
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    connection: list[bytes] | None = None
    has_body: bool = False  # Transfer-Encoding, or a Content-Length above 0
    # The Host value last found valid on this connection, kept across its requests (not
    # reset by scan_request): a client sends the same one with every request, and
    # comparing it costs a tenth of host_ok's look-up (which hashes a new bytes object).
    host_valid: bytes | None = None


def scan_request(
    scan: RequestScan,
    headers: list[tuple[bytes, bytes]],
    classes: HeaderClasses,
    *,
    trusted: bool,
) -> None:
    """One pass over the request headers: fill ``scan`` and serialise the headers that are
    forwarded untouched into ``scan.kept``. Forwarding headers from an untrusted peer are
    dropped here; :func:`build_request_head` writes fresh ones."""
    # Every field afresh: the common ones inline, the rare ones by _reset_rare (below).
    kept: list[bytes] = []
    scan.kept = kept
    scan.host = scan.cookie = scan.connection = None
    _reset_rare(scan)
    scan.host_count = 0
    scan.content_length = -1
    cookie: bytes | None = None
    cookies: list[bytes] | None = None  # from a second Cookie field on
    for name, value in headers:
        code = classes.get(name)
        if code == OTHER:
            keep(kept, name, value)
        elif code == COOKIE:
            value = _without_trailing_ows(value)
            if cookie is None:
                cookie = value
            elif cookies is None:
                cookies = [cookie, value]
            else:
                cookies.append(value)
        elif code == HOST:
            value = _without_trailing_ows(value)
            scan.host = value
            scan.host_count += 1
            keep(kept, name, value)
        elif code == CONTENT_LENGTH:
            # llhttp already rejected duplicates, signs and non-digits.
            scan.content_length = content_length(value)
            keep(kept, name, value)
        elif code == CONNECTION:
            if scan.connection is None:
                scan.connection = [value]
            else:
                scan.connection.append(value)
        elif code != DROP:  # DROP: hop-by-hop, never forwarded
            _scan_rare(scan, code, name, value, trusted=trusted)
    scan.cookie = cookie if cookies is None else b"; ".join(cookies)
    scan.has_body = scan.transfer_encoding is not None or scan.content_length > 0
    if scan.connection is not None and lists_headers(scan.connection):
        _strip_listed(scan)


def _without_trailing_ows(value: bytes) -> bytes:
    """``value`` without the trailing blanks llhttp keeps, which are not part of a field
    value (RFC 9110 5.5). Only a value that ends in one pays for ``rstrip`` (a method
    call by name: ten times the test)."""
    if value and (value[-1] == 32 or value[-1] == 9):
        return value.rstrip(b" \t")
    return value


def _reset_rare(scan: RequestScan) -> None:
    """Clear the fields :func:`_scan_rare` fills. A call, not inline: after an inline
    ``scan.transfer_encoding = None`` mypy keeps the field narrowed to None across the
    loop's calls, and mypyc (limpet.proxy.process.native) would compile the test of it
    after the loop as always false."""
    scan.transfer_encoding = scan.upgrade = None
    scan.xff = scan.xfp = scan.xfh = None


def _scan_rare(scan: RequestScan, code: int, name: bytes, value: bytes, *, trusted: bool) -> None:
    """The request header classes that are rare on the hot path (a call each)."""
    if code == TRANSFER_ENCODING:
        te = scan.transfer_encoding
        scan.transfer_encoding = value if te is None else te + b", " + value
    elif code == X_FORWARDED_FOR:
        if trusted:
            scan.xff = value if scan.xff is None else scan.xff + b", " + value
    elif code == X_FORWARDED_PROTO:
        if trusted and scan.xfp is None:
            scan.xfp = value
    elif code == X_FORWARDED_HOST:
        if trusted and scan.xfh is None:
            scan.xfh = value
    elif code == UPGRADE:
        scan.upgrade = value
    elif code in (EXPECT, SET_COOKIE) or (code == FORWARDED and trusted):
        keep(scan.kept, name, value)


def _strip_listed(scan: RequestScan) -> None:
    """Drop the headers that ``Connection`` lists (rare, so the slow path re-parses lines)."""
    assert scan.connection is not None
    listed = listed_fields(scan.connection)
    if listed:
        scan.kept = without_fields(scan.kept, listed)


def build_request_head(
    scan: RequestScan,
    method: bytes,
    target: bytes,
    *,
    peer: bytes,
    cookie: bytes | None,
    add_headers: tuple[tuple[bytes, bytes], ...],
    upgrade: bool,
) -> bytes:
    """The request head sent upstream (always HTTP/1.1, always keep-alive unless upgrading).

    ``cookie`` is the Cookie value to send (the router's rewrite or the original), or None.
    A chunked request body is sent as ``Transfer-Encoding: chunked``; the engine re-frames
    the chunks.
    """
    # Appends, not ``parts += (...)``: each tuple would be built, and added generically.
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    parts.extend(scan.kept)
    if scan.host is None:
        parts.append(b"Host: \r\n")  # HTTP/1.0 without Host: HTTP/1.1 needs one
    if cookie is not None:
        keep(parts, b"Cookie", cookie)
    keep(parts, b"X-Forwarded-For", peer if scan.xff is None else scan.xff + b", " + peer)
    keep(parts, b"X-Forwarded-Proto", b"http" if scan.xfp is None else scan.xfp)
    xfh = scan.xfh if scan.xfh is not None else scan.host
    if xfh is not None:
        keep(parts, b"X-Forwarded-Host", xfh)
    for name, value in add_headers:
        keep(parts, name, value)
    if scan.transfer_encoding is not None:
        # Checked to be exactly chunked (transfer_coding_status); the engine re-chunks.
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade and scan.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", scan.upgrade, b"\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


# -- checks that decide the framing and the target before anything is forwarded ----------

# "#" as a byte value: ``b"#" in target`` first tries the operand as an integer, and the
# TypeError it raises and clears cost about 3 % of a request's instructions.
_HASH: Final = 0x23
_TAB: Final = 0x09


def check_request(
    scan: RequestScan, method: bytes, target: bytes, version: str, *, upgrade: bool
) -> tuple[int, bytes]:
    """Everything that refuses a request before routing, and so before any byte goes to a
    backend, once :func:`scan_request` has filled ``scan``: (status, b"") for a refusal,
    else (0, the origin-form target). ``upgrade``: an upgrade the proxy would carry out.

    One valid Host (RFC 9112 3.2), no fragment, an absolute-form target replaces Host
    with its own authority (3.2.2); the body's framing is decided here too:
    Transfer-Encoding must be chunked, must not come with Content-Length and needs
    HTTP/1.1 (6.1, 6.3), and an upgrade request carries no body (docs/proxy.md)."""
    if version != "1.1" and version != "1.0":
        return 505, b""
    if method == b"CONNECT":
        return 405, b""
    if scan.host_count != 1 and (scan.host_count > 1 or version == "1.1"):
        return 400, b""
    host = scan.host
    if host is not None:
        valid = scan.host_valid
        if valid is None or host != valid:
            if not host_ok(host):
                return 400, b""
            scan.host_valid = host
    if _HASH in target:
        return 400, b""  # clients never send fragments; HAProxy refuses them too
    if target[:1] != b"/":
        origin = _origin_form(scan, method, target)
        if origin is None:
            return 400, b""
        target = origin
    if scan.transfer_encoding is None and not upgrade:
        return 0, target  # the common case: nothing more to decide
    return _framing_status(scan, http11=version == "1.1", upgrade=upgrade), target


def _origin_form(scan: RequestScan, method: bytes, target: bytes) -> bytes | None:
    """``*`` (OPTIONS only) or an absolute-form target as origin-form, its authority
    becoming the Host; None for a 400."""
    if target == b"*":
        return target if method == b"OPTIONS" else None
    split = split_absolute(target)
    if split is None:
        return None
    origin, authority = split
    set_host(scan, authority)
    return origin


def _framing_status(scan: RequestScan, *, http11: bool, upgrade: bool) -> int:
    te = scan.transfer_encoding
    if te is not None:
        if not http11 or scan.content_length >= 0:
            return 400
        status = transfer_coding_status(te)
        if status:
            return status
    return 400 if upgrade and scan.has_body else 0


# RFC 3986 host [ ":" port ]: reg-name, IPv4 or an IP literal in brackets (RFC 9112 3.2).
_HOST: Final = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.vV]+\])(?::[0-9]*)?")


def transfer_coding_status(value: bytes) -> int:
    """0 if a request's Transfer-Encoding frames its body (exactly ``chunked``), else the
    status to answer before anything is forwarded: 400 when ``chunked`` is not the one
    final coding or the list is malformed (RFC 9112 6.3 item 4), 501 for a coding Limpet
    does not implement before ``chunked`` (RFC 9112 6.1, as nginx). A tab inside the list
    is 400 too: llhttp does not read ``chunked\\t`` as chunked, while this check would,
    and the two must agree before the head is forwarded (``response_coding_clean`` refuses
    the same in answers)."""
    if _TAB in value:
        return 400
    names = []
    for element in value.split(b","):
        element = element.strip(b" ")  # no tab is left: refused above
        if not element:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        name = element.partition(b";")[0].rstrip(b" ")
        if not is_token(name) or name != element:
            return 400  # transfer-parameters are defined for no coding Limpet knows
        names.append(name.lower())
    if not names or names[-1] != b"chunked" or names.count(b"chunked") != 1:
        return 400
    return 0 if len(names) == 1 else 501


_hosts_seen: Final[dict[bytes, bool]] = {}


def host_ok(value: bytes) -> bool:
    """RFC 9112 3.2: a Host value is ``uri-host [":" port]``; spaces, ``@``, ``/`` -> 400.
    Answers are cached (bounded): a process sees few distinct hosts, every request
    checks one."""
    ok = _hosts_seen.get(value)
    if ok is None:
        ok = _HOST.fullmatch(value) is not None
        if len(_hosts_seen) < 1024:
            _hosts_seen[value] = ok
    return ok


def set_host(scan: RequestScan, authority: bytes) -> None:
    """Forward ``authority`` as the Host (an absolute-form target's, RFC 9112 3.2.2)."""
    kept = without_fields(scan.kept, (b"host",))
    keep(kept, b"Host", authority)
    scan.kept = kept
    scan.host = authority


def split_absolute(target: bytes) -> tuple[bytes, bytes] | None:
    """An absolute-form target (``http://authority/path?query``) as its origin-form and
    its authority, or None if it is not one Limpet accepts (another scheme, userinfo,
    an invalid authority)."""
    if not target[:8].lower().startswith((b"http://", b"https://")):
        return None
    rest = target.partition(b"://")[2]
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if not authority or b"@" in authority or not host_ok(authority):
        return None
    if tail[:1] == b"?":
        tail = b"/" + tail
    return (tail or b"/"), authority
