"""The demo's scenario: five phases of real traffic while the app's pods change.

1. steady state on 3 pods;
2. scale out to 5 (new sessions use the new pods at once; existing sessions move over
   gradually, only while idle);
3. one pod terminating (drain: no new sessions for it, its sessions move once idle,
   then the pod goes);
4. one pod killed (failover: its process dies, then its EndpointSlice entry turns
   not-serving, as kubelet's readiness probe would make it);
5. steady state again, on the 3 pods left.

Data flow: :func:`run_scenario` starts the :class:`~limpet.demo.users.UserPool` against
the stage's proxies, then walks the phases. Each phase's action changes the fake pods
(``asyncio.to_thread``: the kubernetes client and process control are blocking) and the
loop samples the pool into the :class:`~limpet.demo.timeline.Timeline` and the live
view a few times a second, with the StickyService's status (plan version, proxies in
sync, each backend's state) read once a second. Phase lengths are fractions of
``duration``; the StickyService's rebalance window and drain timeout are derived from
them, so a shorter run (the end-to-end test) is the same story, faster.

One event loop; the stage is touched only from the worker thread of one action at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from limpet.demo.stage import STICKY, Stage
from limpet.demo.timeline import Phase, Summary, Timeline, summarize
from limpet.demo.users import UserPool, UserSettings
from limpet.demo.view import Frame, LiveView
from limpet.devcluster.client import request

SAMPLE_EVERY = 0.25
STATUS_EVERY = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioSettings:
    duration: float = 120.0
    users: int = 80
    seed: int | None = None
    start_pods: int = 3
    scale_to: int = 5


PHASES: tuple[tuple[Phase, float], ...] = (
    (
        Phase(
            name="steady",
            title="1 steady (3 pods)",
            description="Three pods; every session stays on its pod.",
        ),
        0.17,
    ),
    (
        Phase(
            name="scale-out",
            title="2 scale out to 5",
            description="Two pods join: new sessions use them at once, idle sessions "
            "move over gradually within the rebalance window.",
        ),
        0.30,
    ),
    (
        Phase(
            name="drain",
            title="3 drain one pod",
            description="A pod terminates: it gets no new sessions and its sessions "
            "move when idle, before the drain deadline; then it goes.",
        ),
        0.20,
    ),
    (
        Phase(
            name="failover",
            title="4 kill one pod",
            description="A pod's process dies: its sessions fail over at their next "
            "request, announced to the app (Limpet-Session-Moved: failover).",
            failover=True,
        ),
        0.15,
    ),
    (
        Phase(
            name="steady-again",
            title="5 steady (3 pods)",
            description="Three pods again; sessions stay put.",
        ),
        0.18,
    ),
)


def phase_lengths(duration: float) -> list[float]:
    return [duration * fraction for _, fraction in PHASES]


def _seconds(value: float) -> str:
    return f"{max(1, round(value))}s"


def sticky_spec(settings: ScenarioSettings) -> dict[str, Any]:
    """The StickyService spec whose windows fit the phases of this run."""
    lengths = dict(zip((p.name for p, _ in PHASES), phase_lengths(settings.duration), strict=True))
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
        "drain": {"timeout": _seconds(lengths["drain"] * 0.6), "minIdle": "1s"},
        "slowStart": "0s",
    }


@dataclass(slots=True)
class _Where:
    index: int
    phase: Phase


class _Status:
    """The StickyService status, read in a worker thread once a second."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self.line = "waiting for the operator ..."
        self.states: dict[str, str] = {}
        self.raw: dict[str, Any] = {}
        self._log = stage.work / "status.log"
        self._logged = ""

    def refresh(self) -> None:
        api = self._stage.api
        assert api is not None
        path = (
            f"/apis/limpet.dev/v1alpha1/namespaces/{self._stage.namespace}/stickyservices/{STICKY}"
        )
        try:
            obj = request(api, "GET", path, timeout=3)
        except (k8s.ApiException, OSError) as exc:
            self.line = f"status unavailable: {exc}"[:100]
            return
        status: dict[str, Any] = obj.get("status") or {}
        self.raw = status
        conditions: list[dict[str, Any]] = status.get("conditions") or []
        ready = next((c for c in conditions if c.get("type") == "Ready"), {})
        reb = status.get("rebalance") or {}
        proxies = status.get("proxies") or {}
        self.states = {
            b.get("pod", ""): str(b.get("state", "")).lower()
            for b in status.get("backends") or []
            if b.get("pod")
        }
        self.line = (
            f"Operator: plan v{status.get('planVersion', '-')}, proxies in sync "
            f"{proxies.get('synced', 0)}/{proxies.get('discovered', 0)}, "
            f"Ready={ready.get('status', '?')}"
            + (
                f", rebalance {reb.get('phase')} moved {reb.get('moved', 0)} "
                f"remaining {reb.get('remaining', 0)}"
                if reb.get("phase")
                else ""
            )
        )
        # Every change of what the operator reports, with the time, for after the run.
        entry = f"{self.line} | {sorted(self.states.items())}"
        if entry != self._logged:
            self._logged = entry
            with self._log.open("a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {entry}\n")


