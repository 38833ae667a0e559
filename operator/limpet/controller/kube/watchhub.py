"""Shared, server-side-filtered watches: one EndpointSlice watch and one Service watch
per namespace, however many StickyServices live there.

Why: a watch is one long-lived HTTPS connection, and each costs about 0.3 MiB in this
process (asyncio's TLS read buffer alone is 256 KiB). A watch per Service would make the
operator's memory grow with the number of StickyServices; a cluster-wide slice watch
would make it grow with every unrelated EndpointSlice. Instead, per namespace:

- :class:`NamespaceSlices` watches EndpointSlices with the set-based label selector
  ``kubernetes.io/service-name in (a, b, ...)``: the API server sends only the slices
  of Services that some StickyService uses (its target Service and its managed proxies'
  Service). When the set of names changes (a StickyService is created, deleted or
  retargeted) the watch is restarted with the new selector, after a short pause that
  gathers a start-up burst of subscriptions into one list request. Subscribers are
  called back only when a slice of *their* Service changed.
- :class:`NamespaceServices` watches the namespace's Services (no label names them all,
  so this one is unfiltered; a plain :class:`.informer.Informer`) and keeps only each
  Service's name and port list, a few dozen bytes per Service; subscribers are called
  back when their Service appears, changes or disappears.

Data flow: reconcilers :meth:`WatchHub.slices` / :meth:`WatchHub.services` to get the
namespace's hub, ``subscribe(name, callback)`` and later ``unsubscribe``; they read
``items_for(name)`` / ``ports(name)``, and ``synced(name)`` tells "listed" from "not yet".
A hub with no subscribers stops its watch.

Concurrency: one event loop; callbacks are synchronous and cheap (they poke a debouncer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from limpet.controller.kube.client import (
    ENDPOINTSLICES,
    SERVICES,
    ApiError,
    KubeClient,
    WatchExpired,
)
from limpet.controller.kube.informer import Informer
from limpet.controller.model.membership import SliceView, parse_slice

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Callback = Callable[[], None]
ServicePorts = tuple[tuple[str, int], ...]
_ERRORS = (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError)


def service_ports(obj: Mapping[str, Any]) -> ServicePorts:
    return tuple(
        (str(p.get("name") or ""), int(p["port"]))
        for p in (obj.get("spec") or {}).get("ports") or ()
        if p.get("port") is not None
    )


class _Subscribers:
    def __init__(self) -> None:
        self.by_name: dict[str, list[Callback]] = {}
        self.changed = asyncio.Event()

    def add(self, name: str, callback: Callback) -> None:
        self.by_name.setdefault(name, []).append(callback)
        self.changed.set()

    def remove(self, name: str, callback: Callback) -> None:
        callbacks = self.by_name.get(name, [])
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)
        if not callbacks:
            self.by_name.pop(name, None)
        self.changed.set()

    def notify(self, names: set[str]) -> None:
        for name in names:
            for callback in list(self.by_name.get(name, ())):
                callback()


class _Hub:
    """One namespace's watch of one kind, shared by the subscribers of its Services."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._subs = _Subscribers()

    def subscribe(self, service: str, callback: Callback) -> None:
        self._subs.add(service, callback)

    def unsubscribe(self, service: str, callback: Callback) -> None:
        self._subs.remove(service, callback)

    @property
    def empty(self) -> bool:
        return not self._subs.by_name


