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
cluster-wide counts while a shared store answers (:mod:`.store`). Learned keys are
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
import itertools
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
from .cookies import SESSION_ID_LEN, CookieCodec, CookieRejection, SessionCookie, strip_cookie
from .health import PassiveHealth
from .learned import LearnedTable
from .learned_routing import MOVED_HEADER, LearnedRouting, Pending
from .random_ids import RandomIds
from .sessions import TABLE_CODES, TABLE_NAMES, SessionBook, sid_hash
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
_DRAIN: Final = Reason.DRAIN
_EXPIRED: Final = Reason.EXPIRED


class _Held:
    """A session pinned by a signed cookie, as the routing steps below see it. A plain
    slotted class, not a frozen dataclass: one is built per decided cookie request, and
    a frozen dataclass's ``__init__`` costs about 1 µs against 0.15 µs. Only
    :meth:`SessionRouter._hold` sets ``table`` and ``slot``, after the look-up, each
    time it decides the session: the route cache keeps a verified LB cookie's
    ``_Held`` (its tracker key computed once) for the next decision.

    ``bind``: the app-cookie value an AppCookie companion is bound to (None for the LB
    cookie); ``th``: the key the session is tracked under (its random id's hash, or the
    app key's); ``reuse``: the request's Cookie header held this one LB cookie (see
    ``SessionRouter._cache``); ``table`` and ``slot``: the session's entry in this
    process's book, looked up once (``slot`` -1: not there on ``bid``)."""

    __slots__ = ("bid", "bind", "mode", "reuse", "sc", "slot", "table", "th")

    def __init__(
        self,
        sc: SessionCookie,
        bind: bytes | None,
        mode: AffinityType,
        th: int,
        bid: BackendId,
        reuse: bool,
    ) -> None:
        self.sc = sc
        self.bind = bind
        self.mode = mode
        self.th = th
        self.bid = bid
        self.reuse = reuse
        self.table: LearnedTable | None = None
        self.slot = -1


