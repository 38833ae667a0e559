"""The session layer's router: which backend serves a request, and what to tell it.

Data flow, per request: the engine parses the head into a :class:`RequestView` and calls
:meth:`Router.route`. The router walks the plan's affinity modes in order (primary, then
fallbacks) and takes the first session key the request carries: a valid LB cookie, the
app cookie, the header, the query parameter or the client IP (X-Forwarded-For believed
only from trusted proxies). An existing session keeps its backend unless the affinity
core's migration decision (:func:`limpet.affinity.decide`) moves it (failover, drain,
rebalance, expired); a new session is placed by the target slot table with bounded loads
(:meth:`limpet.affinity.Router.route_new`), and every destination, new or moved, is under
its bounded-load cap. The loads are this process's own counts of the sessions it has seen
within ``idleTimeout`` (the learned tables share one counts list; the sweeper drops idle
sessions). Passive health (:mod:`.health`) is passed to the core as ``exclude``: a backend
marked down locally takes nothing, its sessions fail over, and the caps are those of the
backends still up. The
answer is a :class:`Route`: where to connect, the Cookie header to forward (our cookie
removed), headers to add (``Limpet-Session-Moved`` when a session moved) and the
``Set-Cookie`` to return (a new, moved or refreshed LB cookie).

Plans arrive through :meth:`Router.prepare` (pure: compiles the plan, safe in a worker
thread) and :meth:`Router.install` (an atomic reference swap on the event loop), or both
at once through :meth:`Router.load_plan`.

Hot path: everything derivable from a plan is precomputed in an immutable snapshot. The
common cookie case, "sticky, nothing changed", is answered from a bounded cache keyed by
the raw Cookie header, which returns a shared :class:`Route` and bumps one integer: no
HMAC, no allocation. A cached answer is valid until the cookie's next refresh step, the
session's absolute expiry or its backend's drain deadline, and the cache is dropped on
every plan change and whenever passive health marks a backend down, so it never outlives
the facts it was computed from.

Concurrency: one router per process, used from the event loop only; ``prepare`` is the
only method meant to run elsewhere, and it reads nothing mutable but the snapshot
reference.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from limpet.affinity import (
    NO_BACKENDS,
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BackendState,
    ClientIPKeys,
    ClientIPSettings,
    CookieKey,
    CookieSettings,
    Decision,
    LifetimeType,
    Plan,
    Reason,
    cookie_key,
    decide,
    key_hash,
    value_key,
)
from limpet.affinity import Router as CoreRouter

from .cookies import (
    CookieAttributes,
    CookieCodec,
    CookieRejection,
    SessionCookie,
    strip_cookie,
)
from .cookies import CookieKey as CodecKey
from .health import PassiveHealth
from .learned import LearnedTable

MOVED_HEADER = b"Limpet-Session-Moved"
_NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class RequestView:
    """What the engine tells the router about one request (may be reused)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    peer_ip: str
    cookie: bytes | None = None  # all Cookie header values joined with b"; "


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes and how to rewrite it (see the proxy contract)."""

    backend_id: BackendId
    host: str
    port: int
    cookie: bytes | None
    add_headers: tuple[tuple[bytes, bytes], ...]
    set_cookie: bytes | None
    session_key: bytes | None
    cookie_changed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    """Session-layer knobs that are not in the plan (per process)."""

    learned_capacity: int = 1_000_000
    """Entries per learned table (one table per key mode, one for cookie sessions)."""
    cookie_granularity: int = 5
    """Seconds: the LB cookie's time resolution and its refresh interval while active.
    Keep it below the smallest drain/rebalance minIdle, and equal on every replica."""
    route_cache_size: int = 65536
    health_backoff: float = 1.0
    health_backoff_cap: float = 30.0
    sweep_budget: int = 65536
    """Entries each table examines per :meth:`Router.sweep` call."""

    def __post_init__(self) -> None:
        if self.learned_capacity < 1 or self.route_cache_size < 0 or self.sweep_budget < 1:
            raise ValueError("router capacities must be positive")
        if self.cookie_granularity < 1:
            raise ValueError("cookie_granularity must be at least 1 second")


@dataclass(frozen=True, slots=True)
class BackendStats:
    sessions: int
    requests: int
    health: str
    state: str


@dataclass(frozen=True, slots=True)
class RouterStats:
    plan_version: int | None
    backends: Mapping[str, BackendStats]
    migrations: Mapping[str, int]
    rejected_cookies: Mapping[str, int]
    no_backend: int
    learned: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /v1/stats`` (and merged across workers)."""
        return {
            "planVersion": self.plan_version,
            "requests": sum(b.requests for b in self.backends.values()),
            "noBackend": self.no_backend,
            "backends": {
                bid: {
                    "sessions": b.sessions,
                    "requests": b.requests,
                    "health": b.health,
                    "state": b.state,
                }
                for bid, b in self.backends.items()
            },
            "migrations": dict(self.migrations),
            "rejectedCookies": dict(self.rejected_cookies),
            "learned": {name: dict(v) for name, v in self.learned.items()},
        }


