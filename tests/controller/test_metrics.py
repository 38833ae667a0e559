"""The operator's Prometheus metrics (``limpet.controller.effects.metrics``, ``--metrics-listen``).

Socket-free: the state collector renders the reconcilers' samples, and disappears a
StickyService's series with it. Against the real API server, real proxies and backends:
a running operator's ``/metrics`` (read with prometheus-client's own parser, not ours)
shows the reconcile passes and pushes it made, the proxies and the plan version of the
StickyService's status, each backend's distinct live sessions (users served by both
proxies counted once), the sessions the proxies moved when a backend dies, and a proxy
that cannot take a new plan as out of sync.
"""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from limpet.controller.effects.metrics import OperatorMetrics, StickyServiceSample, parse_listen
from limpet.controller.effects.pusher import ProxyTarget, Pusher
from limpet.controller.model.settings import BackoffSettings, PushSettings
from limpet.devcluster.ports import free_port
from tests.controller.harness import Scene, Scenes, User, eventually

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_state_follows_the_live_stickyservices() -> None:
    live = [
        StickyServiceSample(
            namespace="a",
            name="shop",
            plan_version=7,
            proxies=3,
            out_of_sync=1,
            moved={"failover": 4, "drain": 2},
            backends={"b1": ("shop-0", "Active"), "b2": ("", "Gone")},
            sessions={"b1": 19},
        )
    ]
    metrics = OperatorMetrics(CollectorRegistry())
    metrics.track(lambda: list(live))
    metrics.pushed(0.003, "ok")
    metrics.pushed(0.2, "conflict")
    metrics.reconciled(0.01, ok=True)
    got = parse(generate_latest(metrics.registry).decode())
    key = {"namespace": "a", "stickyservice": "shop"}
    assert value(got, "limpet_operator_plan_version", **key) == 7
    assert value(got, "limpet_operator_proxies", **key) == 3
    assert value(got, "limpet_operator_proxies_out_of_sync", **key) == 1
    assert value(got, "limpet_operator_sessions_moved_total", **key, reason="failover") == 4
    assert value(got, "limpet_operator_stickyservices") == 1
    info = {"backend": "b1", "backend_pod": "shop-0", "state": "Active"}
    assert value(got, "limpet_operator_backend_info", **key, **info) == 1
    assert value(got, "limpet_operator_backend_sessions", **key, backend="b1") == 19
    assert value(got, "limpet_operator_plans_pushed_total", result="ok") == 1
    assert value(got, "limpet_operator_plans_pushed_total", result="conflict") == 1
    assert value(got, "limpet_operator_plans_pushed_total", result="error") == 0
    assert value(got, "limpet_operator_push_duration_seconds_bucket", result="ok", le="0.005") == 1
    assert value(got, "limpet_operator_push_duration_seconds_count", result="conflict") == 1
    assert value(got, "limpet_operator_reconcile_duration_seconds_count", result="ok") == 1
    live.clear()  # deleted (or this replica paused): its series go with it
    got = parse(generate_latest(metrics.registry).decode())
    assert value(got, "limpet_operator_plan_version", **key) is None
    assert value(got, "limpet_operator_stickyservices") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:8081", ("0.0.0.0", 8081)),
        ("[::1]:9", ("::1", 9)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8081", ":8081", "host:", "host:http", "host:0", "host:70000"])
def test_listen_address_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen(text)


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(await resp.text())


async def test_a_running_operator_serves_its_metrics(
    http: aiohttp.ClientSession, namespace: str, scenes: Scenes
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    scene: Scene = await scenes.open(
        operator_args=["--standalone", f"--metrics-listen=127.0.0.1:{port}"]
    )
    key = {"namespace": namespace, "stickyservice": "shop"}
    version = (await scene.sticky())["status"]["planVersion"]
    got = await scrape(http, url)
    assert value(got, "limpet_operator_plan_version", **key) == version
    assert value(got, "limpet_operator_proxies", **key) == 2
    assert value(got, "limpet_operator_proxies_out_of_sync", **key) == 0
    assert value(got, "limpet_operator_stickyservices") == 1
    pods = {
        labels["backend_pod"]
        for (name, label_items), n in got.items()
        if name == "limpet_operator_backend_info" and n == 1
        for labels in [dict(label_items)]
    }
    assert pods == set(scene.backends.pods), "each backend id named by its pod"
    pushed = value(got, "limpet_operator_plans_pushed_total", result="ok") or 0
    assert pushed >= 2, "each proxy took at least one plan"
    assert value(got, "limpet_operator_push_duration_seconds_count", result="ok") == pushed
    assert (value(got, "limpet_operator_reconcile_duration_seconds_count", result="ok") or 0) >= 1

    # A dead backend: the proxies fail its sessions over, and the operator reports it.
    proxies = scene.fleet.urls()
    users = [User(f"u{i}") for i in range(20)]
    for i, user in enumerate(users):
        await user.get(http, proxies[i % 2])
        await user.get(http, proxies[(i + 1) % 2])  # and through the other proxy

    # Each user counted once per backend, though both proxies served every one of them.
    expected = {pod: sum(1 for u in users if u.pod == pod) for pod in scene.backends.pods}

    async def distinct_sessions() -> dict[str, float] | None:
        got = await scrape(http, url)
        pod_of = {
            dict(labels)["backend"]: dict(labels)["backend_pod"]
            for (name, labels), n in got.items()
            if name == "limpet_operator_backend_info" and n == 1
        }
        seen = {
            pod_of.get(dict(labels)["backend"], ""): n
            for (name, labels), n in got.items()
            if name == "limpet_operator_backend_sessions"
        }
        return seen if seen == expected else None

    await eventually(distinct_sessions, within=15, what=f"backend sessions {expected}")
    victim = max(scene.backends.pods, key=lambda p: sum(1 for u in users if u.pod == p))
    scene.backends.stop_backend(victim)
    scene.backends.set_conditions(victim, ready=False, serving=False)
    await eventually(lambda: scene.state_is(victim, "Failed"), within=10, what="Failed")
    await scene.converged()
    for i, user in enumerate(users):
        await user.get(http, proxies[i % 2])
    moved_users = sum(u.moves() for u in users)
    assert moved_users > 0

    async def failovers() -> float | None:
        n = value(
            await scrape(http, url),
            "limpet_operator_sessions_moved_total",
            **key,
            reason="failover",
        )
        return n if n else None

    assert await eventually(failovers, what="failovers in the operator's metrics") >= 1

    # A proxy that is down while the plan changes is out of sync.
    dead = scene.fleet.pods[1]
    scene.fleet.group.stop_backend(dead.name)
    scene.backends.scale_up(4)

    # Both are behind until the live one takes the new plan (CI once scraped that 2):
    # wait for the count to settle on the dead one alone.
    async def behind() -> float:
        got = await scrape(http, url)
        n = value(got, "limpet_operator_proxies_out_of_sync", **key)
        assert n == 1, f"{n} proxies out of sync"
        return n

    await eventually(behind, what="only the dead proxy out of sync")
    got = await scrape(http, url)
    assert (value(got, "limpet_operator_plan_version", **key) or 0) > version


async def test_pushes_are_counted_by_the_proxys_answer() -> None:
    """The pusher against a real HTTP server that answers 500, then 409, then 200."""
    answers = [500, 409, 200]
    state = {"version": 0}

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"planVersion": state["version"] or None, "backends": {}})

    async def plan(request: web.Request) -> web.Response:
        status = answers.pop(0) if answers else 200
        if status == 200:
            state["version"] = 1
        return web.json_response(
            {"error": "no"} if status != 200 else {"version": 1}, status=status
        )

    app = web.Application()
    app.router.add_get("/v1/stats", stats)
    app.router.add_put("/v1/plan", plan)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    metrics = OperatorMetrics(CollectorRegistry())
    async with aiohttp.ClientSession() as session:
        pusher = Pusher(
            session=session,
            settings=PushSettings(
                backoff=BackoffSettings(initial=0.01, maximum=0.02), stats_interval=0.05
            ),
            token="t",
            metrics=metrics,
        )
        try:
            pusher.set_targets({"p": ProxyTarget(key="p", url=f"http://127.0.0.1:{port}")})
            await pusher.set_plan(1, b"{}")

            async def synced() -> bool:
                return pusher.report().synced(1) == 1

            await eventually(synced, within=10, what="the proxy on plan 1")
        finally:
            await pusher.close()
            await runner.cleanup()
    got = parse(generate_latest(metrics.registry).decode())
    counts = {
        r: value(got, "limpet_operator_plans_pushed_total", result=r)
        for r in ("ok", "conflict", "error")
    }
    assert counts == {"ok": 1, "conflict": 1, "error": 1}
    assert value(got, "limpet_operator_push_duration_seconds_count", result="ok") == 1
