"""The operator's Prometheus metrics and the HTTP listener that serves them.

Data flow: :mod:`.command` builds one :class:`OperatorMetrics` on a registry it passes
in, and hands it to every reconciler (through the kopf runtime). Two kinds of figures:

- **events**, recorded as they happen: each reconcile pass (apply the body, plan, write
  status, hand the plan to the pusher) into ``limpet_operator_reconcile_duration_seconds``
  by result, and each ``PUT /v1/plan`` into ``limpet_operator_push_duration_seconds`` and
  ``limpet_operator_plans_pushed_total`` by result (``ok``, ``conflict`` for a 409,
  ``error`` for anything else);
- **state**, read at scrape time from a :data:`SampleSource` (the live reconcilers, one
  :class:`StickyServiceSample` each): plan version, proxies and proxies out of sync, and
  the sessions the proxies moved by reason, per StickyService, and each backend's pod
  and state (``limpet_operator_backend_info``, to name the proxies' opaque backend
  ids in dashboards). A StickyService that is
  deleted, or a replica that peering paused, simply stops appearing: no stale series.

``limpet_operator_sessions_moved_total`` is the sum of the proxies' own
``limpet_proxy_migrations_total`` counters as last read from their stats (every
``--stats-interval``); a proxy that restarts resets its share, which Prometheus'
``rate``/``increase`` treat as a counter reset.

:func:`serve` runs an aiohttp listener (``--metrics-listen``) with ``GET /metrics`` in
the Prometheus text or OpenMetrics format, as the scraper asks.

Concurrency: everything runs on the operator's event loop, the listener too, so a scrape
reads reconciler state that only that loop writes. Nothing happens at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
PUSH_RESULTS = ("ok", "conflict", "error")
RECONCILE_RESULTS = ("ok", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class StickyServiceSample:
    """What one reconciler reports at scrape time."""

    namespace: str
    name: str
    plan_version: int
    proxies: int
    out_of_sync: int
    moved: Mapping[str, int] = field(default_factory=dict)
    """Sessions moved by reason, summed over the proxies' last stats."""
    backends: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Backend id -> (pod name or "", lifecycle state), for dashboards to name pods."""
    sessions: Mapping[str, int] = field(default_factory=dict)
    """Backend id -> distinct live sessions, counted once across the proxies (status)."""


SampleSource = Callable[[], Iterable[StickyServiceSample]]


class _StateCollector(Collector):
    def __init__(self, source: SampleSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        labels = ["namespace", "stickyservice"]
        services = GaugeMetricFamily(
            "limpet_operator_stickyservices",
            "StickyServices this replica reconciles now (0 on a paused peering standby).",
        )
        version = GaugeMetricFamily(
            "limpet_operator_plan_version",
            "Newest plan version the operator made, per StickyService.",
            labels=labels,
        )
        proxies = GaugeMetricFamily(
            "limpet_operator_proxies", "Proxy pods the plan is pushed to.", labels=labels
        )
        behind = GaugeMetricFamily(
            "limpet_operator_proxies_out_of_sync",
            "Proxy pods not (yet) on the newest plan version.",
            labels=labels,
        )
        moved = CounterMetricFamily(
            "limpet_operator_sessions_moved",
            "Sessions the proxies moved, by reason, per StickyService (from their stats).",
            labels=[*labels, "reason"],
        )
        info = GaugeMetricFamily(
            "limpet_operator_backend_info",
            "1 per backend in the plan: its opaque id (the proxies' backend label), its pod "
            "and its lifecycle state; join on (namespace, stickyservice, backend).",
            labels=[*labels, "backend", "backend_pod", "state"],
        )
        sessions = GaugeMetricFamily(
            "limpet_operator_backend_sessions",
            "Distinct live sessions per backend, each counted once however many proxies "
            "served it (status.backends[].sessions); the proxies' own limpet_proxy_sessions "
            "count a user once per proxy.",
            labels=[*labels, "backend"],
        )
        samples = sorted(self._source(), key=lambda s: (s.namespace, s.name))
        services.add_metric([], len(samples))
        for s in samples:
            key = [s.namespace, s.name]
            version.add_metric(key, s.plan_version)
            proxies.add_metric(key, s.proxies)
            behind.add_metric(key, s.out_of_sync)
            for reason, n in sorted(s.moved.items()):
                moved.add_metric([*key, reason], n)
            for bid, (pod, state) in sorted(s.backends.items()):
                info.add_metric([*key, bid, pod, state], 1)
            for bid, n in sorted(s.sessions.items()):
                sessions.add_metric([*key, bid], n)
        yield from (services, version, proxies, behind, moved, info, sessions)


class OperatorMetrics:
    """The operator's metrics, registered in ``registry`` (one per process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._reconcile = Histogram(
            "limpet_operator_reconcile_duration_seconds",
            "One reconcile pass of a StickyService: apply its spec, plan, write status, "
            "hand the plan to the pushers.",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=registry,
        )
        self._push = Histogram(
            "limpet_operator_push_duration_seconds",
            "One PUT /v1/plan to a proxy's admin API, by result.",
            ["result"],
            buckets=PUSH_BUCKETS,
            registry=registry,
        )
        self._pushed = Counter(
            "limpet_operator_plans_pushed",
            "Plans pushed to proxies, by result (ok, conflict: 409, error).",
            ["result"],
            registry=registry,
        )
        # Every result shows from the start (at 0), so rates and alerts have a series.
        for result in PUSH_RESULTS:
            self._push.labels(result)
            self._pushed.labels(result)
        for result in RECONCILE_RESULTS:
            self._reconcile.labels(result)

    def track(self, source: SampleSource) -> None:
        """Report the live StickyServices' state at each scrape (call once)."""
        self.registry.register(_StateCollector(source))

    def reconciled(self, seconds: float, *, ok: bool) -> None:
        self._reconcile.labels("ok" if ok else "error").observe(seconds)

    def pushed(self, seconds: float, result: str) -> None:
        self._push.labels(result).observe(seconds)
        self._pushed.labels(result).inc()


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a (host, port) pair; ValueError if not."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` on ``host:port`` until the returned runner is cleaned up."""

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
