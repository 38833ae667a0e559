"""Debounced planning under a rollout burst; kopf peering between two operators."""

from __future__ import annotations

import asyncio

from limpet.controller.kube import ENDPOINTSLICES, STICKYSERVICES, KubeClient
from tests.controller.harness import (
    StartOperator,
    create_service,
    eventually,
    get_sticky,
    shop_slice,
    sticky_manifest,
)


async def _backends(kube: KubeClient, namespace: str, name: str = "shop") -> int:
    status = (await get_sticky(kube, namespace, name)).get("status") or {}
    return int(status.get("backendCount") or 0)


async def test_rollout_burst_gives_a_handful_of_plans(
    kube: KubeClient, namespace: str, start_operator: StartOperator
) -> None:
    await create_service(kube, namespace)
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("shop", "shop"))
    start_operator()
    path = ENDPOINTSLICES.path(namespace, "shop-burst")
    await kube.apply(path, shop_slice(namespace, 1))
    await eventually(lambda: _backends(kube, namespace), what="the first backend")
    await asyncio.sleep(2.5)  # quiet: the debouncer's interval falls back to its minimum
    first = (await get_sticky(kube, namespace, "shop"))["status"]["planVersion"]

    # A rollout: 50 pods become ready one by one, as fast as the API server takes it.
    for n in range(2, 52):
        await kube.apply(path, shop_slice(namespace, n))

    async def all_in() -> bool:
        return await _backends(kube, namespace) == 51

    await eventually(all_in, what="all 51 backends in the plan")
    await asyncio.sleep(2.0)
    last = (await get_sticky(kube, namespace, "shop"))["status"]["planVersion"]
    plans = last - first
    print(f"50 slice updates -> {plans} plans")
    assert 1 <= plans <= 12, plans

    # A lone change after a quiet period is planned promptly (one more plan).
    await asyncio.sleep(2.5)
    await kube.apply(path, shop_slice(namespace, 50))

    async def fifty() -> bool:
        return await _backends(kube, namespace) == 51 and (
            (await get_sticky(kube, namespace, "shop"))["status"]["planVersion"] == last + 1
        )

    await eventually(fifty, within=10, what="one plan for one change")


async def test_peering_one_active_operator_and_takeover(
    kube: KubeClient, namespace: str, start_operator: StartOperator
) -> None:
    await create_service(kube, namespace)
    await kube.apply(ENDPOINTSLICES.path(namespace, "shop-burst"), shop_slice(namespace, 2))
    high = start_operator("--priority", "200", log_name="high.log")
    low = start_operator("--priority", "100", log_name="low.log")

    async def settled() -> bool:
        up = "Initial authentication has finished" in low.log()
        return up and _active(high.log()) and not _active(low.log())

    # kopf starts paused when peering is mandatory; the highest priority resumes, and a
    # lower one that saw no peer yet pauses as soon as it sees the higher one.
    await eventually(settled, what="the high-priority operator active, the other paused")
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("one", "shop"))
    await eventually(lambda: _backends(kube, namespace, "one"), what="'one' reconciled")
    assert "/one: plan v1" in high.log()  # the active one did the work...
    assert "/one: plan" not in low.log()  # ...the paused one did not

    high.stop()  # graceful: it leaves the peering object at once

    async def low_resumed() -> bool:
        return _active(low.log())

    await eventually(low_resumed, what="the low-priority operator resuming")
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("two", "shop"))
    await eventually(lambda: _backends(kube, namespace, "two"), what="'two' reconciled")
    assert "/two: plan v1" in low.log()
    assert low.alive()


def _active(log: str) -> bool:
    """Whether kopf's peering last resumed (rather than paused) this operator."""
    return log.rfind("Resuming operations") > log.rfind("Pausing operations")
