"""One StickyService, end to end: watch, plan, push, report.

Data flow: kopf runs :meth:`Reconciler.run` as the StickyService's daemon and forwards
spec and annotation changes to :meth:`Reconciler.update`. The reconciler

1. recovers its planner state from the object's status (:func:`.status.recover_state`)
   and its keys from its Secret (creating both on first sight);
2. applies the managed proxies (Deployment + Service) when ``spec.proxy.managed``;
3. subscribes to its namespace's shared, server-side-filtered watches
   (:mod:`.watchhub`): the target Service's ports, its EndpointSlices and the managed
   proxies' EndpointSlices (external-mode proxies get an :class:`.informer.Informer`
   with their label selector);
4. loops: the :class:`.debounce.Debouncer` turns watch events into paced planning
   passes; each pass builds the membership, asks :func:`.planner.plan_next` for the next
   plan, writes status first when the durable state changed (restart safety), hands a
   new version to the :class:`.pusher.Pusher`, and posts the planner's Events;
5. a second task writes status when something visible changed (proxy sync, sessions),
   at most every ``status_interval``, and posts the proxy and drain Events that depend
   on the proxies' stats.

Nothing here blocks: every wait is on the event loop, and a failing API call or proxy
only delays this StickyService. Planning never runs before the watches have listed once,
so a restart never mistakes "not listed yet" for "all pods gone".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import BackendState
from limpet.controller.debounce import Debouncer
from limpet.controller.informer import Informer
from limpet.controller.keys import KeyMaterial, next_retirement, prune, rotate
from limpet.controller.kube import ENDPOINTSLICES, STICKYSERVICES, ApiError, KubeClient
from limpet.controller.membership import (
    Member,
    SliceView,
    build_membership,
    parse_slice,
    proxy_endpoints,
)
from limpet.controller.planner import PlanInputs, PlannerState, plan_next
from limpet.controller.proxies import (
    apply_managed,
    delete_owned,
    load_keys,
    proxy_service_name,
    proxy_targets,
    save_keys,
)
from limpet.controller.pusher import Pusher
from limpet.controller.settings import OperatorSettings
from limpet.controller.spec import SpecError, StickySpec, parse_spec
from limpet.controller.status import (
    Problem,
    ProxySync,
    StatusView,
    build_status,
    recover_state,
)
from limpet.controller.watchhub import NamespaceServices, NamespaceSlices, WatchHub

log = logging.getLogger(__name__)

ROTATE_ANNOTATION = "limpet.dev/rotate-keys"
SESSIONS_STATUS_INTERVAL = 10.0
OUT_OF_SYNC_GRACE = 10.0


class EventSink(Protocol):
    def post(self, owner: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...


class Reconciler:
    def __init__(
        self,
        *,
        client: KubeClient,
        hub: WatchHub,
        http: aiohttp.ClientSession,
        settings: OperatorSettings,
        events: EventSink,
        body: Mapping[str, Any],
    ) -> None:
        self._client = client
        self._hub = hub
        self._http = http
        self._settings = settings
        self._events = events
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._body: dict[str, Any] = dict(body)
        self._body_changed = True
        self._debouncer = Debouncer(settings.debounce)
        self._debouncer.poke()  # the first pass: apply the body, start watching
        self._state: PlannerState = recover_state(body.get("status"))
        self._last_status: dict[str, Any] | None = dict(body.get("status") or {}) or None
        self._spec: StickySpec | None = None
        self._spec_key: object = None
        self._problem: Problem | None = None
        self._keys: KeyMaterial | None = None
        self._keys_rotated_at: float | None = None
        keys_status = (body.get("status") or {}).get("keys") or {}
        self._rotation_seen: str | None = keys_status.get("rotationRequest")
        self._floor = 0
        self._next_wakeup: float | None = None
        self._services: NamespaceServices | None = None
        self._slices: NamespaceSlices | None = None
        self._watched: tuple[str, str | None] | None = None
        """(target Service, managed proxies' Service or None) subscribed in the hubs."""
        self._proxy_inf: Informer[SliceView] | None = None
        self._watch_tasks: list[asyncio.Task[None]] = []
        self._pusher: Pusher | None = None
        self._status_dirty = asyncio.Event()
        self._status_lock = asyncio.Lock()
        self._status_written_at = 0.0
        self._drain_empty_reported: set[BackendId] = set()
        self._out_of_sync_since: dict[str, float] = {}
        self._out_of_sync_reported: set[str] = set()
        self._moved_baseline: int | None = None
        self._moved_offset = int(
            ((body.get("status") or {}).get("rebalance") or {}).get("moved") or 0
        )
        self._schedule_seen = self._state.schedule

    # -- inputs from kopf ---------------------------------------------------------------------

    def update(self, body: Mapping[str, Any]) -> None:
        """A newer version of the StickyService (spec or annotations changed)."""
        self._body = dict(body)
        self._body_changed = True
        self._debouncer.poke()

    @property
    def ref(self) -> dict[str, Any]:
        return {
            "apiVersion": "limpet.dev/v1alpha1",
            "kind": "StickyService",
            "metadata": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
        }

    def _event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self._events.post(
            self.ref, type="Warning" if warning else "Normal", reason=reason, message=message
        )

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        status_task = asyncio.create_task(self._status_loop(), name=f"status:{self.name}")
        try:
            while True:
                now = time.time()
                wake_in = None if self._next_wakeup is None else max(0.0, self._next_wakeup - now)
                await self._debouncer.wait(wake_in)
                try:
                    if self._body_changed:
                        self._body_changed = False
                        await self._apply_body()
                    await self._plan_once()
                except ApiError as exc:
                    if exc.status == 404 and await self._client.get(self._own_path()) is None:
                        log.info("%s/%s is gone; stopping", self.namespace, self.name)
                        return
                    log.warning("%s/%s: API error: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(1.0)
                    self._debouncer.poke()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    log.warning("%s/%s: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(1.0)
                    self._debouncer.poke()
        finally:
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            await self._stop_watches()
            if self._pusher is not None:
                await self._pusher.close()

    def _own_path(self) -> str:
        return STICKYSERVICES.path(self.namespace, self.name)

    async def _apply_body(self) -> None:
        body = self._body
        now = round(time.time(), 6)
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as exc:
            self._problem = Problem("InvalidSpec", str(exc))
            self._status_dirty.set()
            return
        if self._keys is None:
            self._keys, created = await load_keys(self._client, body, now=now)
            if created:
                self._event("KeysCreated", "admin token and cookie signing key created")
        request = ((body.get("metadata") or {}).get("annotations") or {}).get(ROTATE_ANNOTATION)
        if request and request != self._rotation_seen:
            retention = spec.affinity.absolute_timeout or self._settings.key_retention_default
            self._keys = rotate(self._keys, now=now, retention=retention)
            await save_keys(self._client, body, self._keys)
            self._rotation_seen = request
            self._keys_rotated_at = now
            self._event(
                "KeysRotated",
                f"new cookie signing key {self._keys.active_key_id}; older keys stay valid "
                f"for {retention:g}s",
            )
        if spec.proxy.managed:
            await apply_managed(self._client, body, spec, self._settings)
        elif self._spec is not None and self._spec.proxy.managed:
            deleted = await delete_owned(self._client, body, keep_secret=True)
            if deleted:
                self._event("ProxiesUnmanaged", f"deleted {', '.join(deleted)}")
        key = (spec.service, spec.proxy.managed, spec.proxy.label_selector())
        if key != self._spec_key:
            await self._stop_watches()
            self._start_watches(spec)
            self._spec_key = key
        self._spec = spec
        if self._pusher is None:
            self._pusher = Pusher(
                session=self._http,
                settings=self._settings.push,
                token=self._keys.admin_token,
                on_change=self._status_dirty.set,
                on_ahead=self._proxy_ahead,
            )
        self._refresh_targets()

    def _start_watches(self, spec: StickySpec) -> None:
        """Subscribe to the namespace's shared watches (see :mod:`.watchhub`); external-mode
        proxies, found by an arbitrary label selector, get a watch of their own."""
        self._services = self._hub.services(self.namespace)
        self._slices = self._hub.slices(self.namespace)
        self._services.subscribe(spec.service, self._debouncer.poke)
        self._slices.subscribe(spec.service, self._debouncer.poke)
        proxy_service = None
        if spec.proxy.managed:
            proxy_service = proxy_service_name(self.name)
            self._slices.subscribe(proxy_service, self._refresh_targets)
        else:
            inf: Informer[SliceView] = Informer(
                self._client,
                ENDPOINTSLICES,
                self.namespace,
                transform=parse_slice,
                on_change=lambda _names: self._refresh_targets(),
                label_selector=spec.proxy.label_selector(),
            )
            self._proxy_inf = inf
            self._watch_tasks.append(asyncio.create_task(inf.run(), name=inf.describe()))
        self._watched = (spec.service, proxy_service)

    async def _stop_watches(self) -> None:
        if self._watched is not None and self._services and self._slices:
            service, proxy_service = self._watched
            self._services.unsubscribe(service, self._debouncer.poke)
            self._slices.unsubscribe(service, self._debouncer.poke)
            if proxy_service is not None:
                self._slices.unsubscribe(proxy_service, self._refresh_targets)
            self._watched = None
            await self._hub.release(self.namespace)
        self._proxy_inf = None
        tasks, self._watch_tasks = self._watch_tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _proxy_slices(self) -> list[SliceView]:
        if self._proxy_inf is not None:
            return list(self._proxy_inf.items.values())
        if self._watched is not None and self._watched[1] and self._slices is not None:
            return self._slices.items_for(self._watched[1])
        return []

    def _refresh_targets(self) -> None:
        if self._pusher is None or self._spec is None:
            return
        endpoints = proxy_endpoints(self._proxy_slices())
        self._pusher.set_targets(proxy_targets(endpoints, self._spec, self._settings))
        self._status_dirty.set()

    def _proxy_ahead(self, version: int) -> None:
        if version >= self._state.version and version > self._floor:
            log.info(
                "%s/%s: a proxy holds plan %d; moving past it", self.namespace, self.name, version
            )
            self._floor = version
            self._debouncer.poke()

    # -- planning ----------------------------------------------------------------------------

    def _members(self, spec: StickySpec) -> Mapping[BackendId, Member] | None:
        """Current members, or None when the Service or its port is missing (problem set)."""
        assert self._services is not None
        assert self._slices is not None
        assert self._keys is not None
        ports = self._services.ports(spec.service)
        if ports is None:
            self._problem = Problem(
                "ServiceNotFound",
                f"Service {self.namespace}/{spec.service} does not exist: proxies answer 503",
            )
            return None
        if isinstance(spec.port, str):
            port_name: str | None = spec.port if any(n == spec.port for n, _ in ports) else None
        else:
            port_name = next((n for n, number in ports if number == spec.port), None)
        if port_name is None:
            have = ", ".join(f"{n or '(unnamed)'}:{p}" for n, p in ports) or "none"
            self._problem = Problem(
                "PortNotFound",
                f"Service {spec.service} has no port {spec.port!r} (it has {have})",
            )
            return None
        self._problem = None
        return build_membership(
            self._slices.items_for(spec.service), port_name=port_name, id_key=self._keys.id_key
        )

    async def _plan_once(self) -> None:
        spec, keys, pusher = self._spec, self._keys, self._pusher
        if spec is None or keys is None or pusher is None:
            return
        assert self._services is not None
        assert self._slices is not None
        if not (self._services.synced(spec.service) and self._slices.synced(spec.service)):
            self._next_wakeup = time.time() + 0.05
            return
        now = round(time.time(), 6)
        pruned = prune(keys, now=now)
        if pruned is not keys:
            self._keys = keys = pruned
            await save_keys(self._client, self._body, keys)
        members = self._members(spec)
        sessions = pusher.sessions()
        result = plan_next(
            PlanInputs(
                name=f"{self.namespace}/{self.name}",
                spec=spec,
                members=members,
                cookie_keys=keys.plan_keys(),
                sessions=sum(sessions.values()) if pusher.proxies else None,
                version_floor=self._floor,
                gone_after=self._settings.gone_after,
                forget_after=self._settings.forget_after,
            ),
            self._state,
            now=now,
        )
        previous = self._state
        self._state = result.state
        if result.durable_changed:
            try:
                await self._write_status(force=True)
            except BaseException:
                # Not persisted, so not pushed either: the next pass plans again.
                self._state = previous
                raise
        if result.state.schedule is not self._schedule_seen:
            self._schedule_seen = result.state.schedule
            self._moved_baseline = None
            self._moved_offset = 0
        if result.new_version:
            await pusher.set_plan(result.plan.version, result.plan.to_json().encode())
            counts: dict[str, int] = {}
            for b in result.plan.backends:
                counts[b.state.value] = counts.get(b.state.value, 0) + 1
            log.info(
                "%s/%s: plan v%d to %d proxies: %s%s",
                self.namespace,
                self.name,
                result.plan.version,
                len(pusher.proxies),
                ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no backends",
                ", rebalancing" if result.plan.rebalance is not None else "",
            )
            if self._floor and result.plan.version > self._floor:
                self._floor = 0
        for event in result.events:
            self._event(event.kind.value, event.message, warning=event.warning)
        wakeups = [t for t in (result.next_wakeup, next_retirement(keys)) if t is not None]
        self._next_wakeup = min(wakeups) if wakeups else None
        self._status_dirty.set()

    # -- status ------------------------------------------------------------------------------

    def _view(self) -> StatusView:
        pusher, spec = self._pusher, self._spec
        proxies = list(pusher.proxies.values()) if pusher else []
        # The planner's version, not the pusher's: status is written before a lifecycle
        # change is pushed, and must not call proxies that still run the old plan synced.
        version = self._state.version if pusher else 0
        desired = len(proxies)
        if spec is not None and spec.proxy.managed:
            desired = spec.proxy.replicas or self._settings.proxy_replicas
        sync = ProxySync(
            desired=desired,
            discovered=len(proxies),
            synced=sum(1 for p in proxies if version and p.version == version),
            out_of_sync=tuple(
                p.target.pod or p.target.url for p in proxies if p.version != version
            ),
            unreachable=tuple(
                p.target.pod or p.target.url for p in proxies if p.last_error and not p.reachable
            ),
        )
        moved = None
        if self._state.schedule is not None and pusher is not None and proxies:
            total = sum(p.migrations.get("rebalance", 0) for p in proxies)
            if self._moved_baseline is None:
                self._moved_baseline = total
            moved = self._moved_offset + max(0, total - self._moved_baseline)
        keys = self._keys
        return StatusView(
            generation=int(self._body.get("metadata", {}).get("generation") or 0),
            state=self._state,
            proxies=sync,
            sessions=pusher.sessions() if pusher else {},
            problem=self._problem,
            rebalance_moved=moved,
            key_ids=[k.id for k in keys.cookie_keys] if keys else [],
            keys_rotated_at=self._keys_rotated_at,
            rotation_request=self._rotation_seen,
            now=round(time.time(), 6),
        )

    async def _write_status(self, *, force: bool = False) -> None:
        # One writer at a time, and the view taken under the lock: a routine write that
        # started before a plan change must not land after (and undo) the forced one.
        async with self._status_lock:
            await self._write_status_locked(force=force)

    async def _write_status_locked(self, *, force: bool) -> None:
        status = build_status(self._view(), self._last_status)
        if not force and status == self._last_status:
            return
        if not force and self._last_status is not None:
            visible = _without_sessions(status) != _without_sessions(self._last_status)
            if (
                not visible
                and time.monotonic() - self._status_written_at < SESSIONS_STATUS_INTERVAL
            ):
                return
        await self._client.apply(
            self._own_path() + "/status",
            {
                "apiVersion": "limpet.dev/v1alpha1",
                "kind": "StickyService",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "status": status,
            },
        )
        self._last_status = status
        self._status_written_at = time.monotonic()

    async def _status_loop(self) -> None:
        interval = self._settings.status_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), timeout=SESSIONS_STATUS_INTERVAL)
            self._status_dirty.clear()
            self._stats_events()
            try:
                await self._write_status()
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s/%s: status write failed: %s", self.namespace, self.name, exc)
                self._status_dirty.set()
            await asyncio.sleep(interval)

    def _stats_events(self) -> None:
        """Events that depend on the proxies' reports: drains emptied, proxies behind."""
        pusher = self._pusher
        if pusher is None:
            return
        now = time.monotonic()
        reporting = [p for p in pusher.proxies.values() if p.reachable]
        if reporting:
            sessions = pusher.sessions()
            for b in self._state.backends.values():
                if b.status.state is not BackendState.DRAINING:
                    self._drain_empty_reported.discard(b.id)
                    continue
                if b.id not in self._drain_empty_reported and sessions.get(b.id, 0) == 0:
                    self._drain_empty_reported.add(b.id)
                    self._event(
                        "DrainEmpty", f"{b.pod or b.id} holds no sessions any more; safe to stop"
                    )
        for p in pusher.proxies.values():
            name = p.target.pod or p.target.url
            if pusher.version and p.version != pusher.version:
                since = self._out_of_sync_since.setdefault(name, now)
                if now - since >= OUT_OF_SYNC_GRACE and name not in self._out_of_sync_reported:
                    self._out_of_sync_reported.add(name)
                    self._event(
                        "ProxyOutOfSync",
                        f"proxy {name} runs plan {p.version} instead of {pusher.version}: "
                        f"{p.last_error or 'no answer yet'}",
                        warning=True,
                    )
            else:
                self._out_of_sync_since.pop(name, None)
                self._out_of_sync_reported.discard(name)


def _without_sessions(status: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(status)
    out["backends"] = [
        {k: v for k, v in b.items() if k != "sessions"} for b in status.get("backends") or ()
    ]
    reb = dict(status.get("rebalance") or {})
    reb.pop("moved", None)
    reb.pop("remaining", None)
    out["rebalance"] = reb
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"}
        for c in status.get("conditions") or ()
    ]
    return out
