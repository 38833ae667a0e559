"""Bounded learned session tables (app-cookie, header, query, client-IP, cookie tracking).

Data flow: the router hashes a request's session key with the affinity core's stable
64-bit key hash, then asks a :class:`LearnedTable` for the entry under that hash. An
entry is a backend index (the router's interned backend number), a created time, a
last-seen time and the time it was last checked against the shared store (0: never;
:mod:`.shared_keys` says when a checked copy may be trusted without asking again). The
router reads and updates entries on every request; one periodic
sweeper (:meth:`LearnedTable.sweep`, a plain method the event loop calls on a timer)
drops entries that are idle for longer than the idle timeout or older than the absolute
timeout; inserting into a full table first evicts the least recently seen 1/64 of a
window of it (below).

Layout, chosen for memory (the figure is measured in docs/proxy.md): an index
(:mod:`.key_index`: in C, keyed open addressing in 256 shards, where built) maps the key
hash, folded to 60 bits, to an entry number, and the entry's fields live in parallel
``array`` columns (no per-entry tuple, no per-request object churn: updating last seen
writes a C integer into an array). The columns grow by an
eighth at a time (free entries, whose backend is ``FREE``), never beyond the capacity;
an insert takes the index of the entry removed last (a free stack holds those) or,
when none is free, the next never-used one (a cursor, so that the common insert of a
growing table pops nothing). Times are stored as
unsigned deciseconds since the table's epoch; last seen is rounded up, so a session's
idleness is never overstated and it is never moved a fraction of a tick early.

A full table evicts window by window: an insert that finds it full drops the least
recently seen 1/64 of the next ``EVICT_WINDOW`` entries (a cursor walks the columns; the
last window takes the rest of them, so it holds fewer than twice that), a fraction of a
millisecond, where choosing 1/64 of the whole table stalled the loop 15 to 30 ms at a
million entries. An entry is evicted only when it is among the least recently seen
1/64 of its window; a table smaller than two windows is one window, exact LRU.

Concurrency: single-threaded, one table per proxy process, used from the event loop
only. Sweeps are incremental (a bounded number of entries per call) and vectorised with
numpy, so a sweep of a million entries never stalls the loop for long.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from .key_index import KeyIndex, new_key_index

FREE: Final = 0xFFFFFFFF
KEY_MASK: Final = (1 << 60) - 1
_TICKS: Final = 10.0  # time columns count deciseconds
EVICT_FRACTION: Final = 64
EVICT_WINDOW: Final = 1 << 13
"""Entries one eviction examines (the last window up to twice that): 128 victims chosen
from 8 Ki."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A copy of one entry, for tests and introspection (not used on the hot path)."""

    backend: int
    created: float
    last_seen: float


