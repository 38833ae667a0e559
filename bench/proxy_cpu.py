"""CPU time per request of HAProxy and limpet, user and system apart, at several loads.

``python -m bench proxy_cpu``: the nginx backends, HAProxy and limpet (one process,
cookie affinity), started as ``bench proxy`` starts them (:mod:`bench._proxy_peers`,
the proxies on core 0, the backends and wrk on core 1, loopback only), one session
cookie on every request. For each wrk connection count (``--connections``, default 1,
4 and 32: one thread, keep-alive) and each proxy, one warm-up and one measured run; the
proxy's user and system CPU seconds from ``/proc/PID/stat`` around the measured run,
divided by the requests wrk completed. Nothing is asserted.

Why: ``bench proxy`` compares proxies at the rate each reaches, and on loopback the
system time of a request depends on that rate. A ``send`` that finds its reader (wrk,
a backend) asleep wakes it, and the wake-up is charged to the sender; a proxy that is
four times slower finds its peers asleep more often. Fewer connections slow HAProxy to
limpet's rate, so the two can be compared at equal rates (docs/proxy.md, "Performance").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench._proxy_load import Load, issue_sessions, process_times, run_wrk
from bench._proxy_peers import Peer, Procs, cpu_list, start_backends, start_haproxy, start_limpet

TOOLS = ("haproxy", "nginx", "wrk", "taskset")


def measure(peer: Peer, load: Load, *, connections: int, duration: float, core: str) -> str:
    run_wrk(peer, load, load_core=core, connections=connections, duration=1.0, warmup=0)
    user0, sys0 = process_times(peer.pid)
    t0 = time.monotonic()
    result = run_wrk(
        peer, load, load_core=core, connections=connections, duration=duration, warmup=0
    )
    elapsed = time.monotonic() - t0
    user1, sys1 = process_times(peer.pid)
    requests = result.rps * min(duration, elapsed)
    us = 1e6 / max(1.0, requests)
    user, system = (user1 - user0) * us, (sys1 - sys0) * us
    rps = f"{result.rps:,.0f}".replace(",", " ")
    return (
        f"| {peer.name} | {connections} | {rps} | {user + system:.1f} | "
        f"{user:.1f} | {system:.1f} | {result.p99_ms:.2f} |"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench proxy_cpu", description=__doc__)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument(
        "--connections", type=int, action="append", help="wrk connections (repeat; 1, 4, 32)"
    )
    args = parser.parse_args(argv)
    counts = args.connections or [1, 4, 32]
    if args.duration <= 0 or any(c <= 0 for c in counts):
        parser.error("--duration and --connections must be positive")
    missing = [t for t in TOOLS if shutil.which(t) is None]
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
            for connections in counts:
                for peer in peers:
                    line = measure(
                        peer,
                        loads[peer.name],
                        connections=connections,
                        duration=args.duration,
                        core=load_core,
                    )
                    print(line, flush=True)
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
