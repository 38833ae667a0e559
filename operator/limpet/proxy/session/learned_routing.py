"""Routing a learned session (Header, Query, ClientIP, AppCookie without its companion):
from this replica's table, or, when the store must be asked, through it.

Data flow: :meth:`LearnedRouting._learned` is the router's step for a request whose
session key is learned. Without a shared store, or while it is down, the local table
decides alone (look up, keep or move with the affinity core's migration decision, place
a new key by its slot with bounded loads), synchronously. With the store up, the same
synchronous path answers a key this replica holds, trusts (:class:`SharedKeys.trusted`)
and would keep; anything else returns a coroutine, :meth:`LearnedRouting._shared_step`,
which the engine awaits (only then does a request wait for the store): it reads the
store's entry, merges it with the local copy (:func:`~.shared_keys.merge`), places a new
key with ``SET NX`` or moves one with a compare-and-set, and adopts the outcome in the
local table, marked checked. A move is announced (``Limpet-Session-Moved``) by the
replica whose compare-and-set won; the others adopt the new backend silently, since the
winner told the app. A store call that fails or times out marks the store down, counts a
fallback and answers from the local table, so no request fails for the store.

Concurrency: a base of :class:`~.routing.SessionRouter`, under
:class:`~.cookie_routing.CookieRouting` and on :class:`~.store_notes.StoreNotes` (one
chain, since mypyc compiles no multiple inheritance), used from the event loop only;
several slow steps may be in flight at once (they re-read the table after every await).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Final

from limpet.affinity import BackendId, BackendState, Decision, Reason

from .health import PassiveHealth
from .learned import LearnedTable
from .sessions import TABLE_CODES
from .shared_keys import (
    StoredEntry,
    backend_prefix,
    decode_entry,
    encode_entry,
    entry_ttl_ms,
    member_of,
    merge,
    unannounced_move,
)
from .snapshot import Snapshot
from .store_notes import StoreNotes

Headers = tuple[tuple[bytes, bytes], ...]
Placed = tuple[BackendId, Headers]
"""A learned session's backend and the headers to add (the moved header, or none)."""
Pending = Coroutine[Any, Any, "Placed | None"]

MOVED_HEADER: Final = b"Limpet-Session-Moved"
"""The request header that tells the backend a session moved: ``<reason>; from=<id>``."""

NO_HEADERS: Headers = ()

# Enum members read per request, as Final module constants (see routing.py).
_EXPIRED: Final = Reason.EXPIRED
_DRAIN: Final = Reason.DRAIN


def moved_header(reason: Reason, bid: BackendId) -> Headers:
    return ((MOVED_HEADER, f"{reason.value}; from={bid}".encode()),)