_HEALTH_RANK = {"up": 0, "probing": 1, "down": 2}


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the stats dicts of several worker processes into one.

    Counters add up; a backend's health is the worst any worker sees; the plan version
    is the lowest any worker runs (so a lagging worker is visible).
    """
    out: dict[str, Any] = {
        "planVersion": None,
        "requests": 0,
        "noBackend": 0,
        "backends": {},
        "migrations": {},
        "rejectedCookies": {},
        "learned": {},
    }
    versions: list[int] = []
    missing = False
    for p in parts:
        v = p.get("planVersion")
        if isinstance(v, int):
            versions.append(v)
        else:
            missing = True
        out["requests"] += p.get("requests", 0)
        out["noBackend"] += p.get("noBackend", 0)
        for bid, b in p.get("backends", {}).items():
            acc = out["backends"].setdefault(
                bid, {"sessions": 0, "requests": 0, "health": "up", "state": b.get("state")}
            )
            acc["sessions"] += b.get("sessions", 0)
            acc["requests"] += b.get("requests", 0)
            if _HEALTH_RANK.get(b.get("health", "up"), 0) > _HEALTH_RANK[acc["health"]]:
                acc["health"] = b["health"]
        for key in ("migrations", "rejectedCookies"):
            for reason, n in p.get(key, {}).items():
                out[key][reason] = out[key].get(reason, 0) + n
        for name, t in p.get("learned", {}).items():
            acc_t = out["learned"].setdefault(name, {})
            for k, n in t.items():
                acc_t[k] = acc_t.get(k, 0) + n
    if versions and not missing:
        out["planVersion"] = min(versions)
    return out


class _Snapshot:
    """Everything derived from one plan, immutable after :meth:`Router.prepare`."""

    __slots__ = (
        "app_key",
        "app_name",
        "app_prefix",
        "backends",
        "client_ip",
        "codec",
        "cookie_name",
        "cookie_primary",
        "cookie_probe",
        "core",
        "header_key",
        "header_lower",
        "modes",
        "plan",
        "query_key",
        "query_probe",
        "routes",
        "session_key",
        "trusted",
    )

    def __init__(self, plan: Plan, core: CoreRouter, granularity: int) -> None:
        a = plan.affinity
        self.plan = plan
        self.core = core
        self.modes = a.modes
        self.backends: Mapping[BackendId, Backend] = plan.backend_map()
        self.cookie_primary = a.type is AffinityType.COOKIE
        self.codec: CookieCodec | None = None
        self.cookie_name: bytes | None = None
        self.cookie_probe: bytes | None = None
        if AffinityType.COOKIE in a.modes:
            self.codec = CookieCodec(
                keys=[CodecKey(k.id, k.secret) for k in plan.cookie_keys],
                backends=self.backends,
                attributes=cookie_attributes(a.cookie, a.absolute_timeout),
                granularity=granularity,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
            )
            self.cookie_name = a.cookie.name.encode("ascii")
            self.cookie_probe = self.cookie_name + b"="
        self.app_name = a.app_cookie_name.encode() if a.app_cookie_name else None
        self.app_prefix = self.app_name + b"=" if self.app_name else None
        self.session_key = self.app_prefix if AffinityType.APP_COOKIE in a.modes else None
        self.header_lower = a.header_name.lower().encode() if a.header_name else None
        # Key prefixes of the affinity core's per-mode keys (value_key(mode, v) is
        # prefix + v), so the hot path hashes one concatenation.
        self.header_key = value_key(AffinityType.HEADER, b"")
        self.query_key = value_key(AffinityType.QUERY, b"")
        self.app_key = value_key(AffinityType.APP_COOKIE, b"")
        self.query_probe = a.query_name.encode() + b"=" if a.query_name else None
        self.client_ip = ClientIPKeys(a.client_ip)
        self.trusted = bool(a.client_ip.trusted_proxies)
        self.routes: Mapping[BackendId, Route] = {
            b.id: Route(b.id, b.address, b.port, None, _NO_HEADERS, None, self.session_key, False)
            for b in plan.backends
        }


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


class _Probe:
    """A reusable session record handed to the migration decision (no per-call object)."""

    __slots__ = ("backend", "created", "key_hash", "last_seen")

    def __init__(self) -> None:
        self.backend = BackendId("")
        self.key_hash = 0
        self.last_seen = 0.0
        self.created = 0.0


class _Loads(Mapping[BackendId, int]):
    """This process's live sessions per backend, as bounded loads reads them (no copy)."""

    __slots__ = ("_counts", "_intern")

    def __init__(self, counts: list[int], intern: dict[str, int]) -> None:
        self._counts = counts
        self._intern = intern

    def get(self, key: BackendId, default: int | None = 0) -> int:  # type: ignore[override]
        i = self._intern.get(key)
        return self._counts[i] if i is not None and i < len(self._counts) else 0

    def __getitem__(self, key: BackendId) -> int:
        return self.get(key)

    def __iter__(self) -> Iterator[BackendId]:
        return iter([BackendId(b) for b in self._intern])

    def __len__(self) -> int:
        return len(self._intern)


