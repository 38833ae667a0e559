"""Restarts: the operator resumes from cluster state; a restarted proxy is pushed again.

On fake pods (``harness.py``), for the conditions a kubelet does not give on demand:

- ``test_operator_restart_resumes_rebalance_and_drain``: a terminating endpoint held for
  a minute whatever happens, while every proxy's plan version is watched every 50 ms.
  The real-pod version (a pod deleted with a 20 s grace period, the operator SIGKILLed
  mid-rebalance) is in ``test_scenarios_pods.py``.
- ``test_restarted_proxy_gets_the_plan_again`` and
  ``test_proxy_down_is_reported_then_recovers``: a proxy process stopped, its state
  folder deleted, and started again at moments the test picks, while its endpoint stays
  listed and Ready. A kubelet restarts a dead container on its own back-off and reports
  it unready meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import aiohttp

from limpet.controller.kube.client import KubeClient
from limpet.devcluster.proxypod import state_dir
from tests.controller.harness import (
    FAST,
    Scene,
    Scenes,
    StartOperator,
    User,
    condition,
    event_reasons,
    eventually,
)


async def _watch_versions(scene: Scene, seen: dict[str, list[int]], stop: asyncio.Event) -> None:
    """Record every plan version each proxy reports, to check none ever goes back."""
    while not stop.is_set():
        for pod in scene.fleet.pods:
            try:
                v = (await scene.fleet.stats(scene.http, pod)).get("planVersion")
            except (aiohttp.ClientError, TimeoutError):
                continue
            if isinstance(v, int):
                seen.setdefault(pod.name, []).append(v)
        await asyncio.sleep(0.05)


async def test_operator_restart_resumes_rebalance_and_drain(
    http: aiohttp.ClientSession,
    start_operator: StartOperator,
    scenes: Scenes,
) -> None:
    spec = {
        **FAST,
        "rebalance": {"window": "20s", "minIdle": "1s", "maxMovesPerSecond": 1000},
        "drain": {"timeout": "60s", "minIdle": "1s"},
    }
    scene = await scenes.open(pods=4, spec=spec)
    users = [User(f"u{i}") for i in range(30)]
    for i, user in enumerate(users):
        await user.get(http, scene.fleet.urls()[i % 2])
    seen: dict[str, list[int]] = {}
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_versions(scene, seen, stop))
    try:
        victim = sorted(scene.backends.pods)[0]
        scene.backends.terminate(victim)
        scene.backends.scale_up(6)
        await eventually(lambda: scene.state_is(victim, "Draining"), what="Draining")

        async def in_progress() -> bool:
            reb = (await scene.sticky())["status"].get("rebalance") or {}
            return reb.get("phase") == "InProgress"

        await eventually(in_progress, what="rebalance in progress")
        await scene.converged()
        before = (await scene.sticky())["status"]
        drain = {b["pod"]: b.get("drainDeadline") for b in before["backends"]}[victim]
        assert drain

        # SIGKILL: no chance to write anything on the way out.
        assert scene.operator is not None
        scene.operator.kill()
        await asyncio.sleep(1.0)
        start_operator(log_name="operator-restarted.log")

        async def replanned() -> dict[str, object] | None:
            status = (await scene.sticky())["status"]
            return status if status["planVersion"] > before["planVersion"] else None

        after = await eventually(replanned, what="a plan from the restarted operator")
        await scene.converged()
        after = (await scene.sticky())["status"]
        # The schedule and the drain deadline were recovered, not restarted.
        for key in ("startedAt", "endsAt", "fromBackends"):
            assert after["rebalance"][key] == before["rebalance"][key], key
        assert after["rebalance"]["phase"] in ("InProgress", "Complete")
        assert {b["pod"]: b.get("drainDeadline") for b in after["backends"]}[victim] == drain
        states = {b["pod"]: b["state"] for b in after["backends"]}
        assert states[victim] == "Draining"
        assert sum(1 for s in states.values() if s == "Active") == 5
        for user in users:
            await user.get(http, scene.fleet.urls()[0])
    finally:
        stop.set()
        await watcher
    for pod, versions in seen.items():
        assert versions == sorted(versions), f"{pod} went back: {versions}"


async def test_restarted_proxy_gets_the_plan_again(
    http: aiohttp.ClientSession,
    scene: Scene,
) -> None:
    first = await scene.converged()
    pod = scene.fleet.pods[0]

    # A proxy that restarts empty (its state lost) gets the current plan again.
    scene.fleet.group.stop_backend(pod.name)
    shutil.rmtree(state_dir(scene.fleet.work, pod.name))
    scene.fleet.group.start_backend(pod.name)
    assert await scene.converged() == first

    # A proxy that was down while the plan changed comes back on its older, persisted
    # plan: it has fallen behind and is pushed the newer one.
    scene.fleet.group.stop_backend(pod.name)
    scene.backends.scale_up(4)

    async def newer() -> bool:
        return bool((await scene.sticky())["status"]["planVersion"] > first)

    await eventually(newer, what="a newer plan")
    scene.fleet.group.start_backend(pod.name)
    latest = await scene.converged()
    assert latest > first
    stats = await scene.fleet.stats(http, pod)
    assert stats["planVersion"] == latest
    user = User("after")
    assert await user.get(http, pod.url)


async def test_proxy_down_is_reported_then_recovers(
    kube: KubeClient,
    namespace: str,
    scene: Scene,
) -> None:
    first = await scene.converged()
    pod = scene.fleet.pods[1]
    scene.fleet.group.stop_backend(pod.name)
    scene.backends.scale_up(4)  # a new plan that the dead proxy cannot take

    async def degraded() -> bool:
        ready = await condition(kube, namespace, "shop", "Ready")
        deg = await condition(kube, namespace, "shop", "Degraded")
        return (
            ready.get("reason") == "ProxiesOutOfSync"
            and deg.get("reason") == "ProxyUnreachable"
            and pod.name in deg.get("message", "")
        )

    await eventually(degraded, within=20, what="Ready=False ProxiesOutOfSync, Degraded")

    async def live_one_synced() -> dict[str, Any] | None:
        status: dict[str, Any] = (await scene.sticky())["status"]
        return status if status["proxies"]["synced"] == 1 else None

    # Status is written before a new plan is pushed and counts the proxies on the
    # planner's version, so the live proxy shows as synced a moment after the write that
    # may already carry both conditions.
    status = await eventually(live_one_synced, within=10, what="the live proxy synced")
    assert status["proxies"]["synced"] == 1
    assert status["proxies"]["outOfSync"] == [pod.name]

    async def warned() -> bool:
        return "ProxyOutOfSync" in await event_reasons(kube, namespace, "shop")

    await eventually(warned, within=20, what="a ProxyOutOfSync event")
    scene.fleet.group.start_backend(pod.name)
    assert await scene.converged() > first
    await scene.ready()