class LearnedRouting(StoreNotes):
    """The learned-session steps of the session router (see the module docstring)."""

    # Provided by the router (and those StoreNotes declares).
    _health: PassiveHealth
    _clock: Callable[[], float]
    _migrations: dict[Reason, int]

    def _decide(
        self, snap: Snapshot, bid: BackendId, h: int, last_seen: float, created: float, wall: float
    ) -> Decision:
        raise NotImplementedError

    def _place(self, snap: Snapshot, h: int, wall: float) -> BackendId | None:
        raise NotImplementedError

    def _loads(self) -> Mapping[BackendId, int]:
        raise NotImplementedError

    def _down(self) -> AbstractSet[BackendId]:
        raise NotImplementedError

    # -- the step -------------------------------------------------------------------------

    def _learned(
        self, snap: Snapshot, t: LearnedTable, h: int, wall: float, *, shared: bool = True
    ) -> Placed | Pending | None:
        """Look up or place a learned-mode session: ``(backend, headers to add)``, ``None``
        (no backend can take it), or a coroutine when the store must be asked."""
        i = t.find(h)
        keys = self._shared
        ask = shared and keys is not None and self._keys_store is not None and keys.usable(wall)
        if keys is not None and not keys.up:
            self._alone = True  # the store lacks this decision until a write-back
        code = TABLE_CODES[t.name]
        if i < 0:
            if ask:
                return self._shared_step(snap, t, h)
            found = self._place(snap, h, wall)
            if found is None:
                return None
            idx = self._book.index(found)
            t.insert(h, idx, wall)
            self._note(code, h, idx, wall, new=True)
            return found, NO_HEADERS
        old = t.backend(i)
        bid = self._ids[old]
        d = self._decide(snap, bid, h, t.last_seen(i), t.created(i), wall)
        if keys is not None and not keys.trusted(old, t.checked(i)):
            if ask:
                return self._shared_step(snap, t, h)
            if not keys.up and d.reason is None:
                d = self._unconfirmed(snap, bid, h, wall, d)
        elif ask and d.reason is not None:
            return self._shared_step(snap, t, h)
        reason = d.reason
        new = d.backend
        if reason is None or (new is None and self._stays_draining(reason, bid)):
            t.touch(i, wall)
            self._note(code, h, old, wall)
            return bid, NO_HEADERS
        if new is None:
            return None
        idx = self._book.index(new)
        if reason is _EXPIRED:
            t.remove(h)
            t.insert(h, idx, wall)
        else:
            t.move(i, idx, wall)
        self._note(code, h, idx, wall, moved_from=old)
        if new == bid:
            return bid, NO_HEADERS
        self._migrations[reason] += 1
        return new, moved_header(reason, bid)

    def _unconfirmed(
        self, snap: Snapshot, bid: BackendId, h: int, wall: float, d: Decision
    ) -> Decision:
        """The store is away and this copy was not confirmed since its backend could move:
        on a draining backend, another replica has probably drained the session already,
        to where the drain sends it (deterministic); go there now, announced, rather than
        keep a busy session on the old pod."""
        b = snap.backends.get(bid)
        if b is None or b.state is not BackendState.DRAINING:
            return d
        return snap.core.move(_DRAIN, h, wall, self._loads(), None, exclude=self._down())

    def _stays_draining(self, reason: Reason, bid: BackendId) -> bool:
        """Nowhere to drain to: the session stays on its still-serving backend."""
        return reason is _DRAIN and self._health.available(bid, self._clock())

    # -- through the store ----------------------------------------------------------------

    async def _shared_step(self, snap: Snapshot, t: LearnedTable, h: int) -> Placed | None:
        placed = await self._shared_decide(snap, t, h)
        if placed is None or placed[0] in snap.backends:
            return placed
        # The store named a backend this plan does not have (a replica on another plan
        # version, or a hostile entry): the local table, which now holds it, fails over.
        assert self._shared is not None
        self._shared.counters["foreign"] += 1
        local = self._learned(snap, t, h, self._wall(), shared=False)
        assert not isinstance(local, Coroutine)
        return local

    async def _shared_decide(self, snap: Snapshot, t: LearnedTable, h: int) -> Placed | None:
        keys, store, settings = self._shared, self._keys_store, snap.plan.session_store
        assert keys is not None
        assert store is not None
        assert settings is not None
        member = member_of(TABLE_CODES[t.name], h)
        a = snap.affinity

        def ttl(e: StoredEntry, now: float) -> int:
            return entry_ttl_ms(
                e,
                now,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
                slack=settings.ttl_slack,
            )

        async def call(what: str, op: Awaitable[bytes | None]) -> bytes | None:
            keys.counters[what] += 1
            return await op  # the store bounds each call by sessionStore.timeout

        async def claim(value: bytes, life: int, *, over: bool) -> StoredEntry | None:
            """``SET NX``: ``None`` when ours is stored, else the first writer's entry.
            ``over``: the value there is not an entry (hostile or damaged): replace it."""
            if over:
                await call("moves", store.move_key(member, b"", value, life))
                return None
            return self._decoded(await call("claims", store.claim_key(member, value, life)))

        async def swap(what: str, expect: BackendId, e: StoredEntry, now: float) -> StoredEntry:
            """Compare-and-set: write ``e`` over an entry still on ``expect`` (or none);
            the entry there afterwards, ``e`` or what another replica wrote first."""
            prefix, value = backend_prefix(expect), encode_entry(e)
            got = await call(what, store.move_key(member, prefix, value, ttl(e, now)))
            after = self._decoded(got) or e
            if after.backend != e.backend:
                keys.counters["lost"] += 1
            return after

        try:
            if self._local(t, h) is None:
                # A miss: claim a placement outright. An entry already there comes back
                # instead (SET NX GET), so a miss costs one round-trip either way.
                wall = self._wall()
                bid = self._place(snap, h, wall)
                if bid is None:
                    return None
                fresh = StoredEntry(bid, wall, wall)
                value, life = encode_entry(fresh), ttl(fresh, wall)
                raw = await call("claims", store.claim_key(member, value, life))
                stored = self._decoded(raw)
                if stored is None:
                    if raw is not None:
                        await claim(value, life, over=True)
                    return self._adopt(t, h, fresh, self._local(t, h), self._wall(), None)
                keys.counters["adopted"] += 1
            else:
                raw = await call("reads", store.get_key(member))
                stored = self._decoded(raw)
            damaged = raw is not None and stored is None
            wall = self._wall()
            local = self._local(t, h)
            cur = merge(local, stored)
            if cur is not None:
                d = self._decide(snap, cur.backend, h, cur.last_seen, cur.created, wall)
            if cur is None or d.reason is _EXPIRED:
                bid = self._place(snap, h, wall)
                if bid is None:
                    return None
                fresh = StoredEntry(bid, wall, wall)
                value, life = encode_entry(fresh), ttl(fresh, wall)
                if cur is None:
                    won = await claim(value, life, over=damaged)
                else:  # expired: a new session, unless another replica renewed it first
                    prefix = backend_prefix(cur.backend)
                    got = await call("moves", store.move_key(member, prefix, value, life))
                    won = None if got == value else self._decoded(got)
                if won is not None:
                    keys.counters["lost"] += 1
                return self._adopt(t, h, won or fresh, local, self._wall(), None)
            reason, new = d.reason, d.backend
            if reason is None or (new is None and self._stays_draining(reason, cur.backend)):
                if stored is None:  # the store lost it (or never had it): publish ours
                    value, life = encode_entry(cur), ttl(cur, wall)
                    cur = await claim(value, life, over=damaged) or cur
                elif stored.restored:  # trusted from now on: no write-back may replace it
                    unmarked = StoredEntry(cur.backend, cur.created, cur.last_seen)
                    cur = await swap("confirms", cur.backend, unmarked, wall)
                return self._adopt(t, h, cur, local, self._wall(), None)
            if new is None:
                return None
            after = await swap("moves", cur.backend, StoredEntry(new, cur.created, wall), wall)
            if after.backend != new:
                return self._adopt(t, h, after, local, self._wall(), None)
            if new != cur.backend:
                self._migrations[reason] += 1
            return self._adopt(t, h, after, local, self._wall(), (reason, cur.backend))
        except Exception:  # any failure of the store: local tables, never an error page
            keys.failed(self._wall())
            self._store_stats["fallbacks"] += 1
            self._cluster = None
            placed = self._learned(snap, t, h, self._wall(), shared=False)
            assert not isinstance(placed, Coroutine)
            return placed

    def _publish(self, snap: Snapshot, t: LearnedTable, h: int, bid: BackendId) -> None:
        """The app set its cookie through this replica: write the key's entry to the store
        now (in the background), not at the next write-back, so that a client without
        the companion finds it on any replica from its next request on. The app's own
        ``Set-Cookie`` says where the session lives, so the entry is written whatever
        was there."""
        keys, spawn = self._shared, self._spawn
        if keys is None or spawn is None or self._keys_store is None:
            return
        if not keys.up:
            self._alone = True  # the next write-back writes it (its TOUCH)
            return
        spawn(self._publish_step(snap, t, h, bid))

    async def _publish_step(self, snap: Snapshot, t: LearnedTable, h: int, bid: BackendId) -> None:
        keys, store, settings = self._shared, self._keys_store, snap.plan.session_store
        if keys is None or store is None or settings is None:
            return
        a = snap.affinity
        wall = self._wall()
        e = StoredEntry(bid, wall, wall)
        life = entry_ttl_ms(
            e,
            wall,
            idle_timeout=a.idle_timeout,
            absolute_timeout=a.absolute_timeout,
            slack=settings.ttl_slack,
        )
        keys.counters["published"] += 1
        member = member_of(TABLE_CODES[t.name], h)
        try:
            await store.move_key(member, b"", encode_entry(e), life)  # "" matches any entry
        except Exception:
            keys.failed(self._wall())
            self._store_stats["fallbacks"] += 1
            self._cluster = None
            self._alone = True  # the next write-back writes it (its TOUCH)
            return
        i = t.find(h)
        if i >= 0 and self._ids[t.backend(i)] == bid:
            t.check(i, wall)

    def _decoded(self, raw: bytes | None) -> StoredEntry | None:
        e = decode_entry(raw)
        if raw is not None and e is None:
            assert self._shared is not None
            self._shared.counters["corrupt"] += 1
        return e

    def _local(self, t: LearnedTable, h: int) -> StoredEntry | None:
        i = t.find(h)
        if i < 0:
            return None
        return StoredEntry(self._ids[t.backend(i)], t.created(i), t.last_seen(i))

    def _adopt(
        self,
        t: LearnedTable,
        h: int,
        e: StoredEntry,
        local: StoredEntry | None,
        wall: float,
        move: tuple[Reason, BackendId] | None,
    ) -> Placed:
        """Make the local table agree with entry ``e`` (checked now); the headers for the
        request: the move this replica made, or the loss the store's entry implies."""
        book = self._book
        idx = book.index(e.backend)
        i = t.find(h)
        old = -1 if i < 0 else t.backend(i)
        if i >= 0 and (old != idx or abs(t.created(i) - e.created) > 0.1):
            t.remove(h)
            i = -1
        if i < 0:
            i = t.insert(h, idx, wall, created=e.created)
        else:
            t.touch(i, wall)
        t.check(i, wall)
        self._note(TABLE_CODES[t.name], h, idx, wall, new=old < 0, moved_from=old)
        if move is not None:
            return e.backend, moved_header(*move)
        if unannounced_move(local, e):
            # Decided alone (here, or by the replicas while the store was away), and
            # disagreed: the session is news to its backend, so say so, as a failover would.
            assert local is not None
            self._migrations[Reason.FAILOVER] += 1
            return e.backend, moved_header(Reason.FAILOVER, local.backend)
        return e.backend, NO_HEADERS
