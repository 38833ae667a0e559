"""Valid specs that cannot work, deleted dependencies, deletion of the StickyService."""

from __future__ import annotations

import base64
import json

import aiohttp

from limpet.controller.kube import STICKYSERVICES, KubeClient
from limpet.devcluster.fakepods import FakePodsFactory
from tests.controller.harness import (
    Scene,
    StartOperator,
    User,
    condition,
    event_reasons,
    eventually,
    get_sticky,
    sticky_manifest,
)


async def _ready_reason(kube: KubeClient, namespace: str, name: str) -> str | None:
    c = await condition(kube, namespace, name, "Ready")
    return c.get("reason") if c.get("status") == "False" else None


async def test_missing_service_then_created(
    kube: KubeClient, namespace: str, start_operator: StartOperator, fake_pods: FakePodsFactory
) -> None:
    operator = start_operator()
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("shop", "nosuch"))

    async def reason(expected: str) -> bool:
        return await _ready_reason(kube, namespace, "shop") == expected

    await eventually(lambda: reason("ServiceNotFound"), what="Ready=False ServiceNotFound")
    c = await condition(kube, namespace, "shop", "Ready")
    assert "nosuch" in c["message"]
    assert operator.alive()
    fake_pods("nosuch").scale_up(1)
    # The Service appears: what is missing now are the proxies.
    await eventually(lambda: reason("NoProxies"), what="Ready=False NoProxies")
    status = (await get_sticky(kube, namespace, "shop"))["status"]
    assert status["backendCount"] == 1
    assert operator.alive()


async def test_missing_port_then_fixed(
    kube: KubeClient, namespace: str, start_operator: StartOperator, fake_pods: FakePodsFactory
) -> None:
    operator = start_operator()
    fake_pods("shop", port_name="web").scale_up(1)
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("shop", "shop"))
    await kube.create(
        STICKYSERVICES.path(namespace),
        {**sticky_manifest("byport", "shop"), "spec": {"service": "shop", "port": 9999}},
    )

    async def reason(name: str, expected: str) -> bool:
        return await _ready_reason(kube, namespace, name) == expected

    await eventually(lambda: reason("shop", "PortNotFound"), what="PortNotFound (name)")
    await eventually(lambda: reason("byport", "PortNotFound"), what="PortNotFound (number)")
    c = await condition(kube, namespace, "shop", "Ready")
    assert "web" in c["message"]
    assert (await condition(kube, namespace, "shop", "Degraded"))["status"] == "True"
    await kube.merge_patch(STICKYSERVICES.path(namespace, "shop"), {"spec": {"port": "web"}})
    await eventually(lambda: reason("shop", "NoProxies"), what="the fixed port")
    await kube.merge_patch(STICKYSERVICES.path(namespace, "byport"), {"spec": {"port": 8080}})
    await eventually(lambda: reason("byport", "NoProxies"), what="the fixed port number")
    obj = await get_sticky(kube, namespace, "shop")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2
    assert operator.alive()


async def test_service_deleted_under_it_proxies_answer_503(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    scene: Scene,
) -> None:
    user = User("u")
    await user.get(http, scene.fleet.urls()[0])
    assert await kube.delete(f"/api/v1/namespaces/{namespace}/services/shop")

    async def answers_503() -> bool:
        for url in scene.fleet.urls():
            async with http.get(url + "/", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                if resp.status != 503:
                    return False
        return True

    await eventually(answers_503, what="503 from every proxy")
    assert await _ready_reason(kube, namespace, "shop") == "ServiceNotFound"
    states = {b["state"] for b in (await scene.sticky())["status"]["backends"]}
    assert states <= {"Failed", "Gone"}
    assert scene.operator is not None
    assert scene.operator.alive()


async def test_deleting_the_stickyservice_removes_what_it_created(
    kube: KubeClient,
    namespace: str,
    scene: Scene,
) -> None:
    children = [
        f"/apis/apps/v1/namespaces/{namespace}/deployments/shop-proxy",
        f"/api/v1/namespaces/{namespace}/services/shop-proxy",
        f"/api/v1/namespaces/{namespace}/secrets/shop-limpet",
    ]
    for path in children:
        assert await kube.get(path) is not None, path
    await kube.delete(STICKYSERVICES.path(namespace, "shop"))

    async def all_gone() -> bool:
        if await kube.get(STICKYSERVICES.path(namespace, "shop")) is not None:
            return False
        return all([await kube.get(p) is None for p in children])

    await eventually(all_gone, what="the StickyService and its children gone")
    # The user's own Service and pods are untouched.
    assert await kube.get(f"/api/v1/namespaces/{namespace}/services/shop") is not None
    assert scene.operator is not None
    assert scene.operator.alive()


async def test_key_rotation_keeps_old_cookies_valid(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    scene: Scene,
) -> None:
    users = [User(f"u{i}") for i in range(20)]
    for user in users:
        await user.get(http, scene.fleet.urls()[0])
    before = (await scene.sticky())["status"]
    old_key = before["keys"]["active"]
    await kube.merge_patch(
        STICKYSERVICES.path(namespace, "shop"),
        {"metadata": {"annotations": {"limpet.dev/rotate-keys": "2026-01"}}},
    )

    async def rotated() -> bool:
        keys = (await scene.sticky())["status"].get("keys") or {}
        return keys.get("active") not in (None, old_key)

    await eventually(rotated, what="a new active key")
    version = await scene.converged()
    assert version > before["planVersion"]
    keys = (await scene.sticky())["status"]["keys"]
    assert keys["ids"] == [keys["active"], old_key]
    assert keys["rotationRequest"] == "2026-01"
    secret = await kube.get(f"/api/v1/namespaces/{namespace}/secrets/shop-limpet")
    assert secret is not None
    stored = json.loads(base64.b64decode(secret["data"]["cookie-keys"]))
    assert [k["id"] for k in stored] == keys["ids"]
    assert "retireAt" in stored[1]
    assert "retireAt" not in stored[0]
    # Sessions signed with the old key keep their pod (through either proxy).
    for i, user in enumerate(users):
        await user.get(http, scene.fleet.urls()[i % 2])
        assert user.moves() == 0, user.pods
    assert "KeysRotated" in await event_reasons(kube, namespace, "shop")
