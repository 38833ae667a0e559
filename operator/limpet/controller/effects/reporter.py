"""One StickyService's reports: its status subresource and its Events.

Data flow: the reconciler owns the planner state, spec, keys and pusher, and hands this
module an :class:`Observed` snapshot of them (:meth:`StatusReporter.update`) whenever
one of them changed. A write takes the latest snapshot, adds the proxies' sync and
rebalance progress from the pusher's :class:`~.pusher.PushReport` (a value, read at write
time, so session counts are current), builds the status with
:func:`~limpet.controller.model.status.build_status` and applies it to the object's status
subresource. :meth:`StatusReporter.run` is the background task: it writes after an
``update``, at most every ``settings.status_interval``, and session-only changes at most
every ``SESSIONS_STATUS_INTERVAL``; without an update it still rebuilds status once per
stats interval, since the proxies' stats (store health, drains emptied) change on their
own, and writes it if a visible part changed; while a backend is Warming it also writes
on a timer, as its weight ramps with time alone. Before each write it posts the Events
that depend on the proxies' stats (drains emptied, proxies behind). The reconciler calls
:meth:`StatusReporter.write` with ``force=True`` and a new snapshot when the durable
state changed, and pushes the plan only after that write returned. This module calls
nothing upstream: it is the last stage of handler -> reconcile -> plan -> push -> status.

Concurrency: single-threaded on the event loop, but writes are ``await``s, so two can
overlap (the background task and the reconciler's forced write). Every write takes one
lock and builds its view under it: a routine write that started before a plan change
cannot land after, and undo, the forced one. Proxies count as synced against the
planner's version, not the pusher's, because status is written before a lifecycle change
is pushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import BackendState
from limpet.controller.effects.pusher import Pusher
from limpet.controller.kube.client import ApiError, KubeClient
from limpet.controller.model.counts import SessionCounts
from limpet.controller.model.keys import KeyMaterial
from limpet.controller.model.planner import PlannerState
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.model.sharing import Sharing, learned_modes
from limpet.controller.model.spec import StickySpec
from limpet.controller.model.status import Problem, ProxySync, StatusView, build_status

log = logging.getLogger(__name__)

SESSIONS_STATUS_INTERVAL = 10.0
RAMP_STATUS_STEPS = 10
OUT_OF_SYNC_GRACE = 10.0


class EventSink(Protocol):
    def post(self, owner: Mapping[str, Any], *, type: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """What the reconciler knows right now, as the status reports it."""

    generation: int
    state: PlannerState
    spec: StickySpec | None
    pusher: Pusher | None
    keys: KeyMaterial | None
    problem: Problem | None
    keys_rotated_at: float | None
    rotation_request: str | None
    store_problem: str | None = None
    """What the session store's configuration misses (a Secret or key), if anything."""


