"""Routing a session pinned by a signed cookie (the LB cookie, or AppCookie's companion):
verify it, keep or move it, refresh it, and remember the answer in the route cache; and
starting a new LB-cookie session.

Data flow: the router's walk over the plan's modes (:meth:`~.routing.SessionRouter._route`)
hands a request's cookie values here. :meth:`CookieRouting._decode` verifies them
(:mod:`.cookies`); :meth:`CookieRouting._held` builds the :class:`_Held` view of a
verified session and :meth:`CookieRouting._hold` asks the affinity core to keep or move
it, with this process's book (:mod:`.sessions`) as the record of what it saw. The session
stays (:meth:`CookieRouting._held_stays`: a refreshed cookie once per step) or moves
(:meth:`CookieRouting._held_moves`: a new cookie, and ``Limpet-Session-Moved`` when the
backend changes); either way the answer goes to the route cache
(:meth:`CookieRouting._cache_put`), keyed by the raw Cookie header, which the router
reads first on the next request. :meth:`CookieRouting._new_cookie_session` issues the
cookie of a new session, placed by a later learned mode's key if the request has one,
else by its own random id.

Concurrency: a base of :class:`~.routing.SessionRouter`, on
:class:`~.learned_routing.LearnedRouting` (one chain, since mypyc compiles no multiple
inheritance); used from the event loop only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Final

from limpet.affinity import AffinityType, BackendId, Reason
from limpet.proxy.engine.port import NO_HEADERS, RequestView, Route

from .cookies import CookieCodec, CookieRejection, SessionCookie
from .learned import LearnedTable
from .learned_routing import MOVED_HEADER, LearnedRouting
from .random_ids import RandomIds
from .sessions import TABLE_CODES, TABLE_NAMES, sid_hash
from .snapshot import Snapshot

# Enum members read per request, as Final module constants (see routing.py).
_COOKIE: Final = AffinityType.COOKIE
_APP_COOKIE: Final = AffinityType.APP_COOKIE
_DRAIN: Final = Reason.DRAIN
_EXPIRED: Final = Reason.EXPIRED


class _Held:
    """A session pinned by a signed cookie, as the routing steps below see it. A plain
    slotted class, not a frozen dataclass: one is built per decided cookie request, and
    a frozen dataclass's ``__init__`` costs about 1 µs against 0.15 µs. Only
    :meth:`CookieRouting._hold` sets ``table`` and ``slot``, after the look-up, each
    time it decides the session: the route cache keeps a verified LB cookie's
    ``_Held`` (its tracker key computed once) for the next decision.

    ``bind``: the app-cookie value an AppCookie companion is bound to (None for the LB
    cookie); ``th``: the key the session is tracked under (its random id's hash, or the
    app key's); ``reuse``: the request's Cookie header held this one LB cookie (see
    ``CookieRouting._cache``); ``table`` and ``slot``: the session's entry in this
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


class CookieRouting(LearnedRouting):
    """The cookie-session steps of the session router (see the module docstring)."""

    # Provided by the router (and those LearnedRouting and StoreNotes declare).
    # Cookie header -> (route, valid until, backend number, and for a header that held
    # one LB cookie, that cookie's session as verified and the header left to forward:
    # when the route runs out, the session is decided again without a second
    # verification, nor a second tracker key or _Held).
    _cache: dict[bytes, tuple[Route, float, int, _Held | None, bytes | None]]
    _cache_size: int
    _session_ids: RandomIds
    _rejected: dict[CookieRejection, int]

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