class Router:
    """Routes requests to backends by session (see the module docstring)."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._wall = wall
        self._snap: _Snapshot | None = None
        self._intern: dict[str, int] = {}
        self._ids: list[BackendId] = []
        self._sessions: list[int] = []
        self._requests: list[int] = []
        self._epoch = wall() - 1.0
        self._tables: dict[AffinityType, LearnedTable] = {}
        # The plan's modes in order, each with its learned table (None: the LB cookie).
        self._walk: tuple[tuple[AffinityType, LearnedTable | None], ...] = ()
        self._health = PassiveHealth(base=settings.health_backoff, cap=settings.health_backoff_cap)
        self._cache: dict[bytes, tuple[Route, float, int]] = {}
        self._peer_keys: dict[str, int] = {}
        self._loads = _Loads(self._sessions, self._intern)
        self._probe = _Probe()
        self._migrations = dict.fromkeys(Reason, 0)
        self._rejected = dict.fromkeys(CookieRejection, 0)
        self._no_backend = 0

    # -- plans ----------------------------------------------------------------------------

    @property
    def plan_version(self) -> int | None:
        snap = self._snap
        return None if snap is None else snap.plan.version

    @property
    def plan(self) -> Plan | None:
        snap = self._snap
        return None if snap is None else snap.plan

    def prepare(self, plan: Plan) -> _Snapshot:
        """Compile ``plan`` (slot tables, cookie codec, routes). Pure; thread-safe."""
        prev = self._snap
        core = CoreRouter(plan, previous=None if prev is None else prev.core)
        return _Snapshot(plan, core, self._settings.cookie_granularity)

    def install(self, snap: _Snapshot) -> None:
        """Switch to a prepared snapshot. Takes effect for the next request."""
        for b in snap.plan.backends:
            self._idx(b.id)
        a = snap.plan.affinity
        for t in self._tables.values():
            t.set_timeouts(idle_timeout=a.idle_timeout, absolute_timeout=a.absolute_timeout)
        self._health.forget({b.id for b in snap.plan.backends})
        self._walk = tuple(
            (m, None if m is AffinityType.COOKIE else self._table(m, a)) for m in snap.modes
        )
        self._snap = snap
        self._cache.clear()
        self._peer_keys.clear()

    def stage(self, plan: Plan) -> Callable[[], None]:
        """:meth:`prepare` now (any thread); the returned commit installs it (the loop)."""
        return functools.partial(self.install, self.prepare(plan))

    def load_plan(self, plan: Plan) -> None:
        """Compile and switch to ``plan`` in one step (atomic for the event loop)."""
        self.install(self.prepare(plan))

    # -- hot path -------------------------------------------------------------------------

    def route(self, req: RequestView) -> Route | None:
        """The route for ``req``, or ``None`` when no backend can take it (503)."""
        snap = self._snap
        if snap is None:
            self._no_backend += 1
            return None
        wall = self._wall()
        cookie = req.cookie
        if snap.cookie_primary and cookie is not None:
            hit = self._cache.get(cookie)
            if hit is not None and wall < hit[1]:
                self._requests[hit[2]] += 1
                return hit[0]
        route = self._route(snap, req, wall)
        if route is None:
            self._no_backend += 1
        else:
            self._requests[self._intern[route.backend_id]] += 1
        return route

    def reroute(self, req: RequestView, failed: Route) -> Route | None:
        """After a connect failure on ``failed``: another backend, or ``None``."""
        self.backend_failed(failed.backend_id)
        route = self.route(req)
        if route is None or route.backend_id == failed.backend_id:
            return None
        return route

    def on_response(self, route: Route, set_cookies: Sequence[bytes]) -> None:
        """Learn app-cookie sessions from the backend's ``Set-Cookie`` values."""
        prefix = route.session_key
        if prefix is None or not set_cookies:
            return
        table = self._table(AffinityType.APP_COOKIE)
        for header in set_cookies:
            header = header.lstrip()
            if not header.startswith(prefix):
                continue
            first, _, attrs = header.partition(b";")
            value = first[len(prefix) :].strip().strip(b'"')
            # A deletion (empty value or Max-Age=0) teaches nothing; the old value's
            # entry simply idles out.
            if value and b"max-age=0" not in attrs.lower().replace(b" ", b""):
                h = key_hash(value_key(AffinityType.APP_COOKIE, value))
                table.insert(h, self._idx(route.backend_id), self._wall())

    def backend_failed(self, backend_id: BackendId) -> None:
        generation = self._health.generation
        self._health.failed(backend_id, self._clock())
        if self._health.generation != generation:
            self._cache.clear()

    def backend_succeeded(self, backend_id: BackendId) -> None:
        self._health.succeeded(backend_id)

    def sweep(self) -> int:
        """Expire idle sessions; call it periodically (e.g. every second) from the loop."""
        wall = self._wall()
        budget = self._settings.sweep_budget
        return sum(t.sweep(wall, budget=budget) for t in self._tables.values())

    # -- the walk over modes --------------------------------------------------------------

    def _route(self, snap: _Snapshot, req: RequestView, wall: float) -> Route | None:
        cookie = req.cookie
        lb_values: list[bytes] = []
        rest = cookie
        stripped = False
        if snap.cookie_probe is not None and cookie is not None and snap.cookie_probe in cookie:
            assert snap.cookie_name is not None
            lb_values, rest = strip_cookie(cookie, snap.cookie_name)
            stripped = bool(lb_values)
        walk = self._walk
        for n, (mode, table) in enumerate(walk):
            if table is None:  # the LB cookie
                if lb_values:
                    sc = self._decode(snap, lb_values, wall)
                    if sc is not None:
                        return self._cookie_session(snap, sc, cookie, rest, wall)
                return self._new_cookie_session(snap, req, walk[n + 1 :], rest, stripped, wall)
            h = self._key(snap, mode, req)
            if h is not None:
                placed = self._learned(snap, table, h, wall)
                if placed is None:
                    return None
                return self._build(snap, placed[0], rest, stripped, placed[1], None)
        bid = self._place(snap, random.getrandbits(64), wall)
        return None if bid is None else self._build(snap, bid, rest, stripped, _NO_HEADERS, None)

    def _key(self, snap: _Snapshot, mode: AffinityType, req: RequestView) -> int | None:
        """The hash of the session key a request carries for ``mode``, if any."""
        if mode is AffinityType.CLIENT_IP:
            return self._client_ip_hash(snap, req)
        if mode is AffinityType.HEADER:
            want = snap.header_lower
            if want is None:
                return None
            size = len(want)
            for name, value in req.headers:
                if len(name) == size and name.lower() == want:
                    value = value.strip()
                    return key_hash(snap.header_key + value) if value else None
            return None
        if mode is AffinityType.QUERY:
            probe = snap.query_probe
            target = req.target
            q = target.find(b"?")
            if probe is None or q < 0:
                return None
            for part in target[q + 1 :].split(b"&"):
                if part.startswith(probe) and len(part) > len(probe):
                    return key_hash(snap.query_key + part[len(probe) :])
            return None
        if mode is AffinityType.APP_COOKIE:
            prefix = snap.app_prefix
            cookie = req.cookie
            if prefix is None or cookie is None or prefix not in cookie:
                return None
            for part in cookie.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    value = part[len(prefix) :].strip(b'"')
                    return key_hash(snap.app_key + value) if value else None
            return None
        return None

    def _client_ip_hash(self, snap: _Snapshot, req: RequestView) -> int | None:
        peer = req.peer_ip
        if not snap.trusted:
            h = self._peer_keys.get(peer)
            if h is not None:
                return h
        xff: str | None = None
        if snap.trusted:
            found = [v for n, v in req.headers if len(n) == 15 and n.lower() == b"x-forwarded-for"]
            if found:
                xff = b",".join(found).decode("latin-1")
        key = snap.client_ip(peer, xff)
        if key is None:
            return None
        h = key_hash(key)
        if not snap.trusted:
            if len(self._peer_keys) >= self._settings.route_cache_size:
                self._peer_keys.clear()
            self._peer_keys[peer] = h
        return h

    # -- cookie sessions ------------------------------------------------------------------

    def _decode(self, snap: _Snapshot, values: list[bytes], wall: float) -> SessionCookie | None:
        codec = snap.codec
        assert codec is not None
        first: CookieRejection | None = None
        for v in values:
            got = codec.decode(v, wall)
            if isinstance(got, SessionCookie):
                return got
            first = first or got
        if first is not None:
            self._rejected[first] += 1
        return None

    def _cookie_session(
        self,
        snap: _Snapshot,
        sc: SessionCookie,
        header: bytes | None,
        rest: bytes | None,
        wall: float,
    ) -> Route | None:
        codec = snap.codec
        assert codec is not None
        bid = BackendId(sc.backend_id)
        bound = float(codec.last_activity_bound(sc))
        # What this proxy itself saw of the session can only make it look busier: a
        # client that ignores refreshed cookies is still known to be active here.
        tracker = self._table(AffinityType.COOKIE)
        i = tracker.find(_sid_hash(sc.session_id))
        if i >= 0 and self._ids[tracker.backend(i)] == bid:
            bound = max(bound, tracker.last_seen(i) + codec.granularity)
        d = self._decide(snap, bid, sc.key_hash, min(wall, bound), float(sc.issued), wall)
        reason = d.reason
        new = d.backend
        if reason is not None and new is None:
            if reason is not Reason.DRAIN or not self._health.available(bid, self._clock()):
                return None
            reason = None  # nowhere to drain to: stay on the still-serving backend
        if reason is None:
            refresh = codec.needs_refresh(sc, wall)
            set_cookie = None
            if refresh:
                set_cookie = codec.issue(
                    session_id=sc.session_id,
                    backend_id=bid,
                    key_hash=sc.key_hash,
                    issued=sc.issued,
                    wall=wall,
                )
            route = self._build(snap, bid, rest, True, _NO_HEADERS, set_cookie)
            idx = self._track(sc.session_id, bid, wall)
            if refresh:
                # One refresh per step: a client that keeps the old cookie is not sent
                # the new one again on every response of this step.
                quiet = self._build(snap, bid, rest, True, _NO_HEADERS, None)
                until = codec.floor(wall) + codec.granularity
                self._cache_put(snap, header, quiet, until, sc, bid, idx)
            else:
                self._cache_put(snap, header, route, codec.refresh_due(sc), sc, bid, idx)
            return route
        assert new is not None
        issued = sc.issued
        session_id = sc.session_id
        if reason is Reason.EXPIRED:
            session_id, issued = os.urandom(12), codec.floor(wall)
        set_cookie = codec.issue(
            session_id=session_id, backend_id=new, key_hash=sc.key_hash, issued=issued, wall=wall
        )
        if new != bid or reason is not Reason.EXPIRED:
            self._migrations[reason] += 1
        moved = ((MOVED_HEADER, f"{reason.value}; from={bid}".encode()),) if new != bid else ()
        idx = self._track(session_id, new, wall)
        route = self._build(snap, new, rest, True, moved, set_cookie)
        # The client may keep sending the old cookie until it stores the new one: answer
        # it with the new pin for the rest of this step, without announcing a second move.
        quiet = self._build(snap, new, rest, True, _NO_HEADERS, set_cookie)
        self._cache_put(snap, header, quiet, codec.floor(wall) + codec.granularity, sc, new, idx)
        return route

    def _new_cookie_session(
        self,
        snap: _Snapshot,
        req: RequestView,
        later: Sequence[tuple[AffinityType, LearnedTable | None]],
        rest: bytes | None,
        stripped: bool,
        wall: float,
    ) -> Route | None:
        codec = snap.codec
        assert codec is not None
        session_id = os.urandom(12)
        moved: tuple[tuple[bytes, bytes], ...] = _NO_HEADERS
        for mode, table in later:
            found_h = None if table is None else self._key(snap, mode, req)
            if found_h is not None:
                assert table is not None
                h = found_h
                placed = self._learned(snap, table, h, wall)
                if placed is None:
                    return None
                bid, moved = placed
                break
        else:
            h = key_hash(cookie_key(session_id))
            found = self._place(snap, h, wall)
            if found is None:
                return None
            bid = found
        self._track(session_id, bid, wall)
        set_cookie = codec.issue(
            session_id=session_id, backend_id=bid, key_hash=h, issued=codec.floor(wall), wall=wall
        )
        return self._build(snap, bid, rest, stripped, moved, set_cookie)

    def _track(self, session_id: bytes, bid: BackendId, wall: float) -> int:
        """Count a cookie session on this proxy (for loads and stats). Returns its index."""
        idx = self._idx(bid)
        t = self._table(AffinityType.COOKIE)
        h = _sid_hash(session_id)
        i = t.find(h)
        if i < 0:
            t.insert(h, idx, wall)
        elif t.backend(i) != idx:
            t.move(i, idx, wall)
        else:
            t.touch(i, wall)
        return idx

    def _cache_put(
        self,
        snap: _Snapshot,
        header: bytes | None,
        route: Route,
        until: float,
        sc: SessionCookie,
        bid: BackendId,
        idx: int,
    ) -> None:
        if header is None or not snap.cookie_primary or self._settings.route_cache_size == 0:
            return
        absolute = snap.core.absolute_timeout
        if absolute is not None:
            until = min(until, sc.issued + absolute)
        deadline = snap.core.drain_deadlines.get(bid)
        if deadline is not None:
            until = min(until, deadline)
        cache = self._cache
        if len(cache) >= self._settings.route_cache_size:
            cache.clear()
        cache[header] = (route, until, idx)

    # -- learned sessions -----------------------------------------------------------------

    def _learned(
        self, snap: _Snapshot, t: LearnedTable, h: int, wall: float
    ) -> tuple[BackendId, tuple[tuple[bytes, bytes], ...]] | None:
        """Look up or place a learned-mode session: ``(backend, headers to add)``."""
        i = t.find(h)
        if i < 0:
            found = self._place(snap, h, wall)
            if found is None:
                return None
            t.insert(h, self._idx(found), wall)
            return found, _NO_HEADERS
        bid = self._ids[t.backend(i)]
        d = self._decide(snap, bid, h, t.last_seen(i), t.created(i), wall)
        reason = d.reason
        new = d.backend
        if reason is None:
            t.touch(i, wall)
            return bid, _NO_HEADERS
        if new is None:
            if reason is Reason.DRAIN and self._health.available(bid, self._clock()):
                t.touch(i, wall)
                return bid, _NO_HEADERS
            return None
        if reason is Reason.EXPIRED:
            t.remove(h)
            t.insert(h, self._idx(new), wall)
            if new == bid:
                return bid, _NO_HEADERS
        else:
            t.move(i, self._idx(new), wall)
        self._migrations[reason] += 1
        return new, ((MOVED_HEADER, f"{reason.value}; from={bid}".encode()),)

    # -- decisions ------------------------------------------------------------------------

    def _decide(
        self,
        snap: _Snapshot,
        bid: BackendId,
        h: int,
        last_seen: float,
        created: float,
        wall: float,
    ) -> Decision:
        p = self._probe
        p.backend = bid
        p.key_hash = h
        p.last_seen = last_seen
        p.created = created
        return decide(p, snap.core, wall, loads=self._loads, exclude=self._down())

    def _place(self, snap: _Snapshot, h: int, wall: float) -> BackendId | None:
        """The backend for a new session with key hash ``h``, or ``None``."""
        return snap.core.route_new(h, wall, self._loads, exclude=self._down())

    def _down(self) -> AbstractSet[BackendId]:
        """Backends passive health has marked down: the affinity core excludes them."""
        health = self._health
        if not health.any_down():
            return NO_BACKENDS
        return health.down(self._clock())

    # -- helpers --------------------------------------------------------------------------

    def _build(
        self,
        snap: _Snapshot,
        bid: BackendId,
        rest: bytes | None,
        stripped: bool,
        add_headers: tuple[tuple[bytes, bytes], ...],
        set_cookie: bytes | None,
    ) -> Route:
        if not stripped and not add_headers and set_cookie is None:
            return snap.routes[bid]
        b = snap.routes[bid]
        return Route(
            bid,
            b.host,
            b.port,
            rest if stripped else None,
            add_headers,
            set_cookie,
            snap.session_key,
            stripped,
        )

    def _idx(self, bid: str) -> int:
        i = self._intern.get(bid)
        if i is None:
            i = self._intern[bid] = len(self._ids)
            self._ids.append(BackendId(bid))
            self._requests.append(0)
            if len(self._sessions) <= i:
                self._sessions.append(0)
        return i

    def _table(self, mode: AffinityType, a: AffinitySettings | None = None) -> LearnedTable:
        t = self._tables.get(mode)
        if t is None:
            snap = self._snap
            if a is None:
                a = snap.plan.affinity if snap is not None else AffinitySettings()
            t = self._tables[mode] = LearnedTable(
                name=_TABLE_NAMES[mode],
                capacity=self._settings.learned_capacity,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
                epoch=self._epoch,
                counts=self._sessions,
            )
        return t

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> RouterStats:
        snap = self._snap
        backends: dict[str, BackendStats] = {}
        now = self._clock()
        if snap is not None:
            for b in snap.plan.backends:
                i = self._idx(b.id)
                backends[b.id] = BackendStats(
                    sessions=self._sessions[i] if i < len(self._sessions) else 0,
                    requests=self._requests[i],
                    health=self._health.state(b.id, now).state.value,
                    state=b.state.value,
                )
        return RouterStats(
            plan_version=self.plan_version,
            backends=backends,
            migrations={r.value: n for r, n in self._migrations.items()},
            rejected_cookies={r.value: n for r, n in self._rejected.items()},
            no_backend=self._no_backend,
            learned={
                t.name: {
                    "entries": len(t),
                    "capacity": t.capacity,
                    "evicted": t.evicted,
                    "expired": t.expired,
                }
                for t in self._tables.values()
            },
        )


