"""Proxy benchmark: limpet against HAProxy and nginx, in one run, on loopback.

Set-up (all started here, all stopped at the end, configs in a temporary directory):

- two nginx backends (one nginx, ``worker_processes 1``) answering a short text body;
- the proxy under test, pinned to core 0 with ``taskset``: limpet (cookie affinity),
  HAProxy (``cookie SRV insert indirect nocache``, ``nbthread 1``) or nginx
  (``hash $cookie_sid consistent``, ``worker_processes 1``); every one keeps upstream
  connections alive and adds ``X-Forwarded-For``;
- wrk pinned to core 1 (with the backends): one thread, 32 keep-alive connections, a
  session cookie obtained from the proxy itself, a warm-up run, then a measured run.

Printed: requests per second, p50 and p99 latency per proxy, limpet's ratios to HAProxy,
the same for HAProxy and limpet with POST requests (``--post-bytes``, 1 KiB by default),
the busy share of the load core (when it nears 100 % the peer's figure is bounded by
the load generator, not by the proxy), limpet with ``--workers 2`` (pinned to both
cores), and the memory of one million learned sessions.

Run: ``python -m bench proxy`` (defaults), or ``python -m bench.proxy [--duration S]
[--connections N] [--quick]``. It needs
``haproxy``, ``nginx`` and ``wrk`` (``bash tools/apt-deps.sh`` installs them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = "hello from the backend, a short answer\n"


@dataclass(frozen=True)
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    load_core_busy: float
    proxy_cpu: float  # cores' worth of CPU the proxy's processes used during the run
    errors: int

    @property
    def per_core(self) -> float:
        """Requests per second per fully used core: the proxy's capacity, independent of
        whether the load generator kept it busy."""
        return self.rps / self.proxy_cpu if self.proxy_cpu > 0 else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_list() -> tuple[str, str, str]:
    """(proxy core, load core, both) for taskset."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        c = str(cores[0])
        return c, c, c
    return str(cores[0]), str(cores[1]), f"{cores[0]},{cores[1]}"


class Procs:
    """Processes started by this run; all stopped at exit, by their own handles."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: list[str], *, log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        try:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def nginx_conf(tmp: Path, name: str, http_body: str) -> Path:
    conf = tmp / f"{name}.conf"
    conf.write_text(
        f"""worker_processes 1;
daemon off;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path {tmp}/{name}-body;
  proxy_temp_path {tmp}/{name}-proxy;
  fastcgi_temp_path {tmp}/{name}-fastcgi;
  uwsgi_temp_path {tmp}/{name}-uwsgi;
  scgi_temp_path {tmp}/{name}-scgi;
{http_body}
}}
"""
    )
    return conf


def backends_conf(tmp: Path, ports: list[int]) -> Path:
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{p}; location / {{ default_type text/plain; "
        f'return 200 "{BODY.strip()}\\n"; }} }}'
        for p in ports
    )
    return nginx_conf(tmp, "backends", servers)


def nginx_proxy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    upstream = "\n".join(f"    server 127.0.0.1:{p};" for p in backends)
    body = f"""  upstream be {{
    hash $cookie_sid consistent;
{upstream}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}"""
    return nginx_conf(tmp, "nginx-proxy", body)


def haproxy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    servers = "\n".join(
        f"  server s{i + 1} 127.0.0.1:{p} cookie s{i + 1}" for i, p in enumerate(backends)
    )
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  option forwardfor
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  balance roundrobin
  cookie SRV insert indirect nocache
{servers}
"""
    )
    return conf


