"""A selector-filtered list+watch that keeps a compact view of the matching objects.

Data flow: :meth:`Informer.run` lists ``resource`` in one namespace with a label and/or
field selector (filtered by the API server, so unrelated objects never reach this
process), stores ``transform(obj)`` per object name, then watches from the list's
resourceVersion. After every list it calls ``on_change(names)`` with the names whose
entry differs from before (possibly none), and after every watch event
``on_change({name})``. On 410 Gone it lists again; on any other error it backs off and
retries, forever, until cancelled. ``synced`` is set after the first complete list, so
readers can tell "no objects" from "not known yet".

Users: a reconciler's watch of external-mode proxies' EndpointSlices (by label
selector), and :class:`.watchhub.NamespaceServices` (a namespace's Services).

Concurrency: one task runs :meth:`run`; readers on the same event loop read
:attr:`items` (a dict replaced wholesale on relist, mutated in place on events).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import aiohttp

from limpet.controller.kube.client import ApiError, KubeClient, Resource, WatchExpired

T = TypeVar("T")
log = logging.getLogger(__name__)


class Informer(Generic[T]):
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str,
        *,
        transform: Callable[[Mapping[str, Any]], T],
        on_change: Callable[[set[str]], None],
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = 290,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._transform = transform
        self._on_change = on_change
        self.label_selector = label_selector
        self.field_selector = field_selector
        self._watch_timeout = watch_timeout
        self.items: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.last_error: str | None = None

    def describe(self) -> str:
        sel = self.label_selector or self.field_selector or "*"
        return f"{self._resource.plural} in {self._namespace} ({sel})"

    async def run(self) -> None:
        path = self._resource.path(self._namespace)
        delay = 0.1
        while True:
            try:
                raw, version = await self._client.list(
                    path, label_selector=self.label_selector, field_selector=self.field_selector
                )
                before = self.items
                self.items = {
                    str(o["metadata"]["name"]): self._transform(o) for o in raw if "metadata" in o
                }
                del raw
                self.synced.set()
                self.last_error = None
                self._on_change(
                    {
                        n
                        for n in before.keys() | self.items.keys()
                        if before.get(n) != self.items.get(n)
                    }
                )
                delay = 0.1
                while True:
                    version = await self._watch_once(path, version)
            except WatchExpired:
                continue
            except asyncio.CancelledError:
                raise
            except (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("watch of %s failed: %s; retrying", self.describe(), exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)

    async def _watch_once(self, path: str, version: str) -> str:
        """One watch request; returns the resourceVersion to continue from."""
        async for event in self._client.watch(
            path,
            resource_version=version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=self._watch_timeout,
        ):
            meta = event.object.get("metadata") or {}
            version = str(meta.get("resourceVersion") or version)
            if event.type == "BOOKMARK":
                continue
            name = str(meta.get("name", ""))
            if event.type == "DELETED":
                self.items.pop(name, None)
            else:
                self.items[name] = self._transform(event.object)
            self._on_change({name})
        return version
