"""Load for the proxy benchmark: sessions issued by each proxy, wrk runs and their figures.

Data flow: :func:`issue_sessions` asks a proxy for N sessions (requests without a
cookie, over one keep-alive connection) and :func:`check_sticky` replays a sample of
them to confirm the proxy keeps each on the backend that answered first. The cookies go
into a wrk Lua script (:func:`cycle_script`) that formats every request once at start
and then hands them out in turn, so cycling costs wrk no more than a table lookup.
:func:`run_wrk` runs wrk pinned to the load core (a short warm-up, then the measured
run) and reads requests per second, p50, p99 and errors from its output, the proxy's
CPU time from ``/proc/PID/stat`` and the load core's busy share from ``/proc/stat``.
All traffic goes to 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench._proxy_peers import BACKEND_HEADER, Peer

# Lua string literals are written between double quotes; anything outside RFC 6265's
# cookie octets (plus the "=" between name and value) would need escaping, and no
# proxy here issues such a cookie, so it is refused instead.
_COOKIE_PAIR = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+=[!#-+\--:<-\[\]-~]*")
MAX_CYCLED = 100_000


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


@dataclass(frozen=True)
class Load:
    """What wrk sends besides a plain ``GET /``: a fixed header line and/or a Lua
    script."""

    header: str | None = None
    script: Path | None = None


@dataclass(frozen=True)
class Session:
    cookie: str  # "name=value", as the client sends it back
    backend: str | None  # the backend that answered the request that created it


@dataclass(frozen=True)
class WrkFigures:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    value = float(m.group(1))
    return {"us": value / 1000, "ms": value, "s": value * 1000}[m.group(2)]


def _search(pattern: str, out: str) -> str:
    m = re.search(pattern, out, re.M)
    if m is None:
        raise ValueError(f"no match for {pattern!r} in wrk's output:\n{out}")
    return m.group(1)


def parse_wrk(out: str) -> WrkFigures:
    """The figures of one ``wrk --latency`` run; non-2xx/3xx answers and socket errors
    count as errors."""
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return WrkFigures(
        rps=float(_search(r"Requests/sec:\s+([\d.]+)", out)),
        p50_ms=_ms(_search(r"^\s+50%\s+(\S+)$", out)),
        p99_ms=_ms(_search(r"^\s+99%\s+(\S+)$", out)),
        errors=errors,
    )


def cpu_ticks(core: str) -> tuple[int, int]:
    """(busy, total) jiffies of one core from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            fields = [int(x) for x in line.split()[1:]]
            idle = fields[3] + fields[4]
            return sum(fields) - idle, sum(fields)
    return 0, 1