def _sid_hash(session_id: bytes) -> int:
    """The cookie-session tracker's key: the random session id's first 8 bytes."""
    return int.from_bytes(session_id[:8], "little")


_TABLE_NAMES = {
    AffinityType.COOKIE: "cookie",
    AffinityType.APP_COOKIE: "app-cookie",
    AffinityType.HEADER: "header",
    AffinityType.QUERY: "query",
    AffinityType.CLIENT_IP: "client-ip",
}


# -- standalone mode -------------------------------------------------------------------------


def generate_cookie_key() -> CookieKey:
    """A fresh random signing key (standalone mode without ``--cookie-key-file``)."""
    return CookieKey(id=f"g{secrets.token_hex(4)}", secret=secrets.token_bytes(32))


def parse_affinity(
    text: str,
    *,
    trusted_proxies: Sequence[str] = (),
    cookie: CookieSettings | None = None,
) -> AffinitySettings:
    """``cookie | app-cookie:NAME | header:NAME | query:NAME | client-ip`` to settings.

    Raises ``ValueError`` with a one-line message on anything else.
    """
    kind, _, name = text.partition(":")
    kind = kind.strip().lower()
    nets = tuple(ipaddress.ip_network(t, strict=False) for t in trusted_proxies)
    client_ip = ClientIPSettings(trusted_proxies=nets)
    base: dict[str, Any] = {"client_ip": client_ip, "cookie": cookie or CookieSettings()}
    needs_name = {"app-cookie": "app_cookie_name", "header": "header_name", "query": "query_name"}
    types = {
        "cookie": AffinityType.COOKIE,
        "app-cookie": AffinityType.APP_COOKIE,
        "header": AffinityType.HEADER,
        "query": AffinityType.QUERY,
        "client-ip": AffinityType.CLIENT_IP,
    }
    if kind not in types:
        raise ValueError(
            f"unknown affinity {text!r}: expected cookie, app-cookie:NAME, header:NAME, "
            "query:NAME or client-ip"
        )
    if kind in needs_name:
        if not name:
            raise ValueError(f"affinity {kind} needs a name, as in {kind}:NAME")
        base[needs_name[kind]] = name
    elif name:
        raise ValueError(f"affinity {kind} takes no name (got {text!r})")
    try:
        return AffinitySettings(type=types[kind], **base)
    except ValueError as exc:
        raise ValueError(f"affinity {text!r}: {exc}") from None


def standalone_plan(
    backends: Sequence[tuple[str, str, int]],
    affinity: str | AffinitySettings,
    cookie_keys: Sequence[CookieKey] = (),
    *,
    version: int = 1,
) -> Plan:
    """A plan for ``limpet proxy --backend ID=HOST:PORT ... --affinity ...``.

    Every backend is Active with equal weight. Cookie affinity without keys gets a fresh
    random key, so a standalone proxy works with no key file (its cookies then do not
    survive a restart). Raises ``ValueError`` (a ``PlanError`` for plan fields).
    """
    settings = parse_affinity(affinity) if isinstance(affinity, str) else affinity
    keys = tuple(cookie_keys)
    if not keys and AffinityType.COOKIE in settings.modes:
        keys = (generate_cookie_key(),)
    if not backends:
        raise ValueError("at least one --backend ID=HOST:PORT is required")
    return Plan(
        version=version,
        backends=tuple(
            Backend(id=BackendId(bid), address=host, port=port, state=BackendState.ACTIVE)
            for bid, host, port in backends
        ),
        affinity=settings,
        cookie_keys=keys,
        name="standalone",
    )
