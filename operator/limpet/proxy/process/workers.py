"""``--workers N``: a supervisor and N worker processes sharing the traffic port.

Data flow: the supervisor owns everything that must be single: the admin API, the plan
gate (versioning, persistence) and the state directory. Each worker is a separate Python
process (``python -m limpet.proxy.process.workers FD``) running the engine and its own router on
the same listen address with ``SO_REUSEPORT``, so the kernel spreads connections across
them. Each worker holds one end of a Unix socket pair; over it the supervisor sends one
JSON message per line: ``init`` (settings and the current plan), ``plan`` (every
accepted plan, fanned out) and ``stats`` requests, which the worker answers with its
router stats and engine counters; the supervisor merges the answers for ``GET /v1/stats``
and ``/metrics``.

A worker that exits is restarted with the current plan (after a short, growing pause if
it keeps dying). A worker whose control socket closes (the supervisor died) stops, so
workers never outlive their supervisor. Learned sessions and passive health are per
worker, exactly as they are per proxy replica; cookie sessions need no shared state.

Concurrency: the supervisor is one asyncio loop: a reader task and a monitor task per
worker. Workers ignore SIGINT (the terminal sends it to the whole process group); the
supervisor stops them with SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from limpet.affinity import Plan
from limpet.affinity.plan.codec import MAX_PLAN_BYTES, plan_from_dict, plan_to_dict
from limpet.proxy.engine.backend_stats import merge_backends
from limpet.proxy.engine.server import Server
from limpet.proxy.process.app import (
    announce,
    initial_plan,
    read_token,
    schedule_router_sweep,
    start_admin,
    stop_event,
)
from limpet.proxy.process.gc_tuning import settle
from limpet.proxy.process.state import PlanGate
from limpet.proxy.session.routing import RouterSettings, SessionRouter
from limpet.proxy.session.stats import merge_stats
from limpet.proxy.settings import Address, ProxySettings

log = logging.getLogger("limpet.proxy.process.workers")

LINE_LIMIT = 4 * MAX_PLAN_BYTES
READY_TIMEOUT = 30.0
STATS_TIMEOUT = 2.0
STOP_GRACE = 5.0
RESTART_PAUSE_MAX = 5.0
RESTART_WINDOW = 60.0


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def merge_engine(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum engine counters across workers (nested dicts are summed key by key, the
    per-backend figures bucket by bucket)."""
    out: dict[str, Any] = {"backends": merge_backends(p.get("backends", {}) for p in parts)}
    for part in parts:
        for key, value in part.items():
            if key == "backends":
                continue
            if isinstance(value, dict):
                acc = out.setdefault(key, {})
                for k, n in value.items():
                    acc[k] = acc.get(k, 0) + n
            elif isinstance(value, int | float):
                out[key] = out.get(key, 0) + value
    return out


class _Worker:
    __slots__ = ("index", "monitor", "pending", "pid", "proc", "reader_task", "ready", "writer")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.monitor: asyncio.Task[None] | None = None
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pid = 0

    def send(self, message: Mapping[str, Any]) -> None:
        writer = self.writer
        if writer is not None and not writer.is_closing():
            writer.write(_encode(message))


