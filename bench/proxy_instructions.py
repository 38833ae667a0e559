"""User-space instructions per request of the real limpet process, per workload.

``python -m bench proxy_instructions``: the nginx backends and one limpet process
(cookie affinity), started as ``bench proxy`` starts them (:mod:`bench._proxy_peers`,
limpet on core 0, the backends and wrk on core 1, loopback only), except that limpet
runs under valgrind's callgrind. For each workload of ``bench proxy`` (``one``: one
session cookie; ``cycle``: ``--cycle`` sessions the proxy issued, sent in turn; ``new``:
no cookie), one warm-up run, then the counters are zeroed (``callgrind_control -z``),
wrk runs ``--duration`` seconds with ``--connections`` connections, and the counters
are dumped (``callgrind_control -d``): the instructions the process executed, divided
by the requests wrk completed. Nothing is asserted.

Why: on a shared machine CPU time per request moves with the other work, and this
virtual machine has no hardware counters for ``perf stat -e instructions``. An
instruction count does not move with the load, so two versions can be compared in two
runs (about ±1 % between runs of one version). It counts the proxy's user space only
(Python, the compiled hot path, uvloop, httptools, libc), not the kernel. Under
callgrind the proxy runs some 50 times slower, so with more than one connection wrk's
requests pile up in larger batches per loop iteration than at full speed; one
connection (the default) makes every request a loop iteration of its own, and the
count comparable between versions. The dump files (``--keep DIR``) open in
``callgrind_annotate`` for where the instructions go. At this rate each cycled cookie
comes back far less often than once a refresh step, so every cycled request is
decided and re-signed, as nearly every one is at ``bench proxy``'s rates.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._proxy_load import Load, cycle_script, issue_sessions
from bench._proxy_peers import Procs, cpu_list, start_backends, start_limpet

TOOLS = ("nginx", "wrk", "taskset", "valgrind", "callgrind_control")
WORKLOADS = ("one", "cycle", "new")
START_TIMEOUT = 300.0  # seconds: imports under callgrind are slow


def dumped_instructions(text: str) -> int:
    """The instruction total of a callgrind dump (its ``summary:`` or ``totals:`` line)."""
    found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if found is None:
        raise ValueError("no summary or totals line in the callgrind dump")
    return int(found.group(1))


def completed_requests(wrk_out: str) -> int:
    """The requests wrk completed, from its ``N requests in ...`` line."""
    found = re.search(r"^\s*(\d+) requests in ", wrk_out, re.MULTILINE)
    if found is None:
        raise ValueError("no request count in wrk's output")
    return int(found.group(1))


def start_limpet_callgrind(
    procs: Procs, tmp: Path, backends: list[int], *, core: str, out: Path
) -> tuple[int, int]:
    """``limpet proxy`` (standalone, cookie affinity, one process) under callgrind;
    returns (port, pid). Dumps go to ``out``.<pid>.<n>."""
    peer = start_limpet(
        procs,
        tmp,
        backends,
        workers=1,
        cpus=core,
        runner=("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p"),
        start_timeout=START_TIMEOUT,
    )
    return peer.port, peer.pid


def measure(
    pid: int,
    port: int,
    load: Load,
    *,
    name: str,
    core: str,
    connections: int,
    duration: float,
    out: Path,
) -> tuple[int, int, Path]:
    """(requests, instructions, dump file) of one measured wrk run."""
    argv = ["taskset", "-c", core, "wrk", "-t1", f"-c{connections}"]
    if load.header is not None:
        argv += ["-H", load.header]
    if load.script is not None:
        argv += ["-s", str(load.script)]
    url = f"http://127.0.0.1:{port}/"
    subprocess.run([*argv, "-d2s", url], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    wrk_out = subprocess.run(
        [*argv, f"-d{duration:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    before = set(out.parent.glob(f"{out.name}.{pid}.*"))
    subprocess.run(["callgrind_control", "-d", name, str(pid)], capture_output=True, check=True)
    deadline = time.monotonic() + 30
    while not (new := sorted(set(out.parent.glob(f"{out.name}.{pid}.*")) - before)):
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.2)
    time.sleep(0.5)  # the dump is written by the process itself: let it finish
    return completed_requests(wrk_out), dumped_instructions(new[0].read_text()), new[0]


def plan(tmp: Path, port: int, workloads: list[str], cycle: int) -> dict[str, Load]:
    loads = {}
    for w in workloads:
        if w == "one":
            (session,) = issue_sessions(port, "LIMPET", 1)
            loads[w] = Load(header=f"Cookie: {session.cookie}")
        elif w == "cycle":
            sessions = issue_sessions(port, "LIMPET", cycle, timeout=START_TIMEOUT * 2)
            loads[w] = Load(script=cycle_script(tmp, "limpet", [s.cookie for s in sessions]))
        else:
            loads[w] = Load()
    return loads


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench proxy_instructions", description=__doc__)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=1, help="wrk connections")
    parser.add_argument(
        "--workload", choices=WORKLOADS, action="append", help="repeat; default: all three"
    )
    parser.add_argument("--cycle", type=int, default=10_000, help="sessions in the cycle run")
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this directory")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections <= 0 or args.cycle <= 0:
        parser.error("--duration, --connections and --cycle must be positive")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed")
        return 0
    workloads = args.workload or list(WORKLOADS)
    proxy_core, load_core, _ = cpu_list()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="limpet-bench-instr-") as tmp_name:
        tmp = Path(tmp_name)
        dumps = args.keep if args.keep is not None else tmp
        dumps.mkdir(parents=True, exist_ok=True)
        out = dumps.resolve() / "callgrind.out"
        try:
            backends = start_backends(procs, tmp, core=load_core)
            port, pid = start_limpet_callgrind(procs, tmp, backends, core=proxy_core, out=out)
            loads = plan(tmp, port, workloads, args.cycle)
            print("| workload | wrk connections | requests | instructions a request | dump |")
            print("|---|---|---|---|---|")
            for w in workloads:
                requests, instructions, dump = measure(
                    pid,
                    port,
                    loads[w],
                    name=w,
                    core=load_core,
                    connections=args.connections,
                    duration=args.duration,
                    out=out,
                )
                per = f"{instructions / max(1, requests):,.0f}".replace(",", " ")
                kept = dump if args.keep is not None else "-"
                print(f"| {w} | {args.connections} | {requests} | {per} | {kept} |", flush=True)
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
