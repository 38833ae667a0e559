"""The demo's scenario: six phases of real traffic while the app's pods change.

1. steady state on 3 pods;
2. scale out to 5 (``kubectl scale``: new sessions use the new pods at once; existing
   sessions move over gradually, only while idle);
3. one pod deleted (``kubectl delete pod``: it drains through its preStop, gets no new
   sessions, its sessions move once idle; its ReplicaSet replaces it);
4. one pod's process killed with SIGKILL (failover: the pod runner sees it die and
   reports the pod not Ready; its sessions fail over at their next request; the
   container restarts after its back-off);
5. ``kubectl rollout restart`` (maxSurge 1, maxUnavailable 0): every pod is replaced,
   one at a time, and each old pod drains like the one of phase 3; the phase lasts
   until the last old pod is gone;
6. steady state again.

On ``$KUBECONFIG``'s cluster the app is fake pods (:class:`~limpet.demo.app.FakeApp`),
which cannot roll out: phase 5 is left out, the deleted and the killed pods are
removed, and phase 6 runs on the 3 pods left.

Two StickyServices front the same app pods, each with its own proxies: ``counter``
(Cookie mode) and, on the local cluster, ``counter-header`` (Header mode keyed by the
session header the users send, sharing its sessions through a real ``redis-server``,
:func:`header_spec`). Every user sends each request to one of its service's proxies at
random, and both services go through the same phases at the same time.

Data flow: :func:`run_scenario` starts one :class:`~limpet.demo.users.UserPool` per
service against that service's proxies, then walks the phases. Each phase's action
changes the app's pods through :class:`~limpet.demo.app.AppPods` (``asyncio.to_thread``:
``kubectl``, the kubernetes client and process control are blocking) and the loop
samples each pool into its service's :class:`~limpet.demo.timeline.Timeline` and the
live view a few times a second, with each StickyService's status
(:class:`~limpet.demo.status.StickyStatus`) and, for the Header service, its proxies'
view of the store (:class:`~limpet.demo.store.StoreWatch`) read once a second. It
returns one :class:`~limpet.demo.results.ServiceResult` per service. Phase lengths are
fractions of ``duration``; the StickyServices' rebalance window and drain timeout, and
the app's preStop, are derived from them, so a shorter run (the end-to-end test) is the
same story, faster.

One event loop; the stage is touched only from the worker thread of one action at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from limpet.demo.app import AppPods
from limpet.demo.backend import SESSION_HEADER
from limpet.demo.results import ServiceResult
from limpet.demo.stage import HEADER_STICKY, STICKY, Stage
from limpet.demo.status import StickyStatus, wait_ready
from limpet.demo.store import StoreWatch
from limpet.demo.timeline import Phase, Timeline, summarize
from limpet.demo.users import TrafficSnapshot, UserPool, UserSettings
from limpet.demo.view import Frame, LiveView

SAMPLE_EVERY = 0.25
T = TypeVar("T")
STATUS_EVERY = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioSettings:
    duration: float = 120.0
    users: int = 80
    seed: int | None = None
    start_pods: int = 3
    scale_to: int = 5
    rollout: bool = True
    """Run the rollout phase (a real Deployment; not on fake pods)."""
    header_users: int = 40
    """Users of the second StickyService (Header mode with the session store); 0: none."""


PHASES: tuple[tuple[Phase, float], ...] = (
    (
        Phase(
            name="steady",
            title="steady (3 pods)",
            description="Three pods; every session stays on its pod.",
        ),
        0.12,
    ),
    (
        Phase(
            name="scale-out",
            title="scale out to 5",
            description="kubectl scale: two pods join; new sessions use them at once, "
            "idle sessions move over gradually within the rebalance window.",
        ),
        0.22,
    ),
    (
        Phase(
            name="drain",
            title="drain one pod",
            description="kubectl delete pod: the pod terminates, serving through its "
            "preStop; it gets no new sessions and its sessions move when idle, before "
            "the drain deadline; then it goes.",
        ),
        0.16,
    ),
    (
        Phase(
            name="failover",
            title="kill one pod",
            description="A pod's process dies (SIGKILL): its sessions fail over at their "
            "next request, announced to the app (Limpet-Session-Moved: failover).",
            failover=True,
        ),
        0.14,
    ),
    (
        Phase(
            name="rollout",
            title="rollout restart",
            description="kubectl rollout restart (maxSurge 1, maxUnavailable 0): pods "
            "are replaced one at a time; each old pod drains, its sessions move to new "
            "pods while idle, announced; none breaks.",
        ),
        0.24,
    ),
    (
        Phase(
            name="steady-again",
            title="steady again",
            description="Sessions stay put on the pods left.",
        ),
        0.12,
    ),
)
"""Every phase with its share of ``duration``; :func:`phases` numbers the titles."""

ROLLOUT_OVERRUN = 120.0
"""How long the rollout phase may outlast its share before the demo gives up."""


def phases(*, rollout: bool = True) -> tuple[tuple[Phase, float], ...]:
    """The phases of a run, numbered; without the rollout on fake pods. The shares are
    scaled back to 1, so the run lasts ``duration`` either way."""
    chosen = [(p, f) for p, f in PHASES if rollout or p.name != "rollout"]
    total = sum(f for _, f in chosen)
    return tuple(
        (dataclasses.replace(p, title=f"{i} {p.title}"), f / total)
        for i, (p, f) in enumerate(chosen, start=1)
    )


def phase_lengths(duration: float, *, rollout: bool = True) -> dict[str, float]:
    return {p.name: duration * f for p, f in phases(rollout=rollout)}


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def drain_timeout(settings: ScenarioSettings) -> int:
    """Seconds a terminating pod's sessions may wait to move: 60% of the drain phase."""
    return max(1, round(phase_lengths(settings.duration, rollout=settings.rollout)["drain"] * 0.6))


