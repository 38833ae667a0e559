"""HTTP/1.1 head handling for the hot path: header classes, rewriting, framing, canned answers.

Data flow: ``server.py`` collects the raw ``(name, value)`` pairs that httptools reports and
calls :func:`scan_request` once per request; after routing it calls
:func:`build_request_head` to produce the bytes sent upstream. The response machine
(``h1/response.py``) scans a response head field by field as httptools reports it
(:func:`begin_response_scan`, :func:`scan_response_field`, :func:`end_response_scan`) and
builds the client's head with :func:`build_response_head`. Every function here is pure and
synchronous; the only state is :class:`HeaderClasses`, a per-process cache that maps a
header name *as sent* to its class, so the common case costs a bit test or a comparison
(:meth:`HeaderClasses.get`), at most one dict lookup, and no lower-casing.

Hop-by-hop handling (RFC 9110 section 7.6.1): ``Connection`` and every header it lists,
``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding`` (the body is
re-framed instead) and ``Upgrade`` (kept only on upgrade requests and 101 answers) are
never forwarded. ``Connection`` cannot remove the fields that frame, route or identify a
message (:data:`PROTECTED`): a listed ``Content-Length`` would leave a body unframed.

Request checks that decide the framing and the target (:func:`transfer_coding_ok`,
:func:`host_ok`, :func:`split_absolute`) run before the head goes to a backend;
:func:`kept_trailers` filters trailer fields.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

# Header classes. OTHER is forwarded untouched; DROP is hop-by-hop and never forwarded.
OTHER: Final = 0
DROP: Final = 1
CONNECTION: Final = 2
TRANSFER_ENCODING: Final = 3
CONTENT_LENGTH: Final = 4
UPGRADE: Final = 5
HOST: Final = 6
COOKIE: Final = 7
X_FORWARDED_FOR: Final = 8
X_FORWARDED_PROTO: Final = 9
X_FORWARDED_HOST: Final = 10
FORWARDED: Final = 11
EXPECT: Final = 12
SET_COOKIE: Final = 13

_CLASSES: Final[dict[bytes, int]] = {
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"content-length": CONTENT_LENGTH,
    b"upgrade": UPGRADE,
    b"host": HOST,
    b"cookie": COOKIE,
    b"x-forwarded-for": X_FORWARDED_FOR,
    b"x-forwarded-proto": X_FORWARDED_PROTO,
    b"x-forwarded-host": X_FORWARDED_HOST,
    b"forwarded": FORWARDED,
    b"expect": EXPECT,
    b"set-cookie": SET_COOKIE,
}

IDEMPOTENT_METHODS: Final = frozenset(
    {b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"},
)


def _class_of(lower: bytes) -> int:
    """The class of a lower-cased field name. ``Proxy-*`` fields are dropped, and so is
    ``Proxy`` (httpoxy: CGI gateways turn it into ``HTTP_PROXY``). A name that is a
    classed name with ``_`` for ``-`` (``X_Forwarded_For``, ``Content_Length``) is dropped
    too: CGI and WSGI gateways read ``-`` and ``_`` alike, so it would reach the app as the
    field the proxy owns (nginx drops names with underscores by default)."""
    code = _CLASSES.get(lower)
    if code is not None:
        return code
    if lower == _PROXY_PREFIX[:-1] or lower.startswith(_PROXY_PREFIX):
        return DROP
    if b"_" in lower:
        dashed = lower.replace(b"_", b"-")
        if dashed in _CLASSES or dashed.startswith(_PROXY_PREFIX):
            return DROP
    return OTHER


class HeaderClasses:
    """Name-as-sent -> class. Bounded so that a client inventing names cannot grow it.

    Most fields (``Server``, ``Date``, ``Content-Type``, ``User-Agent``...) are OTHER, and
    most of those are told apart without hashing the name, a new bytes object each time:
    :meth:`get` first checks the name's length and first letter against the names that
    have a class (``_first``); a possible match is compared with the usual spelling of
    the one name of its length that is common on the hot path (``_spelled``: ``Host``,
    ``Content-Length``...), and only then looked up (hashing a name costs ten times the
    comparison)."""

    __slots__ = ("_codes", "_first", "_limit", "_spelled", "cache")

    def __init__(self, limit: int = 4096) -> None:
        self.cache: dict[bytes, int] = {}
        self._limit = limit
        self._first = _first_letters()
        self._spelled, self._codes = _usual_spellings()

    def classify(self, name: bytes) -> int:
        code = _class_of(name.lower())
        if len(self.cache) < self._limit:
            self.cache[name] = code
        return code

    def get(self, name: bytes) -> int:
        n = len(name)
        first = self._first
        # Bit ``letter & 31`` of the mask: the same for a letter's two cases (another
        # byte may share a letter's bit, and is merely looked up).
        if n and not (first[n if n < len(first) else -1] >> (name[0] & 31)) & 1:
            return OTHER
        if n < len(self._spelled) and name == self._spelled[n]:
            return self._codes[n]
        code = self.cache.get(name)
        return self.classify(name) if code is None else code


_PROXY_PREFIX: Final = b"proxy-"


def _first_letters() -> tuple[int, ...]:
    """For each name length, a mask of the first letters (bit ``letter & 31``) of the
    names that have a class (``_CLASSES``, ``Proxy`` and ``proxy-*``, so every length from
    ``Proxy``'s on); the last entry stands for every longer name."""
    longest = max(len(name) for name in _CLASSES)
    masks = [0] * (longest + 2)
    for name in _CLASSES:
        masks[len(name)] |= 1 << (name[0] & 31)
    for length in range(len(_PROXY_PREFIX) - 1, longest + 2):
        masks[length] |= 1 << (_PROXY_PREFIX[0] & 31)
    return tuple(masks)


# The spellings senders use for the classed names most requests and answers carry, one
# per length (HeaderClasses.get compares a name with the one of its length).
_USUAL_SPELLINGS: Final = (
    b"Host",
    b"Cookie",
    b"Connection",
    b"Content-Length",
    b"Transfer-Encoding",
    b"Upgrade",
    b"X-Forwarded-For",
)


def _usual_spellings() -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """For each name length, the usual spelling of that length (or b"") and its class."""
    longest = max(len(name) for name in _USUAL_SPELLINGS)
    spelled = [b""] * (longest + 1)
    codes = [OTHER] * (longest + 1)
    for name in _USUAL_SPELLINGS:
        spelled[len(name)] = name
        codes[len(name)] = _CLASSES[name.lower()]
    return tuple(spelled), tuple(codes)


def content_length(value: bytes) -> int:
    """A Content-Length value as ``int(value)`` reads it, for what llhttp lets through
    (digits, then maybe blanks) read digit by digit: a tenth of ``int``'s generic parse.
    Anything else goes to ``int`` itself (and its ValueError)."""
    n = 0
    digits = 0
    blanks = False
    for c in value:
        if 48 <= c <= 57 and not blanks:
            n = n * 10 + (c - 48)
            digits += 1
        elif (c == 32 or c == 9) and digits:
            blanks = True
        else:
            return int(value)
    return n if digits else int(value)


def connection_tokens(values: list[bytes]) -> set[bytes]:
    """The lower-cased tokens of every ``Connection`` header."""
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return tokens


# Tokens of Connection that name no header to strip.
_PLAIN_CONNECTION_TOKENS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Fields that Connection never removes: framing, routing, cookies and forwarding (the
# proxy writes its own). HAProxy and nginx ignore such tokens too.
PROTECTED: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"cookie",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
    }
)
_NOT_STRIPPED: Final = _PLAIN_CONNECTION_TOKENS | PROTECTED
# Whole Connection values seen in practice that list nothing to strip (fast path).
_PLAIN_CONNECTION_VALUES: Final = frozenset(
    {
        b"keep-alive",
        b"Keep-Alive",
        b"close",
        b"Close",
        b"upgrade",
        b"Upgrade",
        b"keep-alive, Upgrade",
        b"Keep-Alive, Upgrade",
        b"keep-alive, upgrade",
    }
)


