"""The operator's watches against the real API server: :class:`Informer`, the shared
per-namespace Service watch built on it (:class:`NamespaceServices`) and the shared,
selector-filtered EndpointSlice watch (:class:`NamespaceSlices`)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from limpet.controller.kube.client import ENDPOINTSLICES, SERVICES, KubeClient
from limpet.controller.kube.informer import Informer
from limpet.controller.kube.watchhub import NamespaceServices, NamespaceSlices
from limpet.controller.model.membership import SliceView, parse_slice
from tests.controller.harness import create_service, eventually, shop_slice


class _Calls(collections.Counter[str]):
    """How often each subscriber's callback ran."""

    def callback(self, name: str) -> Callable[[], None]:
        def called() -> None:
            self[name] += 1

        return called


@contextlib.asynccontextmanager
async def _running(run: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _slice(namespace: str, service: str, count: int) -> dict[str, Any]:
    obj = shop_slice(namespace, count)
    obj["metadata"]["name"] = f"{service}-1"
    obj["metadata"]["labels"] = {"kubernetes.io/service-name": service}
    return obj


async def test_informer_reports_changed_names(kube: KubeClient, namespace: str) -> None:
    await kube.apply(ENDPOINTSLICES.path(namespace, "shop-burst"), shop_slice(namespace, 2))
    await kube.apply(
        ENDPOINTSLICES.path(namespace, "unrelated-1"), _slice(namespace, "unrelated", 1)
    )
    seen: list[set[str]] = []
    informer: Informer[SliceView] = Informer(
        kube,
        ENDPOINTSLICES,
        namespace,
        transform=parse_slice,
        on_change=seen.append,
        label_selector="kubernetes.io/service-name=shop",
    )
    async with _running(informer.run):
        await asyncio.wait_for(informer.synced.wait(), 10)
        # The first list: every listed object is new; the server filtered the other one.
        assert seen == [{"shop-burst"}]
        assert list(informer.items) == ["shop-burst"]
        assert len(informer.items["shop-burst"].endpoints) == 2
        await kube.apply(ENDPOINTSLICES.path(namespace, "shop-burst"), shop_slice(namespace, 3))

        async def three() -> bool:
            return len(informer.items["shop-burst"].endpoints) == 3

        await eventually(three, within=10, what="the modified slice")
        assert seen[-1] == {"shop-burst"}
        await kube.delete(ENDPOINTSLICES.path(namespace, "shop-burst"))

        async def gone() -> bool:
            return not informer.items

        await eventually(gone, within=10, what="the deleted slice")
        assert seen[-1] == {"shop-burst"}
        assert all(names <= {"shop-burst"} for names in seen), seen


async def test_service_ports_hub_calls_back_its_subscribers(
    kube: KubeClient, namespace: str
) -> None:
    hub = NamespaceServices(kube, namespace)
    calls = _Calls()
    shop, cart = calls.callback("shop"), calls.callback("cart")
    hub.subscribe("shop", shop)
    assert not hub.synced("shop")
    async with _running(hub.run):
        # The first list answers every subscriber, also one whose Service does not exist.
        async def listed() -> bool:
            return hub.synced("shop") and calls["shop"] == 1

        await eventually(listed, within=10, what="the first list")
        assert hub.ports("shop") is None
        # A late subscriber is answered at once, from what is already listed.
        hub.subscribe("cart", cart)
        assert calls["cart"] == 1
        await create_service(kube, namespace)

        async def shop_ports() -> bool:
            return hub.ports("shop") == (("http", 80),) and calls["shop"] == 2

        await eventually(shop_ports, within=10, what="the created Service's ports")
        assert calls["cart"] == 1  # not its Service
        await kube.delete(SERVICES.path(namespace, "shop"))

        async def shop_gone() -> bool:
            return hub.ports("shop") is None and calls["shop"] == 3

        await eventually(shop_gone, within=10, what="the deleted Service")
        hub.unsubscribe("shop", shop)
        hub.unsubscribe("cart", cart)
        assert hub.empty


async def test_slice_hub_watches_only_subscribed_services(kube: KubeClient, namespace: str) -> None:
    hub = NamespaceSlices(kube, namespace)
    calls = _Calls()

    def endpoints(service: str) -> list[int]:
        return [len(view.endpoints) for view in hub.items_for(service)]

    async def put(service: str, count: int) -> None:
        path = ENDPOINTSLICES.path(namespace, f"{service}-1")
        await kube.apply(path, _slice(namespace, service, count))

    async def cart_filtered_out(*, cart_count: int, shop_count: int, shop_calls: int) -> None:
        # Cart's slice is written before shop's: had the watch let it through, it would
        # have arrived before shop's (one namespace's events come in resourceVersion order).
        await put("cart", cart_count)
        await put("shop", shop_count)

        async def shop_seen() -> bool:
            return endpoints("shop") == [shop_count] and calls["shop"] == shop_calls

        await eventually(shop_seen, within=10, what=f"shop's slice of {shop_count}")
        assert hub.items_for("cart") == []

    shop, cart = calls.callback("shop"), calls.callback("cart")
    hub.subscribe("shop", shop)
    async with _running(hub.run):

        async def listed() -> bool:
            return hub.synced("shop") and calls["shop"] == 1

        await eventually(listed, within=10, what="the first list")
        assert hub.selector(frozenset({"shop"})) == "kubernetes.io/service-name in (shop)"
        assert hub.items_for("shop") == []
        await cart_filtered_out(cart_count=2, shop_count=1, shop_calls=2)
        assert not hub.synced("cart")
        assert hub.restarts == 1

        # A new name restarts the watch with the wider selector; the relist answers the
        # newcomer and leaves the unchanged subscriber alone.
        hub.subscribe("cart", cart)

        async def cart_listed() -> bool:
            return hub.synced("cart") and endpoints("cart") == [2] and calls["cart"] == 1

        await eventually(cart_listed, within=10, what="cart's slice after subscribing")
        assert hub.restarts == 2
        assert endpoints("shop") == [1]
        assert calls["shop"] == 2
        await put("cart", 3)

        async def cart_updated() -> bool:
            return endpoints("cart") == [3] and calls["cart"] == 2

        await eventually(cart_updated, within=10, what="cart's modified slice")
        assert calls["shop"] == 2

        # Unsubscribed: the watch narrows again and forgets cart's slices.
        hub.unsubscribe("cart", cart)

        async def narrowed() -> bool:
            return hub.restarts == 3 and not hub.synced("cart")

        await eventually(narrowed, within=10, what="the restart without cart")
        assert hub.items_for("cart") == []
        await cart_filtered_out(cart_count=1, shop_count=2, shop_calls=3)
        assert calls["cart"] == 2
        assert hub.restarts == 3
        hub.unsubscribe("shop", shop)
        assert hub.empty
