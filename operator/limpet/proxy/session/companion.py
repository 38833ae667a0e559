"""The AppCookie companion: a signed LB cookie that rides beside the application's cookie.

Data flow: when a backend's response sets the app cookie (``Set-Cookie: JSESSIONID=v;
...``), the router (``routing.py``) asks :func:`parse_app_set_cookie` for the value and
the cookie's scope (Path, Domain, expiry, Secure, SameSite) and answers with a companion
``Set-Cookie: LIMPETAPP=...`` issued by :class:`CompanionCodec`. The companion carries
what the Cookie-mode LB cookie carries (session id, backend token, key hash, coarse
issue and last-seen times), with the session id bound to the app cookie's value by a
keyed hash, and the scope as a signed tail; every later request that carries both
cookies is placed from the companion alone, on any replica, with no shared state. A
refresh re-issues the companion with the scope it carries, so it keeps the app cookie's
Path and Domain and its absolute expiry (``Max-Age`` is recomputed from it). When the app
deletes its cookie (empty value, ``Max-Age<=0`` or an ``Expires`` in the past), the
companion is deleted in the same response.

Scope tail (inside the MAC): ``expires`` u32 (unix seconds, 0: a browser-session
cookie), ``flags`` u8 (bit 0 Secure, bits 1-2 SameSite: absent, Strict, Lax, None),
then Path and Domain, each one length byte and ASCII bytes. An app cookie without a Path
gets ``/`` (its default-path depends on the request URI, which a refresh does not
know); a wider companion is harmless, because a companion without its app cookie is
ignored, never used.

Pure values and functions, no I/O; the codec is immutable once built.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

from .cookies import CookieAttributes, CookieCodec, SigningKey

_HEAD: Final = struct.Struct(">IB")
_SAMESITE: Final = (None, "Strict", "Lax", "None")
_SECURE: Final = 1
MAX_SCOPE_TEXT: Final = 255


@dataclass(frozen=True, slots=True)
class AppCookieScope:
    """Where and until when the app's cookie is sent: the companion copies it."""

    path: str = "/"
    domain: str | None = None
    expires: int | None = None
    """Unix seconds; ``None``: a browser-session cookie."""
    secure: bool = False
    same_site: str | None = None

    def pack(self) -> bytes:
        flags = (_SECURE if self.secure else 0) | (_SAMESITE.index(self.same_site) << 1)
        path = self.path.encode("ascii")
        domain = (self.domain or "").encode("ascii")
        expires = 0 if self.expires is None else min(max(self.expires, 1), (1 << 32) - 1)
        head = _HEAD.pack(expires, flags)
        return head + bytes([len(path)]) + path + bytes([len(domain)]) + domain

    @classmethod
    def unpack(cls, tail: bytes) -> AppCookieScope | None:
        """The scope a signed tail holds, or ``None`` when it is malformed."""
        try:
            expires, flags = _HEAD.unpack_from(tail)
            at = _HEAD.size
            path = tail[at + 1 : at + 1 + tail[at]]
            at += 1 + tail[at]
            domain = tail[at + 1 : at + 1 + tail[at]]
            at += 1 + tail[at]
        except (struct.error, IndexError):
            return None
        if at != len(tail) or flags >> 3 or len(path) == 0:
            return None
        return cls(
            path=path.decode("ascii"),
            domain=domain.decode("ascii") or None,
            expires=expires or None,
            secure=bool(flags & _SECURE),
            same_site=_SAMESITE[flags >> 1],
        )


@dataclass(frozen=True, slots=True)
class AppSetCookie:
    """One ``Set-Cookie`` of the app cookie, as a backend sent it."""

    value: bytes
    scope: AppCookieScope
    deleted: bool


def _attr_text(value: str) -> str | None:
    ok = 0 < len(value) <= MAX_SCOPE_TEXT
    return value if ok and all(33 <= ord(c) < 127 and c not in ";," for c in value) else None


def parse_app_set_cookie(header: bytes, prefix: bytes, wall: float) -> AppSetCookie | None:
    """Parse a ``Set-Cookie`` value that sets ``prefix`` (``NAME=``), or ``None``.

    RFC 6265 section 5.2: ``Max-Age`` wins over ``Expires``; a Path that does not start
    with ``/`` is ignored; a leading dot of Domain is dropped. Unparseable attributes are
    ignored, as a browser would.
    """
    header = header.strip()
    if not header.startswith(prefix):
        return None
    first, _, attrs = header.partition(b";")
    value = first[len(prefix) :].strip().strip(b'"')
    path, domain, secure, same_site = "/", None, False, None
    max_age: int | None = None
    expires: float | None = None
    for raw in attrs.decode("latin-1").split(";"):
        name, _, arg = raw.partition("=")
        name, arg = name.strip().lower(), arg.strip()
        if name == "max-age":
            try:
                max_age = int(arg)
            except ValueError:
                continue
        elif name == "expires":
            expires = _http_date(arg)
        elif name == "path":
            path = arg if arg.startswith("/") and _attr_text(arg) else "/"
        elif name == "domain":
            domain = _attr_text(arg.lstrip(".").lower()) or None
        elif name == "secure":
            secure = True
        elif name == "samesite":
            same_site = next((s for s in _SAMESITE[1:] if s and s.lower() == arg.lower()), None)
    until: float | None = wall + max_age if max_age is not None else expires
    deleted = not value or (until is not None and until <= wall)
    scope = AppCookieScope(
        path=path,
        domain=domain,
        expires=None if until is None else int(until),
        secure=secure,
        same_site=same_site,
    )
    return AppSetCookie(value, scope, deleted)


def _http_date(text: str) -> float | None:
    """An ``Expires`` date (RFC 1123 and its obsolete kin) as unix seconds, or ``None``."""
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class CompanionCodec(CookieCodec):
    """The companion's codec: a bound (version 2) LB cookie whose attributes are the
    app cookie's scope, carried in the signed tail."""

    __slots__ = ()

    def __init__(
        self,
        *,
        name: str,
        keys: Sequence[SigningKey],
        backends: Iterable[str],
        granularity: int,
        idle_timeout: float | None,
        absolute_timeout: float | None,
    ) -> None:
        super().__init__(
            keys=keys,
            backends=backends,
            attributes=CookieAttributes(name=name),
            granularity=granularity,
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            bound=True,
        )

    def set_cookie(self, value: bytes, tail: bytes = b"", wall: float = 0.0) -> bytes:
        scope = AppCookieScope.unpack(tail) or AppCookieScope()
        return self.name + b"=" + value + _suffix(scope, wall)

    def delete(self, scope: AppCookieScope) -> bytes:
        """The ``Set-Cookie`` value that removes the companion of ``scope``."""
        return self.name + b"=" + _suffix(scope, None)


def _suffix(scope: AppCookieScope, wall: float | None) -> bytes:
    """The companion's attributes; ``wall=None`` gives a deletion (``Max-Age=0``)."""
    parts = [f"Path={scope.path}"]
    if scope.domain:
        parts.append(f"Domain={scope.domain}")
    if wall is None:
        parts.append("Max-Age=0")
    elif scope.expires is not None:
        parts.append(f"Max-Age={max(1, scope.expires - int(wall))}")
    if scope.secure:
        parts.append("Secure")
    parts.append("HttpOnly")
    if scope.same_site:
        parts.append(f"SameSite={scope.same_site}")
    return "".join("; " + p for p in parts).encode("ascii")