def _lists_headers(values: list[bytes]) -> bool:
    """Whether Connection may name headers to strip (exact answer comes later)."""
    # A loop, not any(): no generator object and call on every request (issuperset
    # cost more still: it copies the list into a set).
    for value in values:  # noqa: SIM110
        if value not in _PLAIN_CONNECTION_VALUES:
            return True
    return False


@dataclass(slots=True)
class RequestScan:
    """What one pass over the request headers found. One instance per client connection,
    overwritten for every request (no per-request allocation)."""

    kept: list[bytes]  # the forwarded fields, in order, as parts: see _keep
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
            _keep(kept, name, value)
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
            _keep(kept, name, value)
        elif code == CONTENT_LENGTH:
            # llhttp already rejected duplicates, signs and non-digits.
            scan.content_length = content_length(value)
            _keep(kept, name, value)
        elif code == CONNECTION:
            if scan.connection is None:
                scan.connection = [value]
            else:
                scan.connection.append(value)
        elif code != DROP:  # DROP: hop-by-hop, never forwarded
            _scan_rare(scan, code, name, value, trusted=trusted)
    scan.cookie = cookie if cookies is None else b"; ".join(cookies)
    scan.has_body = scan.transfer_encoding is not None or scan.content_length > 0
    if scan.connection is not None and _lists_headers(scan.connection):
        _strip_listed(scan)