class NamespaceSlices(_Hub):
    """EndpointSlices of the subscribed Services in one namespace (one watch)."""

    def __init__(self, client: KubeClient, namespace: str, *, gather: float = 0.02) -> None:
        super().__init__(namespace)
        self._client = client
        self._gather = gather
        self._items: dict[str, tuple[str, SliceView]] = {}  # slice name -> (service, view)
        self._listed: frozenset[str] = frozenset()
        self.restarts = 0

    def synced(self, service: str) -> bool:
        return service in self._listed

    def items_for(self, service: str) -> list[SliceView]:
        return [view for svc, view in self._items.values() if svc == service]

    def selector(self, names: frozenset[str]) -> str:
        return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(names))})"

    async def run(self) -> None:
        path = ENDPOINTSLICES.path(self.namespace)
        delay = 0.1
        while True:
            await self._subs.changed.wait()
            await asyncio.sleep(self._gather)  # gather a burst of subscriptions
            self._subs.changed.clear()
            names = frozenset(self._subs.by_name)
            if not names:
                self._items, self._listed = {}, frozenset()
                continue
            try:
                version = await self._relist(path, names)
                delay = 0.1
                while not self._subs.changed.is_set():
                    watch = asyncio.create_task(self._watch(path, names, version))
                    changed = asyncio.create_task(self._subs.changed.wait())
                    try:
                        done, _ = await asyncio.wait(
                            {watch, changed}, return_when=asyncio.FIRST_COMPLETED
                        )
                    finally:
                        for task in (watch, changed):
                            task.cancel()
                            with contextlib.suppress(
                                asyncio.CancelledError, *_ERRORS, WatchExpired
                            ):
                                await task
                    if watch in done and watch.exception() is None:
                        version = watch.result()
                    elif watch in done:
                        exc = watch.exception()
                        assert exc is not None
                        raise exc
            except WatchExpired:
                self._subs.changed.set()
            except asyncio.CancelledError:
                raise
            except _ERRORS as exc:
                log.warning("slice watch in %s failed: %s; retrying", self.namespace, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)
                self._subs.changed.set()

    async def _relist(self, path: str, names: frozenset[str]) -> str:
        raw, version = await self._client.list(path, label_selector=self.selector(names))
        items: dict[str, tuple[str, SliceView]] = {}
        for obj in raw:
            service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if service:
                items[str(obj["metadata"]["name"])] = (str(service), parse_slice(obj))
        del raw
        before = self._by_service(self._items)
        after = self._by_service(items)
        self._items = items
        fresh = names - self._listed
        self._listed = names
        self.restarts += 1
        changed = {n for n in names if before.get(n) != after.get(n)} | set(fresh)
        self._subs.notify(changed)
        return version

    @staticmethod
    def _by_service(items: Mapping[str, tuple[str, SliceView]]) -> dict[str, set[SliceView]]:
        out: dict[str, set[SliceView]] = {}
        for service, view in items.values():
            out.setdefault(service, set()).add(view)
        return out

    async def _watch(self, path: str, names: frozenset[str], version: str) -> str:
        async for event in self._client.watch(
            path, resource_version=version, label_selector=self.selector(names)
        ):
            meta = event.object.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if event.type == "BOOKMARK":
                continue
            name = str(meta.get("name", ""))
            service = str((meta.get("labels") or {}).get(SERVICE_NAME_LABEL, ""))
            old = self._items.pop(name, None)
            if event.type != "DELETED":
                self._items[name] = (service, parse_slice(event.object))
            touched = {service} | ({old[0]} if old else set())
            self._subs.notify(touched)
        return version


class NamespaceServices(_Hub):
    """Ports of every Service in one namespace (one unfiltered watch, tiny entries)."""

    def __init__(self, client: KubeClient, namespace: str) -> None:
        super().__init__(namespace)
        self._announced = False
        self._informer: Informer[ServicePorts] = Informer(
            client, SERVICES, namespace, transform=service_ports, on_change=self._changed
        )

    def subscribe(self, service: str, callback: Callback) -> None:
        super().subscribe(service, callback)
        if self._informer.synced.is_set():
            callback()

    def synced(self, service: str) -> bool:
        return self._informer.synced.is_set()

    def ports(self, service: str) -> ServicePorts | None:
        return self._informer.items.get(service)

    async def run(self) -> None:
        await self._informer.run()

    def _changed(self, names: set[str]) -> None:
        if not self._announced:
            # The first list tells every subscriber, also those whose Service is absent.
            self._announced = True
            names = set(self._subs.by_name)
        self._subs.notify(names)


class WatchHub:
    """The per-namespace hubs of one operator process, started and stopped on demand."""

    def __init__(self, client: KubeClient) -> None:
        self._client = client
        self._slices: dict[str, NamespaceSlices] = {}
        self._services: dict[str, NamespaceServices] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def slices(self, namespace: str) -> NamespaceSlices:
        hub = self._slices.get(namespace)
        if hub is None:
            hub = self._slices[namespace] = NamespaceSlices(self._client, namespace)
            self._tasks[("slices", namespace)] = asyncio.create_task(
                hub.run(), name=f"slices:{namespace}"
            )
        return hub

    def services(self, namespace: str) -> NamespaceServices:
        hub = self._services.get(namespace)
        if hub is None:
            hub = self._services[namespace] = NamespaceServices(self._client, namespace)
            self._tasks[("services", namespace)] = asyncio.create_task(
                hub.run(), name=f"services:{namespace}"
            )
        return hub

    async def release(self, namespace: str) -> None:
        """Stop a namespace's watches once nobody there subscribes any more."""
        for kind, hubs in (("slices", self._slices), ("services", self._services)):
            hub = hubs.get(namespace)
            if hub is not None and hub.empty:
                del hubs[namespace]
                task = self._tasks.pop((kind, namespace))
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._slices.clear()
        self._services.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
