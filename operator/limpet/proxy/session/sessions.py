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

Concurrency: one book per process, used from the event loop only; :meth:`sweep` runs on a
periodic timer and examines a bounded number of entries per table per call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from limpet.affinity import AffinitySettings, AffinityType, BackendId

from .learned import LearnedTable

TABLE_NAMES = {
    AffinityType.COOKIE: "cookie",
    AffinityType.APP_COOKIE: "app-cookie",
    AffinityType.HEADER: "header",
    AffinityType.QUERY: "query",
    AffinityType.CLIENT_IP: "client-ip",
}


TABLE_CODES = {
    "cookie": ord("C"),
    "app-cookie": ord("A"),
    "header": ord("H"),
    "query": ord("Q"),
    "client-ip": ord("I"),
}
"""One byte per table, prefixed to a session's key in the shared store."""


def sid_hash(session_id: bytes) -> int:
    """The cookie-session tracker's key: the random session id's first 8 bytes."""
    return int.from_bytes(session_id[:8], "little")


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

    __slots__ = ("_capacity", "_epoch", "ids", "loads", "numbers", "requests", "sessions", "tables")

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

    def last_seen(
        self, mode: AffinityType, h: int, bid: BackendId, affinity: AffinitySettings
    ) -> float | None:
        """When this process last saw session ``h`` of ``mode`` on ``bid`` (``None``: not there)."""
        t = self.table(mode, affinity)
        i = t.find(h)
        if i >= 0 and self.ids[t.backend(i)] == bid:
            return t.last_seen(i)
        return None

    def sweep(self, wall: float, *, budget: int) -> int:
        """Expire idle and too-old entries of every table (a bounded step of each)."""
        return sum(t.sweep(wall, budget=budget) for t in self.tables.values())

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
