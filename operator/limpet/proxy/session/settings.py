"""The session layer's per-process knobs that are not in the plan.

Pure value, no I/O: the process builds one :class:`RouterSettings` and passes it to
:class:`~limpet.proxy.session.routing.SessionRouter`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    """Session-layer knobs that are not in the plan (per process)."""

    learned_capacity: int = 1_000_000
    """Entries per learned table (one table per key mode, one for cookie sessions)."""
    route_cache_size: int = 65536
    health_backoff: float = 1.0
    health_backoff_cap: float = 30.0
    sweep_budget: int = 65536
    """Entries each table examines per :meth:`SessionRouter.sweep` call."""

    def __post_init__(self) -> None:
        if self.learned_capacity < 1 or self.route_cache_size < 0 or self.sweep_budget < 1:
            raise ValueError("router capacities must be positive")
