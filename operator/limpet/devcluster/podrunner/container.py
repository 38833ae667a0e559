"""One container of a pod: start it, probe it, restart it with back-off, stop it gracefully.

Data flow: :meth:`Container.run` loops: build the plan (:mod:`.spec`; a
:class:`~.spec.ConfigError` becomes a waiting state such as ``ErrImagePull`` then
``ImagePullBackOff``, retried with back-off), write the launcher's spec, start
``launcher run`` (:mod:`.launcher`) in its own process group with output to the
container's log file, run the startup, readiness and liveness probers, and wait for the
process to exit. A failed liveness or startup probe kills it as a kubelet does (preStop,
SIGTERM, grace period, SIGKILL). After an exit, ``restartPolicy`` decides; restarts wait
a back-off (``initial``, doubling up to ``cap``, reset after ``reset_after`` seconds of
running) shown as ``CrashLoopBackOff``. :meth:`stop` (pod deletion) runs the preStop
hook, sends SIGTERM, waits out the grace period and sends SIGKILL. Every change calls
``ctx.changed()`` so the pod's status is rewritten.

Asyncio; a container is owned by its pod's task. Probers are tasks it owns and cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp

from limpet.devcluster.podrunner import probes
from limpet.devcluster.podrunner.spec import ConfigError, ContainerPlan, Probe
from limpet.devcluster.podrunner.status import ContainerView, State, now_rfc3339
from limpet.devcluster.process import tail_file

log = logging.getLogger("limpet.podrunner")
LAUNCHER = "limpet.devcluster.podrunner.launcher"
EVENT_TYPES = {
    "Started": "Normal",
    "Killing": "Normal",
    "Failed": "Warning",
    "BackOff": "Warning",
    "Unhealthy": "Warning",
    "FailedPreStopHook": "Warning",
}
"""The container events a kubelet also records as Kubernetes Events (the rest only logs)."""
TERMINATION_LOG = "termination-log"
TERMINATION_MESSAGE_LIMIT = 4096
MIN_KILL_GRACE = 2.0
"""As a kubelet: a process gets at least this long after SIGTERM, even past the grace."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    initial: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0


@dataclass(kw_only=True)
class ContainerContext:
    """What a container needs from its pod (set up by :mod:`.pod`)."""

    pod_name: str
    netns: str
    pod_ip: str
    pod_dir: Path
    log_dir: Path
    volumes: dict[str, Path]
    http: aiohttp.ClientSession
    backoff: Backoff
    restart_policy: str
    grace_seconds: float
    build_plan: Callable[[str], Awaitable[ContainerPlan]]
    changed: Callable[[], None]
    report: Callable[[str, str, str, str], None] = lambda *_: None
    """(container, Normal|Warning, reason, message): a Kubernetes Event on the Pod."""


def launcher_spec(plan: ContainerPlan, ctx: ContainerContext, scratch: Path) -> dict[str, object]:
    mounts = []
    for m in plan.mounts:
        source = ctx.volumes.get(m.volume)
        if source is None:
            raise ConfigError(
                "CreateContainerConfigError", f"volumeMount {m.volume}: no volume of that name"
            )
        if m.sub_path:
            source = source / m.sub_path
        mounts.append({"source": str(source), "target": m.path, "read_only": m.read_only})
    mounts.append(
        {
            "source": str(scratch / TERMINATION_LOG),
            "target": plan.termination_message_path,
            "read_only": False,
        }
    )
    return {
        "netns": ctx.netns,
        "scratch": str(scratch),
        "error_file": str(scratch / "start-error"),
        "mounts": mounts,
        "read_only_root": plan.read_only_root,
        "no_new_privs": plan.no_new_privs,
        "drop_capabilities": list(plan.drop_capabilities),
        "uid": plan.uid,
        "gid": plan.gid,
        "groups": list(plan.groups),
        "env": [list(kv) for kv in plan.env],
        "working_dir": plan.working_dir,
        "argv": list(plan.argv),
        "image_paths": list(plan.image_paths),
    }