class SessionRouter(LearnedRouting):
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
        # Cookie header -> (route, valid until, backend number, and for a header that held
        # one LB cookie, that cookie's session as verified and the header left to
        # forward: when the route runs out, the session is decided again without a
        # second verification, nor a second tracker key or _Held).
        self._cache: dict[bytes, tuple[Route, float, int, _Held | None, bytes | None]] = {}
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

    # -- cookie sessions ------------------------------------------------------------------

    def _decode(
        self,
        codec: CookieCodec | None,
        values: list[bytes],
        wall: float,
        *,
        bind: bytes | None = None,
    ) -> SessionCookie | None:
        assert codec is not None
        first: CookieRejection | None = None
        for v in values:
            got = codec.decode(v, wall, bind=bind)
            if isinstance(got, SessionCookie):
                return got
            first = first or got
        if first is not None:
            self._rejected[first] += 1
        return None

    def _held(
        self,
        snap: Snapshot,
        sc: SessionCookie,
        bind: bytes | None,
        header: bytes | None,
        rest: bytes | None,
        wall: float,
        *,
        reuse: bool = False,
    ) -> Route | None:
        """A session whose signed cookie names its backend: the LB cookie (``bind`` is
        ``None``) or the AppCookie companion of app-cookie value ``bind``. ``reuse``: the
        header held this one LB cookie, so the cache may keep it verified."""
        codec = snap.codec if bind is None else snap.companion
        assert codec is not None
        # Cookie sessions are tracked by their random id, app sessions by their key.
        if bind is None:
            held = _Held(
                sc,
                None,
                _COOKIE,
                sid_hash(sc.session_id),
                BackendId(sc.backend_id),
                reuse,
            )
        else:
            held = _Held(sc, bind, _APP_COOKIE, sc.key_hash, BackendId(sc.backend_id), reuse)
        return self._hold(snap, codec, held, header, rest, wall)

    def _hold(
        self,
        snap: Snapshot,
        codec: CookieCodec,
        held: _Held,
        header: bytes | None,
        rest: bytes | None,
        wall: float,
    ) -> Route | None:
        """Decide the session of ``held`` (new, or kept by the route cache: its entry
        in the book is looked up again either way)."""
        sc = held.sc
        a = snap.affinity
        bound = float(codec.last_activity_bound(sc))
        # What this proxy itself saw of the session can only make it look busier: a
        # client that ignores refreshed cookies is still known to be active here.
        table, slot = self._book.entry(held.mode, held.th, held.bid, a)
        if slot >= 0:
            bound = max(bound, table.last_seen(slot) + codec.granularity)
            held.table, held.slot = table, slot
        else:
            held.table, held.slot = None, -1
        d = self._decide(snap, held.bid, sc.key_hash, min(wall, bound), float(sc.issued), wall)
        reason = d.reason
        new = d.backend
        if reason is not None and new is None:
            if reason is not _DRAIN or not self._health.available(held.bid, self._clock()):
                return None
            reason = None  # nowhere to drain to: stay on the still-serving backend
        if reason is None:
            return self._held_stays(snap, codec, held, header, rest, wall)
        assert new is not None
        return self._held_moves(snap, codec, held, new, reason, header, rest, wall)

    def _held_stays(
        self,
        snap: Snapshot,
        codec: CookieCodec,
        held: _Held,
        header: bytes | None,
        rest: bytes | None,
        wall: float,
    ) -> Route:
        """The session keeps its backend; its cookie is refreshed once per step."""
        sc, bid = held.sc, held.bid
        refresh = codec.needs_refresh(sc, wall)
        set_cookie = None
        if refresh:
            set_cookie = codec.issue(
                session_id=sc.session_id,
                backend_id=bid,
                key_hash=sc.key_hash,
                issued=sc.issued,
                wall=wall,
                bind=held.bind,
                tail=sc.tail,
            )
        route = snap.route(bid, rest, True, NO_HEADERS, set_cookie)
        if held.table is not None:  # seen here before, on this backend: mark it seen
            held.table.touch(held.slot, wall)
            idx = self._numbers[bid]
        else:
            idx = self._book.track(held.mode, held.th, bid, wall, snap.affinity, created=sc.issued)
        if self._touched is not None:  # a store to tell (the test costs less than the call)
            self._note(TABLE_CODES[TABLE_NAMES[held.mode]], held.th, idx, wall)
        if refresh:
            # One refresh per step: a client that keeps the old cookie is not sent
            # the new one again on every response of this step.
            quiet = snap.route(bid, rest, True, NO_HEADERS, None)
            until = codec.floor(wall) + codec.granularity
            self._cache_put(snap, header, rest, quiet, until, held, bid, idx)
        else:
            self._cache_put(snap, header, rest, route, codec.refresh_due(sc), held, bid, idx)
        return route

    def _held_moves(
        self,
        snap: Snapshot,
        codec: CookieCodec,
        held: _Held,
        new: BackendId,
        reason: Reason,
        header: bytes | None,
        rest: bytes | None,
        wall: float,
    ) -> Route:
        """The affinity core moves the session (or it expired): a new cookie, and the
        moved header when the backend changes."""
        sc, bid, th = held.sc, held.bid, held.th
        issued = sc.issued
        session_id = sc.session_id
        if reason is _EXPIRED:
            issued = codec.floor(wall)
            if held.bind is None:
                session_id = self._session_ids.take()
                th = sid_hash(session_id)
        set_cookie = codec.issue(
            session_id=session_id,
            backend_id=new,
            key_hash=sc.key_hash,
            issued=issued,
            wall=wall,
            bind=held.bind,
            tail=sc.tail,
        )
        if new != bid or reason is not _EXPIRED:
            self._migrations[reason] += 1
        moved = ((MOVED_HEADER, f"{reason.value}; from={bid}".encode()),) if new != bid else ()
        idx = self._book.track(held.mode, th, new, wall, snap.affinity, created=issued)
        old = -1 if new == bid else self._book.index(bid)
        code = TABLE_CODES[TABLE_NAMES[held.mode]]
        self._note(code, th, idx, wall, new=old < 0, moved_from=old)
        route = snap.route(new, rest, True, moved, set_cookie)
        # The client may keep sending the old cookie until it stores the new one: answer
        # it with the new pin for the rest of this step, without announcing a second move.
        quiet = snap.route(new, rest, True, NO_HEADERS, set_cookie)
        until = codec.floor(wall) + codec.granularity
        self._cache_put(snap, header, rest, quiet, until, held, new, idx)
        return route

    def _new_cookie_session(
        self,
        snap: Snapshot,
        req: RequestView,
        later: Sequence[tuple[AffinityType, LearnedTable | None]],
        rest: bytes | None,
        stripped: bool,
        wall: float,
    ) -> Route | None:
        codec = snap.codec
        assert codec is not None
        session_id = self._session_ids.take()
        th = sid_hash(session_id)
        moved: tuple[tuple[bytes, bytes], ...] = NO_HEADERS
        for mode, table in later:
            found_h = None if table is None else snap.keys.hash(mode, req)
            if found_h is not None:
                assert table is not None
                h = found_h
                placed = self._learned(snap, table, h, wall, shared=False)
                if placed is None:
                    return None
                assert type(placed) is tuple
                bid, moved = placed
                break
        else:
            # The id is CSPRNG output: its own bytes are already a uniform key hash,
            # so it is placed by the same 64 bits it is tracked by.
            h = th
            found = self._place(snap, h, wall)
            if found is None:
                return None
            bid = found
        idx = self._book.insert(_COOKIE, th, bid, wall, snap.affinity)
        if self._touched is not None:  # a store to tell
            self._note(TABLE_CODES["cookie"], th, idx, wall, new=True)
        set_cookie = codec.issue(
            session_id=session_id, backend_id=bid, key_hash=h, issued=codec.floor(wall), wall=wall
        )
        return snap.route(bid, rest, stripped, moved, set_cookie)

    def _cache_put(
        self,
        snap: Snapshot,
        header: bytes | None,
        rest: bytes | None,
        route: Route,
        until: float,
        held: _Held,
        bid: BackendId,
        idx: int,
    ) -> None:
        """Answer ``header`` with ``route`` (to ``bid``) until ``until``, or sooner if the
        session's age or the backend's drain ends first."""
        size = self._cache_size
        if header is None or not snap.cookie_primary or size == 0:
            return
        sc = held.sc
        absolute = snap.core.absolute_timeout
        if absolute is not None:
            until = min(until, sc.issued + absolute)
        deadline = snap.core.drain_deadlines.get(bid)
        if deadline is not None:
            until = min(until, deadline)
        cache = self._cache
        # Re-inserted, so that the dict's order is the order of the last decisions. A
        # test and a delete, not ``pop``: compiled, those two are C calls, where the
        # method is looked up and called as from Python (the header's hash is cached).
        if header in cache:
            del cache[header]
        elif len(cache) >= size:
            self._evict_cached()
        cache[header] = (route, until, idx, held if held.reuse else None, rest)

    def _evict_cached(self) -> None:
        """The route cache is full: drop the eighth decided longest ago, not all of it.
        Clearing 65 536 entries at once stalled the loop for 8 to 16 ms (freeing them) and
        sent every active session back to a full verification."""
        cache = self._cache
        for header in list(itertools.islice(cache, max(1, len(cache) // 8))):
            del cache[header]

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
