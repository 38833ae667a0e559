"""A plan compiled for the session layer's request path: everything the router derives
from one plan, built once and then only read.

Data flow: ``SessionRouter.prepare(plan)`` builds a :class:`Snapshot` (the affinity core's router
with its slot tables, the cookie codec with its keys and attributes, the per-mode key
extraction, a shared :class:`~limpet.proxy.engine.port.Route` per backend);
``SessionRouter.install``
swaps the router's one snapshot reference. Per request the router reads it without
locking.

Concurrency: building is pure and may run in a worker thread (slot tables take tens of
milliseconds); after that the snapshot is read-only, except the client-IP memo inside
:class:`~limpet.proxy.session.request_keys.RequestKeys`, touched on the event loop only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    CookieSettings,
    LifetimeType,
    Plan,
)
from limpet.affinity import Router as CoreRouter
from limpet.proxy.engine.port import NO_HEADERS, Route

from .companion import CompanionCodec
from .cookies import CookieAttributes, CookieCodec, SigningKey
from .request_keys import RequestKeys

_NEW_TUPLE: Final = tuple.__new__
"""Bound once: compiled code calls it directly, without looking ``__new__`` up on
``tuple`` per route."""


class Snapshot:
    """Everything derived from one plan, immutable once built."""

    __slots__ = (
        "affinity",
        "backends",
        "codec",
        "companion",
        "companion_name",
        "companion_probe",
        "cookie_name",
        "cookie_primary",
        "cookie_probe",
        "core",
        "keys",
        "modes",
        "plan",
        "routes",
        "session_key",
        "stripped",
    )

    def __init__(self, plan: Plan, core: CoreRouter, *, granularity: int, peer_memo: int) -> None:
        a = plan.affinity
        self.plan = plan
        self.affinity: AffinitySettings = a
        """``plan.affinity``, one native field read away (the plan is not compiled)."""
        self.core = core
        self.modes = a.modes
        self.backends: Mapping[BackendId, Backend] = plan.backend_map()
        self.codec: CookieCodec | None = None
        self.cookie_name: bytes | None = None
        self.cookie_probe: bytes | None = None
        if AffinityType.COOKIE in a.modes:
            self.codec = CookieCodec(
                keys=[SigningKey(k.id, k.secret) for k in plan.cookie_keys],
                backends=self.backends,
                attributes=cookie_attributes(a.cookie, a.absolute_timeout),
                granularity=granularity,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
            )
            self.cookie_name = a.cookie.name.encode("ascii")
            self.cookie_probe = self.cookie_name + b"="
        # AppCookie as the primary mode, with signing keys: the companion LB cookie
        # (companion.py) pins the app's sessions on every replica without shared state.
        self.companion: CompanionCodec | None = None
        self.companion_name: bytes | None = None
        self.companion_probe: bytes | None = None
        if a.type is AffinityType.APP_COOKIE and plan.cookie_keys:
            name = companion_name(a)
            self.companion = CompanionCodec(
                name=name,
                keys=[SigningKey(k.id, k.secret) for k in plan.cookie_keys],
                backends=self.backends,
                granularity=granularity,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
            )
            self.companion_name = name.encode("ascii")
            self.companion_probe = self.companion_name + b"="
        # The primary session lives in a signed cookie (the LB cookie or the companion):
        # the router may cache its answers by the raw Cookie header.
        self.cookie_primary = a.type is AffinityType.COOKIE or self.companion is not None
        self.keys = RequestKeys(a, peer_memo=peer_memo)
        # The app cookie's "NAME=" prefix: routes carry it so the engine hands the
        # backend's matching Set-Cookie values back to the router to learn from.
        self.session_key = self.keys.app_prefix if AffinityType.APP_COOKIE in a.modes else None
        # dicts, not Mappings: compiled, a dict's look-up is a C call, a Mapping's the
        # generic subscript.
        self.routes: dict[BackendId, Route] = {
            b.id: Route(b.id, b.address, b.port, None, NO_HEADERS, None, self.session_key, False)
            for b in plan.backends
        }
        # The same with the Cookie header dropped: a request whose only cookie was ours.
        self.stripped: dict[BackendId, Route] = {
            b.id: Route(b.id, b.address, b.port, None, NO_HEADERS, None, self.session_key, True)
            for b in plan.backends
        }

    def route(
        self,
        bid: BackendId,
        rest: bytes | None,
        stripped: bool,
        add_headers: tuple[tuple[bytes, bytes], ...],
        set_cookie: bytes | None,
    ) -> Route:
        """The route to ``bid``: a shared one when nothing is rewritten, or when only the
        Cookie header is dropped."""
        if not add_headers and set_cookie is None:
            if not stripped:
                return self.routes[bid]
            if rest is None:
                return self.stripped[bid]
        b = self.routes[bid]
        # tuple.__new__ is what the named tuple's own __new__ calls, without the Python
        # frame of that generated function (about 1 300 instructions a route, compiled).
        return _NEW_TUPLE(
            Route,
            (
                bid,
                b.host,
                b.port,
                rest if stripped else None,
                add_headers,
                set_cookie,
                self.session_key,
                stripped,
            ),
        )


def companion_name(a: AffinitySettings) -> str:
    """The AppCookie companion's name: the LB cookie's name + ``APP`` (``LIMPETAPP``)."""
    return a.cookie.name + "APP"


def cookie_attributes(c: CookieSettings, absolute_timeout: float | None) -> CookieAttributes:
    """The Set-Cookie attributes a plan's cookie settings ask for."""
    max_age: int | None = None
    if c.lifetime_type is LifetimeType.PERMANENT:
        seconds = c.max_age if c.max_age is not None else absolute_timeout
        max_age = None if seconds is None else max(1, int(seconds))
    return CookieAttributes(
        name=c.name,
        path=c.path,
        domain=c.domain,
        secure=c.secure,
        http_only=c.http_only,
        same_site=c.same_site.value,
        max_age=max_age,
    )
