"""Debounced planning under a rollout burst; kopf peering between two operators."""

from __future__ import annotations

import asyncio
import math
import time

from limpet.controller.kube.client import ENDPOINTSLICES, STICKYSERVICES, KubeClient
from tests.controller.harness import (
    OperatorProcess,
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
    began = time.monotonic()
    for n in range(2, 52):
        await kube.apply(path, shop_slice(namespace, n))
    burst = time.monotonic() - began

    async def all_in() -> bool:
        return await _backends(kube, namespace) == 51

    await eventually(all_in, what="all 51 backends in the plan")
    await asyncio.sleep(2.0)
    last = (await get_sticky(kube, namespace, "shop"))["status"]["planVersion"]
    plans = last - first
    print(f"50 slice updates in {burst:.1f} s -> {plans} plans")
    # The interval doubles from 50 ms to 1 s (about 6 plans in the first 1.6 s), then
    # one plan a second for as long as the burst lasts (longer on a loaded machine),
    # and one after it: far from one plan per update.
    assert 1 <= plans <= 7 + math.ceil(burst), (plans, burst)
    assert plans < 50, plans

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
    # kopf starts an operator paused when peering is mandatory; alone, it resumes.
    low = start_operator("--priority", "100", log_name="low.log")

    async def low_active() -> bool:
        return _active(low.log())

    await eventually(low_active, what="the only operator resuming")

    # A higher-priority replica joins: it resumes, and the running one pauses as soon as it
    # sees it. Both are logged, because each one changes state: this is the real signal.
    # (Had both started at once, the lower one could resume for a moment on a first look
    # at the peering object that predates the other's entry, or stay paused without a
    # word; from outside, its silence could not be told from "not decided yet".)
    high = start_operator("--priority", "200", log_name="high.log")

    async def handed_over() -> bool:
        paused = _last_peering_line(low.log())
        return _active(high.log()) and "Pausing operations" in paused and "priority=200" in paused

    await eventually(handed_over, what="the high-priority operator active, the other paused")
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("one", "shop"))
    # Status is written before the plan is logged: wait for both.
    await eventually(lambda: _planned(kube, namespace, "one", high), what="'one' planned by high")
    assert "/one: plan" not in low.log()  # the active one planned it, the paused one did not

    high.stop()  # graceful: it leaves the peering object at once
    await eventually(low_active, what="the low-priority operator resuming")
    await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("two", "shop"))
    await eventually(lambda: _planned(kube, namespace, "two", low), what="'two' planned by low")
    assert low.alive()
    # Whatever the low one did for 'one', it did after it took over.
    log = low.log()
    first = log.find("/one: plan")
    assert first == -1 or first > log.rfind("Resuming operations"), log


async def _planned(kube: KubeClient, namespace: str, name: str, by: OperatorProcess) -> bool:
    """The StickyService has its backends in status, and ``by`` logged its first plan."""
    return await _backends(kube, namespace, name) > 0 and f"/{name}: plan v1 " in by.log()


def _active(log: str) -> bool:
    """Whether kopf's peering last resumed (rather than paused) this operator."""
    return log.rfind("Resuming operations") > log.rfind("Pausing operations")


def _last_peering_line(log: str) -> str:
    lines = [ln for ln in log.splitlines() if "kopf._core.engines.peering" in ln]
    return lines[-1] if lines else ""