def pre_stop(settings: ScenarioSettings) -> int:
    """The app pods' preStop sleep: a terminating pod serves until well after the drain
    deadline (users pause up to 8 s; moves happen at a session's next request)."""
    return drain_timeout(settings) + 5


def sticky_spec(settings: ScenarioSettings) -> dict[str, Any]:
    """The StickyService spec whose windows fit the phases of this run."""
    lengths = phase_lengths(settings.duration, rollout=settings.rollout)
    return {
        "affinity": {
            "type": "Cookie",
            # The demo talks plain HTTP to the proxies.
            "cookie": {"name": "LIMPET", "secure": False},
            # Users pause at most 8 s between requests and leave after a minute or so;
            # a short idle timeout lets the proxies stop counting users who left, so
            # bounded loads balance the users who are still there.
            "idleTimeout": "20s",
        },
        "balance": {"loadFactor": 1.25},
        "rebalance": {
            "mode": "Gradual",
            "window": _seconds(lengths["scale-out"] * 0.5),
            "minIdle": "1s",
            "maxMovesPerSecond": 200,
        },
        "drain": {"timeout": f"{drain_timeout(settings)}s", "minIdle": "1s"},
        "slowStart": "0s",
    }


def header_spec(settings: ScenarioSettings) -> dict[str, Any]:
    """The second StickyService: the same windows, Header mode keyed by the session
    header the users send (the counter app's own), sessions shared through the store
    (``sessionStore`` is filled in by the stage, from the Redis pod it starts)."""
    spec = sticky_spec(settings)
    affinity = {"type": "Header", "header": {"name": SESSION_HEADER}, "idleTimeout": "20s"}
    return {**spec, "affinity": affinity}


@dataclass(slots=True)
class _Service:
    name: str
    mode: str
    pool: UserPool
    status: StickyStatus
    timeline: Timeline = dataclasses.field(default_factory=Timeline)
    store: StoreWatch | None = None
    traffic: asyncio.Task[None] | None = None


