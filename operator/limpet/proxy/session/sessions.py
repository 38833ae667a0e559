"""This process's book of sessions: backend numbering, live sessions and requests per
backend, and the learned tables (one per key mode, plus the cookie-session tracker).

Data flow: the router numbers every backend it meets (:meth:`SessionBook.index`; numbers
are never reused, so tables can store a small integer). Every learned table shares one
``sessions`` list, so a backend's live-session count is one list read: an entry adds one
when it is inserted, moves its one when re-pinned and takes it away when it is removed,
swept for idleness (``idleTimeout``) or age (``absoluteTimeout``), or evicted. These are
the loads that bounded loads reads (:attr:`SessionBook.loads`, a view, never a copy):
sessions this process has seen within ``idleTimeout``, not every session ever seen, and
not other replicas' sessions. Cookie sessions live in their signed cookie; the tracker
only counts them and remembers when this process last saw each one.

Read side (a stats request, never the request path): :meth:`SessionBook.sketches` turns
the tables into each backend's bottom-k sketch of session hashes, from which the operator
counts distinct sessions across replicas; :meth:`SessionBook.seen_within` counts each
backend's sessions seen recently (a Draining backend's ``drainLive``).

Concurrency: one book per process, used from the event loop only; :meth:`sweep` runs on a
periodic timer and examines a bounded number of entries per table per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

import numpy as np

from limpet.affinity import AffinitySettings, AffinityType, BackendId

from .learned import LearnedTable

TABLE_NAMES = {
    AffinityType.COOKIE: "cookie",
    AffinityType.APP_COOKIE: "app-cookie",
    AffinityType.HEADER: "header",
    AffinityType.QUERY: "query",
    AffinityType.CLIENT_IP: "client-ip",
}


SKETCH_K: Final = 256
"""Hashes per backend in a stats sketch: a 6.3 % standard error above ``k`` sessions,
about 4.6 kB of JSON per backend (docs/plan.md, "Stats the operator reads")."""
SKETCH_SHIFT: Final = 4
"""A table key (60 bits) shifted up to a 64-bit sketch hash."""

TABLE_CODES = {
    "cookie": ord("C"),
    "app-cookie": ord("A"),
    "header": ord("H"),
    "query": ord("Q"),
    "client-ip": ord("I"),
}
"""One byte per table, prefixed to a session's key in the shared store."""


_FROM_BYTES: Final = int.from_bytes
"""Bound once: compiled code calls it directly, where ``int.from_bytes(...)`` first looks
the class method up on ``int`` (about half of the call's 1 200 instructions)."""


def sid_hash(session_id: bytes) -> int:
    """The cookie-session tracker's key: the random session id's first 8 bytes."""
    return _FROM_BYTES(session_id[:8], "little")


class Loads(Mapping[BackendId, int]):
    """Live sessions per backend id, as bounded loads reads them (a view, no copy)."""

    __slots__ = ("_counts", "_numbers")

    def __init__(self, counts: list[int], numbers: dict[str, int]) -> None:
        self._counts = counts
        self._numbers = numbers

    def get(self, key: BackendId, default: int | None = 0) -> int:  # type: ignore[override]
        i = self._numbers.get(key)
        # Every numbered backend has a count (SessionBook.index appends one).
        return 0 if i is None else self._counts[i]

    def __getitem__(self, key: BackendId) -> int:
        return self.get(key)

    def __iter__(self) -> Iterator[BackendId]:
        return iter([BackendId(b) for b in self._numbers])

    def __len__(self) -> int:
        return len(self._numbers)


