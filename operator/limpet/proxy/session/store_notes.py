"""The session router's side of the shared store's write-back: what it notes per request,
the batch it hands over, and what it does with the answer (a base class of
:class:`~.routing.SessionRouter`).

Data flow: every session the router sees (placed, kept, moved) is noted in a dict keyed
by its member (:meth:`StoreNotes._note`; no I/O). Once per last-seen step the process
layer's ``StoreSync`` takes the notes as one :class:`~.store.Batch`
(:meth:`StoreNotes.take_touches`: each session's backend and last-seen time for the
counts, and each learned key's entry for ``shared_keys``), and reports back either the
cluster-wide counts (:meth:`StoreNotes.store_counts`), which bounded loads then caps on
(the router reports itself behind rather than up when learned keys were routed alone
after the batch was taken: :meth:`StoreNotes.store_behind`, and the next write-back
follows at once), or a failure (:meth:`StoreNotes.store_failed`): the router uses its
own counts and tables again, and the batch is kept (bounded) for the next try. It also
hands the router the store client that learned keys use (:meth:`StoreNotes.attach_keys`).

Concurrency: the event loop only, like the router.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Final

from limpet.affinity import BackendId

from .sessions import TABLE_CODES, SessionBook
from .shared_keys import SharedKeys, StoredEntry, backend_prefix, encode_entry, entry_ttl_ms
from .snapshot import Snapshot
from .store import Batch, KeyTouch, SessionStore, Touch

MAX_KEY: Final = (1 << 64) - 1
STORE_BACKLOG: Final = 1 << 18
"""Sessions kept for the store while it is away; beyond this the oldest news is dropped."""


class StoreNotes:
    """The write-back half of the session router (see the module docstring)."""

    # Provided by the router.
    _book: SessionBook
    _ids: list[BackendId]
    _numbers: dict[str, int]
    _snap: Snapshot | None
    _wall: Callable[[], float]
    _touched: dict[bytes, tuple[int, float, int]] | None
    _cluster: dict[BackendId, int] | None
    _store_stats: dict[str, int]
    _shared: SharedKeys | None
    _keys_store: SessionStore | None
    _spawn: Callable[[Coroutine[Any, Any, None]], None] | None
    _alone: bool
    _behind: bool

    def install(self, snap: Snapshot) -> None:
        raise NotImplementedError

    def _note(
        self, code: int, h: int, idx: int, wall: float, *, new: bool = False, moved_from: int = -1
    ) -> None:
        """Remember a session seen (placed, moved) for the next store write-back."""
        touched = self._touched
        if touched is None:
            return
        member = bytes((code,)) + (h & MAX_KEY).to_bytes(8, "little")
        prev = touched.get(member)
        if prev is not None and prev[2] >= 0 and moved_from >= 0:
            moved_from = prev[2]
        if moved_from == idx:
            moved_from = -1
        touched[member] = (idx, wall, moved_from)
        cluster = self._cluster
        if cluster is not None and (new or moved_from >= 0):
            bid = self._ids[idx]
            cluster[bid] = cluster.get(bid, 0) + 1
            if moved_from >= 0:
                gone = self._ids[moved_from]
                cluster[gone] = max(0, cluster.get(gone, 0) - 1)

    def store_attached(self) -> None:
        """A store is configured: start noting sessions for it."""
        if self._touched is None:
            self._touched = {}

    def store_detached(self) -> None:
        """No store (any more): local counts, nothing noted."""
        self._touched = None
        self._cluster = None
        self.attach_keys(None)

    def attach_keys(
        self,
        store: SessionStore | None,
        spawn: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        """Share learned keys through ``store`` (``None``: local tables only); ``spawn``
        runs a background store write (an app-cookie key learned from a response)."""
        self._keys_store = store
        self._spawn = spawn
        if store is None:
            self._shared = None
            return
        if self._shared is None:
            self._shared = SharedKeys(self._wall())
            snap = self._snap
            if snap is not None:
                self.install(snap)  # computes which backends' copies may be trusted

    def take_touches(self) -> Batch:
        """The sessions noted since the last call, as one write-back batch."""
        self.store_attached()
        touched, self._touched = self._touched or {}, {}
        self._alone = False
        self._store_stats["written"] += len(touched)
        ids = self._ids
        snap = self._snap
        wall = self._wall()
        a = None if snap is None else snap.affinity
        live = None if a is None else (a.idle_timeout or a.absolute_timeout)
        store = None if snap is None else snap.plan.session_store
        slack = 60.0 if store is None else store.ttl_slack
        return Batch(
            touches=[
                Touch(m, ids[i], seen, None if f < 0 else ids[f])
                for m, (i, seen, f) in touched.items()
            ],
            backends=[] if snap is None else [b.id for b in snap.plan.backends],
            now=wall,
            live_since=None if live is None else wall - live,
            ttl=max(1, int((live or 86400.0) + slack)),
            keys=[] if self._shared is None or snap is None else self._key_touches(touched, snap),
        )

    def _key_touches(
        self, touched: Mapping[bytes, tuple[int, float, int]], snap: Snapshot
    ) -> list[KeyTouch]:
        """The learned keys among ``touched``, as their entries stand in the local tables."""
        tables = {TABLE_CODES[t.name]: t for t in self._book.tables.values()}
        a = snap.affinity
        store = snap.plan.session_store
        slack = 60.0 if store is None else store.ttl_slack
        wall = self._wall()
        out = []
        for member in touched:
            t = tables.get(member[0])
            if t is None or member[0] == TABLE_CODES["cookie"]:
                continue
            i = t.find(int.from_bytes(member[1:], "little"))
            if i < 0:
                continue
            e = StoredEntry(self._ids[t.backend(i)], t.created(i), t.last_seen(i))
            life = entry_ttl_ms(
                e,
                wall,
                idle_timeout=a.idle_timeout,
                absolute_timeout=a.absolute_timeout,
                slack=slack,
            )
            out.append(KeyTouch(member, encode_entry(e), backend_prefix(e.backend), life))
        return out

    def store_counts(self, counts: Mapping[str, int]) -> None:
        """The store answered: cap bounded loads against these cluster-wide counts."""
        self._store_stats["flushes"] += 1
        if self._shared is not None:
            self._shared.answered(self._wall())
        self._cluster = {BackendId(b): n for b, n in counts.items()}
        # Learned keys routed alone after the batch was taken are not in the store yet:
        # another replica that reads one finds an older backend, or none, and routes
        # there unannounced. Until a write-back carries them this replica reports the
        # store in use as behind, not up, and the next write-back follows at once.
        self._behind = self._alone

    def store_behind(self) -> bool:
        """Whether the last write-back that answered left out learned keys routed without
        the store (its calls failing) after its batch was taken."""
        return self._behind

    def store_failed(self, batch: Batch) -> None:
        """The store did not answer: local counts again; keep the batch for the next try."""
        self._store_stats["fallbacks"] += 1
        self._cluster = None
        if self._shared is not None:
            self._shared.failed(self._wall())
        self.requeue_touches(batch)

    def requeue_touches(self, batch: Batch) -> None:
        """Put back a batch that did not reach the plan's store, for the next write-back
        (a session noted since keeps its newer note)."""
        touched = self._touched
        if touched is None:
            return
        numbers = self._numbers
        for t in batch.touches:
            if len(touched) >= STORE_BACKLOG:
                self._store_stats["dropped"] += 1
                continue
            if t.member not in touched and t.backend in numbers:
                f = -1 if t.moved_from is None else numbers.get(t.moved_from, -1)
                touched[t.member] = (numbers[t.backend], t.last_seen, f)

    def _store_figures(self) -> dict[str, int]:
        up = self._cluster is not None and not self._behind
        out = {**self._store_stats, "up": int(up), "behind": int(self._behind)}
        shared = self._shared
        if shared is not None:
            for name, n in shared.counters.items():
                out["key" + name.capitalize()] = n
        return out
