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
5. a second task (:class:`.reporter.StatusReporter`) writes status when something
   visible changed (proxy sync, sessions), at most every ``status_interval``, and posts
   the proxy and drain Events that depend on the proxies' stats.

This module holds the loop and what it owns (body, spec, keys, planner state, pusher);
:mod:`.watches` holds the subscriptions and :mod:`.reporter` the status and Events.

Concurrency: single-threaded on the event loop; nothing here blocks, and a failing API
call or proxy only delays this StickyService. The loop is the only writer of the
planner state; the reporter reads it through :meth:`Reconciler._observe` and serializes
every status write under one lock, and a plan whose durable state changed is pushed
only after its forced status write returned. Planning never runs before the watches have
listed once, so a restart never mistakes "not listed yet" for "all pods gone".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from limpet.affinity.ids import BackendId
from limpet.controller.debounce import Debouncer
from limpet.controller.keys import KeyMaterial, next_retirement, prune, rotate
from limpet.controller.kube import STICKYSERVICES, ApiError, KubeClient
from limpet.controller.membership import Member, build_membership, proxy_endpoints
from limpet.controller.metrics import OperatorMetrics, StickyServiceSample
from limpet.controller.planner import PlanInputs, PlannerState, plan_next
from limpet.controller.proxies import (
    apply_managed,
    delete_owned,
    load_keys,
    proxy_targets,
    save_keys,
)
from limpet.controller.pusher import Pusher
from limpet.controller.reporter import EventSink, Observed, StatusReporter
from limpet.controller.settings import OperatorSettings
from limpet.controller.spec import SpecError, StickySpec, parse_spec
from limpet.controller.status import Problem, recover_state
from limpet.controller.watches import ServiceWatches
from limpet.controller.watchhub import WatchHub

log = logging.getLogger(__name__)

ROTATE_ANNOTATION = "limpet.dev/rotate-keys"


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
        metrics: OperatorMetrics | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._hub = hub
        self._http = http
        self._settings = settings
        meta = body["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._body: dict[str, Any] = dict(body)
        self._body_changed = True
        self._debouncer = Debouncer(settings.debounce)
        self._debouncer.poke()  # the first pass: apply the body, start watching
        self._state: PlannerState = recover_state(body.get("status"))
        self._spec: StickySpec | None = None
        self._spec_key: object = None
        self._problem: Problem | None = None
        self._keys: KeyMaterial | None = None
        self._keys_rotated_at: float | None = None
        keys_status = (body.get("status") or {}).get("keys") or {}
        self._rotation_seen: str | None = keys_status.get("rotationRequest")
        self._floor = 0
        self._next_wakeup: float | None = None
        self._watches = ServiceWatches(
            client=client,
            hub=hub,
            namespace=self.namespace,
            name=self.name,
            on_members=self._debouncer.poke,
            on_proxies=self._refresh_targets,
        )
        self._pusher: Pusher | None = None
        self._report = StatusReporter(
            client=client,
            settings=settings,
            events=events,
            namespace=self.namespace,
            name=self.name,
            ref=self.ref,
            path=self._own_path() + "/status",
            observe=self._observe,
            recovered=body.get("status"),
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
        self._report.event(reason, message, warning=warning)

    def _observe(self) -> Observed:
        """The reporter's snapshot; read at write time, under the reporter's lock."""
        return Observed(
            generation=int(self._body.get("metadata", {}).get("generation") or 0),
            state=self._state,
            spec=self._spec,
            pusher=self._pusher,
            keys=self._keys,
            problem=self._problem,
            keys_rotated_at=self._keys_rotated_at,
            rotation_request=self._rotation_seen,
        )

    def metrics_sample(self) -> StickyServiceSample:
        """This StickyService's state for the operator's metrics (read at scrape time)."""
        proxies = list(self._pusher.proxies.values()) if self._pusher is not None else []
        moved: dict[str, int] = {}
        for p in proxies:
            for reason, n in p.migrations.items():
                moved[reason] = moved.get(reason, 0) + n
        return StickyServiceSample(
            namespace=self.namespace,
            name=self.name,
            plan_version=self._state.version,
            proxies=len(proxies),
            out_of_sync=sum(1 for p in proxies if p.version != self._state.version),
            moved=moved,
            backends={
                b.id: (b.pod or "", b.status.state.value) for b in self._state.backends.values()
            },
        )

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        status_task = asyncio.create_task(self._report.run(), name=f"status:{self.name}")
        try:
            while True:
                now = time.time()
                wake_in = None if self._next_wakeup is None else max(0.0, self._next_wakeup - now)
                await self._debouncer.wait(wake_in)
                started = time.perf_counter()
                try:
                    if self._body_changed:
                        self._body_changed = False
                        await self._apply_body()
                    await self._plan_once()
                except ApiError as exc:
                    self._passed(started, ok=False)
                    if exc.status == 404 and await self._client.get(self._own_path()) is None:
                        log.info("%s/%s is gone; stopping", self.namespace, self.name)
                        return
                    log.warning("%s/%s: API error: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(1.0)
                    self._debouncer.poke()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._passed(started, ok=False)
                    log.warning("%s/%s: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(1.0)
                    self._debouncer.poke()
                else:
                    self._passed(started, ok=True)
        finally:
            status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await status_task
            await self._watches.stop()
            if self._pusher is not None:
                await self._pusher.close()

    def _passed(self, started: float, *, ok: bool) -> None:
        """One reconcile pass ended (its retry pause not included): into the metrics."""
        if self._metrics is not None:
            self._metrics.reconciled(time.perf_counter() - started, ok=ok)

    def _own_path(self) -> str:
        return STICKYSERVICES.path(self.namespace, self.name)

    async def _apply_body(self) -> None:
        body = self._body
        now = round(time.time(), 6)
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as exc:
            self._problem = Problem("InvalidSpec", str(exc))
            self._report.mark_dirty()
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
            await self._watches.stop()
            self._watches.start(spec)
            self._spec_key = key
        self._spec = spec
        if self._pusher is None:
            self._pusher = Pusher(
                session=self._http,
                settings=self._settings.push,
                token=self._keys.admin_token,
                on_change=self._report.mark_dirty,
                on_ahead=self._proxy_ahead,
                on_push=self._metrics.pushed if self._metrics is not None else None,
            )
        self._refresh_targets()

    def _refresh_targets(self) -> None:
        if self._pusher is None or self._spec is None:
            return
        endpoints = proxy_endpoints(self._watches.proxy_slices())
        self._pusher.set_targets(proxy_targets(endpoints, self._spec, self._settings))
        self._report.mark_dirty()

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
        assert self._keys is not None
        ports = self._watches.ports(spec.service)
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
            self._watches.member_slices(spec.service), port_name=port_name, id_key=self._keys.id_key
        )

    async def _plan_once(self) -> None:
        spec, keys, pusher = self._spec, self._keys, self._pusher
        if spec is None or keys is None or pusher is None:
            return
        if not self._watches.synced(spec.service):
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
                await self._report.write(force=True)
            except BaseException:
                # Not persisted, so not pushed either: the next pass plans again.
                self._state = previous
                raise
        if result.state.schedule is not self._schedule_seen:
            self._schedule_seen = result.state.schedule
            self._report.reset_moved()
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
        self._report.mark_dirty()