def _without_trailing_ows(value: bytes) -> bytes:
    """``value`` without the trailing blanks llhttp keeps, which are not part of a field
    value (RFC 9110 5.5). Only a value that ends in one pays for ``rstrip`` (a method
    call by name: ten times the test)."""
    if value and (value[-1] == 32 or value[-1] == 9):
        return value.rstrip(b" \t")
    return value


def _keep(kept: list[bytes], name: bytes, value: bytes) -> None:
    """Keep one field for the head sent on: four parts, ``name``, ``": "``, ``value``,
    ``"\\r\\n"``, that the head's one ``join`` copies. Joining each line first would
    make three short-lived bytes objects a field, on every request and answer."""
    kept.append(name)
    kept.append(b": ")
    kept.append(value)
    kept.append(b"\r\n")


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
        _keep(scan.kept, name, value)


def _strip_listed(scan: RequestScan) -> None:
    """Drop the headers that ``Connection`` lists (rare, so the slow path re-parses lines)."""
    assert scan.connection is not None
    listed = _listed(scan.connection)
    if listed:
        scan.kept = _without_fields(scan.kept, listed)


def _listed(connection: list[bytes]) -> set[bytes]:
    """The field names that ``Connection`` lists and a proxy may drop: never framing,
    routing or the proxy's own fields (:data:`_NOT_STRIPPED`)."""
    return connection_tokens(connection) - _NOT_STRIPPED


def _without_fields(kept: list[bytes], names: Collection[bytes]) -> list[bytes]:
    """``kept`` (parts, four a field: :func:`_keep`) without the fields whose lower-cased
    name is in ``names``."""
    out: list[bytes] = []
    for i in range(0, len(kept), 4):
        if kept[i].lower() not in names:
            out += kept[i : i + 4]
    return out


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
        _keep(parts, b"Cookie", cookie)
    _keep(parts, b"X-Forwarded-For", peer if scan.xff is None else scan.xff + b", " + peer)
    _keep(parts, b"X-Forwarded-Proto", b"http" if scan.xfp is None else scan.xfp)
    xfh = scan.xfh if scan.xfh is not None else scan.host
    if xfh is not None:
        _keep(parts, b"X-Forwarded-Host", xfh)
    for name, value in add_headers:
        _keep(parts, name, value)
    if scan.transfer_encoding is not None:
        # Checked to be exactly chunked (transfer_coding_status); the engine re-chunks.
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade and scan.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", scan.upgrade, b"\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


# Response framing as seen by the client.
FRAME_NONE: Final = 0  # no body (HEAD, 1xx, 204, 304)
FRAME_RAW: Final = 1  # Content-Length: bytes pass through
FRAME_CHUNKED: Final = 2  # chunked towards the client: chunks are re-encoded
FRAME_CLOSE: Final = 3  # delimited by closing the client connection


@dataclass(slots=True)
class ResponseScan:
    """What one pass over a response head found, plus the kept fields as parts. One
    instance per backend connection, overwritten for every head."""

    kept: list[bytes]
    content_length: int = -1
    transfer_encoding: bytes | None = None
    upgrade: bytes | None = None
    set_cookies: list[bytes] | None = None
    connection: list[bytes] | None = None


def begin_response_scan(scan: ResponseScan) -> None:
    """Clear ``scan`` for a new response head, whose fields :func:`scan_response_field`
    then reads one at a time as the parser reports them (no list of pairs is built)."""
    scan.kept = []
    scan.content_length = -1
    scan.transfer_encoding = scan.upgrade = None
    scan.set_cookies = scan.connection = None