def _exited(proc: asyncio.subprocess.Process) -> bool:
    return proc.returncode is not None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Container:
    def __init__(self, name: str, image: str, ctx: ContainerContext, *, init: bool = False) -> None:
        self.ctx = ctx
        self.init = init
        self.view = ContainerView(name=name, image=image)
        self._plan: ContainerPlan | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._spec_path = ctx.pod_dir / "containers" / name / "spec.json"
        self._stopping = asyncio.Event()
        self._delay = 0.0
        self._killing: asyncio.Task[None] | None = None
        self.events: list[tuple[float, str]] = []
        """(time, what) for tests and the log: Started, Killing, BackOff, Unhealthy ..."""

    @property
    def name(self) -> str:
        return self.view.name

    def _set(self, **changes: object) -> None:
        self.view = replace(self.view, **changes)  # type: ignore[arg-type]
        self.ctx.changed()

    def _event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))
        log.info("pod %s, container %s: %s", self.ctx.pod_name, self.name, what)
        reason, _, message = what.partition(": ")
        kind = EVENT_TYPES.get(reason)
        if kind is not None:
            self.ctx.report(self.name, kind, reason, message or f"{reason} container {self.name}")

    # -- the supervision loop -------------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                plan = await self.ctx.build_plan(self.name)
                proc = await self._start(plan)
            except ConfigError as e:
                await self._config_failed(e)
                continue
            started = time.monotonic()
            code = await self._supervise(plan, proc)
            ran_for = time.monotonic() - started
            if self._stopping.is_set() or not self._restarts(code):
                self._set(done=True)
                return
            await self._back_off(ran_for)

    def _restarts(self, code: int) -> bool:
        policy = self.ctx.restart_policy
        if self.init:
            return code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    async def _config_failed(self, e: ConfigError) -> None:
        self._set(state=State(kind="waiting", reason=e.reason, message=e.message))
        self._event(f"Failed: {e.reason}: {e.message}")
        delay = self._next_delay(0.0)
        if e.reason == "ErrImagePull":
            await self._wait(min(1.0, delay / 2))
            if self._stopping.is_set():
                return
            message = f'Back-off pulling image "{self.view.image}": {e.message}'
            self._set(state=State(kind="waiting", reason="ImagePullBackOff", message=message))
        await self._wait(delay)

    def _next_delay(self, ran_for: float) -> float:
        b = self.ctx.backoff
        if ran_for >= b.reset_after:
            self._delay = 0.0
        self._delay = b.initial if self._delay == 0.0 else min(b.cap, self._delay * 2)
        return self._delay

    async def _back_off(self, ran_for: float) -> None:
        delay = self._next_delay(ran_for)
        message = (
            f"back-off {delay:g}s restarting failed container={self.name} pod={self.ctx.pod_name}"
        )
        self._set(
            last_state=self.view.state,
            restart_count=self.view.restart_count + 1,
            state=State(kind="waiting", reason="CrashLoopBackOff", message=message),
        )
        self._event(f"BackOff: {message}")
        await self._wait(delay)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _start(self, plan: ContainerPlan) -> asyncio.subprocess.Process:
        scratch = self._spec_path.parent
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "start-error").unlink(missing_ok=True)
        message_file = scratch / TERMINATION_LOG
        message_file.write_bytes(b"")
        message_file.chmod(0o666)  # the container's user writes it
        self._spec_path.write_text(json.dumps(launcher_spec(plan, self.ctx, scratch)))
        self._spec_path.chmod(0o600)
        self.ctx.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.ctx.log_dir / f"{self.name}.log").open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                LAUNCHER,
                "run",
                str(self._spec_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            )
        self._plan = plan
        self._proc = proc
        self._event("Started")
        self._set(
            state=State(kind="running", started_at=now_rfc3339()),
            started=plan.startup is None,
            ready=False,
        )
        return proc

    async def _supervise(self, plan: ContainerPlan, proc: asyncio.subprocess.Process) -> int:
        started_at = self.view.state.started_at
        probers = [asyncio.create_task(self._probe_loop(plan))]
        try:
            code = await proc.wait()
        finally:
            for t in probers:
                t.cancel()
            await asyncio.gather(*probers, return_exceptions=True)
            if self._killing is not None:
                await asyncio.gather(self._killing, return_exceptions=True)
                self._killing = None
        # Children the container left behind go with its process group.
        _signal_group(proc.pid, signal.SIGKILL)
        self._proc = None
        state = self._terminated(code, started_at)
        if not state.message:
            state = replace(state, message=self._termination_message(plan, state.exit_code))
        self._set(state=state, ready=False)
        return self.view.state.exit_code

    def _termination_message(self, plan: ContainerPlan, exit_code: int) -> str:
        """What the container wrote to its terminationMessagePath, else (policy
        FallbackToLogsOnError, on error) the end of its log, as a kubelet reports it."""
        data = b""
        with contextlib.suppress(OSError):
            data = (self._spec_path.parent / TERMINATION_LOG).read_bytes()
        message = data[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace").strip()
        if not message and plan.fallback_to_logs_on_error and exit_code != 0:
            message = tail_file(self.ctx.log_dir / f"{self.name}.log", 80)[-2048:]
        return message

    def _terminated(self, code: int, started_at: str) -> State:
        error_file = self._spec_path.parent / "start-error"
        error = error_file.read_text() if error_file.exists() else ""
        if error:
            return State(
                kind="terminated", reason="StartError", message=error, exit_code=128,
                started_at=started_at, finished_at=now_rfc3339(),
            )  # fmt: skip
        sig = -code if code < 0 else 0
        exit_code = 128 + sig if sig else code
        return State(
            kind="terminated",
            reason="Completed" if exit_code == 0 else "Error",
            exit_code=exit_code,
            signal=sig,
            started_at=started_at,
            finished_at=now_rfc3339(),
        )

    # -- probes ---------------------------------------------------------------------------------

    async def _probe_loop(self, plan: ContainerPlan) -> None:
        if plan.startup is not None:
            if not await self._until(plan.startup, want=True, what="Startup"):
                return
            self._set(started=True)
        tasks: list[asyncio.Task[object]] = []
        if plan.readiness is not None:
            tasks.append(asyncio.create_task(self._readiness(plan.readiness)))
        else:
            self._set(ready=True)
        if plan.liveness is not None:
            tasks.append(
                asyncio.create_task(self._until(plan.liveness, want=False, what="Liveness"))
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _check(self, probe: Probe) -> probes.Result:
        return await probes.check(
            probe, http=self.ctx.http, host=self.ctx.pod_ip, exec_in=self.exec_in
        )

    async def _readiness(self, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay)
        successes = failures = 0
        while True:
            result = await self._check(probe)
            if result.ok:
                successes, failures = successes + 1, 0
                if successes >= probe.success_threshold and not self.view.ready:
                    self._set(ready=True)
            else:
                successes, failures = 0, failures + 1
                if failures >= probe.failure_threshold and self.view.ready:
                    self._event(f"Unhealthy: Readiness probe failed: {result.message}")
                    self._set(ready=False)
            await asyncio.sleep(probe.period)

    async def _until(self, probe: Probe, *, want: bool, what: str) -> bool:
        """Startup (``want=True``): True once it succeeds. Liveness: kill when it fails."""
        await asyncio.sleep(probe.initial_delay)
        failures = 0
        while True:
            result = await self._check(probe)
            if result.ok:
                failures = 0
                if want:
                    return True
            else:
                failures += 1
                if failures >= probe.failure_threshold:
                    self._event(f"Unhealthy: {what} probe failed: {result.message}")
                    self._event("Killing: failed probe, will be restarted")
                    # The kill runs outside this prober, which _supervise cancels on exit.
                    self._killing = asyncio.create_task(self._terminate(self.ctx.grace_seconds))
                    return False
            await asyncio.sleep(probe.period)

    async def exec_in(self, argv: Sequence[str], limit: float) -> tuple[int, str]:
        """Run ``argv`` in this container's namespaces, as its user, with its environment."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return -1, "container is not running"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", LAUNCHER, "exec", str(self._spec_path), str(proc.pid),
            "--", *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(child.communicate(), limit)
        except TimeoutError:
            _signal_group(child.pid, signal.SIGKILL)
            await child.wait()
            return -1, f"command timed out after {limit:g}s"
        return int(child.returncode or 0), out.decode(errors="replace")

    # -- stopping -------------------------------------------------------------------------------

    async def _terminate(self, grace: float) -> None:
        """preStop within the grace period, SIGTERM, the rest of the grace, SIGKILL."""
        proc, plan = self._proc, self._plan
        if proc is None or proc.returncode is not None or plan is None:
            return
        deadline = time.monotonic() + grace
        if plan.pre_stop is not None:
            self._event(f"PreStop: {plan.pre_stop.kind}")
            with contextlib.suppress(asyncio.TimeoutError):
                result = await asyncio.wait_for(
                    probes.run_hook(
                        plan.pre_stop,
                        http=self.ctx.http,
                        host=self.ctx.pod_ip,
                        exec_in=self.exec_in,
                        budget=max(grace, 0.1),
                    ),
                    max(grace, 0.1),
                )
                if not result.ok:
                    self._event(f"FailedPreStopHook: {result.message}")
        if _exited(proc):
            return
        self._event("SIGTERM")
        _signal_group(proc.pid, signal.SIGTERM)
        remaining = max(deadline - time.monotonic(), MIN_KILL_GRACE if grace > 0 else 0.0)
        try:
            await asyncio.wait_for(proc.wait(), remaining)
        except TimeoutError:
            self._event("SIGKILL")
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop(self, grace: float) -> None:
        """Stop for good (pod deletion): no more restarts."""
        self._stopping.set()
        await self._terminate(grace)
