"""Session-store benchmark: a learned mode (Header) with and without the shared store.

Set-up (all started here, all stopped at the end, on loopback): two nginx backends, a
real ``redis-server`` (Debian's; no persistence), and ``limpet proxy --affinity
header:X-Session-Id`` pinned to one core, without a store and with ``--session-store``
(a fresh proxy and key prefix per run). wrk (one thread, 32 keep-alive connections, on
the other core) cycles ``--sessions`` distinct header values through a Lua script (the
keys are placed during the warm-up, so the measured window is the steady state: held
keys, no round-trip); then the same with a new key on every request (every request a
miss: one ``SET NX GET`` before it is forwarded, the worst case).

Printed: requests per second, p50 and p99 latency, the proxy's CPU, for each run and its
ratio to the run without a store; store calls per request (write-backs plus the slow
path's reads, claims and moves; reads and claims of one loop turn share a round-trip)
and Redis commands per request; and the memory Redis uses per live session, as a count
in the per-backend sets and as a learned key's entry (``MEMORY USAGE`` of the sets over
their entries, and of a sample of entries).
Then the end-of-window imbalance of live sessions (max/mean over 4 backends,
``loadFactor`` 1.25) with three session routers in this process, users arriving and
leaving on a simulated clock and picking a router at random for every request, once with
per-router counts and once with cluster-wide counts from the same ``redis-server`` (the
real store client and write-back, flushed every simulated second). Figures, not
assertions.

Run: ``python -m bench store`` (defaults: 8 s runs, 10 000 sessions; ``main(["--duration",
"S", "--sessions", "N"])`` for others). Needs ``nginx``, ``wrk`` and ``redis-server``
(``bash tools/apt-deps.sh``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._proxy_load import Load, Result, run_wrk
from bench._proxy_peers import (
    Peer,
    Procs,
    backends_conf,
    cpu_list,
    free_port,
    limpet_env,
    wait_port,
)

HEADER = "X-Session-Id"


def redis(port: int, *args: str) -> bytes:
    """One RESP command on a fresh connection; the raw reply."""
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        out += f"${len(a.encode())}\r\n{a}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(out)
        time.sleep(0.05)
        return s.recv(1 << 20)


def redis_int(port: int, *args: str) -> int:
    reply = redis(port, *args)
    return int(reply[1:].split(b"\r\n", 1)[0]) if reply[:1] == b":" else 0


def info_field(port: int, name: str) -> int:
    for line in redis(port, "INFO", "all").decode(errors="replace").splitlines():
        if line.startswith(name + ":"):
            return int(line.split(":", 1)[1])
    return 0


def sessions_script(tmp: Path, n: int) -> Path:
    """wrk's requests cycle ``n`` header values (``n`` 0: a new value on every request)."""
    script = tmp / f"sessions-{n}.lua"
    step = "i = i + 1" if n == 0 else f"i = (i + 1) % {n}"
    # New keys start from the clock, so a run never meets the warm-up's keys again.
    start = "(os.time() % 100000) * 10000000" if n == 0 else "0"
    script.write_text(
        f"local i = {start}\n"
        "request = function()\n"
        f"  {step}\n"
        f'  return wrk.format(nil, nil, {{["{HEADER}"] = "s" .. i}})\n'
        "end\n"
    )
    return script


def start_proxy(
    procs: Procs, tmp: Path, backends: list[int], *, core: str, store: str | None, name: str
) -> tuple[int, int, int]:
    """(traffic port, admin port, pid) of a limpet proxy in header mode."""
    port, admin = free_port(), free_port()
    token = tmp / "token"
    token.write_text("bench-token\n")
    argv = ["taskset", "-c", core, sys.executable, "-m", "limpet.cli", "proxy"]
    argv += ["--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"]
    argv += ["--token-file", str(token), "--log-level", "warning"]
    argv += ["--affinity", f"header:{HEADER}"]
    for i, p in enumerate(backends):
        argv += ["--backend", f"b{i + 1}=127.0.0.1:{p}"]
    if store is not None:
        argv += ["--session-store", store, "--session-store-prefix", f"{name}:"]
    proc = procs.start(argv, log=tmp / f"{name}.log", env=limpet_env())
    wait_port(port, 30)
    wait_port(admin, 30)
    return port, admin, proc.pid