def scan_response_field(scan: ResponseScan, code: int, name: bytes, value: bytes) -> None:
    """One field of a response head, of class ``code`` (:meth:`HeaderClasses.get`)."""
    if code == OTHER:
        _keep(scan.kept, name, value)
    elif code == CONTENT_LENGTH:
        scan.content_length = content_length(value)
        _keep(scan.kept, name, value)
    elif code == SET_COOKIE:
        _keep(scan.kept, name, value)
        if scan.set_cookies is None:
            scan.set_cookies = [value]
        else:
            scan.set_cookies.append(value)
    elif code == TRANSFER_ENCODING:
        te = scan.transfer_encoding
        scan.transfer_encoding = value if te is None else te + b", " + value
    elif code == CONNECTION:
        if scan.connection is None:
            scan.connection = [value]
        else:
            scan.connection.append(value)
    elif code == UPGRADE:
        scan.upgrade = value
    elif code != DROP:
        # Request-only classes (Host, Cookie, X-Forwarded-*, ...) pass through responses.
        _keep(scan.kept, name, value)


def end_response_scan(scan: ResponseScan) -> None:
    """The head's fields are all scanned: drop those that ``Connection`` lists. A listed
    ``Set-Cookie`` is then neither forwarded nor learned: an app cookie the client never
    gets must not be bound to a session (nor answered with a companion cookie)."""
    if scan.connection is not None and _lists_headers(scan.connection):
        listed = _listed(scan.connection)
        if listed:
            scan.kept = _without_fields(scan.kept, listed)
            if b"set-cookie" in listed:
                scan.set_cookies = None


