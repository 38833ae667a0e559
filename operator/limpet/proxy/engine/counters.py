"""The engine's coarse clock and its counters: leaves every engine module may import.

One :class:`Clock` and one :class:`EngineStats` per process, created by the server and
read and written from the event loop only. Per-backend figures (status classes, upstream
errors, the duration histogram) live in ``backend_stats.py``, keyed by backend id here.
"""

from __future__ import annotations

from collections.abc import Collection

from limpet.proxy.engine.backend_stats import BackendCounters, backends_dict, prune


class Clock:
    """A coarse clock: the sweep writes ``now`` (loop time) every tick; the hot path reads it
    instead of calling ``loop.time()`` for every deadline."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


class EngineStats:
    """Per-process counters of the data path. Plain integer attributes: incrementing one
    is the cheapest thing Python can do."""

    __slots__ = (
        "backends",
        "broken_responses",
        "connections_accepted",
        "connections_active",
        "connections_rejected",
        "local_responses",
        "requests",
        "responses",
        "retries",
        "timeouts",
        "timing",
        "tunnels",
        "upstream_connect_failures",
        "upstream_connects",
        "upstream_reuses",
    )

    def __init__(self, *, timing: bool = True) -> None:
        self.timing = timing  # the request-duration histogram (--no-latency-histogram)
        self.backends: dict[str, BackendCounters] = {}
        self.connections_accepted = 0
        self.connections_active = 0
        self.connections_rejected = 0
        self.requests = 0
        self.responses = 0
        self.retries = 0
        self.tunnels = 0
        self.broken_responses = 0
        self.upstream_connects = 0
        self.upstream_connect_failures = 0
        self.upstream_reuses = 0
        self.local_responses: dict[int, int] = {}
        self.timeouts: dict[str, int] = {}

    def local(self, status: int) -> None:
        self.local_responses[status] = self.local_responses.get(status, 0) + 1

    def timeout(self, kind: str) -> None:
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def backend(self, backend_id: str) -> BackendCounters:
        b = self.backends.get(backend_id)
        if b is None:
            b = self.backends[backend_id] = BackendCounters()
        return b

    def answered(self, backend_id: str, status: int, started: float) -> None:
        """A routed request's answer is out; ``started`` is its ``perf_counter`` start
        (0.0 when not timed)."""
        b = self.backends.get(backend_id)
        if b is None:
            b = self.backend(backend_id)
        b.answered(status, started)

    def as_dict(self, *, keep: Collection[str] | None = None) -> dict[str, object]:
        """The JSON form; ``keep`` (the plan's backend ids) forgets the backends gone."""
        if keep is not None:
            prune(self.backends, keep)
        return {
            "connections_accepted": self.connections_accepted,
            "connections_active": self.connections_active,
            "connections_rejected": self.connections_rejected,
            "requests": self.requests,
            "responses": self.responses,
            "retries": self.retries,
            "tunnels": self.tunnels,
            "broken_responses": self.broken_responses,
            "upstream_connects": self.upstream_connects,
            "upstream_connect_failures": self.upstream_connect_failures,
            "upstream_reuses": self.upstream_reuses,
            "local_responses": {str(k): v for k, v in sorted(self.local_responses.items())},
            "timeouts": dict(sorted(self.timeouts.items())),
            "backends": backends_dict(self.backends, timed=self.timing),
        }
