"""Valid specs that cannot work, deleted dependencies, deletion of the StickyService."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import pytest

from limpet.controller.kube.client import STICKYSERVICES, KubeClient
from limpet.controller.model.status import parse_ts
from limpet.devcluster.fakepods import FakePodsFactory
from limpet.proxy.session.cookies import key_tag
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
    started = time.monotonic()
    await kube.delete(STICKYSERVICES.path(namespace, "shop"))

    async def all_gone() -> bool:
        if await kube.get(STICKYSERVICES.path(namespace, "shop")) is not None:
            return False
        return all([await kube.get(p) is None for p in children])

    await eventually(all_gone, what="the StickyService and its children gone")
    print(f"StickyService deleted -> it and its children gone: {time.monotonic() - started:.1f} s")
    # The user's own Service and pods are untouched.
    assert await kube.get(f"/api/v1/namespaces/{namespace}/services/shop") is not None
    assert scene.operator is not None
    assert scene.operator.alive()


async def _rotate(scene: Scene, request: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ask for a key rotation (with a spec change in the same patch); the new status keys,
    once every proxy runs the plan that carries the new key."""
    status = (await scene.sticky())["status"]
    before, version = status["keys"]["active"], int(status["planVersion"])
    patch: dict[str, Any] = {"metadata": {"annotations": {"limpet.dev/rotate-keys": request}}}
    if spec is not None:
        patch["spec"] = spec
    await scene.kube.merge_patch(STICKYSERVICES.path(scene.namespace, "shop"), patch)

    async def rotated() -> dict[str, Any] | None:
        keys = (await scene.sticky())["status"].get("keys") or {}
        return keys if keys.get("rotationRequest") == request and keys["active"] != before else None

    async def pushed() -> bool:
        return await scene.converged() > version

    keys = await eventually(rotated, what=f"rotation {request!r}")
    await eventually(pushed, what="the plan with the new key on every proxy")
    return keys


async def _stored_keys(kube: KubeClient, namespace: str) -> list[dict[str, Any]]:
    secret = await kube.get(f"/api/v1/namespaces/{namespace}/secrets/shop-limpet")
    assert secret is not None
    return list(json.loads(base64.b64decode(secret["data"]["cookie-keys"])))


def _signed_by(cookie: str | None) -> bytes:
    """The key tag of an LB cookie (its bytes 1..4, see limpet.proxy.session.cookies)."""
    assert cookie is not None
    return base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))[1:5]


async def _rejected(scene: Scene) -> list[dict[str, int]]:
    return [
        dict((await scene.fleet.stats(scene.http, pod)).get("rejectedCookies") or {})
        for pod in scene.fleet.pods
    ]


async def test_key_rotation_keeps_old_cookies_valid(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    scene: Scene,
) -> None:
    users = [User(f"u{i}") for i in range(20)]
    for user in users:
        await user.get(http, scene.fleet.urls()[0])
    status = (await scene.sticky())["status"]
    first = status["keys"]["active"]
    assert all(_signed_by(u.cookie) == key_tag(first) for u in users)
    rejected = await _rejected(scene)

    # No absoluteTimeout: a cookie's life is unbounded, old keys stay valid for the
    # operator's default retention, 24 h.
    keys = await _rotate(scene, "2026-01")
    second = keys["active"]
    assert keys["ids"] == [second, first]
    rotated_at = parse_ts(keys["rotatedAt"])
    assert rotated_at is not None
    stored = await _stored_keys(kube, namespace)
    assert [k["id"] for k in stored] == keys["ids"]
    assert "retireAt" not in stored[0]
    assert stored[1]["retireAt"] - rotated_at == pytest.approx(86400, abs=1e-3)

    # With absoluteTimeout, no cookie signed before the rotation outlives it: that is the
    # retention, also for the oldest key, whose 24 h are cut short.
    keys = await _rotate(scene, "2026-02", spec={"affinity": {"absoluteTimeout": "2h"}})
    third = keys["active"]
    assert keys["ids"] == [third, second, first]
    rotated_at = parse_ts(keys["rotatedAt"])
    assert rotated_at is not None
    stored = await _stored_keys(kube, namespace)
    assert [k["id"] for k in stored] == keys["ids"]
    assert "retireAt" not in stored[0]
    for older in stored[1:]:
        assert older["retireAt"] - rotated_at == pytest.approx(7200, abs=1e-3), older["id"]

    # Cookies signed with the first key, two rotations old, keep their pod through either
    # proxy, and neither proxy rejected one.
    assert all(_signed_by(u.cookie) == key_tag(first) for u in users)
    for i, user in enumerate(users):
        await user.get(http, scene.fleet.urls()[i % 2])
        assert user.moves() == 0, user.pods
    assert await _rejected(scene) == rejected
    reasons = await event_reasons(kube, namespace, "shop")
    assert reasons.count("KeysRotated") == 2, reasons