# Final (as the other caches here): compiled, a module-level name that is not Final is
# looked up in the module's dict at every use.
_STATUS_LINES: Final[dict[int, tuple[bytes, bytes]]] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached per status for the usual reason."""
    cached = _STATUS_LINES.get(status)
    if cached is not None and cached[0] == reason:
        return cached[1]
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if cached is None and len(_STATUS_LINES) < 512:
        _STATUS_LINES[status] = (reason, line)
    return line


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body (RFC 9112 7.1), as parts for ``writelines``; the one
    place the engine writes chunk framing (the last chunk: :func:`last_chunk`)."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


LAST_CHUNK: Final = b"0\r\n\r\n"

_CANNED_BODIES: Final[dict[int, bytes]] = {
    503: b"no backend available\n",
    502: b"bad gateway: the backend failed\n",
    504: b"gateway timeout: the backend did not answer in time\n",
}
_canned: Final[dict[tuple[int, bool], bytes]] = {}


def error_response(status: int, *, close: bool) -> bytes:
    """A complete short plain-text answer generated by the proxy itself."""
    key = (status, close)
    cached = _canned.get(key)
    if cached is not None:
        return cached
    phrase = HTTPStatus(status).phrase.encode()
    body = _CANNED_BODIES.get(status, phrase.lower() + b"\n")
    head = [
        b"HTTP/1.1 %d %s\r\n" % (status, phrase),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
    ]
    if close:
        head.append(b"Connection: close\r\n")
    data = b"".join(head) + b"\r\n" + body
    _canned[key] = data
    return data


def response_keeps_alive(version: str, scan: ResponseScan) -> bool:
    """Whether the backend keeps its connection open after this answer (by its head).

    HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``.
    """
    tokens = connection_tokens(scan.connection) if scan.connection else set()
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


def response_framing(status: int, *, head_request: bool, scan: ResponseScan, http11: bool) -> int:
    """How the response body is delimited towards the client."""
    if head_request or status < 200 or status in (204, 304):
        return FRAME_NONE
    te = scan.transfer_encoding
    if te is None and scan.content_length >= 0:
        return FRAME_RAW
    # Chunked upstream, or delimited by the backend closing: re-chunk for HTTP/1.1
    # clients so their connection survives; HTTP/1.0 clients get a close-delimited body.
    return FRAME_CHUNKED if http11 else FRAME_CLOSE


def build_response_head(
    status: int,
    reason: bytes,
    scan: ResponseScan,
    *,
    framing: int,
    set_cookie: bytes | None,
    keep_alive: bool,
    http11: bool,
) -> bytes:
    """The response head sent to the client. ``keep_alive`` says whether the client
    connection stays open after this response."""
    parts = [status_line(status, reason)]
    parts.extend(scan.kept)
    if set_cookie is not None:
        _keep(parts, b"Set-Cookie", set_cookie)
    if framing == FRAME_CHUNKED:
        parts += (b"Transfer-Encoding: ", chunked_coding(scan.transfer_encoding), b"\r\n")
    elif framing == FRAME_NONE and scan.transfer_encoding is not None and status not in (204, 304):
        # HEAD answers describe the GET answer's framing.
        parts += (b"Transfer-Encoding: ", scan.transfer_encoding, b"\r\n")
    if not keep_alive or framing == FRAME_CLOSE:
        parts.append(b"Connection: close\r\n\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def build_switching_head(status: int, reason: bytes, scan: ResponseScan) -> bytes:
    """A 101 answer to an upgrade request: keep ``Upgrade`` and ``Connection: upgrade``."""
    parts = [status_line(status, reason)]
    parts += scan.kept
    if scan.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", scan.upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def build_informational_head(status: int, reason: bytes, scan: ResponseScan) -> bytes:
    parts = [status_line(status, reason)]
    parts += scan.kept
    parts.append(b"\r\n")
    return b"".join(parts)


# -- checks that decide framing and target before anything is forwarded ------------------

_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 3986 host [ ":" port ]: reg-name, IPv4 or an IP literal in brackets (RFC 9112 3.2).
_HOST: Final = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.vV]+\])(?::[0-9]*)?")


def is_token(value: bytes) -> bool:
    return _TOKEN.fullmatch(value) is not None


def transfer_coding_status(value: bytes) -> int:
    """0 if a request's Transfer-Encoding frames its body (exactly ``chunked``), else the
    status to answer before anything is forwarded: 400 when ``chunked`` is not the one
    final coding or the list is malformed (RFC 9112 6.3 item 4), 501 for a coding Limpet
    does not implement before ``chunked`` (RFC 9112 6.1, as nginx)."""
    names = []
    for element in value.split(b","):
        element = element.strip(b" \t")
        if not element:
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        name = element.partition(b";")[0].rstrip(b" \t")
        if not is_token(name) or name != element:
            return 400  # transfer-parameters are defined for no coding Limpet knows
        names.append(name.lower())
    if not names or names[-1] != b"chunked" or names.count(b"chunked") != 1:
        return 400
    return 0 if len(names) == 1 else 501


def ends_chunked(value: bytes | None) -> bool:
    """Whether a Transfer-Encoding list ends in chunked (else a response body runs to
    the close, RFC 9112 6.3 item 4)."""
    return value is not None and value.rpartition(b",")[2].strip(b" \t").lower() == b"chunked"


def response_coding_clean(value: bytes) -> bool:
    """Whether a backend's Transfer-Encoding reads the same to llhttp and to RFC 9110:
    tokens separated by commas and spaces only. llhttp does not see ``chunked\\t`` or
    ``chunked, \\t`` as chunked while a strict parser does, so such an answer is
    refused (502) rather than relayed with a body two parsers would frame differently
    (found by the fuzzer)."""
    if b"\t" in value:
        return False
    return all(is_token(element.strip(b" ")) for element in value.split(b","))


def chunked_coding(value: bytes | None) -> bytes:
    """The Transfer-Encoding sent with a body the proxy chunks: the backend's codings
    with ``chunked`` last (a close-delimited ``gzip`` body becomes ``gzip, chunked``)."""
    if value is None:
        return b"chunked"
    return value if ends_chunked(value) else value + b", chunked"


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
    kept = _without_fields(scan.kept, (b"host",))
    _keep(kept, b"Host", authority)
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


# Trailer fields never forwarded (RFC 9110 6.5.1): framing, routing, cookies, forwarding,
# request modifiers and the fields that describe the content. Hop-by-hop ones are dropped
# by their class already.
_TRAILER_BANNED: Final = frozenset(
    {
        b"authorization",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"max-forwards",
        b"limpet-session-moved",
        b"www-authenticate",
    }
)


def kept_trailers(trailers: list[tuple[bytes, bytes]], classes: HeaderClasses) -> bytes:
    """The trailer section that is forwarded, serialised (may be empty)."""
    out = []
    for name, value in trailers:
        if classes.get(name) == OTHER and name.lower() not in _TRAILER_BANNED:
            out.append(name + b": " + value + b"\r\n")
    return b"".join(out)


def last_chunk(trailers: list[tuple[bytes, bytes]] | None, classes: HeaderClasses) -> bytes:
    """The last chunk and the filtered trailer section."""
    if trailers is None:
        return LAST_CHUNK
    return b"0\r\n" + kept_trailers(trailers, classes) + b"\r\n"
