"""One proxy process: the engine, the router, the plan gate and the admin API, wired.

Data flow: :func:`initial_plan` decides which plan to start from (command line and the
state directory); :func:`serve` builds a
:class:`~limpet.proxy.session.routing.SessionRouter`, loads that
plan, starts the traffic :class:`~limpet.proxy.engine.server.Server` and the admin application
on its own listener, and runs until SIGTERM/SIGINT. Pushed plans go through the
:class:`~limpet.proxy.process.state.PlanGate` (versioned, idempotent, persisted) into
``router.load_plan``. ``GET /v1/stats`` and ``/metrics`` read the router's stats plus the
engine's counters (``"engine"`` in the stats dict, ``limpet_proxy_*`` engine metrics).

With ``--workers N`` (N > 1) ``workers.py`` runs the admin side in a supervisor and this
module's pieces in each worker; the helpers here are shared by both.

Concurrency: everything runs on one uvloop event loop. The router's learned-session
sweeper is one periodic timer; the session-store write-back (``store_sync.py``) one task.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from limpet.affinity import Plan
from limpet.proxy.engine.server import Server
from limpet.proxy.process.admin import StatsSource, make_admin_app, server_logger
from limpet.proxy.process.admin_deadline import DeadlineRunner
from limpet.proxy.process.backend_metrics import backend_families
from limpet.proxy.process.gc_tuning import settle
from limpet.proxy.process.state import PlanGate, PlanStore
from limpet.proxy.process.store_sync import start_store_sync
from limpet.proxy.session.routing import RouterSettings, SessionRouter
from limpet.proxy.settings import Address, ProxySettings

log = logging.getLogger("limpet.proxy")

ROUTER_SWEEP_INTERVAL = 1.0


def read_token(settings: ProxySettings) -> str:
    """The admin bearer token from ``--token-file``; without one a random token locks the
    admin API (``/healthz`` and ``/readyz`` still answer)."""
    if settings.token_file is None:
        return secrets.token_urlsafe(32)
    token = settings.token_file.read_text().strip()
    if not token:
        raise ValueError(f"{settings.token_file}: the token file is empty")
    return token


def initial_plan(
    settings: ProxySettings, given: Plan | None, *, prefer_given: bool
) -> tuple[Plan | None, PlanStore | None]:
    """The plan to start from, and the state store (if ``--state-dir``).

    ``prefer_given`` (standalone mode): the command line wins. Otherwise (``--plan FILE``
    or none) the higher version of the file and the saved plan wins, so a restart while
    the operator is away keeps routing on the last pushed plan.
    """
    store = None if settings.state_dir is None else PlanStore(settings.state_dir)
    saved: Plan | None = None
    if store is not None:
        loaded = store.load()
        if loaded.problem:
            log.warning("%s", loaded.problem)
        saved = loaded.plan
    if given is None:
        return saved, store
    if prefer_given or saved is None or given.version >= saved.version:
        return given, store
    log.info(
        "using the saved plan version %d (newer than the given version %d)",
        saved.version,
        given.version,
    )
    return saved, store


class EngineCollector(Collector):
    """Engine counters as Prometheus metrics, from the latest stats dict's ``engine``."""

    def __init__(self) -> None:
        self.latest: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        e = self.latest
        gauges = {
            "connections_active": "Client connections open now.",
            "upstream_idle": "Idle keep-alive connections to backends in the pools.",
            "workers": "Worker processes serving traffic.",
        }
        counters = {
            "connections_accepted": "Client connections accepted.",
            "connections_rejected": "Client connections refused at the connection limit.",
            "requests": "Requests parsed (whatever their outcome).",
            "responses": "Backend answers relayed completely.",
            "retries": "Requests retried on a fresh connection or another backend.",
            "tunnels": "Upgrade (WebSocket) tunnels established.",
            "broken_responses": "Backend answers that were not valid HTTP (502).",
            "upstream_connects": "Connections dialled to backends.",
            "upstream_connect_failures": "Backend connections refused or timed out.",
            "upstream_reuses": "Requests sent on a pooled keep-alive connection.",
        }
        for name, help_text in gauges.items():
            if name in e:
                g = GaugeMetricFamily(f"limpet_proxy_{name}", help_text)
                g.add_metric([], e[name])
                yield g
        for name, help_text in counters.items():
            # "requests"/"responses" are per-backend router metrics already.
            metric = f"http_{name}" if name in ("requests", "responses") else name
            c = CounterMetricFamily(f"limpet_proxy_{metric}", help_text)
            c.add_metric([], e.get(name, 0))
            yield c
        local = CounterMetricFamily(
            "limpet_proxy_local_responses",
            "Answers the proxy generated itself (400, 408, 414, 431, 502, 503, 504...).",
            labels=["status"],
        )
        for status, n in sorted(e.get("local_responses", {}).items()):
            local.add_metric([str(status)], n)
        yield local
        timeouts = CounterMetricFamily(
            "limpet_proxy_timeouts", "Timeouts by kind.", labels=["kind"]
        )
        for kind, n in sorted(e.get("timeouts", {}).items()):
            timeouts.add_metric([kind], n)
        yield timeouts
        yield from backend_families(e)