def session_cookie(port: int, name: str) -> str:
    """Ask the proxy for a session and return ``name=value`` from its Set-Cookie."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
        for header in resp.headers.get_all("Set-Cookie") or []:
            if header.startswith(name + "="):
                return str(header).split(";")[0]
    raise RuntimeError(f"no {name} cookie from 127.0.0.1:{port}")


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    value = float(m.group(1))
    return {"us": value / 1000, "ms": value, "s": value * 1000}[m.group(2)]


def cpu_ticks(core: str) -> tuple[int, int]:
    """(busy, total) jiffies of one core from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = [int(x) for x in line.split()[1:]]
            idle = fields[3] + fields[4]
            return sum(fields) - idle, sum(fields)
    return 0, 1


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        pids += [int(x) for x in children.read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def post_script(tmp: Path, size: int) -> Path:
    """A wrk script that makes every request a POST with a ``size``-byte body."""
    script = tmp / f"post-{size}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = string.rep("x", {size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return script


def wrk(
    name: str,
    port: int,
    cookie: str,
    *,
    pid: int,
    core: str,
    load_core: str,
    connections: int,
    duration: float,
    script: Path | None = None,
) -> Result:
    base = [
        "taskset",
        "-c",
        core,
        "wrk",
        "-t1",
        f"-c{connections}",
        "--latency",
        "-H",
        f"Cookie: {cookie}",
        *(["-s", str(script)] if script is not None else []),
        f"http://127.0.0.1:{port}/",
    ]
    subprocess.run([*base[:-1], "-d2s", base[-1]], capture_output=True, check=True)  # warm-up
    busy0, total0 = cpu_ticks(load_core)
    cpu0, t0 = process_cpu(pid), time.monotonic()
    out = subprocess.run(
        [*base[:-1], f"-d{duration:g}s", base[-1]], capture_output=True, text=True, check=True
    ).stdout
    cpu1, t1 = process_cpu(pid), time.monotonic()
    busy1, total1 = cpu_ticks(load_core)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    busy = (busy1 - busy0) / max(1, total1 - total0)
    return Result(name, rps, p50, p99, busy, (cpu1 - cpu0) / (t1 - t0), errors)


def limpet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return env


def start_limpet(
    procs: Procs, tmp: Path, port: int, backends: list[int], *, workers: int, cpus: str
) -> subprocess.Popen[bytes]:
    token = tmp / "token"
    token.write_text("bench-token\n")
    log = tmp / f"limpet-{workers}.log"
    argv = [
        "taskset",
        "-c",
        cpus,
        sys.executable,
        "-m",
        "limpet.cli",
        "proxy",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        "127.0.0.1:0",
        "--token-file",
        str(token),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--affinity",
        "cookie",
    ]
    for i, p in enumerate(backends):
        argv += ["--backend", f"b{i + 1}=127.0.0.1:{p}"]
    proc = procs.start(argv, log=log, env=limpet_env())
    deadline = time.monotonic() + 30
    while "listening on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"limpet did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return proc


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
print(json.dumps({"entries": len(t), "bytes": rss() - before, "insert_us": took / n * 1e6}))
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
    return [t for t in ("haproxy", "nginx", "wrk", "taskset") if shutil.which(t) is None]


def median(results: list[Result]) -> Result:
    """The run with the median request rate (its latencies come with it)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench proxy", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sessions", type=int, default=1_000_000, help="learned entries")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 100 k sessions")
    parser.add_argument(
        "--post-bytes",
        type=int,
        default=1024,
        help="body of the extra POST runs of HAProxy and limpet (0 skips them; default 1024)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.sessions, args.rounds = 3.0, 100_000, 1
    missing = missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)} (run: bash tools/apt-deps.sh)")
        return 1
    proxy_core, load_core, both = cpu_list()
    procs = Procs()
    rounds: dict[str, list[Result]] = {}
    post_rounds: dict[str, list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="limpet-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            backend_ports = [free_port(), free_port()]
            procs.start(
                [
                    "taskset",
                    "-c",
                    load_core,
                    "nginx",
                    "-c",
                    str(backends_conf(tmp, backend_ports)),
                    "-p",
                    str(tmp),
                ],
                log=tmp / "backends.log",
            )
            for p in backend_ports:
                wait_port(p)
            run = {
                "core": load_core,
                "load_core": load_core,
                "connections": args.connections,
                "duration": args.duration,
            }
            # The proxies stay up; the rounds alternate between them so that a burst of
            # unrelated load on this machine hits all of them alike.
            targets: list[tuple[str, int, str, int]] = []
            port = free_port()
            proc = procs.start(
                [
                    "taskset",
                    "-c",
                    proxy_core,
                    "haproxy",
                    "-f",
                    str(haproxy_conf(tmp, port, backend_ports)),
                ],
                log=tmp / "haproxy.log",
            )
            wait_port(port)
            targets.append(("haproxy (1 thread)", port, session_cookie(port, "SRV"), proc.pid))
            port = free_port()
            proc = procs.start(
                [
                    "taskset",
                    "-c",
                    proxy_core,
                    "nginx",
                    "-c",
                    str(nginx_proxy_conf(tmp, port, backend_ports)),
                    "-p",
                    str(tmp),
                ],
                log=tmp / "nginx-proxy.log",
            )
            wait_port(port)
            targets.append(("nginx (1 worker)", port, "sid=bench-session", proc.pid))
            port = free_port()
            proc = start_limpet(procs, tmp, port, backend_ports, workers=1, cpus=proxy_core)
            targets.append(("limpet", port, session_cookie(port, "LIMPET"), proc.pid))
            port = free_port()
            proc = start_limpet(procs, tmp, port, backend_ports, workers=2, cpus=both)
            targets.append(("limpet --workers 2", port, session_cookie(port, "LIMPET"), proc.pid))
            # POST with a small body: the request head and body reach the backend together.
            post = post_script(tmp, args.post_bytes) if args.post_bytes > 0 else None
            posting = [t for t in targets if t[0] in ("haproxy (1 thread)", "limpet")]
            for _ in range(args.rounds):
                for name, port, cookie, pid in targets:
                    rounds.setdefault(name, []).append(wrk(name, port, cookie, pid=pid, **run))
                if post is not None:
                    for name, port, cookie, pid in posting:
                        post_rounds.setdefault(name, []).append(
                            wrk(name, port, cookie, pid=pid, script=post, **run)
                        )
        finally:
            procs.stop_all()
    results = [median(rs) for rs in rounds.values()]
    haproxy = results[0]
    print(
        f"wrk: 1 thread, {args.connections} connections, keep-alive, session cookie set, "
        f"{args.duration:g} s per run, median of {args.rounds} alternating rounds; proxies on "
        f"core {proxy_core} (limpet --workers 2 on cores {both}), wrk and the nginx backends "
        f"on core {load_core}."
    )
    print(table(results, haproxy))
    if post_rounds:
        posts = [median(rs) for rs in post_rounds.values()]
        print(f"POST with a {args.post_bytes}-byte body, same set-up:")
        print(table(posts, posts[0]))
    mem = learned_memory(args.sessions)
    print(
        f"learned sessions: {int(mem['entries']):,} entries use {mem['bytes'] / 2**20:.0f} MiB "
        f"RSS ({mem['bytes'] / mem['entries']:.0f} bytes each), insert "
        f"{mem['insert_us']:.2f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
