"""Passive health: a backend whose connects fail is marked down locally, with back-off.

Data flow: the engine reports each upstream connect outcome to the router, which calls
:meth:`PassiveHealth.failed` (connect refused, reset or timeout) or
:meth:`PassiveHealth.succeeded`. While a backend is down the router treats it as failed:
no new sessions go there and its sessions fail over (reason ``failover``). The down
period starts at ``base`` seconds and doubles with every consecutive failure, capped at
``cap``. When it expires the backend is *probing*: it is eligible again, and the next
outcome decides: a success marks it up and resets the back-off, a failure marks it down
for the next, longer period. There is no active probe traffic: real requests probe.

This is local knowledge of one proxy process; the plan (from the operator) remains the
authority on membership. Single-threaded: called from the event loop only. Times come
from a monotonic clock passed in by the caller.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from limpet.affinity import BackendId


class HealthState(enum.Enum):
    UP = "up"
    DOWN = "down"
    PROBING = "probing"


@dataclass(slots=True)
class _Record:
    failures: int
    down_until: float


@dataclass(frozen=True, slots=True)
class HealthView:
    state: HealthState
    consecutive_failures: int
    down_for: float  # seconds left in the current down period (0 unless DOWN)


class PassiveHealth:
    """Per-backend down marks with capped exponential back-off and probe-on-expiry."""

    __slots__ = ("_base", "_cap", "_down", "_down_until", "_records", "generation")

    def __init__(self, *, base: float = 1.0, cap: float = 30.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError("health back-off needs 0 < base <= cap")
        self._base = base
        self._cap = cap
        self._records: dict[str, _Record] = {}
        # The set of backends down now, valid until ``_down_until`` or the next change.
        self._down: frozenset[BackendId] = frozenset()
        self._down_until = -math.inf
        # Bumped whenever a backend goes down, so routing caches know to revalidate.
        self.generation = 0

    def backoff(self, failures: int) -> float:
        """Down period after ``failures`` consecutive failures (1 -> base)."""
        if failures < 1:
            return 0.0
        return min(self._cap, self._base * 2.0 ** min(failures - 1, 62))

    def failed(self, backend: str, now: float) -> None:
        rec = self._records.get(backend)
        if rec is None:
            rec = self._records[backend] = _Record(0, 0.0)
        elif now < rec.down_until:
            # Connects that were already in flight when it went down: same outage.
            return
        rec.failures += 1
        rec.down_until = now + self.backoff(rec.failures)
        self.generation += 1
        self._down_until = -math.inf

    def succeeded(self, backend: str) -> None:
        if self._records and self._records.pop(backend, None) is not None:
            self._down_until = -math.inf

    def available(self, backend: str, now: float) -> bool:
        """False only while ``backend`` is inside a down period."""
        if not self._records:
            return True
        rec = self._records.get(backend)
        return rec is None or now >= rec.down_until

    def any_down(self) -> bool:
        """Whether any backend has a record (down, or probing after a down period)."""
        return bool(self._records)

    def down(self, now: float) -> frozenset[BackendId]:
        """The backends inside a down period at ``now``.

        Recomputed only when a record changes or a down period ends, so a caller may ask
        on every request while something is down.
        """
        if now < self._down_until:
            return self._down
        down = [(b, r.down_until) for b, r in self._records.items() if now < r.down_until]
        self._down = frozenset(BackendId(b) for b, _ in down)
        self._down_until = min((until for _, until in down), default=math.inf)
        return self._down

    def state(self, backend: str, now: float) -> HealthView:
        rec = self._records.get(backend)
        if rec is None:
            return HealthView(HealthState.UP, 0, 0.0)
        if now < rec.down_until:
            return HealthView(HealthState.DOWN, rec.failures, rec.down_until - now)
        return HealthView(HealthState.PROBING, rec.failures, 0.0)

    def forget(self, keep: set[str]) -> None:
        """Drop records of backends no longer in the plan."""
        for b in [b for b in self._records if b not in keep]:
            del self._records[b]
            self._down_until = -math.inf