class Supervisor:
    """Spawns, feeds, watches and restarts the worker processes."""

    def __init__(self, settings: ProxySettings, plan: Plan | None) -> None:
        self.settings = settings
        self.plan = plan
        self.workers: list[_Worker] = []
        self.restarts = 0
        self._recent_restarts: collections.deque[float] = collections.deque()
        self.stopping = asyncio.Event()
        self._ids = itertools.count(1)

    async def start(self) -> None:
        self.workers = [await self._spawn(i) for i in range(self.settings.workers)]
        async with asyncio.timeout(READY_TIMEOUT):
            for w in self.workers:
                await asyncio.shield(w.ready)

    async def _spawn(self, index: int) -> _Worker:
        worker = _Worker(index)
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "limpet.proxy.process.workers",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=LINE_LIMIT)
        worker.proc = proc
        worker.pid = proc.pid
        worker.writer = writer
        plan = None if self.plan is None else plan_to_dict(self.plan)
        worker.send(
            {"op": "init", "index": index, "settings": self.settings.to_json(), "plan": plan}
        )
        worker.reader_task = asyncio.get_running_loop().create_task(self._read(worker, reader))
        worker.monitor = asyncio.get_running_loop().create_task(self._watch(worker))
        return worker

    async def _read(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while line := await reader.readline():
                message = json.loads(line)
                op = message.get("op")
                if op == "ready":
                    if not worker.ready.done():
                        worker.ready.set_result(int(message.get("pid", 0)))
                elif op == "stats":
                    fut = worker.pending.pop(int(message["id"]), None)
                    if fut is not None and not fut.done():
                        fut.set_result(message["stats"])
        for fut in worker.pending.values():
            if not fut.done():
                fut.cancel()
        worker.pending.clear()

    async def _watch(self, worker: _Worker) -> None:
        assert worker.proc is not None
        code = await worker.proc.wait()
        if worker.writer is not None:
            worker.writer.close()
        if self.stopping.is_set():
            return
        self.restarts += 1
        now = time.monotonic()
        recent = self._recent_restarts
        recent.append(now)
        while recent and recent[0] < now - RESTART_WINDOW:
            recent.popleft()
        # 0.2 s for an occasional crash, growing to 5 s for a worker that keeps dying.
        pause = min(RESTART_PAUSE_MAX, 0.1 * 2 ** min(len(recent), 6))
        log.warning(
            "worker %d (pid %d) exited with status %s; restarting in %.1fs",
            worker.index,
            worker.pid,
            code,
            pause,
        )
        await asyncio.sleep(pause)
        if self.stopping.is_set():
            return
        replacement = await self._spawn(worker.index)
        self.workers[worker.index] = replacement

    def broadcast_plan(self, plan: Plan) -> None:
        """The plan gate's consumer: every worker gets every accepted plan."""
        self.plan = plan
        message = {"op": "plan", "plan": plan_to_dict(plan)}
        for w in self.workers:
            w.send(message)

    async def _ask(self, worker: _Worker) -> dict[str, Any] | None:
        request_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        worker.pending[request_id] = fut
        worker.send({"op": "stats", "id": request_id})
        try:
            async with asyncio.timeout(STATS_TIMEOUT):
                return await fut
        except (TimeoutError, asyncio.CancelledError):
            return None
        finally:
            worker.pending.pop(request_id, None)

    async def stats(self) -> dict[str, Any]:
        """The merged stats of every live worker (``GET /v1/stats``, ``/metrics``)."""
        workers = list(self.workers)
        asked = await asyncio.gather(*(self._ask(w) for w in workers))
        live = [(w, a) for w, a in zip(workers, asked, strict=True) if a is not None]
        answers = [a for _, a in live]
        merged = merge_stats(answers)
        engine = merge_engine([a.get("engine", {}) for a in answers])
        engine["workers"] = len(answers)
        merged["engine"] = engine
        merged["workers"] = {
            "configured": len(workers),
            "answering": len(answers),
            "restarts": self.restarts,
            "processes": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "requests": a.get("engine", {}).get("requests", 0),
                }
                for w, a in live
            ],
        }
        if self.plan is None:
            merged["planVersion"] = None
        return merged

    async def stop(self) -> None:
        self.stopping.set()
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                async with asyncio.timeout(STOP_GRACE):
                    await w.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
                await w.proc.wait()
        for w in self.workers:
            for task in (w.monitor, w.reader_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if w.writer is not None:
                w.writer.close()


def reserve_port(listen: Address) -> tuple[Address, socket.socket | None]:
    """For port 0, bind (but do not listen on) a SO_REUSEPORT socket to fix the port
    every worker will share; the supervisor holds it so the number stays ours."""
    if listen.port != 0:
        return listen, None
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((listen.host, 0))
    return Address(listen.host, sock.getsockname()[1]), sock


async def supervise(settings: ProxySettings, *, plan: Plan | None, prefer_given: bool) -> int:
    """Run the supervisor until SIGTERM/SIGINT. Returns the exit status."""
    token = read_token(settings)
    start_plan, store = initial_plan(settings, plan, prefer_given=prefer_given)
    if start_plan is not None and store is not None and start_plan is plan:
        await asyncio.to_thread(store.save, start_plan)
    listen, reservation = reserve_port(settings.listen)
    supervisor = Supervisor(dataclasses.replace(settings, listen=listen), start_plan)
    stop = stop_event()
    try:
        await supervisor.start()
        gate = PlanGate(apply=supervisor.broadcast_plan, store=store, initial=start_plan)
        runner, admin = await start_admin(
            settings=settings, token=token, sink=gate, stats=supervisor
        )
        try:
            announce(
                listen,
                admin,
                workers=settings.workers,
                version=None if start_plan is None else start_plan.version,
            )
            await stop.wait()
        finally:
            await runner.cleanup()
    finally:
        await supervisor.stop()
        if reservation is not None:
            reservation.close()
    return 0


# -- the worker process ----------------------------------------------------------------------


async def _worker(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
    init = json.loads(await reader.readline())
    settings = ProxySettings.from_json(init["settings"])
    router = SessionRouter(settings=RouterSettings())
    if init.get("plan") is not None:
        router.load_plan(plan_from_dict(init["plan"]))
    server = Server(settings=settings, router=router)
    await server.start()
    stop_sweep = schedule_router_sweep(router)
    stop = stop_event()
    settle(settings)
    writer.write(_encode({"op": "ready", "pid": os.getpid()}))

    async def control() -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            while line := await reader.readline():
                message = json.loads(line)
                op = message.get("op")
                if op == "plan":
                    try:
                        plan = plan_from_dict(message["plan"])
                        # Compile off the loop (slot tables take tens of ms), swap on it.
                        commit = await asyncio.to_thread(router.stage, plan)
                        commit()
                    except ValueError:
                        log.exception("worker could not load a plan the supervisor accepted")
                elif op == "stats":
                    stats = router.stats().to_dict()
                    stats["engine"] = server.stats_dict(keep=stats["backends"])
                    writer.write(_encode({"op": "stats", "id": message["id"], "stats": stats}))
        stop.set()  # the supervisor is gone: so are we

    task = asyncio.get_running_loop().create_task(control())
    try:
        await stop.wait()
    finally:
        stop_sweep()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await server.close()
        writer.close()
    return 0


def main(argv: list[str]) -> int:
    import uvloop

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return uvloop.run(_worker(int(argv[0])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