class LearnedTable:
    """A bounded map from a key hash to (backend index, created, last seen)."""

    __slots__ = (
        "_absolute",
        "_backend",
        "_checked",
        "_created",
        "_cursor",
        "_epoch",
        "_evict_at",
        "_free",
        "_fresh",
        "_idle",
        "_index",
        "_keys",
        "_last",
        "_live",
        "capacity",
        "counts",
        "evicted",
        "expired",
        "name",
    )

    def __init__(
        self,
        *,
        name: str,
        capacity: int,
        idle_timeout: float | None,
        absolute_timeout: float | None,
        epoch: float,
        counts: list[int] | None = None,
        index: KeyIndex | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("learned table capacity must be at least 1")
        self.name = name
        self.capacity = capacity
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._epoch = epoch
        self._index = new_key_index() if index is None else index
        self._live = 0
        self._keys = array("Q")
        self._backend = array("I")
        self._created = array("I")
        self._last = array("I")
        self._checked = array("I")
        self._free = array("I")
        self._fresh = 0
        self._cursor = 0
        self._evict_at = 0
        # Sessions per backend index; several tables may share one list, so that the
        # router reads one total per backend without summing tables.
        self.counts: list[int] = [] if counts is None else counts
        self.evicted = 0
        self.expired = 0

    # -- time -----------------------------------------------------------------------------

    def _ticks(self, wall: float) -> int:
        t = int((wall - self._epoch) * _TICKS)
        return 0 if t < 0 else (t if t < FREE else FREE - 1)

    def _ticks_up(self, wall: float) -> int:
        # Last-seen rounds up, so stored idleness never exceeds the real one: a session
        # is never considered idle (and moved) a fraction of a tick early.
        t = math.ceil((wall - self._epoch) * _TICKS)
        return 0 if t < 0 else (t if t < FREE else FREE - 1)

    def set_timeouts(self, *, idle_timeout: float | None, absolute_timeout: float | None) -> None:
        """Adopt the timeouts of a new plan; the next sweeps apply them."""
        self._idle = idle_timeout
        self._absolute = absolute_timeout

    # -- hot path -------------------------------------------------------------------------

    def find(self, key_hash: int) -> int:
        """Entry index for ``key_hash``, or -1."""
        return self._index.get(key_hash & KEY_MASK)

    def backend(self, i: int) -> int:
        return self._backend[i]

    def last_seen(self, i: int) -> float:
        return self._epoch + self._last[i] / _TICKS

    def created(self, i: int) -> float:
        return self._epoch + self._created[i] / _TICKS

    def touch(self, i: int, wall: float) -> None:
        self._last[i] = self._ticks_up(wall)

    def checked(self, i: int) -> float:
        """When entry ``i`` was last checked against the shared store (the epoch: never)."""
        return self._epoch + self._checked[i] / _TICKS

    def check(self, i: int, wall: float) -> None:
        """Entry ``i`` agrees with the shared store as of ``wall`` (rounded up, so that a
        check just after the store was attached is not taken for one before it)."""
        self._checked[i] = self._ticks_up(wall)

    def move(self, i: int, backend: int, wall: float) -> None:
        """Re-pin entry ``i`` to ``backend`` (a migration) and mark it seen."""
        counts = self.counts
        counts[self._backend[i]] -= 1
        self._grow_counts(backend)
        counts[backend] += 1
        self._backend[i] = backend
        self._last[i] = self._ticks_up(wall)

    def insert(
        self, key_hash: int, backend: int, wall: float, *, created: float | None = None
    ) -> int:
        """Add (or re-pin) ``key_hash``; evicts the least recently seen when full.

        ``created`` (default ``wall``) is when the session began, when it is known from
        elsewhere (a companion cookie's issue time)."""
        k = key_hash & KEY_MASK
        index = self._index
        i = index.get(k)
        if i >= 0:
            self.move(i, backend, wall)
            return i
        if self._live >= self.capacity:
            self._evict()
        if self._free:
            i = self._free.pop()
        else:
            i = self._fresh
            if i == len(self._keys):
                self._grow()
            self._fresh = i + 1
        self._keys[i] = k
        self._backend[i] = backend
        self._created[i] = self._ticks(wall if created is None else min(created, wall))
        self._last[i] = self._ticks_up(wall)
        index.set(k, i)  # its checked column is 0: grown so, or reset when released
        self._live += 1
        self._grow_counts(backend)
        self.counts[backend] += 1
        return i

    def remove(self, key_hash: int) -> bool:
        i = self._index.pop(key_hash & KEY_MASK)
        if i < 0:
            return False
        self._release(i)
        return True

    # -- maintenance ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self._live

    def get(self, key_hash: int) -> Entry | None:
        i = self.find(key_hash)
        if i < 0:
            return None
        return Entry(self._backend[i], self.created(i), self.last_seen(i))

    def sessions(self, backend: int) -> int:
        return self.counts[backend] if backend < len(self.counts) else 0

    # -- read time (statistics; never the hot path) ----------------------------------------

    def smallest_keys(self, k: int) -> dict[int, np.ndarray[Any, np.dtype[np.uint64]]]:
        """Per backend number, the ``k`` smallest keys of its entries, ascending.

        Vectorised in two passes: each backend's entries below a threshold that holds
        about ``2k + 64`` of them (keys are uniform hashes) are sorted, and a backend that
        got fewer than it needs (vanishingly rare) is redone from all of its entries.
        A few milliseconds per million entries, on the event loop at a stats read."""
        n = len(self._keys)
        if n == 0:
            return {}
        keys = np.frombuffer(self._keys, dtype=np.uint64)[:n]
        backend = np.frombuffer(self._backend, dtype=np.uint32)[:n]
        try:
            live = backend != FREE
            sizes = np.bincount(backend[live])
            fraction = np.minimum(1.0, (2.0 * k + 64.0) / np.maximum(sizes, 1))
            # One threshold per backend, and 0 for free slots (never a candidate).
            limits = np.append((fraction * float(KEY_MASK + 1)).astype(np.uint64), np.uint64(0))
            slot = np.where(live, backend, len(sizes))
            picked = np.flatnonzero(keys < limits[slot])
            cand_b, cand_k = backend[picked], keys[picked]
            order = np.lexsort((cand_k, cand_b))
            cand_b, cand_k = cand_b[order], cand_k[order]
            out: dict[int, np.ndarray[Any, np.dtype[np.uint64]]] = {}
            for b in np.flatnonzero(sizes).tolist():
                lo, hi = np.searchsorted(cand_b, [b, b + 1])
                got = cand_k[lo : min(hi, lo + k)]
                if len(got) < min(k, int(sizes[b])):
                    got = np.sort(keys[backend == b])[:k]
                out[b] = got.copy()
            return out
        finally:
            del keys, backend  # release the buffer exports before the arrays can change

    def seen_after(self, wall: float) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Per backend number, how many entries were last seen after ``wall``."""
        n = len(self._keys)
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        last = np.frombuffer(self._last, dtype=np.uint32)[:n]
        backend = np.frombuffer(self._backend, dtype=np.uint32)[:n]
        try:
            # Last seen is stored rounded up to a tick, so this never undercounts.
            recent = (last > (wall - self._epoch) * _TICKS) & (backend != FREE)
            return np.bincount(backend[recent])
        finally:
            del last, backend

    def sweep(self, wall: float, *, budget: int = 1 << 16, max_remove: int = 1 << 13) -> int:
        """Expire idle and too-old entries among the next ``budget`` indices.

        Call it on a timer; it resumes where the previous call stopped and wraps
        around, so a full pass over N entries takes about ceil(N / budget) calls.
        Scanning is vectorised (a fraction of a millisecond per 64 Ki entries); each
        removal is an index deletion, cold in a large table, so at most ``max_remove``
        happen per call and the next call resumes at the first entry left. Returns how
        many it removed.
        """
        n = len(self._keys)
        if n == 0 or (self._idle is None and self._absolute is None):
            return 0
        start = self._cursor if self._cursor < n else 0
        end = min(n, start + budget)
        self._cursor = end if end < n else 0
        backend = np.frombuffer(self._backend, dtype=np.uint32)[start:end]
        mask = np.zeros(end - start, dtype=bool)
        if self._idle is not None:
            cut = self._ticks(wall - self._idle)
            mask |= np.frombuffer(self._last, dtype=np.uint32)[start:end] < cut
        if self._absolute is not None:
            cut = self._ticks(wall - self._absolute)
            mask |= np.frombuffer(self._created, dtype=np.uint32)[start:end] < cut
        mask &= backend != FREE
        victims = np.flatnonzero(mask) + start
        del backend, mask  # release the buffer exports before the arrays can change
        if len(victims) > max_remove:
            self._cursor = int(victims[max_remove])
            victims = victims[:max_remove]
        removed = self._drop_all(victims)
        self.expired += removed
        return removed

    def _evict(self) -> None:
        """Drop the least recently seen 1/64 of the next window of entries (see the
        module docstring); every entry of a full table is live (the columns never grow
        past the capacity, which is set once), so this frees room."""
        n = len(self._keys)
        start = self._evict_at if self._evict_at < n else 0
        end = n if n - start < 2 * EVICT_WINDOW else start + EVICT_WINDOW
        self._evict_at = end if end < n else 0
        count = max(1, (end - start) // EVICT_FRACTION)
        if count < end - start:
            last = np.frombuffer(self._last, dtype=np.uint32)[start:end]
            chosen = np.argpartition(last, count)[:count] + start
            del last
        else:
            chosen = np.arange(start, end)
        self.evicted += self._drop_all(chosen)

    def _drop_all(self, chosen: np.ndarray[Any, np.dtype[np.int64]]) -> int:
        """Remove the live entries at the indices ``chosen``; returns how many.

        Vectorised: the columns are reset, the backends counted and the free stack
        extended by numpy, and the index drops the keys in one call. Entry by entry,
        the column items were generic calls from compiled code (an eviction of 128 took
        250 µs, 2 µs of each insert into a full table of a million entries). Every
        buffer export ends before this returns (an exported ``array`` cannot grow)."""
        backend = np.frombuffer(self._backend, dtype=np.uint32)
        chosen = chosen[backend[chosen] != FREE]
        owners = np.bincount(backend[chosen])
        backend[chosen] = FREE
        del backend
        checked = np.frombuffer(self._checked, dtype=np.uint32)
        checked[chosen] = 0
        del checked
        n = len(chosen)
        if self._index.drop(np.frombuffer(self._keys, dtype=np.uint64)[chosen]) != n:
            # A live entry always has its key in the index (as a dict's del, loudly).
            raise RuntimeError(f"learned table {self.name}: an entry's key was not indexed")
        for b in np.flatnonzero(owners).tolist():
            self.counts[b] -= int(owners[b])
        self._free.frombytes(chosen.astype(np.uint32).tobytes())
        self._live -= n
        return n

    def _release(self, i: int) -> None:
        self._live -= 1
        self.counts[self._backend[i]] -= 1
        self._backend[i] = FREE
        self._checked[i] = 0
        self._free.append(i)

    def _grow(self) -> None:
        """Add free entries at the end of the columns: an eighth more (at least 64, at
        most up to the capacity), so that an insert writes five column items instead of
        appending to five arrays (each append a method call from compiled code)."""
        n = len(self._keys)
        add = min(max(64, n >> 3), self.capacity - n)
        self._keys.frombytes(bytes(8 * add))
        self._backend.extend(array("I", [FREE]) * add)
        for column in (self._created, self._last, self._checked):
            column.frombytes(bytes(4 * add))

    def _grow_counts(self, backend: int) -> None:
        if backend >= len(self.counts):
            self.counts.extend([0] * (backend + 1 - len(self.counts)))
