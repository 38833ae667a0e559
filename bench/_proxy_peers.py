"""The processes of the proxy benchmark: nginx backends and the proxies under test.

Each ``start_*`` function writes its config into the run's temporary directory, starts
the process pinned with ``taskset`` through :class:`Procs` (which stops every process it
started, by its own handle) and waits until the port answers. Everything listens on
127.0.0.1 only. Limpet is used only through its command line (``limpet proxy``), never
through its internals.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = "hello from the backend, a short answer\n"
BACKEND_HEADER = "X-Backend"


@dataclass(frozen=True)
class Peer:
    """A proxy under test. ``cookie`` is the name of the session cookie it issues, or
    None for a proxy that issues none (nginx hashes a cookie the client makes up)."""

    name: str
    port: int
    pid: int
    cookie: str | None


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
                proc.wait(30)
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
    """One nginx, one server per port; each names itself in ``X-Backend`` so that the
    benchmark can check that every proxy keeps a session on one backend."""
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{p}; location / {{ default_type text/plain; "
        f"add_header {BACKEND_HEADER} b{i + 1}; "
        f'return 200 "{BODY.strip()}\\n"; }} }}'
        for i, p in enumerate(ports)
    )
    return nginx_conf(tmp, "backends", servers)


def start_backends(procs: Procs, tmp: Path, *, core: str) -> list[int]:
    ports = [free_port(), free_port()]
    conf = backends_conf(tmp, ports)
    procs.start(
        ["taskset", "-c", core, "nginx", "-c", str(conf), "-p", str(tmp)],
        log=tmp / "backends.log",
    )
    for p in ports:
        wait_port(p)
    return ports


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


def start_nginx(procs: Procs, tmp: Path, backends: list[int], *, core: str) -> Peer:
    port = free_port()
    conf = nginx_proxy_conf(tmp, port, backends)
    proc = procs.start(
        ["taskset", "-c", core, "nginx", "-c", str(conf), "-p", str(tmp)],
        log=tmp / "nginx-proxy.log",
    )
    wait_port(port)
    return Peer("nginx (1 worker)", port, proc.pid, None)


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


def start_haproxy(procs: Procs, tmp: Path, backends: list[int], *, core: str) -> Peer:
    port = free_port()
    conf = haproxy_conf(tmp, port, backends)
    proc = procs.start(["taskset", "-c", core, "haproxy", "-f", str(conf)], log=tmp / "haproxy.log")
    wait_port(port)
    return Peer("haproxy (1 thread)", port, proc.pid, "SRV")


def caddy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    """Caddy's ``reverse_proxy`` with ``lb_policy cookie``: the cookie ``lb`` holds an
    HMAC-SHA256 of the chosen upstream's address, keyed with a secret; a request without
    it gets a random upstream (Caddy 2.6 has no ``fallback`` subdirective yet). Upstream
    keep-alive and ``X-Forwarded-For`` are Caddy's defaults. The admin API is off and
    the listener is bound to loopback."""
    upstreams = " ".join(f"127.0.0.1:{p}" for p in backends)
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"""{{
\tadmin off
\tauto_https off
}}
http://:{port} {{
\tbind 127.0.0.1
\treverse_proxy {upstreams} {{
\t\tlb_policy cookie lb bench-secret
\t}}
}}
"""
    )
    return conf


def start_caddy(procs: Procs, tmp: Path, backends: list[int], *, core: str) -> Peer:
    port = free_port()
    conf = caddy_conf(tmp, port, backends)
    # Caddy 2.6 autosaves its config under the XDG directories (its Caddyfile has no
    # persist_config option yet), so they point into the run's temporary directory.
    # GOMAXPROCS=1 gives it one scheduler thread, as HAProxy gets one thread.
    env = dict(os.environ)
    env.update(
        GOMAXPROCS="1",
        HOME=str(tmp),
        XDG_CONFIG_HOME=str(tmp / "caddy-config"),
        XDG_DATA_HOME=str(tmp / "caddy-data"),
    )
    proc = procs.start(
        ["taskset", "-c", core, "caddy", "run", "--config", str(conf), "--adapter", "caddyfile"],
        log=tmp / "caddy.log",
        env=env,
    )
    wait_port(port)
    return Peer("caddy (GOMAXPROCS=1)", port, proc.pid, "lb")


def limpet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return env


def start_limpet(
    procs: Procs,
    tmp: Path,
    backends: list[int],
    *,
    workers: int,
    cpus: str,
    profile: Path | None = None,
    runner: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    name: str | None = None,
    start_timeout: float = 30.0,
) -> Peer:
    """``limpet proxy`` in standalone cookie mode, with ``extra`` options. With
    ``profile``, the proxy runs under pyinstrument, which writes its text report there
    when the proxy stops; ``runner`` is a command that runs Python (e.g. valgrind), in
    the same process, so the peer's pid is the proxy's."""
    port = free_port()
    token = tmp / "token"
    token.write_text("bench-token\n")
    log = tmp / f"limpet-{workers}-{port}.log"
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "pyinstrument", "--renderer", "text", "--outfile", str(profile)]
    argv = [
        "taskset",
        "-c",
        cpus,
        *runner,
        *python,
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
        *extra,
    ]
    for i, p in enumerate(backends):
        argv += ["--backend", f"b{i + 1}=127.0.0.1:{p}"]
    proc = procs.start(argv, log=log, env=limpet_env())
    deadline = time.monotonic() + start_timeout
    while "listening on" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"limpet did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    if name is None:
        name = "limpet" if workers == 1 else f"limpet --workers {workers}"
    return Peer(name, port, proc.pid, "LIMPET")
