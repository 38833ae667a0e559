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
  retargeted) its :class:`.informer.Informer` lists again with the new selector, after
  a short pause that gathers a start-up burst of subscriptions into one list request.
  Subscribers are called back only when a slice of *their* Service changed.
- :class:`NamespaceServices` watches the namespace's Services (no label names them all,
  so this one is unfiltered; an :class:`.informer.Informer` too) and keeps only each
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from limpet.controller.kube.client import ENDPOINTSLICES, SERVICES, KubeClient
from limpet.controller.kube.informer import Informer, Selection
from limpet.controller.model.membership import SliceView, parse_slice
from limpet.controller.model.settings import RETRY, BackoffSettings

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
Callback = Callable[[], None]
ServicePorts = tuple[tuple[str, int], ...]
ServiceSlice = tuple[str, SliceView]
"""A slice as the shared watch keeps it: (its Service's name, the slice)."""


def service_ports(obj: Mapping[str, Any]) -> ServicePorts:
    return tuple(
        (str(p.get("name") or ""), int(p["port"]))
        for p in (obj.get("spec") or {}).get("ports") or ()
        if p.get("port") is not None
    )


def service_slice(obj: Mapping[str, Any]) -> ServiceSlice:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return str(labels.get(SERVICE_NAME_LABEL, "")), parse_slice(obj)


class _Subscribers:
    def __init__(self) -> None:
        self.by_name: dict[str, list[Callback]] = {}

    def add(self, name: str, callback: Callback) -> None:
        self.by_name.setdefault(name, []).append(callback)

    def remove(self, name: str, callback: Callback) -> None:
        callbacks = self.by_name.get(name, [])
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)
        if not callbacks:
            self.by_name.pop(name, None)

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


@dataclass(frozen=True, slots=True)
class _Services(Selection):
    """The slice watch's selection, with the Services it covers."""

    services: frozenset[str] = frozenset()


class NamespaceSlices(_Hub):
    """EndpointSlices of the subscribed Services in one namespace (one watch)."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        gather: float = 0.02,
        backoff: BackoffSettings = RETRY,
    ) -> None:
        super().__init__(namespace)
        self._informer: Informer[ServiceSlice] = Informer(
            client,
            ENDPOINTSLICES,
            namespace,
            transform=service_slice,
            on_change=self._changed,
            gather=gather,
            backoff=backoff,
        )
        self._informer.select(None)  # nothing until somebody subscribes
        self._service_of: dict[str, str] = {}
        """Slice name -> its Service, as last told to the subscribers."""
        self._listed: frozenset[str] = frozenset()

    @property
    def restarts(self) -> int:
        """How often the watch listed (a new set of Services, a 410, an error)."""
        return self._informer.lists

    def subscribe(self, service: str, callback: Callback) -> None:
        super().subscribe(service, callback)
        self._reselect()

    def unsubscribe(self, service: str, callback: Callback) -> None:
        super().unsubscribe(service, callback)
        self._reselect()

    def synced(self, service: str) -> bool:
        listed = self._informer.listed
        return isinstance(listed, _Services) and service in listed.services

    def items_for(self, service: str) -> list[SliceView]:
        return [view for svc, view in self._informer.items.values() if svc == service]

    def selector(self, names: frozenset[str]) -> str:
        return f"{SERVICE_NAME_LABEL} in ({','.join(sorted(names))})"

    async def run(self) -> None:
        await self._informer.run()

    def _reselect(self) -> None:
        names = frozenset(self._subs.by_name)
        self._informer.select(_Services(self.selector(names), services=names) if names else None)

    def _changed(self, names: set[str]) -> None:
        items = self._informer.items
        touched: set[str] = set()
        for name in names:
            old = self._service_of.pop(name, None)
            if old is not None:
                touched.add(old)
            entry = items.get(name)
            if entry is not None:
                self._service_of[name] = entry[0]
                touched.add(entry[0])
        listed = self._informer.listed
        services = listed.services if isinstance(listed, _Services) else frozenset()
        if services != self._listed:
            # A list with a new set of Services answers the newcomers, also those whose
            # Service has no slices yet.
            touched |= services - self._listed
            self._listed = services
            self._service_of = {n: svc for n, (svc, _) in items.items()}
        self._subs.notify(touched)


class NamespaceServices(_Hub):
    """Ports of every Service in one namespace (one unfiltered watch, tiny entries)."""

    def __init__(
        self, client: KubeClient, namespace: str, *, backoff: BackoffSettings = RETRY
    ) -> None:
        super().__init__(namespace)
        self._announced = False
        self._informer: Informer[ServicePorts] = Informer(
            client,
            SERVICES,
            namespace,
            transform=service_ports,
            on_change=self._changed,
            backoff=backoff,
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

    def __init__(self, client: KubeClient, *, backoff: BackoffSettings = RETRY) -> None:
        self._client = client
        self._backoff = backoff
        self._slices: dict[str, NamespaceSlices] = {}
        self._services: dict[str, NamespaceServices] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def slices(self, namespace: str) -> NamespaceSlices:
        hub = self._slices.get(namespace)
        if hub is None:
            hub = NamespaceSlices(self._client, namespace, backoff=self._backoff)
            self._slices[namespace] = hub
            self._tasks[("slices", namespace)] = asyncio.create_task(
                hub.run(), name=f"slices:{namespace}"
            )
        return hub

    def services(self, namespace: str) -> NamespaceServices:
        hub = self._services.get(namespace)
        if hub is None:
            hub = NamespaceServices(self._client, namespace, backoff=self._backoff)
            self._services[namespace] = hub
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