def _brief(service: _Service, snap: TrafficSnapshot) -> str:
    """One line about a service beside the first, for the live view."""
    total = snap.total()
    moves = " ".join(f"{k} {v}" for k, v in sorted(total.moves.items())) or "none"
    store = ""
    if service.store is not None:
        w = service.store
        store = f"; store up {w.samples_up}/{w.samples}"
    return (
        f"{service.name} ({service.mode}): requests {total.requests} failed {total.errors} "
        f"broken {total.broken} users {snap.live_users}; moves {moves}{store}"
    )


@dataclass(slots=True)
class _Where:
    index: int
    phase: Phase


class _Run:
    """One run of the phases: the actions, and the ticking that samples and shows."""

    def __init__(
        self, stage: Stage, settings: ScenarioSettings, view: LiveView, services: list[_Service]
    ) -> None:
        self.stage = stage
        self.settings = settings
        self.view = view
        self.services = services
        self.phases = phases(rollout=settings.rollout)
        self.where = _Where(index=0, phase=self.phases[0][0])
        self.notes: dict[str, str] = {}
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self._last_status = 0.0
        assert stage.app is not None
        self.app: AppPods = stage.app

    async def refresh(self) -> None:
        for service in self.services:
            await asyncio.to_thread(service.status.refresh)
            if service.store is not None:
                await asyncio.to_thread(service.store.sample)

    async def tick_until(self, deadline: float) -> None:
        loop = self.loop
        first = self.services[0]
        while loop.time() < deadline:
            if loop.time() - self._last_status >= STATUS_EVERY:
                self._last_status = loop.time()
                await self.refresh()
            snaps = [s.pool.snapshot() for s in self.services]
            for service, snap in zip(self.services, snaps, strict=True):
                service.timeline.sample(time.time(), snap)
            self.view.show(
                Frame(
                    phase_index=self.where.index + 1,
                    phase_count=len(self.phases),
                    phase_title=self.where.phase.title,
                    phase_description=self.where.phase.description,
                    elapsed=loop.time() - self.t0,
                    total=self.settings.duration,
                    snapshot=snaps[0],
                    pod_notes={**first.status.states, **self.notes},
                    status=first.status.line,
                    others=tuple(
                        _brief(s, snap)
                        for s, snap in zip(self.services[1:], snaps[1:], strict=True)
                    ),
                )
            )
            for service in self.services:
                if service.traffic is not None and service.traffic.done():
                    service.traffic.result()  # surfaces a crash of a user pool
            await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, deadline - loop.time())))

    async def act(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    async def scale_out(self, end: float) -> None:
        await self.act(lambda: self.app.scale(self.settings.scale_to))
        await self.tick_until(end)

    async def drain(self, end: float, victim: str) -> None:
        await self.act(lambda: self.app.delete(victim))
        self.notes[victim] = "deleted"
        await self.tick_until(end - 0.5)
        await self.act(lambda: self.app.finish(victim))

    async def failover(self, end: float, victim: str) -> None:
        await self.act(lambda: self.app.kill(victim))
        self.notes[victim] = "killed"
        # The cluster notices a moment later (fake pods: as a readiness probe would).
        await self.tick_until(min(end, self.loop.time() + 2.0))
        await self.act(lambda: self.app.after_kill(victim))
        await self.tick_until(end - 0.5)
        await self.act(lambda: self.app.finish(victim))
        if victim in await self.act(self.stage.app_pods):
            self.notes[victim] = "restarted"  # by the pod runner, after its back-off

    async def rollout(self, end: float) -> None:
        await self.act(self.app.roll_out)
        await self.tick_until(end)
        # The phase lasts until the last old pod is gone, however long that takes here.
        give_up = end + ROLLOUT_OVERRUN
        while not await self.act(self.app.rolled_out):
            if self.loop.time() > give_up:
                raise RuntimeError(
                    f"the rollout did not finish within {ROLLOUT_OVERRUN:.0f} s of its "
                    "phase's end (see podrunner/podrunner.log)"
                )
            await self.tick_until(self.loop.time() + 1.0)

    async def walk(self) -> None:
        lengths = phase_lengths(self.settings.duration, rollout=self.settings.rollout)
        first = await self.act(self.stage.app_pods)
        drain_victim, kill_victim = first[0], first[1]
        actions: dict[str, Callable[[float], Awaitable[None]]] = {
            "scale-out": self.scale_out,
            "drain": lambda end: self.drain(end, drain_victim),
            "failover": lambda end: self.failover(end, kill_victim),
            "rollout": self.rollout,
        }
        start = self.t0
        for index, (phase, _) in enumerate(self.phases):
            self.where.index, self.where.phase = index, phase
            serving = await self.act(self.stage.app_pods)
            for service in self.services:
                service.timeline.begin_phase(phase, time.time(), pods=tuple(serving))
                service.pool.set_phase(phase.name)
            end = start + lengths[phase.name]
            if phase.name in actions:
                await actions[phase.name](end)
            await self.tick_until(end)
            start = max(end, self.loop.time())
        # The last figures: every request answered and tallied, and the proxies' counts
        # read after that, so the moves the users saw and those the proxies made compare.
        for service in self.services:
            await service.pool.quiesce()
        serving = await self.act(self.stage.app_pods)
        await self.refresh()
        for service in self.services:
            service.timeline.sample(time.time(), service.pool.snapshot())
            service.timeline.finish(time.time())
            service.timeline.serving_pods = tuple(serving)


def _services(stage: Stage, settings: ScenarioSettings) -> list[_Service]:
    """The Cookie service, then (when the stage runs it) the Header one with its store."""

    def pool(name: str, users: int, seed: int | None) -> UserPool:
        return UserPool(
            stage.proxy_urls(name),
            settings=UserSettings(population=users),
            rng=random.Random(seed),
        )

    services = [
        _Service(
            name=STICKY,
            mode="Cookie",
            pool=pool(STICKY, settings.users, settings.seed),
            status=StickyStatus(stage, STICKY),
        )
    ]
    if HEADER_STICKY in stage.sticky_names() and settings.header_users > 0:
        assert stage.redis is not None
        services.append(
            _Service(
                name=HEADER_STICKY,
                mode="Header + session store",
                pool=pool(
                    HEADER_STICKY,
                    settings.header_users,
                    None if settings.seed is None else settings.seed + 1,
                ),
                status=StickyStatus(stage, HEADER_STICKY),
                store=StoreWatch(
                    endpoint=stage.redis,
                    key_prefix=stage.store_prefix,
                    admin_urls=stage.admin_urls(HEADER_STICKY),
                    token=stage.tokens[HEADER_STICKY],
                ),
            )
        )
    return services


async def run_scenario(
    stage: Stage, settings: ScenarioSettings, view: LiveView
) -> list[ServiceResult]:
    services = _services(stage, settings)
    view.say("waiting for the operator to push its first plan to every proxy ...")
    for service in services:
        await wait_ready(stage, service.status)
    run = _Run(stage, settings, view, services)
    stop = asyncio.Event()
    for service in services:
        service.traffic = asyncio.create_task(service.pool.run(stop))
    try:
        await run.walk()
    finally:
        stop.set()
        for service in services:
            if service.traffic is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(service.traffic, timeout=10)
    results = []
    for service in services:
        store = None
        if service.store is not None:
            store = await asyncio.to_thread(service.store.finish, service.status.conditions())
        results.append(
            ServiceResult(
                name=service.name,
                mode=service.mode,
                timeline=service.timeline,
                summary=summarize(service.timeline),
                store=store,
                operator_sessions=service.status.sessions(),
            )
        )
    return results
