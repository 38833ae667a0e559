"""The session layer's router: which backend serves a request, and what to tell it.

Data flow, per request: the engine parses the head into a
:class:`~limpet.proxy.engine.port.RequestView` and calls :meth:`SessionRouter.dispatch`
(tests and benchmarks call :meth:`SessionRouter.route`, which never asks the store). The
router walks the plan's affinity modes in order (primary, then fallbacks) and takes the
first session key the request carries (:mod:`.request_keys`): a valid LB cookie
(:mod:`.cookies`), the app cookie, the header, the query parameter or the client IP. An
existing session keeps
its backend unless the affinity core's migration decision (:meth:`limpet.affinity.Router.decide`)
moves it (failover, drain, rebalance, expired); a new session is placed by the target
slot table with bounded loads (:meth:`limpet.affinity.Router.route_new`), and every
destination, new or moved, is under its bounded-load cap. The loads are this process's
own counts of the sessions it has seen within ``idleTimeout`` (:mod:`.sessions`), or the
cluster-wide counts while a shared store answers (:mod:`.store`). A session pinned by
a signed cookie is decided, refreshed and cached by :mod:`.cookie_routing`. Learned keys are
routed by :mod:`.learned_routing`: with a store, a key this replica does not hold or
one the plan may move is answered by a coroutine that asks the store first (the engine
awaits it); everything else is synchronous.
Passive health (:mod:`.health`) is passed to the core as ``exclude``: a backend marked
down locally takes nothing, its sessions fail over, and the caps are those of the
backends still up. The answer is a :class:`~limpet.proxy.engine.port.Route`: where to connect,
the Cookie header to forward (our cookie removed), headers to add
(``Limpet-Session-Moved`` when a session moved) and the ``Set-Cookie`` to return (a new,
moved or refreshed LB cookie).

Plans arrive through :meth:`SessionRouter.prepare` (pure: compiles a
:class:`~limpet.proxy.session.snapshot.Snapshot`, safe in a worker thread) and
:meth:`SessionRouter.install` (an atomic reference swap on the event loop), or both at once
through :meth:`SessionRouter.load_plan`.

Hot path: the common cookie case (LB cookie, or AppCookie with its companion), "sticky,
nothing changed", is answered from a bounded cache keyed by the raw Cookie header, which
returns a shared route and bumps one integer: no HMAC, no allocation. A cached answer is
valid until the cookie's next refresh step, the session's absolute expiry or its
backend's drain deadline, and the cache is dropped
on every plan change and whenever passive health marks a backend down, so it never
outlives the facts it was computed from. When an answer runs out, an entry whose header
held one LB cookie still holds that cookie as verified under the same snapshot: the
session is decided again (the cookie's time checks, the migration decision, a refresh)
without a second base64 decode and HMAC check. A client that comes back less often than
once per last-seen step (1 s in a standalone plan) meets only this path.

Concurrency: one router per process, used from the event loop only; ``prepare`` is the
only method meant to run elsewhere, and it reads nothing mutable but the snapshot
reference.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final

from limpet.affinity import (
    NO_BACKENDS,
    AffinityType,
    BackendId,
    BackendState,
    Decision,
    Plan,
    Reason,
)
from limpet.affinity import Router as CoreRouter
from limpet.proxy.engine.port import NO_HEADERS, PendingRoute, RequestView, Route

from .companion import parse_app_set_cookie
from .cookie_routing import CookieRouting
from .cookies import SESSION_ID_LEN, CookieRejection, strip_cookie
from .health import PassiveHealth
from .learned import LearnedTable
from .learned_routing import MOVED_HEADER, Pending
from .random_ids import RandomIds
from .sessions import TABLE_CODES, SessionBook
from .settings import RouterSettings
from .shared_keys import SharedKeys
from .snapshot import Snapshot
from .stats import AppCookieOutcome, BackendStats, RouterStats
from .store import SessionStore

__all__ = ["MOVED_HEADER", "RequestView", "Route", "RouterSettings", "SessionRouter"]


# Enum members read per request, as Final module constants: compiled code reads
# such a constant directly, where ``AffinityType.COOKIE`` is a globals look-up and then
# a class attribute look-up (about 1 000 instructions on Python 3.11).
_COOKIE: Final = AffinityType.COOKIE
_APP_COOKIE: Final = AffinityType.APP_COOKIE


class SessionRouter(CookieRouting):
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
        self._snap: Snapshot | None = None
        self._book = SessionBook(capacity=settings.learned_capacity, epoch=wall() - 1.0)
        # Hot-path aliases of the book's lists (the book never replaces them).
        self._ids = self._book.ids
        self._numbers = self._book.numbers
        self._requests = self._book.requests
        # The plan's modes in order, each with its learned table (None: the LB cookie).
        self._walk: tuple[tuple[AffinityType, LearnedTable | None], ...] = ()
        self._health = PassiveHealth(base=settings.health_backoff, cap=settings.health_backoff_cap)
        self._cache = {}  # the route cache (CookieRouting._cache)
        self._cache_size = settings.route_cache_size  # a native field (settings is not)
        # How many backends the book numbers when they are exactly the slot table's
        # members (-1: they are not), so that the sum of its counts is bounded loads' total.
        self._members = -1
        self._session_ids = RandomIds(size=SESSION_ID_LEN)
        self._migrations = dict.fromkeys(Reason, 0)
        self._rejected = dict.fromkeys(CookieRejection, 0)
        self._no_backend = 0
        self._app_outcomes = dict.fromkeys(AppCookieOutcome, 0)
        # The shared store (store.py): sessions seen since the last write-back (None: no
        # store), and the cluster-wide counts bounded loads caps against while it answers.
        self._touched: dict[bytes, tuple[int, float, int]] | None = None
        self._cluster: dict[BackendId, int] | None = None
        self._store_stats = dict.fromkeys(("flushes", "fallbacks", "written", "dropped"), 0)
        # Learned keys shared through the store (learned_routing.py, shared_keys.py).
        self._shared: SharedKeys | None = None
        self._keys_store: SessionStore | None = None
        self._spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None
        # A learned key routed without the store since the last batch was taken, and
        # whether the last write-back that answered left such keys out (store_notes.py).
        self._alone = False
        self._behind = False
        self._on_install: list[Callable[[], None]] = []

    # -- plans ----------------------------------------------------------------------------

    @property
    def plan_version(self) -> int | None:
        snap = self._snap
        return None if snap is None else snap.plan.version

    @property
    def plan(self) -> Plan | None:
        snap = self._snap
        return None if snap is None else snap.plan

    def prepare(self, plan: Plan) -> Snapshot:
        """Compile ``plan`` (slot tables, cookie codec, routes). Pure; thread-safe."""
        prev = self._snap
        core = CoreRouter(plan, previous=None if prev is None else prev.core)
        s = self._settings
        return Snapshot(plan, core, granularity=plan.granularity, peer_memo=s.route_cache_size)

    def install(self, snap: Snapshot) -> None:
        """Switch to a prepared snapshot. Takes effect for the next request."""
        book = self._book
        a = snap.affinity
        book.adopt([b.id for b in snap.plan.backends], a)
        self._health.forget({b.id for b in snap.plan.backends})
        self._walk = tuple((m, None if m is _COOKIE else book.table(m, a)) for m in snap.modes)
        self._snap = snap
        self._members = len(book.ids) if set(book.ids) == set(snap.core.members) else -1
        self._cache.clear()
        shared = self._shared
        if shared is not None:
            shared.adopt_plan(
                {book.index(b.id): b.state for b in snap.plan.backends},
                schedule=snap.core.schedule is not None,
                wall=self._wall(),
                backends=len(book.ids),
            )
        for listener in self._on_install:
            listener()

    def on_install(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` on the loop right after each plan is installed, before any
        request routes by it: the process layer attaches the plan's session store then,
        so that no learned key is placed without it. Returns what stops the calls."""
        self._on_install.append(listener)
        return functools.partial(self._on_install.remove, listener)

    def stage(self, plan: Plan) -> Callable[[], None]:
        """:meth:`prepare` now (any thread); the returned commit installs it (the loop)."""
        return functools.partial(self.install, self.prepare(plan))

    def load_plan(self, plan: Plan) -> None:
        """Compile and switch to ``plan`` in one step (atomic for the event loop)."""
        self.install(self.prepare(plan))

    # -- hot path -------------------------------------------------------------------------

    def route(self, req: RequestView) -> Route | None:
        """The route for ``req``, or ``None`` when no backend can take it (503), from the
        local tables only, never asking the shared store (for callers that cannot await:
        tests, benchmarks)."""
        return self.dispatch(req, shared=False)  # type: ignore[return-value]

    def dispatch(self, req: RequestView, *, shared: bool = True) -> Route | PendingRoute | None:
        """The route for ``req``, ``None`` when no backend can take it (503), or, for a
        learned key the shared store must be asked about, a coroutine that answers it."""
        snap = self._snap
        if snap is None:
            self._no_backend += 1
            return None
        wall = self._wall()
        cookie = req.cookie
        hit = None
        if snap.cookie_primary and cookie is not None:
            hit = self._cache.get(cookie)
            if hit is not None and wall < hit[1]:
                self._requests[hit[2]] += 1
                return hit[0]
        route: Route | PendingRoute | None
        codec = snap.codec
        # A kept cookie's bytes were verified under this snapshot: only time can have
        # changed what decode would say of them.
        if (
            hit is not None
            and (kept := hit[3]) is not None
            and codec is not None
            and codec.recheck(kept.sc, wall) is None
        ):
            route = self._hold(snap, codec, kept, cookie, hit[4], wall)
        else:
            route = self._route(snap, req, wall, shared)
        if route is None:
            self._no_backend += 1
        elif type(route) is Route:
            self._requests[self._numbers[route.backend_id]] += 1
        else:
            return self._counted(route)  # type: ignore[arg-type]
        return route

    async def _counted(self, pending: PendingRoute) -> Route | None:
        """The slow path's answer (a learned key the store was asked about), counted."""
        route = await pending
        if route is None:
            self._no_backend += 1
        else:
            self._requests[self._numbers[route.backend_id]] += 1
        return route

    def reroute(self, req: RequestView, failed: Route) -> Route | None:
        """:meth:`redispatch` from the local tables only (see :meth:`route`)."""
        self.backend_failed(failed.backend_id)
        route = self.route(req)
        return None if route is None or route.backend_id == failed.backend_id else route

    def redispatch(self, req: RequestView, failed: Route) -> Route | PendingRoute | None:
        """After a connect failure on ``failed``: another backend, or ``None``."""
        self.backend_failed(failed.backend_id)
        route = self.dispatch(req)
        if route is None or type(route) is Route:
            return None if route is None or route.backend_id == failed.backend_id else route
        return _other_than(route, failed.backend_id)  # type: ignore[arg-type]

    def on_response(self, route: Route, set_cookies: Sequence[bytes]) -> Route:
        """Learn app-cookie sessions from the backend's ``Set-Cookie`` values, and answer
        the route whose ``Set-Cookie`` the client gets: with the AppCookie companion
        issued (or deleted) beside the app's own cookie, which passes untouched."""
        prefix = route.session_key
        snap = self._snap
        if prefix is None or not set_cookies or snap is None:
            return route
        book = self._book
        a = snap.affinity
        wall = self._wall()
        companion = snap.companion if route.backend_id in snap.backends else None
        answer: bytes | None = None
        for header in set_cookies:
            got = parse_app_set_cookie(header, prefix, wall)
            if got is None:
                continue
            if got.deleted:
                # The old value's entry simply idles out; its companion goes with it.
                if companion is not None:
                    answer = companion.delete(got.scope)
                continue
            h = snap.keys.app_hash(got.value)
            bid = route.backend_id
            seen = book.created(_APP_COOKIE, h, bid, a)
            idx = book.track(_APP_COOKIE, h, bid, wall, a)
            self._note(TABLE_CODES["app-cookie"], h, idx, wall, new=seen is None)
            if seen is None:
                self._publish(snap, book.table(_APP_COOKIE, a), h, bid)
            if companion is not None:
                answer = companion.issue(
                    session_id=b"",
                    backend_id=bid,
                    key_hash=h,
                    issued=companion.floor(wall if seen is None else seen),
                    wall=wall,
                    bind=got.value,
                    tail=got.scope.pack(),
                )
        if answer is None:
            return route
        return route._replace(set_cookie=answer)

    def backend_failed(self, backend_id: BackendId) -> None:
        generation = self._health.generation
        self._health.failed(backend_id, self._clock())
        if self._health.generation != generation:
            self._cache.clear()

    def backend_succeeded(self, backend_id: BackendId) -> None:
        self._health.succeeded(backend_id)

    def sweep(self) -> int:
        """Expire idle sessions; call it periodically (e.g. every second) from the loop."""
        return self._book.sweep(self._wall(), budget=self._settings.sweep_budget)

    # -- the walk over modes --------------------------------------------------------------

    def _route(
        self, snap: Snapshot, req: RequestView, wall: float, shared: bool
    ) -> Route | PendingRoute | None:
        cookie = req.cookie
        lb_values: list[bytes] = []
        companions: list[bytes] = []
        rest = cookie
        stripped = False
        probe = snap.cookie_probe
        # ``find``, not ``probe in cookie``: with a bytes operand, ``in`` first tries it
        # as an integer and raises and clears a TypeError (about 2 000 instructions on
        # Python 3.11). A header that starts with our cookie needs no search, and
        # strip_cookie answers one that is our cookie alone at once.
        if (
            probe is not None
            and cookie is not None
            and (cookie.startswith(probe) or cookie.find(probe) >= 0)
        ):
            assert snap.cookie_name is not None
            lb_values, rest = strip_cookie(cookie, snap.cookie_name)
            stripped = bool(lb_values)
        probe = snap.companion_probe
        if probe is not None and rest is not None and rest.find(probe) >= 0:
            assert snap.companion_name is not None
            companions, left = strip_cookie(rest, snap.companion_name)
            if companions:
                rest, stripped = left, True
        walk = self._walk
        for n, (mode, table) in enumerate(walk):
            if table is None:  # the LB cookie
                if lb_values:
                    sc = self._decode(snap.codec, lb_values, wall)
                    if sc is not None:
                        reuse = len(lb_values) == 1
                        return self._held(snap, sc, None, cookie, rest, wall, reuse=reuse)
                return self._new_cookie_session(snap, req, walk[n + 1 :], rest, stripped, wall)
            if mode is _APP_COOKIE and snap.companion is not None:
                value = snap.keys.app_value(cookie)
                if value is None:
                    if companions:
                        self._app_outcomes[AppCookieOutcome.APP_COOKIE_MISSING] += 1
                    continue
                if companions:
                    sc = self._decode(snap.companion, companions, wall, bind=value)
                    if sc is not None:
                        return self._held(snap, sc, value, cookie, rest, wall)
                    self._app_outcomes[AppCookieOutcome.COMPANION_REJECTED] += 1
                else:
                    self._app_outcomes[AppCookieOutcome.COMPANION_MISSING] += 1
                h: int | None = snap.keys.app_hash(value)
            else:
                h = snap.keys.hash(mode, req)
            if h is not None:
                placed = self._learned(snap, table, h, wall, shared=shared)
                if placed is None:
                    return None
                if type(placed) is tuple:
                    return snap.route(placed[0], rest, stripped, placed[1], None)
                return _routed(snap, placed, rest, stripped)  # type: ignore[arg-type]
        bid = self._place(snap, random.getrandbits(64), wall)
        return None if bid is None else snap.route(bid, rest, stripped, NO_HEADERS, None)

    def _loads(self) -> Mapping[BackendId, int]:
        cluster = self._cluster
        return self._book.loads if cluster is None else cluster

    # -- decisions ------------------------------------------------------------------------

    def _decide(
        self,
        snap: Snapshot,
        bid: BackendId,
        h: int,
        last_seen: float,
        created: float,
        wall: float,
    ) -> Decision:
        return snap.core.decide(
            bid, h, last_seen, created, wall, self._loads(), exclude=self._down()
        )

    def _place(self, snap: Snapshot, h: int, wall: float) -> BackendId | None:
        """The backend for a new session with key hash ``h``, or ``None``."""
        down = self._down()
        if not down and self._cluster is None and len(self._ids) == self._members:
            # Every backend numbered here is a member: the total of their loads is the
            # sum of the book's counts, given rather than summed by the core through the
            # Mapping view (1.6 of route_new's 2.5 µs). A compiled loop over the list
            # rather than ``sum()``: the builtin's look-up and call cost about 900
            # instructions, the loop a few per backend.
            book = self._book
            total = 0
            for n in book.sessions:
                total += n
            return snap.core.route_new(h, wall, book.loads, total)
        return snap.core.route_new(h, wall, self._loads(), exclude=down)

    def _down(self) -> AbstractSet[BackendId]:
        """Backends passive health has marked down: the affinity core excludes them."""
        health = self._health
        if not health.any_down():
            return NO_BACKENDS
        return health.down(self._clock())

    # -- stats ----------------------------------------------------------------------------

    def stats(self) -> RouterStats:
        snap = self._snap
        backends: dict[str, BackendStats] = {}
        now = self._clock()
        book = self._book
        if snap is not None:
            sketches = book.sketches()
            draining = any(b.state is BackendState.DRAINING for b in snap.plan.backends)
            live = (
                book.drain_live(
                    self._wall(),
                    min_idle=snap.core.drain_min_idle,
                    cookie_step=None if snap.codec is None else snap.codec.granularity,
                    companion_step=None if snap.companion is None else snap.companion.granularity,
                )
                if draining
                else []
            )
            for b in snap.plan.backends:
                i = book.index(b.id)
                backends[b.id] = BackendStats(
                    sessions=book.count(i),
                    requests=self._requests[i],
                    health=self._health.state(b.id, now).state.value,
                    state=b.state.value,
                    sketch=sketches.get(i, []),
                    drain_live=live[i] if b.state is BackendState.DRAINING else None,
                )
        return RouterStats(
            plan_version=self.plan_version,
            backends=backends,
            migrations={r.value: n for r, n in self._migrations.items()},
            rejected_cookies={r.value: n for r, n in self._rejected.items()},
            app_cookie={o.value: n for o, n in self._app_outcomes.items()},
            store={} if self._touched is None else self._store_figures(),
            cluster=None
            if self._cluster is None
            else {str(b): n for b, n in self._cluster.items()},
            no_backend=self._no_backend,
            learned=book.table_stats(),
        )


async def _routed(
    snap: Snapshot, pending: Pending, rest: bytes | None, stripped: bool
) -> Route | None:
    placed = await pending
    return None if placed is None else snap.route(placed[0], rest, stripped, placed[1], None)


async def _other_than(pending: PendingRoute, failed: BackendId) -> Route | None:
    route = await pending
    return None if route is None or route.backend_id == failed else route