def stats(admin: int) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/v1/stats")
    req.add_header("Authorization", "Bearer bench-token")
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def imbalance(rport: int | None, *, seed: int = 1, window: int = 300) -> float:
    """Max/mean of the live users' backends at the end of ``window`` simulated seconds."""
    import asyncio
    import random

    from limpet.affinity import (
        AffinitySettings,
        Backend,
        BackendId,
        BalanceSettings,
        CookieKey,
        Plan,
        SessionStoreSettings,
    )
    from limpet.proxy.process.redis_store import RedisStore
    from limpet.proxy.process.store_sync import StoreSync
    from limpet.proxy.session.routing import RequestView, RouterSettings, SessionRouter

    now = [1_800_000_000.0]
    store = None
    if rport is not None:
        store = SessionStoreSettings(address=f"127.0.0.1:{rport}", key_prefix=f"imb{seed}:")
    plan = Plan(
        version=1,
        backends=tuple(
            Backend(id=BackendId(f"b{i}"), address="127.0.0.1", port=1 + i) for i in range(4)
        ),
        affinity=AffinitySettings(idle_timeout=120.0),
        balance=BalanceSettings(load_factor=1.25),
        session_store=store,
        cookie_keys=(CookieKey(id="k", secret=b"k" * 32),),
    )
    routers = []
    for _ in range(3):
        r = SessionRouter(settings=RouterSettings(), clock=lambda: now[0], wall=lambda: now[0])
        r.load_plan(plan)
        routers.append(r)
    rng = random.Random(seed)
    # user: [next request time, requests left, cookie value, backend]
    users: list[list[object]] = []

    async def run() -> None:
        syncs = [StoreSync(r, RedisStore) for r in routers] if store is not None else []
        for second in range(window):
            for _ in range(3):  # arrivals per second
                users.append([now[0] + rng.uniform(0, 1), rng.randint(15, 60), None, None])
            end = now[0] + 1.0
            for u in users:
                while u[1] and u[0] < end:  # type: ignore[operator]
                    cookie = None if u[2] is None else b"LIMPET=" + u[2]  # type: ignore[operator]
                    route = rng.choice(routers).route(
                        RequestView(b"GET", b"/", [], "192.0.2.1", cookie)
                    )
                    assert route is not None
                    if route.set_cookie is not None:
                        u[2] = route.set_cookie.split(b";")[0].partition(b"=")[2]
                    u[3] = route.backend_id
                    u[1] = int(u[1]) - 1  # type: ignore[call-overload]
                    u[0] = float(u[0]) + rng.uniform(2.0, 8.0)  # type: ignore[arg-type]
            now[0] = end
            for r in routers:
                r.sweep()
            for sync in syncs:
                await sync.flush()
            del second
        for sync in syncs:
            await sync.close()

    asyncio.run(run())
    live: dict[object, int] = {}
    for u in users:
        if u[1] and u[3] is not None:
            live[u[3]] = live.get(u[3], 0) + 1
    counts = [live.get(BackendId(f"b{i}"), 0) for i in range(4)]
    return max(counts) / (sum(counts) / len(counts))


def measure(
    rport: int, admin: int, peer: Peer, script: Path, args: argparse.Namespace
) -> tuple[Result, dict[str, float]]:
    """One wrk run through ``peer``; the store's work per request during its window."""
    load = Load(header="Cookie: x=1", script=script)
    # The warm-up places the cycled keys; the figures are for the window after it.
    run_wrk(peer, load, load_core=args.load_core, connections=32, duration=2.0, warmup=0)
    time.sleep(1.5)  # a write-back for the warm-up's last requests
    cmds0 = info_field(rport, "total_commands_processed")
    before = stats(admin)
    r = run_wrk(
        peer, load, load_core=args.load_core, connections=32, duration=args.duration, warmup=0
    )
    time.sleep(1.5)  # one more write-back for the last requests
    after = stats(admin)
    requests = max(1, int(after["requests"]) - int(before["requests"]))
    s0 = before.get("sessionStore") or {}
    s1 = after.get("sessionStore") or {}

    def per(key: str) -> float:
        return float(s1.get(key, 0) - s0.get(key, 0)) / requests

    got = {
        "flush_trips": per("flushes") + per("fallbacks"),
        "reads": per("keyReads"),
        "claims": per("keyClaims"),
        "moves": per("keyMoves"),
        "commands": (info_field(rport, "total_commands_processed") - cmds0) / requests,
        "failures": float(s1.get("keyFailures", 0) - s0.get("keyFailures", 0)),
    }
    got["round_trips"] = got["flush_trips"] + got["reads"] + got["claims"] + got["moves"]
    return r, got