class StatusReporter:
    def __init__(
        self,
        *,
        client: KubeClient,
        settings: OperatorSettings,
        events: EventSink,
        namespace: str,
        name: str,
        ref: Mapping[str, Any],
        path: str,
        observed: Observed,
        recovered: Mapping[str, Any] | None,
    ) -> None:
        self._client = client
        self._settings = settings
        self._events = events
        self._namespace = namespace
        self._name = name
        self._ref = ref
        self._path = path
        self._seen = observed
        self._last_status: dict[str, Any] | None = dict(recovered or {}) or None
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()
        self._written_at = 0.0
        self._drain_empty_reported: set[BackendId] = set()
        self._out_of_sync_since: dict[str, float] = {}
        self._out_of_sync_reported: set[str] = set()
        self._moved_baseline: int | None = None
        self._moved_offset = int(((recovered or {}).get("rebalance") or {}).get("moved") or 0)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self._events.post(
            self._ref, type="Warning" if warning else "Normal", reason=reason, message=message
        )

    def update(self, observed: Observed) -> None:
        """What the reconciler knows now; the background task writes it soon."""
        self._seen = observed
        self._dirty.set()

    def reset_moved(self) -> None:
        """A new rebalance schedule: count its moves from the proxies' next totals."""
        self._moved_baseline = None
        self._moved_offset = 0

    def _view(self) -> StatusView:
        seen = self._seen
        spec = seen.spec
        push = seen.pusher.report() if seen.pusher is not None else None
        proxies = push.proxies if push is not None else ()
        # The planner's version, not the pusher's: status is written before a lifecycle
        # change is pushed, and must not call proxies that still run the old plan synced.
        version = seen.state.version if push is not None else 0
        desired = len(proxies)
        if spec is not None and spec.proxy.managed:
            desired = spec.proxy.replicas or self._settings.proxy_replicas
        sync = ProxySync(
            desired=desired,
            discovered=len(proxies),
            synced=push.synced(version) if push is not None else 0,
            out_of_sync=tuple(p.name for p in push.out_of_sync(version)) if push else (),
            unreachable=tuple(p.name for p in push.unreachable()) if push else (),
        )
        moved = None
        if seen.state.schedule is not None and proxies:
            total = sum(p.rebalance_moves for p in proxies)
            if self._moved_baseline is None:
                self._moved_baseline = total
            moved = self._moved_offset + max(0, total - self._moved_baseline)
        keys = seen.keys
        return StatusView(
            generation=seen.generation,
            state=seen.state,
            proxies=sync,
            sessions=dict(push.sessions) if push is not None else {},
            problem=seen.problem,
            rebalance_moved=moved,
            key_ids=[k.id for k in keys.cookie_keys] if keys else [],
            keys_rotated_at=seen.keys_rotated_at,
            rotation_request=seen.rotation_request,
            slow_start=spec.slow_start if spec is not None else 0.0,
            now=round(time.time(), 6),
            sharing=_sharing(spec, sync, push.counts if push is not None else None, seen),
        )

    async def write(self, observed: Observed | None = None, *, force: bool = False) -> None:
        """Write status now (``force``: even when unchanged), from ``observed`` if given."""
        # One writer at a time, and the view taken under the lock: a routine write that
        # started before a plan change must not land after (and undo) the forced one.
        async with self._lock:
            if observed is not None:
                self._seen = observed
            await self._write_locked(force=force)

    async def _write_locked(self, *, force: bool) -> None:
        status = build_status(self._view(), self._last_status)
        if not force and status == self._last_status:
            return
        if not force and self._last_status is not None:
            visible = _without_sessions(status) != _without_sessions(self._last_status)
            if not visible and time.monotonic() - self._written_at < SESSIONS_STATUS_INTERVAL:
                return
        await self._client.apply(
            self._path,
            {
                "apiVersion": "limpet.dev/v1alpha1",
                "kind": "StickyService",
                "metadata": {"name": self._name, "namespace": self._namespace},
                "status": status,
            },
        )
        self._last_status = status
        self._written_at = time.monotonic()

    def _idle_wait(self) -> float:
        """How long to wait for a change, after the status interval's pause, before building
        status anyway. The proxies' stats change without an ``update`` (the store going
        away and back, a drain emptied), so status is rebuilt once per stats interval; it
        is written only when a visible part changed (session counts alone at most every
        ``SESSIONS_STATUS_INTERVAL``). A Warming backend's weight changes with time alone,
        so while one warms its ramp is written about ``RAMP_STATUS_STEPS`` times over the
        slow start (never more often than the status interval allows)."""
        seen = self._seen
        spec = seen.spec
        wait = min(SESSIONS_STATUS_INTERVAL, self._settings.push.stats_interval)
        warming = any(b.status.state is BackendState.WARMING for b in seen.state.backends.values())
        if not warming or spec is None or spec.slow_start <= 0:
            return wait
        interval = self._settings.status_interval
        step = max(interval, spec.slow_start / RAMP_STATUS_STEPS)
        return min(wait, step - interval)

    async def run(self) -> None:
        interval = self._settings.status_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=self._idle_wait())
            self._dirty.clear()
            self._stats_events()
            try:
                await self.write()
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("%s/%s: status write failed: %s", self._namespace, self._name, exc)
                self._dirty.set()
            await asyncio.sleep(interval)

    def _stats_events(self) -> None:
        """Events that depend on the proxies' reports: drains emptied, proxies behind."""
        seen = self._seen
        if seen.pusher is None:
            return
        push = seen.pusher.report()
        now = time.monotonic()
        if any(p.reachable for p in push.proxies):
            live = push.counts.drain_live
            for b in seen.state.backends.values():
                if b.status.state is not BackendState.DRAINING:
                    self._drain_empty_reported.discard(b.id)
                    continue
                if b.id not in self._drain_empty_reported and live.get(b.id) == 0:
                    self._drain_empty_reported.add(b.id)
                    self.event(
                        "DrainEmpty",
                        f"{b.pod or b.id} holds no live session any more (none active within "
                        "drain.minIdle; older ones move at their next request); safe to stop",
                    )
        for p in push.proxies:
            name = p.name
            if push.version and p.version != push.version:
                since = self._out_of_sync_since.setdefault(name, now)
                if now - since >= OUT_OF_SYNC_GRACE and name not in self._out_of_sync_reported:
                    self._out_of_sync_reported.add(name)
                    self.event(
                        "ProxyOutOfSync",
                        f"proxy {name} runs plan {p.version} instead of {push.version}: "
                        f"{p.error or 'no answer yet'}",
                        warning=True,
                    )
            else:
                self._out_of_sync_since.pop(name, None)
                self._out_of_sync_reported.discard(name)


def _sharing(
    spec: StickySpec | None, sync: ProxySync, counts: SessionCounts | None, seen: Observed
) -> Sharing:
    if spec is None:
        return Sharing()
    store = spec.session_store
    return Sharing(
        replicas=max(sync.desired, sync.discovered),
        learned=learned_modes(spec.affinity),
        store_address=store.address if store is not None else None,
        secret_problem=seen.store_problem if store is not None else None,
        unreachable=counts.store_unreachable if counts is not None else {},
        connected=counts.store_connected if counts is not None else 0,
    )


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