class TappedStats:
    """Wraps a stats source so every read also feeds the engine collector."""

    def __init__(self, source: Callable[[], Any], collector: EngineCollector) -> None:
        self._source = source
        self._collector = collector

    async def stats(self) -> Mapping[str, Any]:
        result = self._source()
        if asyncio.iscoroutine(result):
            result = await result
        self._collector.latest = result.get("engine", {})
        return dict(result)


async def start_admin(
    *, settings: ProxySettings, token: str, sink: PlanGate | Any, stats: StatsSource
) -> tuple[web.AppRunner, Address]:
    """Serve the admin application on ``--admin-listen``; returns the bound address."""
    registry = CollectorRegistry()
    collector = EngineCollector()
    registry.register(collector)
    tapped = TappedStats(stats.stats, collector)
    app = make_admin_app(token=token, sink=sink, stats=tapped, metrics=registry)
    runner = DeadlineRunner(app, handle_signals=False, access_log=None, logger=server_logger())
    await runner.setup()
    site = web.TCPSite(runner, settings.admin_listen.host, settings.admin_listen.port)
    await site.start()
    server = site._server
    port = settings.admin_listen.port
    if server is not None and getattr(server, "sockets", None):
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, Address(settings.admin_listen.host, port)


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce(listen: Address, admin: Address, *, workers: int, version: int | None) -> None:
    """The start-up line (tests and the demo parse it; keep its shape)."""
    plan = "no plan yet" if version is None else f"plan version {version}"
    sys.stderr.write(
        f"limpet proxy listening on {listen}, admin on {admin}, workers {workers}, {plan}\n"
    )
    sys.stderr.flush()


class _LocalStats:
    def __init__(self, router: SessionRouter, server: Server) -> None:
        self._router = router
        self._server = server

    def stats(self) -> dict[str, Any]:
        out = self._router.stats().to_dict()
        out["engine"] = self._server.stats_dict(keep=out["backends"])
        return out


def schedule_router_sweep(router: SessionRouter) -> Callable[[], None]:
    """Run ``router.sweep`` every second, and the session-store write-back (which is idle
    while the plan names no store); returns a function that stops both."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None
    stop_sync = start_store_sync(router)

    def tick() -> None:
        nonlocal handle
        try:
            router.sweep()
        except Exception:
            log.exception("learned-session sweep failed")
        handle = loop.call_later(ROUTER_SWEEP_INTERVAL, tick)

    handle = loop.call_later(ROUTER_SWEEP_INTERVAL, tick)

    def cancel() -> None:
        stop_sync()
        if handle is not None:
            handle.cancel()

    return cancel


async def serve(
    settings: ProxySettings,
    *,
    plan: Plan | None,
    prefer_given: bool,
    router_settings: RouterSettings | None = None,
) -> int:
    """Run a single-process proxy until SIGTERM/SIGINT. Returns the exit status."""
    token = read_token(settings)
    start_plan, store = initial_plan(settings, plan, prefer_given=prefer_given)
    router = SessionRouter(settings=router_settings or RouterSettings())
    if start_plan is not None:
        router.load_plan(start_plan)
        if store is not None and start_plan is plan:
            await asyncio.to_thread(store.save, start_plan)
    gate = PlanGate(stage=router.stage, store=store, initial=start_plan)
    server = Server(settings=settings, router=router)
    await server.start()
    stop_sweep = schedule_router_sweep(router)
    runner, admin = await start_admin(
        settings=settings, token=token, sink=gate, stats=_LocalStats(router, server)
    )
    stop = stop_event()
    settle(settings)
    announce(
        Address(settings.listen.host, server.port),
        admin,
        workers=1,
        version=router.plan_version,
    )
    try:
        await stop.wait()
    finally:
        stop_sweep()
        await runner.cleanup()
        await server.close()
    return 0
