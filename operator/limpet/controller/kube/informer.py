"""The one list+watch of the operator: a selector-filtered view of one resource.

Data flow: :meth:`Informer.run` lists ``resource`` in one namespace with the current
:class:`Selection` (a label and/or field selector, filtered by the API server, so
unrelated objects never reach this process), stores ``transform(obj)`` per object name,
then watches from the list's resourceVersion. After every list it calls
``on_change(names)`` with the names whose entry differs from before (possibly none), and
after every watch event ``on_change({name})``. ``synced`` is set after the first
complete list, so readers can tell "no objects" from "not known yet"; :attr:`listed` is
the selection of the last complete list.

The selection can change while it runs (:meth:`Informer.select`): the watch stops, and
after a short pause (``gather``, so a burst of changes costs one list) it lists again
with the newest selection. ``select(None)`` stops watching, forgets the items and calls
``on_change`` with their names (``listed`` is then None). On 410
Gone it lists again at once; on any other error it waits a :class:`~..model.backoff.Backoff`
delay and lists again, forever, until cancelled.

Users: the shared per-namespace watches (:mod:`.watchhub`: Services unfiltered,
EndpointSlices of the subscribed Services, whose selector changes with the
subscriptions) and the watch of external-mode proxies' EndpointSlices (:mod:`.watches`).

Concurrency: one task runs :meth:`run`; readers and :meth:`select` callers on the same
event loop. :attr:`items` is a dict replaced wholesale on a list and mutated in place on
events. ``on_change`` runs synchronously from the watch task and must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from limpet.controller.kube.client import ApiError, KubeClient, Resource, WatchExpired
from limpet.controller.model.backoff import Backoff
from limpet.controller.model.settings import RETRY, BackoffSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

ERRORS = (ApiError, aiohttp.ClientError, TimeoutError, ValueError, KeyError)
"""What a list or a watch may fail with (besides 410 Gone): retried after a backoff."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which objects to list and watch: ``None`` selectors match everything.

    Callers may subclass it to carry what the selector stands for (the shared slice
    watch records the Services it covers), and read it back from :attr:`Informer.listed`.
    """

    label_selector: str | None = None
    field_selector: str | None = None

    def describe(self) -> str:
        return self.label_selector or self.field_selector or "*"


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
        gather: float = 0.0,
        backoff: BackoffSettings = RETRY,
        watch_timeout: int = 290,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._transform = transform
        self._on_change = on_change
        self._gather = gather
        self._backoff = Backoff(backoff)
        self._watch_timeout = watch_timeout
        self._selection: Selection | None = Selection(label_selector, field_selector)
        self._reselect = asyncio.Event()
        self._reselect.set()
        self.items: dict[str, T] = {}
        self.synced = asyncio.Event()
        self.listed: Selection | None = None
        """The selection of the last complete list (None: none yet, or stopped)."""
        self.lists = 0
        """Complete lists so far (the first, re-lists after 410, errors and new selections)."""

    def describe(self) -> str:
        sel = self._selection.describe() if self._selection is not None else "nothing"
        return f"{self._resource.plural} in {self._namespace} ({sel})"

    def select(self, selection: Selection | None) -> None:
        """Watch ``selection`` from now on (``None``: nothing); lists again after ``gather``."""
        if selection != self._selection:
            self._selection = selection
            self._reselect.set()

    async def run(self) -> None:
        path = self._resource.path(self._namespace)
        while True:
            await self._reselect.wait()
            if self._gather:
                await asyncio.sleep(self._gather)  # gather a burst of selection changes
            self._reselect.clear()
            selection = self._selection
            if selection is None:
                dropped = set(self.items)
                self.items, self.listed = {}, None
                self._on_change(dropped)
                continue
            try:
                version = await self._list(path, selection)
                self._backoff.reset()
                while not self._reselect.is_set():
                    version = await self._watch_until_reselected(path, selection, version)
            except WatchExpired:
                self._reselect.set()
            except ERRORS as exc:
                log.warning("watch of %s failed: %s; retrying", self.describe(), exc)
                await asyncio.sleep(self._backoff.next_delay())
                self._reselect.set()

    async def _list(self, path: str, selection: Selection) -> str:
        raw, version = await self._client.list(
            path,
            label_selector=selection.label_selector,
            field_selector=selection.field_selector,
        )
        before = self.items
        self.items = {
            str(o["metadata"]["name"]): self._transform(o) for o in raw if "metadata" in o
        }
        del raw
        self.listed = selection
        self.lists += 1
        self.synced.set()
        self._on_change(
            {n for n in before.keys() | self.items.keys() if before.get(n) != self.items.get(n)}
        )
        return version

    async def _watch_until_reselected(self, path: str, selection: Selection, version: str) -> str:
        """One watch request, cut short by a new selection; the version to go on from."""
        watch = asyncio.create_task(self._watch_once(path, selection, version))
        reselected = asyncio.create_task(self._reselect.wait())
        try:
            await asyncio.wait({watch, reselected}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, reselected):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if watch.cancelled():
            return version
        return watch.result()  # raises what the watch raised

    async def _watch_once(self, path: str, selection: Selection, version: str) -> str:
        async for event in self._client.watch(
            path,
            resource_version=version,
            label_selector=selection.label_selector,
            field_selector=selection.field_selector,
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