async def wait_ready(stage: Stage, status: _Status, *, within: float = 60.0) -> None:
    """Until the operator says Ready and every proxy runs its plan."""
    want = len(stage.proxy_urls())
    deadline = time.monotonic() + within
    while True:
        await asyncio.to_thread(status.refresh)
        raw = status.raw
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in raw.get("conditions") or []
        )
        synced = (raw.get("proxies") or {}).get("synced", 0)
        backends = sum(1 for s in status.states.values() if s == "active")
        if ready and synced >= want and backends >= len(stage.app_pods()):
            return
        if not stage.operator_alive():
            raise RuntimeError("the operator exited during start-up (see operator.log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the StickyService did not become ready: {status.line}")
        await asyncio.sleep(0.2)


async def run_scenario(
    stage: Stage, settings: ScenarioSettings, view: LiveView, timeline: Timeline
) -> Summary:
    status = _Status(stage)
    view.say("waiting for the operator to push its first plan to every proxy ...")
    await wait_ready(stage, status)
    rng = random.Random(settings.seed)
    pool = UserPool(stage.proxy_urls(), settings=UserSettings(population=settings.users), rng=rng)
    notes: dict[str, str] = {}
    stop = asyncio.Event()
    traffic = asyncio.create_task(pool.run(stop))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    lengths = phase_lengths(settings.duration)
    where = _Where(index=0, phase=PHASES[0][0])
    last_status = 0.0

    async def tick_until(deadline: float) -> None:
        nonlocal last_status
        while loop.time() < deadline:
            now = loop.time()
            if now - last_status >= STATUS_EVERY:
                last_status = now
                await asyncio.to_thread(status.refresh)
            timeline.sample(time.time(), pool.snapshot())
            view.show(
                Frame(
                    phase_index=where.index + 1,
                    phase_count=len(PHASES),
                    phase_title=where.phase.title,
                    phase_description=where.phase.description,
                    elapsed=loop.time() - t0,
                    total=settings.duration,
                    snapshot=pool.snapshot(),
                    pod_notes={**status.states, **notes},
                    status=status.line,
                )
            )
            if traffic.done():
                traffic.result()  # surfaces a crash of the user pool
            await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, deadline - loop.time())))

    async def act(fn: Callable[[], object]) -> None:
        await asyncio.to_thread(fn)

    app = stage.app
    assert app is not None
    first = sorted(stage.app_pods())
    drain_victim, kill_victim = first[0], first[1]

    async def scale_out(end: float) -> None:
        before = set(stage.app_pods())
        await act(lambda: app.scale_up(settings.scale_to))
        for pod in set(stage.app_pods()) - before:
            notes[pod] = "new"
        await tick_until(end)
        for pod in set(stage.app_pods()) - before:
            notes.pop(pod, None)

    async def drain(end: float) -> None:
        await act(lambda: app.terminate(drain_victim))
        await tick_until(end - 0.5)
        await act(lambda: app.remove(drain_victim))
        notes[drain_victim] = "removed"
        await tick_until(end)

    async def failover(end: float) -> None:
        await act(lambda: app.stop_backend(kill_victim))
        notes[kill_victim] = "killed"
        # kubelet notices through the readiness probe a moment later.
        await tick_until(min(end, loop.time() + 2.0))
        await act(lambda: app.set_conditions(kill_victim, ready=False, serving=False))
        await tick_until(end - 0.5)
        await act(lambda: app.remove(kill_victim))
        notes[kill_victim] = "removed"
        await tick_until(end)

    actions: dict[str, Callable[[float], Awaitable[None]]] = {
        "scale-out": scale_out,
        "drain": drain,
        "failover": failover,
    }
    try:
        start = t0
        for index, ((phase, _), length) in enumerate(zip(PHASES, lengths, strict=True)):
            where.index, where.phase = index, phase
            timeline.begin_phase(phase, time.time())
            pool.set_phase(phase.name)
            end = start + length
            if phase.name in actions:
                await actions[phase.name](end)
            await tick_until(end)
            start = end
        timeline.sample(time.time(), pool.snapshot())
        timeline.finish(time.time())
        timeline.serving_pods = tuple(sorted(stage.app_pods()))
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(traffic, timeout=10)
    return summarize(timeline)
