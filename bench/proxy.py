"""Proxy benchmark: limpet against HAProxy, Caddy and nginx, in one run, on loopback.

Set-up (all started here, all stopped at the end, configs in a temporary directory):

- two nginx backends (one nginx, ``worker_processes 1``) answering a short text body and
  naming themselves in ``X-Backend``;
- the proxies under test, each pinned to core 0 with ``taskset``: limpet (cookie
  affinity, one process), HAProxy (``cookie SRV insert indirect nocache``, ``nbthread
  1``), Caddy (``reverse_proxy`` with ``lb_policy cookie``, ``GOMAXPROCS=1``) and nginx
  (``hash $cookie_sid consistent``, ``worker_processes 1``); every one keeps upstream
  connections alive and adds ``X-Forwarded-For``;
- wrk pinned to core 1 (with the backends): one thread, 32 keep-alive connections, a
  warm-up run, then a measured run, for each workload:

  - ``one``: one session cookie, obtained from the proxy itself, on every request;
  - ``cycle``: ``--cycle`` (10 000) sessions obtained from each proxy by as many
    requests without a cookie, cycled by wrk (a Lua script); nginx issues no cookie, so
    it gets as many made-up ``sid`` values. HAProxy's and Caddy's cookies name the
    backend, so their 10 000 sessions carry two distinct values; limpet's are 10 000
    distinct signed cookies;
  - ``new``: no cookie, so every request starts a new session (nginx, which keeps no
    sessions, is left out).

  Before measuring, a sample of each proxy's sessions is replayed to check that it keeps
  them on the backend that created them.

Printed per workload, each figure the median of its rounds (``--rounds``): requests per
second, p50 and p99 latency per proxy, the proxy's CPU and requests per second per
core, the busy share of the load core (when it nears 100 % the figure is bounded by the
load generator, not by the proxy), errors, and the ratios to HAProxy, followed by
limpet's ratios against issue 10's targets (figures, not assertions). Then limpet
with ``--workers 2`` (pinned to both cores, ``one`` only),
HAProxy and limpet with POST requests (``--post-bytes``, 1 KiB by default), and the
memory of one million learned sessions and the cost of inserts into that table once
it is full (eviction: the mean, the slowest, and how many took over 1 ms). With
``--profile FILE`` limpet runs under pyinstrument (``pip install pyinstrument``), which
writes its report to FILE at the end;
its figures then include the profiler's cost. ``--histogram-cost`` adds limpet with
``--no-latency-histogram`` to every workload (and the POST runs) and prints limpet's
ratios to it: the cost of the request-duration histogram.

Run: ``python -m bench proxy [--duration S] [--rounds N] [--workload one|cycle|new]
[--quick]`` (``--help`` for all). It needs ``haproxy``, ``nginx``, ``caddy`` and
``wrk`` (``bash tools/apt-deps.sh`` installs them).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench._proxy_load import (
    Load,
    Result,
    Session,
    check_sticky,
    cycle_script,
    issue_sessions,
    post_script,
    run_wrk,
)
from bench._proxy_peers import (
    Peer,
    Procs,
    cpu_list,
    limpet_env,
    start_backends,
    start_caddy,
    start_haproxy,
    start_limpet,
    start_nginx,
)

WORKLOADS = {
    "one": "one session cookie on every request",
    "cycle": "{n} sessions issued by each proxy, cycled by wrk",
    "new": "no cookie: every request starts a new session",
}
# Issue 10's targets for limpet against HAProxy: requests per second at least this
# share, p99 at most P99_TARGET times HAProxy's.
RPS_TARGETS = {"one": 0.65, "cycle": 0.65, "new": 0.5}
P99_TARGET = 2.0
HAPROXY = "haproxy (1 thread)"
NO_HISTOGRAM = "limpet, no histogram"
TOOLS = ("haproxy", "nginx", "caddy", "wrk", "taskset")


# Runs in a fresh interpreter so the RSS it measures is the table's alone.
LEARNED_PROBE = """
import json, random, sys, time
from limpet.proxy.session.learned import LearnedTable
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
n = int(sys.argv[1])
keys = [random.getrandbits(64) for _ in range(n)]
before = rss()
t = LearnedTable(name="bench", capacity=n, idle_timeout=1800.0, absolute_timeout=None,
                 epoch=time.time() - 1)
