"""HTTP/1.1 header fields for the hot path: each name's class, and the field helpers both heads use.

Data flow: the request side (:mod:`.request_head`) and the response side
(:mod:`.response_head`) ask :class:`HeaderClasses` for the class of every field name as
httptools reports it, keep the fields they forward as parts (:func:`keep`), and drop what
``Connection`` lists (:func:`listed_fields`, :func:`without_fields`). :class:`HeaderClasses` is a
per-process cache that maps a name *as sent* to its class, so the common case costs a bit
test or a comparison (:meth:`HeaderClasses.get`), at most one dict lookup, and no
lower-casing. Everything else here is pure and synchronous.

Hop-by-hop handling (RFC 9110 section 7.6.1): ``Connection`` and every header it lists,
``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``, ``Transfer-Encoding`` (the body is
re-framed instead) and ``Upgrade`` (kept only on upgrade requests and 101 answers) are
never forwarded. ``Connection`` cannot remove the fields that frame, route or identify a
message (:data:`PROTECTED`): a listed ``Content-Length`` would leave a body unframed.
"""

from __future__ import annotations

import re
from collections.abc import Collection
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


def lists_headers(values: list[bytes]) -> bool:
    """Whether Connection may name headers to strip (exact answer comes later)."""
    # A loop, not any(): no generator object and call on every request (issuperset
    # cost more still: it copies the list into a set).
    for value in values:  # noqa: SIM110
        if value not in _PLAIN_CONNECTION_VALUES:
            return True
    return False


def keep(kept: list[bytes], name: bytes, value: bytes) -> None:
    """Keep one field for the head sent on: its whole line, that the head's one ``join``
    copies. One ``%`` format, which compiled code builds in one allocation: the parts
    of four appends cost the ``join`` more (about 120 instructions each)."""
    kept.append(b"%b: %b\r\n" % (name, value))


def listed_fields(connection: list[bytes]) -> set[bytes]:
    """The field names that ``Connection`` lists and a proxy may drop: never framing,
    routing or the proxy's own fields (:data:`_NOT_STRIPPED`)."""
    return connection_tokens(connection) - _NOT_STRIPPED


def without_fields(kept: list[bytes], names: Collection[bytes]) -> list[bytes]:
    """``kept`` (a line a field: :func:`keep`) without the fields whose lower-cased name
    is in ``names``."""
    return [line for line in kept if line.partition(b":")[0].lower() not in names]


_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def is_token(value: bytes) -> bool:
    return _TOKEN.fullmatch(value) is not None