def process_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process and its children (workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        pids += [int(x) for x in children.read_text().split()]
    user = system = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / tick, system / tick


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (workers)."""
    return sum(process_times(pid))


def post_script(tmp: Path, size: int) -> Path:
    """A wrk script that makes every request a POST with a ``size``-byte body."""
    script = tmp / f"post-{size}.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = string.rep("x", {size})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )
    return script


def cycle_lua(cookies: list[str]) -> str:
    """A wrk script that sends ``Cookie: <cookies[i]>``, i = 0, 1, ... round and round,
    one per request. The requests are formatted once, in ``init``."""
    if not cookies:
        raise ValueError("no cookies to cycle")
    if len(cookies) > MAX_CYCLED:
        raise ValueError(f"{len(cookies)} cookies: at most {MAX_CYCLED} are cycled")
    for c in cookies:
        if not _COOKIE_PAIR.fullmatch(c):
            raise ValueError(f"not a plain name=value cookie: {c!r}")
    listed = ",\n".join(f'  "{c}"' for c in cookies)
    return f"""-- generated by bench/_proxy_load.py: cycle {len(cookies)} session cookies
local cookies = {{
{listed}
}}
local requests = {{}}
local n = 0
local i = 0

function init(args)
  for k, c in ipairs(cookies) do
    requests[k] = wrk.format(nil, nil, {{["Cookie"] = c}})
  end
  n = #requests
end

function request()
  i = i % n + 1
  return requests[i]
end
"""


def cycle_script(tmp: Path, name: str, cookies: list[str]) -> Path:
    script = tmp / f"cycle-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.lua"
    script.write_text(cycle_lua(cookies))
    return script


def _set_cookie(resp: http.client.HTTPResponse, name: str) -> str | None:
    for header in resp.headers.get_all("Set-Cookie") or []:
        pair = str(header).split(";", 1)[0].strip()
        if pair.startswith(name + "="):
            return pair
    return None


def issue_sessions(port: int, name: str, count: int, *, timeout: float = 120.0) -> list[Session]:
    """``count`` sessions from the proxy on ``port``: requests without a cookie, each
    answered with a ``name`` cookie. Raises if the proxy issues none, or too slowly."""
    deadline = time.monotonic() + timeout
    sessions: list[Session] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        while len(sessions) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"127.0.0.1:{port} issued {len(sessions)} sessions in time")
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            cookie = _set_cookie(resp, name)
            if resp.status != 200 or cookie is None:
                raise RuntimeError(f"127.0.0.1:{port}: {resp.status}, no {name} cookie")
            sessions.append(Session(cookie, resp.headers.get(BACKEND_HEADER)))
            if resp.will_close:
                conn.close()
    finally:
        conn.close()
    return sessions


def check_sticky(port: int, sessions: list[Session], *, sample: int = 50) -> None:
    """Replay up to ``sample`` sessions, spread over the list; each must reach the
    backend that created it (for a session the client made up, backend ``None``: the
    backend its first request reached). A proxy that fails this is misconfigured, and
    its figures would mean nothing."""
    step = max(1, len(sessions) // sample)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def backend_of(cookie: str) -> str | None:
        conn.request("GET", "/", headers={"Cookie": cookie})
        resp = conn.getresponse()
        resp.read()
        if resp.will_close:
            conn.close()
        return resp.headers.get(BACKEND_HEADER) if resp.status == 200 else f"{resp.status}"

    try:
        for s in sessions[::step][:sample]:
            want = s.backend if s.backend is not None else backend_of(s.cookie)
            got = backend_of(s.cookie)
            if got != want:
                raise RuntimeError(
                    f"127.0.0.1:{port} is not sticky: {s.cookie} was first answered by "
                    f"{want}, now by {got}"
                )
    finally:
        conn.close()


def run_wrk(
    peer: Peer,
    load: Load,
    *,
    load_core: str,
    connections: int,
    duration: float,
    warmup: float,
) -> Result:
    """Warm up, then measure one wrk run (one thread, keep-alive) against ``peer``."""
    argv = ["taskset", "-c", load_core, "wrk", "-t1", f"-c{connections}", "--latency"]
    if load.header is not None:
        argv += ["-H", load.header]
    if load.script is not None:
        argv += ["-s", str(load.script)]
    url = f"http://127.0.0.1:{peer.port}/"
    if warmup > 0:
        subprocess.run([*argv, f"-d{warmup:g}s", url], capture_output=True, check=True)
    busy0, total0 = cpu_ticks(load_core)
    cpu0, t0 = process_cpu(peer.pid), time.monotonic()
    out = subprocess.run(
        [*argv, f"-d{duration:g}s", url], capture_output=True, text=True, check=True
    ).stdout
    cpu1, t1 = process_cpu(peer.pid), time.monotonic()
    busy1, total1 = cpu_ticks(load_core)
    figures = parse_wrk(out)
    busy = (busy1 - busy0) / max(1, total1 - total0)
    return Result(
        peer.name,
        figures.rps,
        figures.p50_ms,
        figures.p99_ms,
        busy,
        (cpu1 - cpu0) / (t1 - t0),
        figures.errors,
    )