def store_memory(rport: int, prefix: str) -> dict[str, float]:
    """Bytes per session in the count sets and per learned key's entry (a sample)."""
    import redis as redis_py

    client = redis_py.Redis(host="127.0.0.1", port=rport)
    try:
        sets = list(client.scan_iter(match=f"{prefix}:live:*", count=1000))
        entries = sum(int(client.zcard(k)) for k in sets)
        set_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in sets)
        sample = []
        for k in client.scan_iter(match=f"{prefix}:k:*", count=1000):
            sample.append(int(client.memory_usage(k) or 0))
            if len(sample) >= 1000:
                break
    finally:
        client.close()
    return {
        "entries": entries,
        "set_bytes": set_bytes / max(1, entries),
        "entry_bytes": sum(sample) / max(1, len(sample)),
    }


def line(r: Result) -> str:
    return (
        f"{r.name:<14} {r.rps:>9.0f} req/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  "
        f"proxy cpu {r.proxy_cpu:4.2f}  errors {r.errors}"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench store", description=__doc__)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--sessions", type=int, default=10_000)
    args = ap.parse_args(argv)
    missing = [t for t in ("nginx", "wrk", "redis-server") if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (run: bash tools/apt-deps.sh)")
        return 1
    core, load_core, _ = cpu_list()
    args.load_core = load_core
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="limpet-bench-store-") as d:
        tmp = Path(d)
        try:
            ports = [free_port(), free_port()]
            procs.start(["nginx", "-c", str(backends_conf(tmp, ports))], log=tmp / "nginx.log")
            for p in ports:
                wait_port(p)
            rport = free_port()
            server = ["redis-server", "--port", str(rport), "--bind", "127.0.0.1"]
            server += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
            procs.start(server, log=tmp / "redis.log")
            wait_port(rport)
            held = sessions_script(tmp, args.sessions)
            fresh = sessions_script(tmp, 0)
            results: list[Result] = []
            figures: dict[str, dict[str, float]] = {}
            cases = (
                ("no store", None, held),
                ("redis store", f"127.0.0.1:{rport}", held),
                ("no store, new", None, fresh),
                ("redis, new", f"127.0.0.1:{rport}", fresh),
            )
            for n, (name, store, script) in enumerate(cases):
                prefix = f"r{n}"
                port, admin, pid = start_proxy(
                    procs, tmp, ports, core=core, store=store, name=prefix
                )
                r, got = measure(rport, admin, Peer(name, port, pid, None), script, args)
                results.append(r)
                if store is not None:
                    got.update(store_memory(rport, prefix))
                    figures[name] = got
            for r in results:
                base = results[0] if "new" not in r.name else results[2]
                print(line(r) + f"  x{r.rps / base.rps:.2f} of no store")
            for name, f in figures.items():
                print(
                    f"{name}: store calls per request {f['round_trips']:.4f} "
                    f"(write-backs {f['flush_trips']:.4f}, key reads {f['reads']:.4f}, "
                    f"claims {f['claims']:.4f}, moves {f['moves']:.4f}; reads and claims "
                    f"of one loop turn share a round-trip); "
                    f"Redis commands per request {f['commands']:.3f}; "
                    f"store calls failed (fell back): {f['failures']:.0f}"
                )
            mem = figures["redis store"]
            print(
                f"Redis memory per live session: {mem['set_bytes']:.1f} bytes in the count sets "
                f"+ {mem['entry_bytes']:.1f} bytes per learned key's entry "
                f"({mem['entries']:.0f} sessions)"
            )
            # New cookie sessions take random ids, so each run differs: report several.
            local = [imbalance(None, seed=seed) for seed in range(8)]
            cluster = [imbalance(rport, seed=seed) for seed in range(8)]
            for label, ratios in (("per-router counts", local), ("cluster-wide counts", cluster)):
                print(
                    f"end-of-window live max/mean, 3 routers, 8 runs, {label}: "
                    f"mean {sum(ratios) / len(ratios):.3f}, worst {max(ratios):.3f}, "
                    f"runs over 1.1: {sum(g > 1.1 for g in ratios)}"
                )
        finally:
            procs.stop_all()
    return 0
