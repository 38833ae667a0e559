"""The admin API (aiohttp): plan pushes, stats, health, readiness and Prometheus metrics.

Routes (always on the separate ``--admin-listen`` listener, never the traffic port):

- ``PUT /v1/plan``  JSON plan. 200 ``{"version", "changed"}`` when applied or when it is
  the plan already held (idempotent); 409 for a lower version, or the same version with
  other content; 400 with the parser's message (it names the JSON path) when malformed,
  or with the consumer's message when a well-formed plan cannot be applied.
- ``GET /v1/stats``  JSON: per-backend sessions, requests and health, migrations by
  reason, rejected cookies by reason, plan version (the router's ``stats`` schema).
- ``GET /metrics``  Prometheus text format, rendered from the same stats at scrape time.
- ``GET /healthz``  200 while the process runs. ``GET /readyz``  200 once a plan is loaded,
  503 before. These two are the only routes without the bearer token, so a kubelet can
  probe them; everything else answers 401 unless ``Authorization: Bearer <token>``
  matches (``hmac.compare_digest``, constant time).

Data flow: the app is a thin adapter. Plans go to a :class:`PlanSink` (in one process the
router's :class:`~limpet.proxy.process.state.PlanGate`; with ``--workers`` the supervisor's
fan-out), stats come from a :class:`StatsSource`. Either may be synchronous or return an
awaitable. Metrics are collected lazily from stats, so the data path only bumps plain
integers and never touches prometheus-client.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Iterator, Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from limpet.affinity.plan import Plan, PlanError, plan_from_json
from limpet.affinity.plan.codec import MAX_PLAN_BYTES

from .native import build_mode
from .state import StalePlanError

log = logging.getLogger("limpet.proxy.admin")

CLIENT_FAULTS = (BadHttpMessage, ConnectionError)
"""What a client's bytes or a vanished client raise inside aiohttp: one log line each."""


class OneLineClientFaults(logging.Filter):
    """aiohttp logs a malformed request (a NUL in a header, a header over 8 KiB, a client
    that hangs up mid-body) at ERROR with a traceback, a dozen lines for a few bytes any
    client can send: the log would be the attacker's. Such records become one warning
    line; a fault of the server itself keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CLIENT_FAULTS):
            what = " ".join(str(exc).split())[:300]  # aiohttp's own message spans lines
            record.args = (record.getMessage(), type(exc).__name__, what)
            record.msg = "%s: %s: %s"
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def server_logger() -> logging.Logger:
    """The logger for aiohttp's request handler of the admin listener."""
    logger = logging.getLogger("limpet.proxy.admin.http")
    if not any(isinstance(f, OneLineClientFaults) for f in logger.filters):
        logger.addFilter(OneLineClientFaults())
    return logger


PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})

StatsDict = Mapping[str, Any]


class PlanSink(Protocol):
    """Takes a validated plan; raises :class:`StalePlanError` to refuse it (409).

    Returns whether the plan changed anything (``None`` is read as "changed").
    """

    def accept(self, plan: Plan) -> bool | Awaitable[bool | None] | None: ...


