"""One StickyService, end to end: handler -> reconcile -> plan -> push -> status.

Data flow: kopf runs :meth:`Reconciler.run` as the StickyService's daemon and forwards
spec and annotation changes to :meth:`Reconciler.update`. The reconciler

1. recovers its planner state from the object's status
   (:func:`~limpet.controller.model.status.recover_state`) and its keys from its Secret
   (:class:`~limpet.controller.effects.key_lifecycle.KeyLifecycle`, creating both on
   first sight);
2. applies the managed proxies (Deployment + Service) when ``spec.proxy.managed``;
3. subscribes to its namespace's shared, server-side-filtered watches
   (:class:`~limpet.controller.kube.watches.ServiceWatches`): the target Service's
   ports, its EndpointSlices and the proxies' EndpointSlices. Every change pokes the
   :class:`~limpet.controller.debounce.Debouncer`, the one way into the loop;
4. loops: each paced pass refreshes the proxy targets, builds the membership, asks
   :func:`~limpet.controller.model.planner.plan_next` for the next plan, writes status
   first when the durable state changed (restart safety), hands a new version to the
   :class:`~limpet.controller.effects.pusher.Pusher`, posts the planner's Events and
   hands the :class:`~limpet.controller.effects.reporter.StatusReporter` a new
   :class:`~limpet.controller.effects.reporter.Observed` snapshot;
5. a second task follows the pusher (:attr:`Pusher.changed`): a proxy's sync state
   changed, so the reporter gets a new snapshot; a proxy seen ahead of the planner's
   version raises the version floor and pokes the debouncer;
6. the reporter's own task writes status at most every ``status_interval`` and posts
   the Events that depend on the proxies' stats.

Nothing downstream calls back: the pusher and the reporter hold no reference to the
reconciler, and the reporter reads the pusher only through its
:class:`~limpet.controller.effects.pusher.PushReport` value.

Concurrency: single-threaded on the event loop; nothing here blocks, and a failing API
call or proxy only delays this StickyService. The loop is the only writer of the
planner state; every status write is serialized under the reporter's lock, and a plan
whose durable state changed is pushed only after its forced status write returned.
Planning never runs before the watches have listed once, so a restart never mistakes
"not listed yet" for "all pods gone".
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
from limpet.affinity.plan import plan_to_json
from limpet.controller.debounce import Debouncer
from limpet.controller.effects.key_lifecycle import KeyLifecycle
from limpet.controller.effects.metrics import OperatorMetrics, StickyServiceSample
from limpet.controller.effects.proxies import apply_managed, delete_owned, proxy_targets
from limpet.controller.effects.pusher import Pusher
from limpet.controller.effects.reporter import EventSink, Observed, StatusReporter
from limpet.controller.effects.store_refs import StoreRefs
from limpet.controller.kube.client import STICKYSERVICES, ApiError, KubeClient
from limpet.controller.kube.watches import ServiceWatches
from limpet.controller.kube.watchhub import WatchHub
from limpet.controller.model.backoff import Backoff
from limpet.controller.model.membership import Member, build_membership, proxy_endpoints
from limpet.controller.model.planner import PlanInputs, PlannerState, PlanResult, plan_next
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.model.spec import SpecError, StickySpec, parse_spec
from limpet.controller.model.status import Problem, recover_state

log = logging.getLogger(__name__)


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
        self._schedule_seen = self._state.schedule
        self._spec: StickySpec | None = None
        self._spec_key: object = None
        self._problem: Problem | None = None
        self._floor = 0
        self._next_wakeup: float | None = None
        self._keys = KeyLifecycle(
            client=client,
            events=events,
            owner_ref=self.ref,
            key_retention_default=settings.key_retention_default,
            recovered=body.get("status"),
        )
        self._watches = ServiceWatches(
            client=client,
            hub=hub,
            namespace=self.namespace,
            name=self.name,
            on_change=self._debouncer.poke,
            backoff=settings.retry,
        )
        self._pusher: Pusher | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._store_refs = StoreRefs(
            client, self.namespace, spec=lambda: self._spec, on_change=self._publish
        )
        self._report = self._status_reporter(settings, events, body)

    def _status_reporter(
        self, settings: OperatorSettings, events: EventSink, body: Mapping[str, Any]
    ) -> StatusReporter:
        """The writer of this object's status, seeded with what status said at start."""
        return StatusReporter(
            client=self._client,
            settings=settings,
            events=events,
            namespace=self.namespace,
            name=self.name,
            ref=self.ref,
            path=self._own_path() + "/status",
            observed=self._observed(),
            recovered=body.get("status"),
        )

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

    def _own_path(self) -> str:
        return STICKYSERVICES.path(self.namespace, self.name)

    def _event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self._report.event(reason, message, warning=warning)

    def _observed(self) -> Observed:
        """What status shows now: handed to the reporter whenever part of it changed."""
        return Observed(
            generation=int(self._body.get("metadata", {}).get("generation") or 0),
            state=self._state,
            spec=self._spec,
            pusher=self._pusher,
            keys=self._keys.material,
            problem=self._problem,
            keys_rotated_at=self._keys.rotated_at,
            rotation_request=self._keys.rotation_request,
            store_problem=self._store_refs.problem,
        )

    def _publish(self) -> None:
        self._report.update(self._observed())

    def metrics_sample(self) -> StickyServiceSample:
        """This StickyService's state for the operator's metrics (read at scrape time)."""
        report = self._pusher.report() if self._pusher is not None else None
        proxies = report.proxies if report is not None else ()
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
            sessions={} if report is None else dict(report.counts.sessions),
        )

    # -- main loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._start(self._report.run(), f"status:{self.name}")
        self._start(self._store_refs.run(), f"store-refs:{self.name}")
        backoff = Backoff(self._settings.retry)
        try:
            while True:
                now = time.time()
                wake_in = None if self._next_wakeup is None else max(0.0, self._next_wakeup - now)
                await self._debouncer.wait(wake_in)
                started = time.perf_counter()
                try:
                    await self._pass()
                    backoff.reset()
                except ApiError as exc:
                    self._passed(started, ok=False)
                    if exc.status == 404 and await self._client.get(self._own_path()) is None:
                        log.info("%s/%s is gone; stopping", self.namespace, self.name)
                        return
                    log.warning("%s/%s: API error: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(backoff.next_delay())
                    self._debouncer.poke()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self._passed(started, ok=False)
                    log.warning("%s/%s: %s; retrying", self.namespace, self.name, exc)
                    await asyncio.sleep(backoff.next_delay())
                    self._debouncer.poke()
                else:
                    self._passed(started, ok=True)
        finally:
            await self._stop()

    def _start(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._watches.stop()
        if self._pusher is not None:
            await self._pusher.close()

    async def _pass(self) -> None:
        if self._body_changed:
            self._body_changed = False
            await self._apply_body()
        self._refresh_targets()
        await self._plan_once()

    def _passed(self, started: float, *, ok: bool) -> None:
        """One reconcile pass ended (its retry pause not included): into the metrics."""
        if self._metrics is not None:
            self._metrics.reconciled(time.perf_counter() - started, ok=ok)

    async def _apply_body(self) -> None:
        body = self._body
        now = round(time.time(), 6)
        try:
            spec = parse_spec(body.get("spec") or {})
        except SpecError as exc:
            self._problem = Problem("InvalidSpec", str(exc))
            self._publish()
            return
        keys = await self._keys.apply(body, spec, now=now)
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
        self._store_refs.recheck()
        if self._pusher is None:
            self._pusher = Pusher(
                session=self._http,
                settings=self._settings.push,
                token=keys.admin_token,
                metrics=self._metrics,
            )
            self._start(self._follow(self._pusher), f"follow-push:{self.name}")

    def _refresh_targets(self) -> None:
        if self._pusher is None or self._spec is None:
            return
        endpoints = proxy_endpoints(self._watches.proxy_slices())
        self._pusher.set_targets(proxy_targets(endpoints, self._spec, self._settings))
        self._publish()

    async def _follow(self, pusher: Pusher) -> None:
        """The pusher's news: new proxy sync states for status, and versions seen ahead."""
        while True:
            await pusher.changed.wait()
            pusher.changed.clear()
            ahead = pusher.ahead
            if ahead >= self._state.version and ahead > self._floor:
                log.info(
                    "%s/%s: a proxy holds plan %d; moving past it", self.namespace, self.name, ahead
                )
                self._floor = ahead
                self._debouncer.poke()
            self._publish()

    # -- planning ----------------------------------------------------------------------------

    def _members(self, spec: StickySpec) -> Mapping[BackendId, Member] | None:
        """Current members, or None when the Service or its port is missing (problem set)."""
        keys = self._keys.material
        assert keys is not None
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
            self._watches.member_slices(spec.service), port_name=port_name, id_key=keys.id_key
        )

    async def _plan_once(self) -> None:
        """One pass of plan -> persist -> push -> status."""
        spec, pusher = self._spec, self._pusher
        if spec is None or self._keys.material is None or pusher is None:
            return
        if not self._watches.synced(spec.service):
            self._next_wakeup = time.time() + 0.05
            return
        now = round(time.time(), 6)
        keys = await self._keys.current(self._body, now=now)
        push = pusher.report()
        result = plan_next(
            PlanInputs(
                name=f"{self.namespace}/{self.name}",
                spec=spec,
                members=self._members(spec),
                cookie_keys=keys.plan_keys(),
                sessions=sum(push.sessions.values()) if push.proxies else None,
                version_floor=self._floor,
                gone_after=self._settings.gone_after,
                forget_after=self._settings.forget_after,
            ),
            self._state,
            now=now,
        )
        await self._persist(result)
        if result.new_version:
            await self._push(pusher, result)
        for event in result.events:
            self._event(event.kind.value, event.message, warning=event.warning)
        wakeups = [t for t in (result.next_wakeup, self._keys.next_retirement()) if t is not None]
        self._next_wakeup = min(wakeups) if wakeups else None
        self._publish()

    async def _persist(self, result: PlanResult) -> None:
        """Take the new state; write status first when its durable part changed."""
        previous = self._state
        self._state = result.state
        if result.durable_changed:
            try:
                await self._report.write(self._observed(), force=True)
            except BaseException:
                # Not persisted, so not pushed either: the next pass plans again.
                self._state = previous
                raise
        if result.state.schedule is not self._schedule_seen:
            self._schedule_seen = result.state.schedule
            self._report.reset_moved()

    async def _push(self, pusher: Pusher, result: PlanResult) -> None:
        plan = result.plan
        await pusher.set_plan(plan.version, plan_to_json(plan).encode())
        counts: dict[str, int] = {}
        for b in plan.backends:
            counts[b.state.value] = counts.get(b.state.value, 0) + 1
        log.info(
            "%s/%s: plan v%d to %d proxies: %s%s",
            self.namespace,
            self.name,
            plan.version,
            len(pusher.report().proxies),
            ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no backends",
            ", rebalancing" if plan.rebalance is not None else "",
        )
        if self._floor and plan.version > self._floor:
            self._floor = 0
