"""The admin API over a real loopback socket with a real aiohttp client."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from limpet.affinity import BackendState
from limpet.affinity.plan.codec import plan_to_dict, plan_to_json
from limpet.affinity.plan.model import Backend, CookieKey, Plan
from limpet.proxy.process.admin import make_admin_app
from limpet.proxy.process.state import PlanGate, PlanStore
from limpet.proxy.session.routing import RouterSettings, SessionRouter

from ..routing_helpers import Client, Clock, mkrouter

TOKEN = "s3cret-token"


def plan(version: int, port: int = 8080) -> Plan:
    return Plan(
        version=version,
        backends=(
            Backend(id="b1", address="127.0.0.1", port=port),  # type: ignore[arg-type]
            Backend(id="b2", address="127.0.0.1", port=port + 1),  # type: ignore[arg-type]
        ),
        cookie_keys=(CookieKey(id="k1", secret=b"s" * 32),),
    )


@dataclass
class Admin:
    url: str
    client: aiohttp.ClientSession
    router: SessionRouter
    store: PlanStore

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    router = SessionRouter(settings=RouterSettings())
    store = PlanStore(tmp_path)
    gate = PlanGate(apply=router.load_plan, store=store)
    app = make_admin_app(token=TOKEN, sink=gate, stats=router, metrics=CollectorRegistry())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as client:
        yield Admin(f"http://127.0.0.1:{port}", client, router, store)
    await runner.cleanup()


async def test_healthz_and_readyz_need_no_token(admin: Admin) -> None:
    async with admin.client.get(admin.url + "/healthz") as r:
        assert r.status == 200
    async with admin.client.get(admin.url + "/readyz") as r:
        assert r.status == 503
        assert "no plan" in await r.text()
    async with admin.client.put(
        admin.url + "/v1/plan", data=plan_to_json(plan(1)), headers=admin.auth
    ) as r:
        assert r.status == 200
    async with admin.client.get(admin.url + "/readyz") as r:
        assert r.status == 200
        assert "version 1" in await r.text()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/v1/plan"), ("GET", "/v1/stats"), ("GET", "/metrics"), ("GET", "/nope")],
)
async def test_token_required(
    admin: Admin, headers: dict[str, str], method: str, path: str
) -> None:
    async with admin.client.request(
        method, admin.url + path, data=plan_to_json(plan(1)), headers=headers
    ) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert admin.router.plan_version is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not valid JSON"),
        (b"{not json", "not valid JSON"),
        (b"[]", ""),
        (b'{"schemaVersion": 2}', "schemaVersion"),
        (b'{"schemaVersion": 1, "version": 1}', "backends"),
    ],
)
async def test_garbage_plan_is_400(admin: Admin, body: bytes, message: str) -> None:
    async with admin.client.put(admin.url + "/v1/plan", data=body, headers=admin.auth) as r:
        assert r.status == 400
        err = (await r.json())["error"]
        assert err.startswith("invalid plan: ")
        assert message in err
    assert admin.router.plan_version is None


async def test_field_error_names_the_field(admin: Admin) -> None:
    data = plan_to_dict(plan(1))
    data["backends"][1]["port"] = 0  # type: ignore[index]
    async with admin.client.put(
        admin.url + "/v1/plan", data=json.dumps(data), headers=admin.auth
    ) as r:
        assert r.status == 400
        assert "port" in (await r.json())["error"]


async def test_versioning(admin: Admin) -> None:
    async def put(p: Plan) -> tuple[int, dict[str, object]]:
        async with admin.client.put(
            admin.url + "/v1/plan", data=plan_to_json(p), headers=admin.auth
        ) as r:
            return r.status, await r.json()

    assert await put(plan(5)) == (200, {"version": 5, "changed": True})
    assert admin.router.plan_version == 5
    assert await put(plan(5)) == (200, {"version": 5, "changed": False})  # idempotent re-PUT
    status, body = await put(plan(4))
    assert status == 409
    assert "lower" in str(body["error"])
    status, body = await put(plan(5, port=9000))
    assert status == 409
    assert "different content" in str(body["error"])
    assert admin.router.plan_version == 5
    assert await put(plan(6)) == (200, {"version": 6, "changed": True})
    assert admin.store.load().plan == plan(6)


async def test_stats_and_metrics(admin: Admin) -> None:
    async with admin.client.put(
        admin.url + "/v1/plan", data=plan_to_json(plan(3)), headers=admin.auth
    ) as r:
        assert r.status == 200
    async with admin.client.get(admin.url + "/v1/stats", headers=admin.auth) as r:
        assert r.status == 200
        stats = await r.json()
    assert stats["planVersion"] == 3
    assert set(stats["backends"]) == {"b1", "b2"}
    assert stats["backends"]["b1"]["sessions"] == 0
    assert set(stats["migrations"]) == {"failover", "drain", "rebalance", "expired"}
    assert "tampered" in stats["rejectedCookies"]
    async with admin.client.get(admin.url + "/metrics", headers=admin.auth) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert "limpet_proxy_plan_version 3.0" in text
    assert 'limpet_proxy_sessions{backend="b1"} 0.0' in text
    assert 'limpet_proxy_requests_total{backend="b2"} 0.0' in text
    assert 'limpet_proxy_migrations_total{reason="failover"} 0.0' in text
    assert 'limpet_proxy_rejected_cookies_total{reason="tampered"} 0.0' in text


def test_empty_token_refused() -> None:
    router = SessionRouter(settings=RouterSettings())
    gate = PlanGate(apply=router.load_plan, store=None)
    with pytest.raises(ValueError, match="token"):
        make_admin_app(token="", sink=gate, stats=router, metrics=CollectorRegistry())


async def test_plan_the_consumer_refuses_is_400(tmp_path: Path) -> None:
    def refuse(p: Plan) -> None:
        raise ValueError(f"cannot use version {p.version}")

    gate = PlanGate(apply=refuse, store=PlanStore(tmp_path))
    router = SessionRouter(settings=RouterSettings())
    app = make_admin_app(token=TOKEN, sink=gate, stats=router, metrics=CollectorRegistry())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with (
            aiohttp.ClientSession() as client,
            client.put(
                f"http://127.0.0.1:{port}/v1/plan",
                data=plan_to_json(plan(1)),
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as r,
        ):
            assert r.status == 400
            assert (await r.json())["error"] == "plan rejected: cannot use version 1"
    finally:
        await runner.cleanup()
    assert gate.version is None
    assert PlanStore(tmp_path).load().plan is None


async def test_a_draining_backend_has_its_drain_live_gauge(tmp_path: Path) -> None:
    """``limpet_proxy_drain_live_sessions`` for the Draining backend only, from the
    router's ``drainLive``: a session served just now counts, and the gauge reads 0
    once it has been idle past minIdle plus the cookie's step."""
    clock = Clock()
    base = plan(7)
    b1, b2 = base.backends
    draining = dataclasses.replace(
        base, version=8, backends=(b1, dataclasses.replace(b2, state=BackendState.DRAINING))
    )
    router = mkrouter(clock, base)
    while router.stats().backends["b2"].sessions == 0:  # new sessions until one is on b2
        assert Client().get(router) is not None
    router.load_plan(draining)
    gate = PlanGate(apply=router.load_plan, store=PlanStore(tmp_path))
    app = make_admin_app(token=TOKEN, sink=gate, stats=router, metrics=CollectorRegistry())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def gauges(client: aiohttp.ClientSession) -> dict[str, str]:
        async with client.get(url, headers=auth) as r:
            text = await r.text()
        prefix = "limpet_proxy_drain_live_sessions{"
        return dict(line.split()[:2] for line in text.splitlines() if line.startswith(prefix))

    try:
        async with aiohttp.ClientSession() as client:
            assert await gauges(client) == {'limpet_proxy_drain_live_sessions{backend="b2"}': "1.0"}
            clock.t += draining.drain.min_idle + draining.granularity + 0.2
            assert await gauges(client) == {'limpet_proxy_drain_live_sessions{backend="b2"}': "0.0"}
    finally:
        await runner.cleanup()