class SupportsToDict(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class StatsSource(Protocol):
    """Stats in the router's schema (``RouterStats.to_dict``), possibly aggregated.

    The router itself qualifies (its ``stats()`` returns a ``RouterStats``); the worker
    supervisor returns the merged dict, possibly from a coroutine.
    """

    def stats(self) -> StatsDict | SupportsToDict | Awaitable[StatsDict]: ...


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _stats(source: StatsSource) -> StatsDict:
    result = await _resolve(source.stats())
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    return dict(result)


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n",
        content_type="application/json",
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


class ProxyCollector(Collector):
    """Renders the stats dict as Prometheus metric families at scrape time."""

    def __init__(self) -> None:
        self.latest: StatsDict = {}
        self.build_mode = build_mode().mode

    def collect(self) -> Iterator[Metric]:
        s = self.latest
        requests = CounterMetricFamily(
            "limpet_proxy_requests", "Requests routed, by backend.", labels=["backend"]
        )
        sessions = GaugeMetricFamily(
            "limpet_proxy_sessions",
            "Sessions this proxy holds (or last saw, for cookie sessions), by backend.",
            labels=["backend"],
        )
        up = GaugeMetricFamily(
            "limpet_proxy_backend_up",
            "1 unless passive health has the backend marked down.",
            labels=["backend"],
        )
        drain_live = GaugeMetricFamily(
            "limpet_proxy_drain_live_sessions",
            "Sessions on a Draining backend that this proxy served within drain.minIdle "
            "(they stay; older ones move at their next request), by backend.",
            labels=["backend"],
        )
        for bid, b in sorted(s.get("backends", {}).items()):
            requests.add_metric([bid], b.get("requests", 0))
            sessions.add_metric([bid], b.get("sessions", 0))
            up.add_metric([bid], 0 if b.get("health") == "down" else 1)
            if "drainLive" in b:
                drain_live.add_metric([bid], b["drainLive"])
        migrations = CounterMetricFamily(
            "limpet_proxy_migrations", "Sessions moved, by reason.", labels=["reason"]
        )
        for reason, n in sorted(s.get("migrations", {}).items()):
            migrations.add_metric([reason], n)
        rejected = CounterMetricFamily(
            "limpet_proxy_rejected_cookies",
            "LB cookies not honoured (a new session was started), by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(s.get("rejectedCookies", {}).items()):
            rejected.add_metric([reason], n)
        app_cookie = CounterMetricFamily(
            "limpet_proxy_app_cookie_outcomes",
            "AppCookie requests that carried only one of the app cookie and its companion, "
            "or a companion that failed verification, by reason (served, never refused).",
            labels=["reason"],
        )
        for reason, n in sorted(s.get("appCookie", {}).items()):
            app_cookie.add_metric([reason], n)
        store = s.get("sessionStore") or {}
        store_up = GaugeMetricFamily(
            "limpet_proxy_session_store_up",
            "1 while the session store answers, 0 while the proxy uses its own counts "
            "(absent without a store).",
        )
        fallbacks = CounterMetricFamily(
            "limpet_proxy_session_store_fallbacks",
            "Store write-backs that failed or timed out (local counts were used).",
        )
        cluster = GaugeMetricFamily(
            "limpet_proxy_cluster_sessions",
            "Distinct live sessions per backend across every replica, from the store.",
            labels=["backend"],
        )
        for bid, n in sorted((s.get("clusterSessions") or {}).items()):
            cluster.add_metric([bid], n)
        stores: tuple[Metric, ...] = ()
        if store:
            store_up.add_metric([], store.get("up", 0))
            fallbacks.add_metric([], store.get("fallbacks", 0))
            stores = (store_up, fallbacks, cluster)
        no_backend = CounterMetricFamily(
            "limpet_proxy_no_backend", "Requests answered 503 because no backend was available."
        )
        no_backend.add_metric([], s.get("noBackend", 0))
        version = GaugeMetricFamily(
            "limpet_proxy_plan_version", "Version of the plan in use (0 before the first)."
        )
        version.add_metric([], s.get("planVersion") or 0)
        build = GaugeMetricFamily(
            "limpet_proxy_build_info",
            "1, labelled with how the proxy's hot path runs: compiled (with mypyc), "
            "interpreted, partial or stale (see docs/proxy.md).",
            labels=["mode"],
        )
        build.add_metric([self.build_mode], 1)
        yield from (requests, sessions, drain_live, up, migrations, rejected, app_cookie)
        yield from (no_backend, version, build)
        yield from stores


def _bearer_auth(expected: bytes) -> Any:
    """The middleware that asks for the bearer token on every path but PUBLIC_PATHS."""

    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), expected)
            if scheme.lower() != "bearer" or not ok:
                return web.Response(
                    status=401,
                    text="401: missing or wrong bearer token\n",
                    headers={"WWW-Authenticate": 'Bearer realm="limpet-admin"'},
                )
        result: web.StreamResponse = await handler(request)
        return result

    return auth


def _plan_handler(sink: PlanSink) -> Any:
    """``PUT /v1/plan``: 400 for a plan that is invalid or unusable, 409 for a stale one."""

    async def put_plan(request: web.Request) -> web.Response:
        declared = request.content_length
        if declared is not None and declared > MAX_PLAN_BYTES:
            # Refused from the head: waiting for a terabyte that will never come (or
            # reading 32 MiB to learn it is too much) helps nobody.
            return _error(413, f"plan larger than {MAX_PLAN_BYTES} bytes ({declared} declared)")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"plan larger than {MAX_PLAN_BYTES} bytes")
        try:
            plan = plan_from_json(body)
        except PlanError as exc:
            return _error(400, f"invalid plan: {exc}")
        try:
            changed = await _resolve(sink.accept(plan))
        except StalePlanError as exc:
            return _error(409, str(exc))
        except ValueError as exc:
            # Valid JSON and schema, but the consumer could not use it (for example a
            # slot table it cannot build): the plan is refused, nothing changed.
            return _error(400, f"plan rejected: {exc}")
        except Exception as exc:
            # A fault of the proxy's own (compiled code raises TypeError where a value
            # breaks its declared type): the plan is not applied, the one before keeps
            # routing, and the answer says so instead of aiohttp's bare 500 page.
            log.exception("plan version %d not applied", plan.version)
            return _error(500, f"plan not applied: {type(exc).__name__}: {exc}")
        return _json({"version": plan.version, "changed": changed is not False})

    return put_plan


def make_admin_app(
    *,
    token: str,
    sink: PlanSink,
    stats: StatsSource,
    metrics: CollectorRegistry,
) -> web.Application:
    """The admin application. ``metrics`` gets the proxy's collector registered in it."""
    if not token:
        raise ValueError("the admin API needs a non-empty bearer token")
    expected = token.encode("utf-8")
    collector = ProxyCollector()
    metrics.register(collector)

    async def get_stats(request: web.Request) -> web.Response:
        return _json(await _stats(stats))

    async def get_metrics(request: web.Request) -> web.Response:
        collector.latest = await _stats(stats)
        return web.Response(
            body=generate_latest(metrics), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        current = (await _stats(stats)).get("planVersion")
        if current is None:
            return web.Response(status=503, text="no plan loaded yet\n")
        return web.Response(text=f"ready: plan version {current}\n")

    app = web.Application(
        middlewares=[_bearer_auth(expected)], client_max_size=MAX_PLAN_BYTES + 1024
    )
    app.router.add_put("/v1/plan", _plan_handler(sink))
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
