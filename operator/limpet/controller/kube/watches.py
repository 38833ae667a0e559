"""One StickyService's view of the cluster: its target Service and the proxies' slices.

Data flow: the reconciler calls :meth:`ServiceWatches.start` with the parsed spec (and
:meth:`ServiceWatches.stop` before starting again when the target Service or the proxy
mode changes). ``start`` subscribes to the namespace's shared, server-side-filtered
watches (:mod:`.watchhub`): the target Service's ports and EndpointSlices, and the
managed proxies' EndpointSlices. External-mode proxies, found by an arbitrary label
selector, get an :class:`.informer.Informer` of their own. Any change of any of them
calls ``on_change`` (the reconciler's debouncer poke: the one way in); the reconciler
then reads :meth:`synced`, :meth:`ports`, :meth:`member_slices` and :meth:`proxy_slices`.

Concurrency: single-threaded on the event loop. The callback runs synchronously from
the watch tasks and must not block. It is stored once, so the object unsubscribed is the
one subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib

from limpet.controller.kube.client import ENDPOINTSLICES, KubeClient
from limpet.controller.kube.informer import Informer
from limpet.controller.kube.watchhub import (
    Callback,
    NamespaceServices,
    NamespaceSlices,
    ServicePorts,
    WatchHub,
)
from limpet.controller.model.membership import SliceView, parse_slice
from limpet.controller.model.names import proxy_service_name
from limpet.controller.model.settings import BackoffSettings
from limpet.controller.model.spec import StickySpec


class ServiceWatches:
    def __init__(
        self,
        *,
        client: KubeClient,
        hub: WatchHub,
        namespace: str,
        name: str,
        on_change: Callback,
        backoff: BackoffSettings,
    ) -> None:
        self._client = client
        self._hub = hub
        self._namespace = namespace
        self._name = name
        self._on_change = on_change
        self._backoff = backoff
        self._services: NamespaceServices | None = None
        self._slices: NamespaceSlices | None = None
        self._watched: tuple[str, str | None] | None = None
        """(target Service, managed proxies' Service or None) subscribed in the hubs."""
        self._proxy_inf: Informer[SliceView] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, spec: StickySpec) -> None:
        """Subscribe to the namespace's shared watches (see :mod:`.watchhub`); external-mode
        proxies, found by an arbitrary label selector, get a watch of their own."""
        self._services = self._hub.services(self._namespace)
        self._slices = self._hub.slices(self._namespace)
        self._services.subscribe(spec.service, self._on_change)
        self._slices.subscribe(spec.service, self._on_change)
        proxy_service = None
        if spec.proxy.managed:
            proxy_service = proxy_service_name(self._name)
            self._slices.subscribe(proxy_service, self._on_change)
        else:
            on_change = self._on_change
            inf: Informer[SliceView] = Informer(
                self._client,
                ENDPOINTSLICES,
                self._namespace,
                transform=parse_slice,
                on_change=lambda _names: on_change(),
                label_selector=spec.proxy.label_selector(),
                backoff=self._backoff,
            )
            self._proxy_inf = inf
            self._tasks.append(asyncio.create_task(inf.run(), name=inf.describe()))
        self._watched = (spec.service, proxy_service)

    async def stop(self) -> None:
        if self._watched is not None and self._services and self._slices:
            service, proxy_service = self._watched
            self._services.unsubscribe(service, self._on_change)
            self._slices.unsubscribe(service, self._on_change)
            if proxy_service is not None:
                self._slices.unsubscribe(proxy_service, self._on_change)
            self._watched = None
            await self._hub.release(self._namespace)
        self._proxy_inf = None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def synced(self, service: str) -> bool:
        """Both watches have listed once: before that, "no endpoints" means "not known"."""
        assert self._services is not None
        assert self._slices is not None
        return self._services.synced(service) and self._slices.synced(service)

    def ports(self, service: str) -> ServicePorts | None:
        assert self._services is not None
        return self._services.ports(service)

    def member_slices(self, service: str) -> list[SliceView]:
        assert self._slices is not None
        return self._slices.items_for(service)

    def proxy_slices(self) -> list[SliceView]:
        if self._proxy_inf is not None:
            return list(self._proxy_inf.items.values())
        if self._watched is not None and self._watched[1] and self._slices is not None:
            return self._slices.items_for(self._watched[1])
        return []
