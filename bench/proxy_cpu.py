"""CPU time per request of HAProxy and limpet, user and system apart, at several loads.

``python -m bench proxy_cpu``: the nginx backends, HAProxy and limpet (one process,
cookie affinity), started as ``bench proxy`` starts them (:mod:`bench._proxy_peers`,
the proxies on core 0, the backends and wrk on core 1, loopback only), one session
cookie on every request. For each wrk connection count (``--connections``, default 1,
4 and 32: one thread, keep-alive) and each proxy, one warm-up and one measured run; the
proxy's user and system CPU seconds from ``/proc/PID/stat`` around the measured run,
divided by the requests wrk completed. Nothing is asserted.

``--where``: the measured run is also sampled by ``perf record -e cpu-clock`` (a software
clock, so it works in a virtual machine without hardware counters), and a second table
splits each proxy's microseconds a request by where the samples fell: the kernel, the
interpreter, the compiled hot path, httptools, uvloop, libc, HAProxy's own binary.
Instruction counts (``bench proxy_instructions``) say what the code executes; this says
where the time goes, which differs where instructions run at very different rates (a
hash's tight loop against the interpreter's pointer chasing, and the kernel, which
callgrind does not see).

Why: ``bench proxy`` compares proxies at the rate each reaches, and on loopback the
system time of a request depends on that rate. A ``send`` that finds its reader (wrk,
a backend) asleep wakes it, and the wake-up is charged to the sender; a proxy that is
four times slower finds its peers asleep more often. Fewer connections slow HAProxy to
limpet's rate, so the two can be compared at equal rates (docs/proxy.md, "Performance").
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._proxy_load import Load, issue_sessions, process_times, run_wrk
from bench._proxy_peers import Peer, Procs, cpu_list, start_backends, start_haproxy, start_limpet

TOOLS = ("haproxy", "nginx", "wrk", "taskset")
PARTS = (  # (part, pattern a sampled object's name matches), first match wins
    ("kernel", r"^\[kernel"),
    ("interpreter", r"libpython"),
    ("compiled hot path", r"limpet_native"),
    ("httptools", r"^parser\.cpython"),
    ("uvloop", r"^loop\.cpython"),
    ("libc", r"^libc\.so"),
    ("haproxy", r"^haproxy$"),
)
OTHER = "other"
COLUMNS = (*(part for part, _ in PARTS), OTHER)  # the parts, in the table's order


@dataclass(frozen=True)
class Measured:
    line: str  # the row of the CPU table
    us: float  # CPU microseconds a request, user and system
    perf_data: Path | None  # the run's cpu-clock samples, with --where


def part_of(dso: str) -> str:
    """Which part of a proxy a sampled object (perf's ``dso`` column) belongs to."""
    return next((part for part, pattern in PARTS if re.search(pattern, dso)), OTHER)


def part_shares(report: str) -> dict[str, float]:
    """Fractions of the samples by part, from ``perf report --sort dso --stdio``."""
    shares: dict[str, float] = {}
    for found in re.finditer(r"^\s*([\d.]+)%\s+(\S+)", report, re.MULTILINE):
        part = part_of(found.group(2))
        shares[part] = shares.get(part, 0.0) + float(found.group(1)) / 100
    return shares


def where_line(name: str, us: float, shares: dict[str, float]) -> str:
    cells = " | ".join(f"{us * shares.get(part, 0.0):.1f}" for part in COLUMNS)
    return f"| {name} | {us:.1f} | {cells} |"


def where_header() -> str:
    return "\n".join(
        [
            "| proxy | µs a request | " + " | ".join(COLUMNS) + " |",
            "|---|---|" + "---|" * len(COLUMNS),
        ]
    )


def sampled(pid: int, out: Path) -> subprocess.Popen[bytes]:
    perf = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-o", str(out)]
    proc = subprocess.Popen([*perf, "-p", str(pid)], stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # perf attaches before the run starts
    return proc


def perf_report(data: Path) -> str:
    argv = ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def measure(
    peer: Peer,
    load: Load,
    *,
    connections: int,
    duration: float,
    core: str,
    perf_data: Path | None = None,
) -> Measured:
    run_wrk(peer, load, load_core=core, connections=connections, duration=1.0, warmup=0)
    perf = None if perf_data is None else sampled(peer.pid, perf_data)
    user0, sys0 = process_times(peer.pid)
    t0 = time.monotonic()
    try:
        result = run_wrk(
            peer, load, load_core=core, connections=connections, duration=duration, warmup=0
        )
    finally:
        if perf is not None:
            perf.send_signal(signal.SIGINT)
            perf.wait(30)
    elapsed = time.monotonic() - t0
    user1, sys1 = process_times(peer.pid)
    requests = result.rps * min(duration, elapsed)
    us = 1e6 / max(1.0, requests)
    user, system = (user1 - user0) * us, (sys1 - sys0) * us
    rps = f"{result.rps:,.0f}".replace(",", " ")
    line = (
        f"| {peer.name} | {connections} | {rps} | {user + system:.1f} | "
        f"{user:.1f} | {system:.1f} | {result.p99_ms:.2f} |"
    )
    return Measured(line, user + system, perf_data)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench proxy_cpu", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument(
        "--connections", type=int, action="append", help="wrk connections (repeat; 1, 4, 32)"
    )
    parser.add_argument(
        "--where",
        action="store_true",
        help="also split each request's CPU time by part (kernel, interpreter, ...) with perf",
    )
    args = parser.parse_args(argv)
    counts = args.connections or [1, 4, 32]
    if args.duration <= 0 or any(c <= 0 for c in counts):
        parser.error("--duration and --connections must be positive")
    missing = [t for t in (*TOOLS, *(("perf",) if args.where else ())) if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (bash tools/apt-deps.sh)")
        return 0
    proxy_core, load_core, _ = cpu_list()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="limpet-bench-cpu-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            backends = start_backends(procs, tmp, core=load_core)
            peers = [
                start_haproxy(procs, tmp, backends, core=proxy_core),
                start_limpet(procs, tmp, backends, workers=1, cpus=proxy_core),
            ]
            loads = {}
            for peer in peers:
                assert peer.cookie is not None
                (session,) = issue_sessions(peer.port, peer.cookie, 1)
                loads[peer.name] = Load(header=f"Cookie: {session.cookie}")
            print("| proxy | wrk connections | req/s | µs a request | user | system | p99 ms |")
            print("|---|---|---|---|---|---|---|")
            runs: list[tuple[str, Measured]] = []
            for connections in counts:
                for i, peer in enumerate(peers):
                    run = measure(
                        peer,
                        loads[peer.name],
                        connections=connections,
                        duration=args.duration,
                        core=load_core,
                        perf_data=tmp / f"perf-{connections}-{i}.data" if args.where else None,
                    )
                    print(run.line, flush=True)
                    runs.append((f"{peer.name}, {connections} connections", run))
            if args.where:
                print_where(runs)
        finally:
            procs.stop_all()
    return 0


def print_where(runs: list[tuple[str, Measured]]) -> None:
    print()
    print(where_header())
    for name, run in runs:
        assert run.perf_data is not None
        print(where_line(name, run.us, part_shares(perf_report(run.perf_data))), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