now = time.time()
start = time.perf_counter()
for i, k in enumerate(keys):
    t.insert(k, i & 7, now)
took = time.perf_counter() - start
grown, entries = rss() - before, len(t)
# Then half as many again into the full table: each insert first makes room.
clock, worst, slow = time.perf_counter, 0.0, 0
start = clock()
for i in range(n // 2):
    k = random.getrandbits(64)
    t0 = clock()
    t.insert(k, i & 7, now + i * 1e-4)
    d = clock() - t0
    worst, slow = max(worst, d), slow + (d > 1e-3)
full = clock() - start
print(json.dumps({"entries": entries, "bytes": grown, "insert_us": took / n * 1e6,
                  "full_insert_us": full / max(1, n // 2) * 1e6, "full_worst_ms": worst * 1e3,
                  "full_over_1ms": slow, "full_inserts": n // 2}))
"""


def learned_memory(n: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LEARNED_PROBE, str(n)],
        capture_output=True,
        text=True,
        check=True,
        env=limpet_env(),
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def median(results: list[Result]) -> Result:
    """Each figure's median over the rounds, and the errors of all of them. (Until
    2026-12-06 this was the round with the median rate, latencies and all: its p99 was
    one run's tail, which swung 0.8 to 2.8 ms from round to round for the same proxy.)"""
    return Result(
        results[0].name,
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        statistics.median(r.load_core_busy for r in results),
        statistics.median(r.proxy_cpu for r in results),
        sum(r.errors for r in results),
    )


def table(results: list[Result], base: Result) -> str:
    head = (
        f"{'proxy':<22}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'proxy CPU':>10}"
        f"{'req/s/core':>11}{'load core':>10}{'errors':>7}"
        f"{'rps/HAP':>9}{'p99/HAP':>9}{'core/HAP':>10}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r.name:<22}{r.rps:>8.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.proxy_cpu:>10.0%}"
            f"{r.per_core:>11.0f}{r.load_core_busy:>10.0%}{r.errors:>7}"
            f"{r.rps / base.rps:>9.2f}{r.p99_ms / base.p99_ms:>9.2f}"
            f"{r.per_core / base.per_core if base.per_core else 0:>10.2f}"
        )
    return "\n".join(lines)


def target_line(workload: str, limpet: Result, haproxy: Result) -> str:
    """Limpet's ratios to HAProxy beside issue 10's targets; printed, never asserted."""
    rps = limpet.rps / haproxy.rps
    p99 = limpet.p99_ms / haproxy.p99_ms
    goal = RPS_TARGETS[workload]
    return (
        f"limpet / HAProxy ({workload}): {rps:.2f} x req/s (target >= {goal}: "
        f"{'met' if rps >= goal else 'not met'}), {p99:.2f} x p99 (target <= {P99_TARGET:g}: "
        f"{'met' if p99 <= P99_TARGET else 'not met'})"
    )


def rounds_line(workload: str, by_peer: dict[str, list[Result]]) -> str:
    """Limpet's ratios to HAProxy round by round, and HAProxy's own spread between rounds.

    A round runs every proxy back to back, so a round's ratio compares runs minutes
    apart at most; on a machine whose speed drifts, the spread of HAProxy's own rate says
    how far the medians above can be trusted (printed, never asserted)."""
    limpet, haproxy = by_peer.get("limpet", []), by_peer.get(HAPROXY, [])
    if not limpet or len(limpet) != len(haproxy):
        return ""
    pairs = ", ".join(
        f"{lim.rps / hap.rps:.2f}/{lim.p99_ms / hap.p99_ms:.2f}"
        for lim, hap in zip(limpet, haproxy, strict=True)
    )
    rates = [r.rps for r in haproxy]
    return (
        f"per round ({workload}), limpet / HAProxy req/s / p99: {pairs}; HAProxy's rate "
        f"{min(rates):.0f} to {max(rates):.0f} req/s ({max(rates) / min(rates) - 1:.0%} apart)"
    )


def histogram_line(workload: str, results: list[Result]) -> str:
    """Limpet with its request-duration histogram against limpet without (if both ran)."""
    on = next((r for r in results if r.name == "limpet"), None)
    off = next((r for r in results if r.name == NO_HISTOGRAM), None)
    if on is None or off is None:
        return ""
    return (
        f"histogram on / off ({workload}): {on.rps / off.rps:.3f} x req/s, "
        f"{on.per_core / off.per_core if off.per_core else 0:.3f} x req/s per core, "
        f"{on.p99_ms / off.p99_ms:.2f} x p99"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument(
        "--workload",
        action="append",
        choices=sorted(WORKLOADS),
        help="run only this workload (repeat for more; default: all three)",
    )
    parser.add_argument(
        "--cycle", type=int, default=10_000, help="sessions cycled in the cycle workload"
    )
    parser.add_argument("--sessions", type=int, default=1_000_000, help="learned entries")
    parser.add_argument(
        "--post-bytes",
        type=int,
        default=1024,
        help="body of the extra POST runs of HAProxy and limpet (0 skips them; default 1024)",
    )
    parser.add_argument(
        "--no-workers", action="store_true", help="skip limpet --workers 2 (one workload)"
    )
    parser.add_argument(
        "--profile", type=Path, help="run limpet under pyinstrument; its text report goes here"
    )
    parser.add_argument(
        "--histogram-cost",
        action="store_true",
        help=f"add limpet --no-latency-histogram ({NO_HISTOGRAM!r}) to every workload and "
        "print limpet's ratios to it",
    )
    parser.add_argument("--json", type=Path, help="also write every median result here")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 s (1 s warm-up), 100 k learned"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.sessions, args.rounds = 3.0, 1.0, 100_000, 1
    if args.workload is None:
        args.workload = list(WORKLOADS)
    for name in ("duration", "rounds", "cycle", "connections"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    return args


def plan_loads(
    tmp: Path, peers: list[Peer], workloads: list[str], cycle: int
) -> dict[str, list[tuple[Peer, Load]]]:
    """For each workload, the peers it runs against and what wrk sends them. Sessions
    are issued by each proxy and checked for stickiness here, before any measuring."""
    plans: dict[str, list[tuple[Peer, Load]]] = {w: [] for w in workloads}
    for peer in peers:
        if peer.cookie is None:  # nginx: the client makes the sid up
            sessions = [Session(f"sid=bench-{i:05d}", None) for i in range(cycle)]
            check_sticky(peer.port, sessions)
            print(f"{peer.name}: {cycle} made-up sid values, sticky on replay", flush=True)
        else:
            count = cycle if "cycle" in workloads else 50
            sessions = issue_sessions(peer.port, peer.cookie, count)
            check_sticky(peer.port, sessions)
            distinct = len({s.cookie for s in sessions})
            spread = {b: sum(s.backend == b for s in sessions) for b in ("b1", "b2")}
            print(
                f"{peer.name}: {len(sessions)} sessions issued, {distinct} distinct cookie "
                f"values, backends {spread}, sticky on replay",
                flush=True,
            )
        if "one" in plans:
            plans["one"].append((peer, Load(header=f"Cookie: {sessions[0].cookie}")))
        if "cycle" in plans:
            script = cycle_script(tmp, peer.name, [s.cookie for s in sessions])
            plans["cycle"].append((peer, Load(script=script)))
        if "new" in plans and peer.cookie is not None:
            plans["new"].append((peer, Load()))
    return plans


Rounds = dict[str, dict[str, list[Result]]]  # workload -> proxy -> one result a round


def measure(
    args: argparse.Namespace, procs: Procs, tmp: Path
) -> tuple[Rounds, dict[str, list[Result]], str]:
    proxy_core, load_core, both = cpu_list()
    backends = start_backends(procs, tmp, core=load_core)
    peers = [
        start_haproxy(procs, tmp, backends, core=proxy_core),
        start_caddy(procs, tmp, backends, core=proxy_core),
        start_nginx(procs, tmp, backends, core=proxy_core),
        start_limpet(procs, tmp, backends, workers=1, cpus=proxy_core, profile=args.profile),
    ]
    if args.histogram_cost:
        extra = ("--no-latency-histogram",)
        peers.append(
            start_limpet(
                procs, tmp, backends, workers=1, cpus=proxy_core, extra=extra, name=NO_HISTOGRAM
            )
        )
    plans = plan_loads(tmp, peers, args.workload, args.cycle)
    if "one" in plans and not args.no_workers:
        w2 = start_limpet(procs, tmp, backends, workers=2, cpus=both)
        cookie = issue_sessions(w2.port, "LIMPET", 1)[0].cookie
        plans["one"].append((w2, Load(header=f"Cookie: {cookie}")))
    posting: list[tuple[Peer, Load]] = []
    if args.post_bytes > 0 and "one" in plans:
        post = post_script(tmp, args.post_bytes)
        posting = [
            (peer, Load(header=load.header, script=post))
            for peer, load in plans["one"]
            if peer.name in (HAPROXY, "limpet", NO_HISTOGRAM)
        ]
    run = functools.partial(
        run_wrk,
        load_core=load_core,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
    )
    rounds: Rounds = {w: {} for w in plans}
    post_rounds: dict[str, list[Result]] = {}
    # The proxies stay up; the rounds alternate between them so that a burst of
    # unrelated load on this machine hits all of them alike.
    for _ in range(args.rounds):
        for workload, targets in plans.items():
            for peer, load in targets:
                rounds[workload].setdefault(peer.name, []).append(run(peer, load))
        for peer, load in posting:
            post_rounds.setdefault(peer.name, []).append(run(peer, load))
    setup = (
        f"wrk: 1 thread, {args.connections} connections, keep-alive, {args.warmup:g} s "
        f"warm-up and {args.duration:g} s measured per run, median of {args.rounds} "
        f"alternating rounds; proxies on core {proxy_core} (limpet --workers 2 on cores "
        f"{both}), wrk and the nginx backends on core {load_core}."
    )
    return rounds, post_rounds, setup


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)} (run: bash tools/apt-deps.sh)")
        return 1
    if args.profile is not None and importlib.util.find_spec("pyinstrument") is None:
        print("--profile needs pyinstrument: .venv/bin/pip install pyinstrument")
        return 1
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="limpet-bench-") as tmpdir:
        try:
            rounds, post_rounds, setup = measure(args, procs, Path(tmpdir))
        finally:
            procs.stop_all()
    print(setup)
    medians = {w: [median(rs) for rs in by_peer.values()] for w, by_peer in rounds.items()}
    for workload, results in medians.items():
        print(f"\n{workload}: {WORKLOADS[workload].format(n=f'{args.cycle:,}')}")
        haproxy = next(r for r in results if r.name == HAPROXY)
        print(table(results, haproxy))
        limpet = next(r for r in results if r.name == "limpet")
        print(target_line(workload, limpet, haproxy))
        print(rounds_line(workload, rounds[workload]))
        print(histogram_line(workload, results))
    posts = [median(rs) for rs in post_rounds.values()]
    if posts:
        print(f"\nPOST with a {args.post_bytes}-byte body, one session cookie, same set-up:")
        print(table(posts, posts[0]))
        print(rounds_line("POST", post_rounds))
        print(histogram_line("POST", posts))
    if args.profile is not None:
        print(
            f"\nlimpet ran under pyinstrument (its figures include the profiler's cost): "
            f"report in {args.profile}"
        )
    if args.json is not None:
        blob = {w: [asdict(r) for r in rs] for w, rs in medians.items()}
        blob["post"] = [asdict(r) for r in posts]
        ran = {**rounds, "POST": post_rounds} if post_rounds else rounds
        every = {
            w: {name: [asdict(r) for r in rs] for name, rs in by_peer.items()}
            for w, by_peer in ran.items()
        }
        args.json.write_text(
            json.dumps({"setup": setup, "results": blob, "rounds": every}, indent=2)
        )
    mem = learned_memory(args.sessions)
    print(
        f"\nlearned sessions: {int(mem['entries']):,} entries use {mem['bytes'] / 2**20:.0f} "
        f"MiB RSS ({mem['bytes'] / mem['entries']:.0f} bytes each), insert "
        f"{mem['insert_us']:.2f} us; {int(mem['full_inserts']):,} more into the full table "
        f"{mem['full_insert_us']:.2f} us each, the slowest {mem['full_worst_ms']:.2f} ms, "
        f"{int(mem['full_over_1ms'])} over 1 ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
