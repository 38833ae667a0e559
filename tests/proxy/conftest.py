"""Fixtures for proxy tests: real backend processes and a real ``limpet proxy`` process.

- ``backends``: a factory; ``backends.start("b1")`` runs ``tests/proxy/backends.py`` as a
  subprocess on a loopback port and returns a :class:`Backend` (``.port``, ``.kill()``).
- ``proxy``: a factory; ``proxy.start("--backend", "a=127.0.0.1:PORT", ...)`` runs
  ``python -m limpet.cli proxy`` on loopback ports chosen by the kernel, waits for its
  start-up line and returns a :class:`Proxy` (``.port``, ``.admin_port``, ``.token``,
  ``.rss()``, ``.admin()``, ``.stats()``, ``.metrics()``).

Everything started here is stopped at the end of the test, and only loopback addresses
are ever used, unless the caller gives a replica the pod IP of a network namespace it
created and verified (``host`` and ``wrap``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BACKEND_PROGRAM = HERE / "backends.py"
ANNOUNCE = re.compile(
    r"limpet proxy listening on (?P<listen>\S+):(?P<port>\d+), admin on \S+:(?P<admin>\d+)"
)
START_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "operator"), str(ROOT), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return env


def _stop(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@dataclass
class Backend:
    id: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the backend vanishes without closing anything gracefully."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


class Backends:
    def __init__(self) -> None:
        self.started: list[Backend] = []

    def start(self, backend_id: str, port: int = 0) -> Backend:
        proc = subprocess.Popen(
            [sys.executable, str(BACKEND_PROGRAM), "--id", backend_id, "--port", str(port)],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            _stop(proc)
            raise RuntimeError(f"backend {backend_id} did not start: {line!r}")
        backend = Backend(backend_id, int(line.split()[1]), proc)
        self.started.append(backend)
        return backend

    def close(self) -> None:
        for b in self.started:
            _stop(b.proc)


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    token: str
    log: Path
    args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)

    def admin(
        self, method: str, path: str, body: bytes | None = None, *, token: str | None = None
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(
            f"http://{self.host}:{self.admin_port}{path}", data=body, method=method
        )
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.read()

    def stats(self) -> dict[str, Any]:
        status, body = self.admin("GET", "/v1/stats")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def metrics(self) -> dict[str, float]:
        """``GET /metrics``, read with prometheus-client's own parser: every sample as
        ``name`` or ``name{label="value",...}`` (labels sorted by name) -> its value."""
        status, body = self.admin("GET", "/metrics")
        assert status == 200, body
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return out

    def wait_idle(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the proxy holds no client connection; return the engine stats."""
        deadline = time.monotonic() + timeout
        while True:
            engine: dict[str, Any] = self.stats()["engine"]
            if engine["connections_active"] == 0 or time.monotonic() > deadline:
                return engine
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """The proxy process and its worker processes."""
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        return pids

    def rss(self) -> int:
        """Resident memory in bytes, summed over the proxy and its workers."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
            if m:
                total += int(m.group(1)) * 1024
        return total

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        _stop(self.proc)


class Proxies:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[Proxy] = []

    def start(
        self,
        *args: str,
        token: str = "test-token",
        wait: bool = True,
        host: str = "127.0.0.1",
        wrap: Sequence[str] = (),
    ) -> Proxy:
        """A replica listening (and serving its admin API) on ``host``, run under ``wrap``
        (e.g. the argv prefix that enters a network namespace)."""
        n = len(self.started)
        token_file = self.tmp / f"token-{n}"
        token_file.write_text(token + "\n")
        log = self.tmp / f"proxy-{n}.log"
        argv = [
            *wrap,
            sys.executable,
            "-m",
            "limpet.cli",
            "proxy",
            "--listen",
            f"{host}:0",
            "--admin-listen",
            f"{host}:0",
            "--token-file",
            str(token_file),
            *args,
        ]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_env()
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            m = ANNOUNCE.search(log.read_text(errors="replace"))
            if m:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                raise RuntimeError(f"proxy did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        proxy = Proxy(proc, int(m["port"]), int(m["admin"]), token, log, list(args), host)
        self.started.append(proxy)
        return proxy

    def close(self) -> None:
        for p in self.started:
            p.stop()


@pytest.fixture
def backends() -> Iterator[Backends]:
    factory = Backends()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxies]:
    factory = Proxies(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


# -- a tiny HTTP/1.1 client over a raw socket (independent of the proxy's own parser) ----


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """A keep-alive client connection that sends raw bytes and reads whole answers."""

    def __init__(self, address: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed while reading a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed with {len(self.buf)} of {n} bytes")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_head(self) -> tuple[int, str, list[tuple[str, str]], bytes]:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a full head: {self.buf!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, reason = [*lines[0].decode("latin-1").split(" ", 2), ""][:3]
        assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return int(status), reason, headers, head

    def read_response(self, *, head_request: bool = False) -> Response:
        while True:
            status, reason, headers, head = self.read_head()
            if status >= 200 or status == 101:
                break
        resp = Response(status, reason, headers, b"", head)
        te = resp.header("Transfer-Encoding")
        cl = resp.header("Content-Length")
        if head_request or status in (101, 204, 304):
            return resp
        if te is not None and te.lower().endswith("chunked"):
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers
                        pass
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n"
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._exact(int(cl))
        else:
            while self._fill():
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        host: str = "test.local",
    ) -> Response:
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in items}
        lines = (
            [f"{method} {path} HTTP/1.1", f"Host: {host}"]
            if "host" not in names
            else [f"{method} {path} HTTP/1.1"]
        )
        lines += [f"{k}: {v}" for k, v in items]
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        return self.read_response(head_request=method == "HEAD")

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True if the peer closes (EOF or reset) within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return True
                self.buf += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


@pytest.fixture
def two_backends(backends: Backends) -> tuple[Backend, Backend]:
    return backends.start("b1"), backends.start("b2")


def standalone_args(*bs: Backend, affinity: str = "cookie") -> list[str]:
    args: list[str] = []
    for i, b in enumerate(bs):
        args += ["--backend", f"s{i + 1}=127.0.0.1:{b.port}"]
    return [*args, "--affinity", affinity]


def established_to(port: int) -> int:
    """Established TCP connections to ``port`` on this machine (``/proc/net/tcp``)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        remote, state = line.split()[2:4]
        if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
            count += 1
    return count
