"""The load-balancer cookie: a compact, HMAC-signed, rotating-key session token.

Data flow: the router builds one :class:`CookieCodec` per plan snapshot (keys, backend
set, timeouts and attributes are all plan data), then calls :meth:`CookieCodec.decode`
on the value the client sent and :meth:`CookieCodec.issue` when a session is created,
moved or due for a last-seen refresh. The codec is immutable after construction, so a
snapshot swap is a single reference assignment and needs no locking; the proxy runs
one event loop per process and nothing here blocks.

Wire format (version 1), 57 bytes, base64url without padding = 76 characters::

    0      version, step    1 byte   low 4 bits: version (1); high 4 bits: the
                                     granularity in seconds (1..15; 0: 5 s)
    1..4   key tag          4 bytes  SHA-256("limpet-cookie-kid\\0" + kid)[:4]
    5..16  session id      12 bytes  random, opaque
    17..24 backend token    8 bytes  HMAC-SHA256(secret, "limpet-backend\\0" + id)[:8]
    25..32 key hash         8 bytes  affinity hash of the key that placed the session
                                     (a new LB-cookie session: its id's first 8 bytes,
                                     little-endian; random already, so not rehashed)
    33..36 issued           4 bytes  unix seconds, floored to the granularity
    37..40 last seen        4 bytes  unix seconds, floored to the granularity
    41..56 MAC             16 bytes  HMAC-SHA256(secret, bytes 0..40)[:16]

The backend token is keyed, so the cookie reveals neither a pod IP, a pod name nor even
the plan's own backend id. The newest key signs; every listed key verifies, which is
what makes rotation safe. Times are coarse on purpose: the cookie is re-issued only
when the current time has moved into a new granularity step, not on every response.
Because requests between two refreshes do not move ``last seen``, the last activity
lies in ``[last_seen, last_seen + granularity)``; idleness is therefore measured from
``last_seen + granularity``, which never overstates how idle a session is. Each cookie
states its own granularity (the plan's ``lastSeenGranularity`` when it was issued), so a
plan that changes the step never misreads the cookies issued under the old one.

Decoding never raises on client input: it returns a :class:`CookieRejection` whose
value names the metric label (tampered, expired, garbage, unknown_key,
unknown_backend).

Version 2 is the AppCookie companion (``companion.py``): the same 41-byte body, then a
variable tail (the app cookie's scope) under the same MAC, and a session id *bound* to
the app cookie's value, ``HMAC-SHA256(secret, "limpet-app\0" + value)[:12]``, so that a
companion presented with any other app-cookie value fails as tampered.
"""

from __future__ import annotations

import binascii
import enum
import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, cast

from .c_types import c_type

VERSION: Final = 1
BOUND_VERSION: Final = 2
MAX_GRANULARITY: Final = 15
LEGACY_GRANULARITY: Final = 5
MAX_TAIL: Final = 600
KEY_TAG_LEN: Final = 4
SESSION_ID_LEN: Final = 12
BACKEND_TOKEN_LEN: Final = 8
MAC_LEN: Final = 16
_BODY: Final = struct.Struct(">B4s12s8sQII")
BODY_LEN: Final = _BODY.size  # 41
# Library callables bound once: compiled code calls a stored callable directly, where
# ``binascii.b2a_base64`` is a module attribute look-up and ``_BODY.pack`` a method
# look-up on every call (together about 700 instructions of a re-signed cookie).
_PACK: Final = _BODY.pack
_UNPACK_FROM: Final = _BODY.unpack_from
_B2A: Final = binascii.b2a_base64
_A2B: Final = binascii.a2b_base64
_SAME: Final = hmac.compare_digest
RAW_LEN: Final = BODY_LEN + MAC_LEN  # 57, a multiple of 3: base64 needs no padding
ENCODED_LEN: Final = RAW_LEN * 4 // 3  # 76
_MAX_ENCODED: Final = (RAW_LEN + MAX_TAIL) * 4 // 3 + 3
MAX_KEY_HASH: Final = (1 << 64) - 1
_MAX_U32: Final = (1 << 32) - 1
# A cookie "last seen" this far in the future (replica clock skew) is still accepted;
# beyond it the cookie is treated as garbage rather than trusted.
MAX_CLOCK_SKEW: Final = 300

