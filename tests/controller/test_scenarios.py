"""End to end: real API server, the operator under its own RBAC, real proxies, fake pods."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from limpet.controller.kube import STICKYSERVICES, KubeClient
from limpet.devcluster.fakepods import FakePods, FakePodsFactory
from tests.controller.conftest import StartOperator
from tests.controller.harness import (
    ProxyFleet,
    User,
    condition,
    event_reasons,
    eventually,
    get_sticky,
    read_token,
    sticky_manifest,
)

FAST = {
    "affinity": {"type": "Cookie", "cookie": {"secure": False}},
    "slowStart": "0s",
    "rebalance": {"window": "6s", "minIdle": "1s", "maxMovesPerSecond": 1000},
    "drain": {"timeout": "20s", "minIdle": "1s"},
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Scene:
    """A StickyService 'shop' with its operator, proxies and backends."""

    def __init__(
        self,
        kube: KubeClient,
        http: aiohttp.ClientSession,
        namespace: str,
        fleet: ProxyFleet,
        backends: FakePods,
    ) -> None:
        self.kube = kube
        self.http = http
        self.namespace = namespace
        self.fleet = fleet
        self.backends = backends

    async def sticky(self) -> dict[str, Any]:
        return await get_sticky(self.kube, self.namespace, "shop")

    async def converged(self) -> int:
        """Wait until every proxy runs the plan version in status; return it."""

        async def probe() -> int | None:
            status = (await self.sticky()).get("status") or {}
            version = status.get("planVersion")
            versions = await self.fleet.versions(self.http)
            return version if version and all(v == version for v in versions) else None

        return await eventually(probe, what="every proxy on the status plan version")

    async def backend_states(self) -> dict[str, str]:
        status = (await self.sticky()).get("status") or {}
        return {b.get("pod"): b["state"] for b in status.get("backends") or []}

    async def ready(self) -> None:
        async def probe() -> bool:
            c = await condition(self.kube, self.namespace, "shop", "Ready")
            return c.get("status") == "True"

        await eventually(probe, within=40, what="Ready=True")


async def make_scene(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    start_operator: StartOperator,
    fake_pods: FakePodsFactory,
    tmp_path: Path,
    *,
    pods: int = 3,
    proxies: int = 2,
    spec: dict[str, Any] | None = None,
) -> Scene:
    await kube.create(
        STICKYSERVICES.path(namespace),
        sticky_manifest("shop", "shop", **(spec or FAST), proxy={"replicas": proxies}),
    )
    start_operator()
    token = await read_token(kube, namespace, "shop")
    fleet = ProxyFleet(fake_pods, "shop", token, tmp_path)
    fleet.add(proxies)
    backends = fake_pods("shop")
    backends.scale_up(pods)
    scene = Scene(kube, http, namespace, fleet, backends)
    await scene.ready()
    await scene.converged()
    return scene


async def test_sticky_traffic_through_every_proxy(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    start_operator: StartOperator,
    fake_pods: FakePodsFactory,
    tmp_path: Path,
) -> None:
    scene = await make_scene(kube, http, namespace, start_operator, fake_pods, tmp_path)
    rng = random.Random(7)
    users = [User(f"u{i}") for i in range(30)]
    proxies = scene.fleet.urls()
    for _ in range(8):
        for user in users:
            await user.get(http, rng.choice(proxies))
    for user in users:
        assert user.moves() == 0, f"{user.name} moved: {user.pods}"
    used = {u.pod for u in users}
    assert used == set(scene.backends.pods), f"sessions reached only {used}"
    obj = await scene.sticky()
    status = obj["status"]
    assert status["backendCount"] == 3
    assert {b["state"] for b in status["backends"]} == {"Active"}
    assert status["proxies"]["synced"] == 2
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    # The operator made the managed proxies' Deployment and Service, owned by the object.
    for kind, path in (
        ("Deployment", f"/apis/apps/v1/namespaces/{namespace}/deployments/shop-proxy"),
        ("Service", f"/api/v1/namespaces/{namespace}/services/shop-proxy"),
    ):
        child = await kube.get(path)
        assert child is not None, f"no {kind}"
        owners = child["metadata"]["ownerReferences"]
        assert owners[0]["uid"] == obj["metadata"]["uid"]
    svc = await kube.get(f"/api/v1/namespaces/{namespace}/services/shop-proxy")
    assert svc is not None
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == [8080]  # no admin port
    # Cookies carry no pod name or address.
    for user in users:
        assert user.cookie is not None
        for pod in scene.backends.pods.values():
            assert pod.address not in user.cookie
            assert pod.name not in user.cookie
    assert "KeysCreated" in await event_reasons(kube, namespace, "shop")