class SessionBook:
    """Backend numbers, per-backend counters and the learned tables of one process."""

    __slots__ = (
        "_capacity",
        "_epoch",
        "_last_mode",
        "_last_table",
        "ids",
        "loads",
        "numbers",
        "requests",
        "sessions",
        "tables",
    )

    def __init__(self, *, capacity: int, epoch: float) -> None:
        self._capacity = capacity
        self._epoch = epoch
        self.numbers: dict[str, int] = {}
        """Backend number by id."""
        self.ids: list[BackendId] = []
        """Backend id by number."""
        self.sessions: list[int] = []
        """Live sessions by backend number (shared by every table)."""
        self.requests: list[int] = []
        """Requests routed, by backend number."""
        self.tables: dict[AffinityType, LearnedTable] = {}
        self.loads = Loads(self.sessions, self.numbers)
        # The table :meth:`table` answered last, by identity: a dict look-up by an enum
        # member calls the enum's Python-level ``__hash__`` (about 1 000 instructions),
        # and a proxy's requests mostly name the same mode again.
        self._last_mode: AffinityType | None = None
        self._last_table: LearnedTable | None = None

    def index(self, bid: str) -> int:
        """The backend's number (assigned on first sight, never reused)."""
        i = self.numbers.get(bid)
        if i is None:
            i = self.numbers[bid] = len(self.ids)
            self.ids.append(BackendId(bid))
            self.requests.append(0)
            if len(self.sessions) <= i:
                self.sessions.append(0)
        return i

    def count(self, i: int) -> int:
        """Live sessions on backend number ``i``."""
        return self.sessions[i] if i < len(self.sessions) else 0

    def table(self, mode: AffinityType, affinity: AffinitySettings) -> LearnedTable:
        """The learned table of ``mode`` (created on first use with the plan's timeouts)."""
        last = self._last_table
        if mode is self._last_mode and last is not None:
            return last
        t = self.tables.get(mode)
        if t is None:
            t = self.tables[mode] = LearnedTable(
                name=TABLE_NAMES[mode],
                capacity=self._capacity,
                idle_timeout=affinity.idle_timeout,
                absolute_timeout=affinity.absolute_timeout,
                epoch=self._epoch,
                counts=self.sessions,
            )
        self._last_mode, self._last_table = mode, t
        return t

    def adopt(self, backends: Iterable[BackendId], affinity: AffinitySettings) -> None:
        """A new plan: number its backends, give every table its timeouts."""
        for bid in backends:
            self.index(bid)
        for t in self.tables.values():
            t.set_timeouts(
                idle_timeout=affinity.idle_timeout, absolute_timeout=affinity.absolute_timeout
            )

    def track(
        self,
        mode: AffinityType,
        h: int,
        bid: BackendId,
        wall: float,
        affinity: AffinitySettings,
        *,
        created: float | None = None,
    ) -> int:
        """Count session ``h`` of ``mode`` on ``bid`` as seen at ``wall`` (inserting it,
        created at ``created``, when new). Returns the backend number."""
        idx = self.index(bid)
        t = self.table(mode, affinity)
        i = t.find(h)
        if i < 0:
            t.insert(h, idx, wall, created=created)
        elif t.backend(i) != idx:
            t.move(i, idx, wall)
        else:
            t.touch(i, wall)
        return idx

    def insert(
        self, mode: AffinityType, h: int, bid: BackendId, wall: float, affinity: AffinitySettings
    ) -> int:
        """Count a session just created (a fresh random id, so :meth:`track`'s look-up is
        skipped; an existing entry would be re-pinned all the same). Returns the backend
        number."""
        idx = self.index(bid)
        self.table(mode, affinity).insert(h, idx, wall)
        return idx

    def created(
        self, mode: AffinityType, h: int, bid: BackendId, affinity: AffinitySettings
    ) -> float | None:
        """When session ``h`` of ``mode`` began on ``bid``, as this process knows it."""
        t = self.table(mode, affinity)
        i = t.find(h)
        if i >= 0 and self.ids[t.backend(i)] == bid:
            return t.created(i)
        return None

    def entry(
        self, mode: AffinityType, h: int, bid: BackendId, affinity: AffinitySettings
    ) -> tuple[LearnedTable, int]:
        """Session ``h`` of ``mode``: its table and entry index, the index -1 unless the
        entry is there and on ``bid``. A caller that reads the entry (last seen) and then
        marks it seen looks it up once."""
        t = self.table(mode, affinity)
        i = t.find(h)
        if i >= 0 and self.ids[t.backend(i)] != bid:
            i = -1
        return t, i

    def sweep(self, wall: float, *, budget: int) -> int:
        """Expire idle and too-old entries of every table (a bounded step of each)."""
        return sum(t.sweep(wall, budget=budget) for t in self.tables.values())

    def sketches(self, k: int = SKETCH_K) -> dict[int, list[int]]:
        """Per backend number, a bottom-``k`` sketch of its sessions in every table: the
        ``k`` smallest distinct 64-bit session hashes, ascending (all when fewer).

        A table keeps a key's low 60 bits; shifted up by 4 they are a uniform 64-bit
        hash, the same for the same session on every replica (its random id's first 8
        bytes for a cookie session, the key's hash for a learned or AppCookie one).
        Computed at read time from the tables, never on the request path."""
        parts: dict[int, list[np.ndarray[Any, np.dtype[np.uint64]]]] = {}
        for t in self.tables.values():
            for b, keys in t.smallest_keys(k).items():
                parts.setdefault(b, []).append(keys)
        return {
            b: (np.unique(np.concatenate(p))[:k] << np.uint64(SKETCH_SHIFT)).tolist()
            for b, p in parts.items()
        }

    def drain_live(
        self,
        wall: float,
        *,
        min_idle: float,
        cookie_step: int | None,
        companion_step: int | None,
    ) -> list[int]:
        """Per backend number, the sessions a drain keeps where they are: those last seen
        here within ``min_idle``. A session held by a signed cookie is answered from the
        route cache between two refreshes without touching its last-seen time, so the
        router measures its idleness from last seen plus the cookie's step; so does
        this count (which is then high by up to one step, never low)."""
        windows = dict.fromkeys(TABLE_NAMES.values(), min_idle)
        if cookie_step is not None:
            windows["cookie"] += cookie_step
        if companion_step is not None:
            windows["app-cookie"] += companion_step
        return self.seen_within(wall, windows)

    def seen_within(self, wall: float, windows: Mapping[str, float]) -> list[int]:
        """Per backend number, the sessions whose last-seen time is within
        ``windows[table name]`` seconds of ``wall`` (a table not named counts none)."""
        out = [0] * len(self.ids)
        for t in self.tables.values():
            window = windows.get(t.name)
            if window is None:
                continue
            for b, n in enumerate(t.seen_after(wall - window).tolist()):
                if b < len(out):
                    out[b] += n
        return out

    def table_stats(self) -> dict[str, dict[str, int]]:
        """Entries, capacity, evictions and expiries per table, by table name."""
        return {
            t.name: {
                "entries": len(t),
                "capacity": t.capacity,
                "evicted": t.evicted,
                "expired": t.expired,
            }
            for t in self.tables.values()
        }