_TO_STD_B64: Final = bytes.maketrans(b"-_", b"+/")
_SHA256_BLOCK: Final = 64
_IPAD: Final = bytes(i ^ 0x36 for i in range(256))
_OPAD: Final = bytes(i ^ 0x5C for i in range(256))
_FROM_STD_B64: Final = bytes.maketrans(b"+/", b"-_")
_SAMESITE: Final = ("Strict", "Lax", "None")
_EQUALS: Final = ord("=")
_SEMICOLON: Final = ord(";")


class CookieRejection(enum.Enum):
    """Why a client's LB cookie was not honoured; the value is the metric label."""

    TAMPERED = "tampered"
    EXPIRED = "expired"
    GARBAGE = "garbage"
    UNKNOWN_KEY = "unknown_key"
    UNKNOWN_BACKEND = "unknown_backend"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key. ``kid`` names it in plans; only a hash of it goes in cookies."""

    kid: str
    secret: bytes

    def __post_init__(self) -> None:
        if not self.kid:
            raise ValueError("cookie key id must not be empty")
        if len(self.secret) < 16:
            raise ValueError(f"cookie key {self.kid!r}: secret must be at least 16 bytes")


@dataclass(frozen=True, slots=True)
class CookieAttributes:
    """The Set-Cookie attributes. ``max_age=None`` makes a browser-session cookie."""

    name: str = "LIMPET"
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    http_only: bool = True
    same_site: str | None = "Lax"
    max_age: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not _is_token(self.name):
            raise ValueError(f"cookie name {self.name!r} is not an HTTP token")
        for label, value in (("path", self.path), ("domain", self.domain)):
            if value is not None and any(c in value for c in ";,\r\n\0 "):
                raise ValueError(f"cookie {label} {value!r} contains a forbidden character")
        if self.same_site is not None and self.same_site not in _SAMESITE:
            raise ValueError(f"cookie sameSite must be one of {_SAMESITE}, not {self.same_site!r}")
        if self.same_site == "None" and not self.secure:
            raise ValueError("cookie sameSite=None requires secure=true (browsers drop it)")
        if self.max_age is not None and self.max_age <= 0:
            raise ValueError("cookie max_age must be positive")

    def suffix(self) -> bytes:
        """Everything after ``NAME=VALUE`` in a Set-Cookie header, precomputed once."""
        parts = [f"Path={self.path}"] if self.path else []
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.max_age is not None:
            parts.append(f"Max-Age={self.max_age}")
        if self.secure:
            parts.append("Secure")
        if self.http_only:
            parts.append("HttpOnly")
        if self.same_site:
            parts.append(f"SameSite={self.same_site}")
        return "".join("; " + p for p in parts).encode("ascii")


class SessionCookie:
    """A verified cookie. Times are unix seconds, already floored to the granularity.

    Read-only by convention. A plain slotted class rather than a frozen dataclass or a
    named tuple: one is built per verified cookie and its fields are read on every
    decided request; compiled (mypyc) its ``__init__`` and field reads are direct slot
    accesses, where a named tuple's cost a Python call and an attribute look-up each
    (``bench.engine_cpu``'s cycled workload: about 1.5 k instructions a request), and
    interpreted it costs what the named tuple did."""

    __slots__ = (
        "backend_id",
        "granularity",
        "issued",
        "key_hash",
        "last_seen",
        "session_id",
        "signed_by_newest",
        "tail",
    )

    def __init__(
        self,
        session_id: bytes,
        backend_id: str,
        key_hash: int,
        issued: int,
        last_seen: int,
        signed_by_newest: bool,
        tail: bytes = b"",
        granularity: int = LEGACY_GRANULARITY,
    ) -> None:
        self.session_id = session_id
        self.backend_id = backend_id
        self.key_hash = key_hash
        self.issued = issued
        self.last_seen = last_seen
        self.signed_by_newest = signed_by_newest
        self.tail = tail
        self.granularity = granularity
        """The step the cookie's times were floored to when it was issued."""

    def _fields(self) -> tuple[bytes, str, int, int, int, bool, bytes, int]:
        return (
            self.session_id,
            self.backend_id,
            self.key_hash,
            self.issued,
            self.last_seen,
            self.signed_by_newest,
            self.tail,
            self.granularity,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionCookie):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"SessionCookie{self._fields()!r}"


class _Sha256(Protocol):
    """A SHA-256 state: :func:`hashlib.sha256`'s or the built-in ``_sha256``'s."""

    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...
    def copy(self) -> _Sha256: ...


Sha256Factory = Callable[[bytes], _Sha256]


def builtin_sha256() -> Sha256Factory | None:
    """CPython's own SHA-256 (the ``_sha256`` module), or ``None`` where the build
    leaves it out. Its ``copy`` is a struct copy; an OpenSSL state's allocates an EVP
    context and cleanses it when freed, which is most of a cookie MAC's cost."""
    return cast("Sha256Factory | None", c_type("_sha256", "sha256"))


class Hmac:
    """HMAC-SHA256 under one secret, with the key's two padded blocks hashed once.

    RFC 2104: ``H((K ^ opad) || H((K ^ ipad) || m))``. Copying the two prepared hash
    states costs less than half of what :func:`hmac.digest` pays per call to set up the
    same context; the result is identical (the tests compare it with :mod:`hmac`).
    ``sha256``: the hash implementation, by default the built-in one when the
    interpreter has it (see :func:`builtin_sha256`), else :func:`hashlib.sha256`.
    """

    __slots__ = ("_digest", "_inner", "_outer", "_update")

    def __init__(self, secret: bytes, *, sha256: Sha256Factory | None = None) -> None:
        new = sha256 or builtin_sha256() or hashlib.sha256
        key = new(secret).digest() if len(secret) > _SHA256_BLOCK else secret
        key = key.ljust(_SHA256_BLOCK, b"\0")
        # The prepared states' bound ``copy``: compiled code calls a stored callable
        # directly, where ``state.copy()`` first looks the method up on its type.
        inner = new(key.translate(_IPAD))
        self._inner = inner.copy
        self._outer = new(key.translate(_OPAD)).copy
        # The state type's own functions: called with the state, they skip the method
        # look-up on its type that ``state.update(...)`` makes on every call.
        kind = type(inner)
        self._update: Callable[[_Sha256, bytes], None] = kind.update
        self._digest: Callable[[_Sha256], bytes] = kind.digest

    def digest(self, message: bytes) -> bytes:
        """The full 32-byte HMAC-SHA256 of ``message``."""
        update, digest = self._update, self._digest
        inner = self._inner()
        update(inner, message)
        outer = self._outer()
        update(outer, digest(inner))
        return digest(outer)

    def seal(self, message: bytes) -> bytes:
        """A cookie value: base64url of ``message`` and its MAC's first 16 bytes, without
        padding."""
        # b2a_base64's trailing newline is cut by a slice: cheaper than its keyword
        # argument (a keyword call from compiled code builds a names tuple and parses it).
        encoded = _B2A(message + self.digest(message)[:MAC_LEN])
        return encoded.translate(_FROM_STD_B64)[:-1].rstrip(b"=")

    def verify(self, raw: bytes) -> bool:
        """Whether the last 16 bytes of ``raw`` are the MAC of the rest (constant time)."""
        n = len(raw) - MAC_LEN
        return n >= 0 and _SAME(self.digest(raw[:n])[:MAC_LEN], raw[n:])


class Mac(Protocol):
    """The cookie MAC under one secret: :class:`Hmac`, or the same over OpenSSL's SHA-256
    blocks in C (``native_mac.c``), which :func:`new_hmac` prefers. Both give the same
    bytes (the tests compare them with :mod:`hmac`)."""

    def digest(self, message: bytes, /) -> bytes: ...
    def seal(self, message: bytes, /) -> bytes: ...
    def verify(self, raw: bytes, /) -> bool: ...


def native_hmac() -> Callable[[bytes], Mac] | None:
    """The C implementation's constructor, or ``None`` where it was not built (no C
    compiler or no OpenSSL headers: ``tools/native/build.py``)."""
    return cast("Callable[[bytes], Mac] | None", c_type("limpet.proxy.session.native_mac", "Hmac"))


def new_hmac(secret: bytes) -> Mac:
    """The cookie MAC under ``secret``: the C one when built, else :class:`Hmac`."""
    factory = native_hmac()
    return Hmac(secret) if factory is None else factory(secret)


def key_tag(kid: str) -> bytes:
    return hashlib.sha256(b"limpet-cookie-kid\0" + kid.encode()).digest()[:KEY_TAG_LEN]


def bound_session_id(mac: Mac, value: bytes) -> bytes:
    """The session id of a companion cookie: a keyed hash of the app cookie's value."""
    return mac.digest(b"limpet-app\0" + value)[:SESSION_ID_LEN]


def backend_token(mac: Mac, backend_id: str) -> bytes:
    """A backend's keyed token: the cookie names its backend without revealing its id."""
    return mac.digest(b"limpet-backend\0" + backend_id.encode())[:BACKEND_TOKEN_LEN]


class CookieCodec:
    """Signs and verifies LB cookies for one plan snapshot (immutable once built)."""

    __slots__ = (
        "_absolute",
        "_granularity",
        "_head",
        "_idle",
        "_keys",
        "_newest",
        "_newest_tag",
        "_newest_tokens",
        "_prefix",
        "_suffix",
        "_version",
        "attributes",
        "name",
    )

    def __init__(
        self,
        *,
        keys: Sequence[SigningKey],
        backends: Iterable[str],
        attributes: CookieAttributes,
        granularity: int,
        idle_timeout: float | None,
        absolute_timeout: float | None,
        bound: bool = False,
    ) -> None:
        if not keys:
            raise ValueError("at least one cookie signing key is required")
        if not 1 <= granularity <= MAX_GRANULARITY:
            raise ValueError(f"cookie granularity must be 1..{MAX_GRANULARITY} seconds")
        backend_ids = list(backends)
        # key tag -> (its MAC, backend token -> backend id, is newest)
        table: dict[bytes, tuple[Mac, dict[bytes, str], bool]] = {}
        for i, key in enumerate(keys):
            tag = key_tag(key.kid)
            if tag in table:
                raise ValueError(f"cookie key id {key.kid!r} is listed twice (or its tag collides)")
            mac = new_hmac(key.secret)
            tokens: dict[bytes, str] = {}
            for bid in backend_ids:
                tok = backend_token(mac, bid)
                if tok in tokens:
                    raise ValueError(f"backend ids {tokens[tok]!r} and {bid!r} collide")
                tokens[tok] = bid
            table[tag] = (mac, tokens, i == 0)
        self._keys = table
        self._newest_tag = key_tag(keys[0].kid)
        self._newest = table[self._newest_tag][0]
        self._newest_tokens = {bid: tok for tok, bid in table[self._newest_tag][1].items()}
        self._granularity = granularity
        self._version = BOUND_VERSION if bound else VERSION
        self._head = self._version | granularity << 4
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self.attributes = attributes
        self.name = attributes.name.encode("ascii")
        self._prefix = self.name + b"="
        self._suffix = attributes.suffix()

    @property
    def granularity(self) -> int:
        return self._granularity

    def floor(self, wall: float) -> int:
        t = int(wall)
        return t - t % self._granularity

    def encode(
        self,
        *,
        session_id: bytes,
        backend_id: str,
        key_hash: int,
        issued: int,
        last_seen: int,
        bind: bytes | None = None,
        tail: bytes = b"",
    ) -> bytes:
        """The cookie value (no name, no attributes), signed with the newest key.

        A bound codec (version 2) derives the session id from ``bind`` (the app cookie's
        value) and signs ``tail`` with the body.
        """
        token = self._newest_tokens.get(backend_id)
        if token is None:
            raise KeyError(f"backend {backend_id!r} is not in this plan")
        if self._version == BOUND_VERSION:
            if bind is None:
                raise ValueError("a companion cookie is bound to an app-cookie value")
            session_id = bound_session_id(self._newest, bind)
            if len(tail) > MAX_TAIL:
                raise ValueError(f"cookie tail longer than {MAX_TAIL} bytes")
        elif tail:
            raise ValueError("only a companion cookie carries a tail")
        if not 0 <= issued <= last_seen <= _MAX_U32:
            issued, last_seen = _u32(issued), _u32(last_seen)
        signed = _PACK(
            self._head,
            self._newest_tag,
            session_id,
            token,
            key_hash & MAX_KEY_HASH,
            issued,
            last_seen,
        )
        if tail:
            signed += tail
        return self._newest.seal(signed)

    def set_cookie(self, value: bytes, tail: bytes = b"", wall: float = 0.0) -> bytes:
        """A full Set-Cookie header value for ``value`` (``tail`` and ``wall`` are for
        codecs whose attributes depend on them, the companion's)."""
        # One bytes built from the three (compiled: one allocation, not two concats).
        return b"%b%b%b" % (self._prefix, value, self._suffix)

    def issue(
        self,
        *,
        session_id: bytes,
        backend_id: str,
        key_hash: int,
        issued: int,
        wall: float,
        bind: bytes | None = None,
        tail: bytes = b"",
    ) -> bytes:
        """Set-Cookie header value for a session seen now."""
        t = int(wall)  # self.floor(wall), without the call: this runs once per refresh
        value = self.encode(
            session_id=session_id,
            backend_id=backend_id,
            key_hash=key_hash,
            issued=issued,
            last_seen=t - t % self._granularity,
            bind=bind,
            tail=tail,
        )
        return self.set_cookie(value, tail, wall)

    def decode(
        self, value: bytes, wall: float, *, bind: bytes | None = None
    ) -> SessionCookie | CookieRejection:
        """Verify ``value`` at wall-clock time ``wall``. Never raises on client input.

        A bound codec also checks that the cookie belongs to the app-cookie value
        ``bind``; one that does not is :attr:`CookieRejection.TAMPERED`.
        """
        bound = self._version == BOUND_VERSION
        n = len(value)
        if bound:
            if not ENCODED_LEN <= n <= _MAX_ENCODED:
                return CookieRejection.GARBAGE
            try:
                raw = _A2B(value.translate(_TO_STD_B64) + b"=" * (-n % 4), strict_mode=True)
            except (binascii.Error, ValueError):
                return CookieRejection.GARBAGE
        else:
            if n != ENCODED_LEN:
                return CookieRejection.GARBAGE
            # Not strict mode (a keyword call from compiled code builds a names tuple
            # and parses it), and as strict: the lax decoder skips a character outside
            # the alphabet and stops at a pad, so 76 characters decode to the 57 bytes
            # only when every one of them is a base64 character.
            try:
                raw = _A2B(value.translate(_TO_STD_B64))
            except (binascii.Error, ValueError):
                return CookieRejection.GARBAGE
            if len(raw) != RAW_LEN:
                return CookieRejection.GARBAGE
        if len(raw) < RAW_LEN or raw[0] & 0x0F != self._version:
            return CookieRejection.GARBAGE
        entry = self._keys.get(raw[1 : 1 + KEY_TAG_LEN])
        if entry is None:
            return CookieRejection.UNKNOWN_KEY
        mac, tokens, newest = entry
        if not mac.verify(raw):
            return CookieRejection.TAMPERED
        _, _, sid, token, key_hash, issued, last_seen = _UNPACK_FROM(raw)
        if bound and (bind is None or not _SAME(sid, bound_session_id(mac, bind))):
            return CookieRejection.TAMPERED
        step = raw[0] >> 4 or LEGACY_GRANULARITY
        late = self._times(issued, last_seen, step, wall)
        if late is not None:
            return late
        backend = tokens.get(token)
        if backend is None:
            return CookieRejection.UNKNOWN_BACKEND
        tail = raw[BODY_LEN:-MAC_LEN] if bound else b""
        return SessionCookie(sid, backend, key_hash, issued, last_seen, newest, tail, step)

    def recheck(self, cookie: SessionCookie, wall: float) -> CookieRejection | None:
        """What :meth:`decode` would now say of a cookie it accepted earlier (same value,
        same codec): only its times can have changed their verdict. ``None``: valid."""
        return self._times(cookie.issued, cookie.last_seen, cookie.granularity, wall)

    def _times(self, issued: int, last_seen: int, step: int, wall: float) -> CookieRejection | None:
        if last_seen < issued or last_seen > wall + MAX_CLOCK_SKEW:
            return CookieRejection.GARBAGE
        if self._absolute is not None and wall - issued >= self._absolute:
            return CookieRejection.EXPIRED
        if self._idle is not None and wall - (last_seen + step) >= self._idle:
            return CookieRejection.EXPIRED
        return None

    def needs_refresh(self, cookie: SessionCookie, wall: float) -> bool:
        """True when the cookie should be re-issued: a new last-seen step, an old key, or
        another plan's granularity."""
        return (
            self.floor(wall) > cookie.last_seen
            or not cookie.signed_by_newest
            or cookie.granularity != self._granularity
        )

    def refresh_due(self, cookie: SessionCookie) -> int:
        """The first wall-clock second at which :meth:`needs_refresh` turns true."""
        return cookie.last_seen + self._granularity

    def last_activity_bound(self, cookie: SessionCookie) -> int:
        """Latest moment the session can have been active, as far as the cookie knows."""
        return cookie.last_seen + cookie.granularity


def cookie_values(header: bytes, name: bytes) -> list[bytes]:
    """Every value of cookie ``name`` in a (joined) Cookie header, in order."""
    out: list[bytes] = []
    for part in header.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep and k.strip() == name:
            out.append(v.strip().strip(b'"'))
    return out


def strip_cookie(header: bytes, name: bytes) -> tuple[list[bytes], bytes | None]:
    """Split a Cookie header into our cookie's values and the header to forward.

    The forwarded header is ``None`` when nothing else is left, meaning the engine
    should drop the header entirely.
    """
    n = len(name)
    if (
        len(header) > n
        and header[n] == _EQUALS
        and header.startswith(name)
        and _SEMICOLON not in header
    ):
        # The header is our cookie alone (what a client of this proxy alone sends): the
        # split below gives the same answer after a list, a split, a partition and a
        # join (together about 3 000 instructions, compiled). The ";" is looked for as
        # a byte value: ``b";" in header`` first tries its operand as an integer and
        # raises and clears a TypeError (about 2 000 instructions on Python 3.11).
        return [header[n + 1 :].strip().strip(b'"')], None
    ours: list[bytes] = []
    rest: list[bytes] = []
    for part in header.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep and k.strip() == name:
            ours.append(v.strip().strip(b'"'))
            continue
        part = part.strip()
        if part:
            rest.append(part)
    return ours, (b"; ".join(rest) if rest else None)


def _u32(t: int) -> int:
    return min(max(t, 0), _MAX_U32)


def _is_token(s: str) -> bool:
    return all(33 <= ord(c) < 127 and c not in '()<>@,;:\\"/[]?={}' for c in s)
