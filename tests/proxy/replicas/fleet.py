"""A fleet for multi-replica tests: real counter backends (the demo app, which judges
every request of every session itself), several ``limpet proxy`` replicas, and
browser-like users that pick a replica at random for every request.

Data flow: :class:`Counters` starts ``python -m limpet.demo.backend`` processes on
loopback ports (or, with ``host`` and ``wrap``, on a pod IP inside a network namespace);
the replicas are started with the proxy fixture's factory; a
:class:`User` keeps a cookie jar exactly as a browser would (``Set-Cookie`` stored,
``Max-Age=0`` deletes) and sends each request, over ``http.client`` (a parser that is not
the proxy's), to a replica a seeded random generator picks. The app's verdict
(``new``, ``continued``, ``reloaded`` after an announced move, ``broken`` after an
unannounced one) is the oracle; :class:`Tally` sums them per phase. Only loopback
addresses are used, or pod IPs of namespaces the caller created and verified; every
process started here is stopped by its fixture.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BackendState,
    DrainSettings,
    Plan,
    RebalanceSchedule,
)
from limpet.affinity.plan import plan_to_json
from limpet.proxy.process.command import load_cookie_key

from ..conftest import Proxy, _env, _stop

LOCAL = "127.0.0.1"
LISTENING = re.compile(r"counter (\S+) listening on \S+:(\d+)")


@dataclass
class CounterApp:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    host: str = LOCAL

    def kill(self) -> None:
        """SIGKILL: the pod dies with its sessions."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stats(self) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", "/stats")
            result: dict[str, Any] = json.loads(conn.getresponse().read())
            return result
        finally:
            conn.close()


class Counters:
    def __init__(self) -> None:
        self.apps: dict[str, CounterApp] = {}

    def start(self, name: str, *, host: str = LOCAL, wrap: Sequence[str] = ()) -> CounterApp:
        """A counter app on ``host`` (a free port), run under ``wrap`` (e.g. the argv
        prefix that enters a network namespace)."""
        argv = [sys.executable, "-m", "limpet.demo.backend", "--host", host, "--port", "0"]
        proc = subprocess.Popen(
            [*wrap, *argv, "--name", name],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=_env(),
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        m = LISTENING.search(line)
        if m is None:
            _stop(proc)
            raise RuntimeError(f"counter {name} did not start: {line!r}")
        app = CounterApp(name, int(m[2]), proc, host)
        self.apps[name] = app
        return app

    def close(self) -> None:
        for app in self.apps.values():
            _stop(app.proc)


@dataclass
class Tally:
    verdicts: Counter[str] = field(default_factory=Counter)
    moves: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    broken_users: Counter[str] = field(default_factory=Counter)
    """The user of each broken request."""

    def add(self, other: Tally) -> None:
        self.verdicts.update(other.verdicts)
        self.moves.update(other.moves)
        self.errors += other.errors
        self.broken_users.update(other.broken_users)


class Replica(Protocol):
    """Where a user sends a request: a :class:`Proxy`, or a replica's address alone."""

    @property
    def address(self) -> tuple[str, int]: ...


@dataclass
class User:
    """A browser (a cookie jar), or with ``keyed`` a script that names its session in
    ``X-Demo-Session`` and ``?sid=``, from ``source`` (an address of its own: on
    loopback, or its network namespace's); and the pod the app last answered from.
    Cookies named in ``drop`` are never kept (a client that ignores them)."""

    name: str
    keyed: bool = False
    source: str | None = None
    drop: frozenset[str] = frozenset()
    jar: dict[str, str] = field(default_factory=dict)
    pod: str | None = None
    pods: list[str] = field(default_factory=list)
    via: list[tuple[str, int]] = field(default_factory=list)  # the replica of each request
    count: int = 0
    seen_as: set[str] = field(default_factory=set)  # the client address the app was told

    def request(self, replica: Replica, tally: Tally) -> None:
        where = None if self.source is None else (self.source, 0)
        conn = http.client.HTTPConnection(*replica.address, timeout=10, source_address=where)
        try:
            headers = {"Accept": "application/json"}
            target = f"/u/{self.name}"
            if self.keyed:
                headers["X-Demo-Session"] = self.name
                headers["X-Demo-Count"] = str(self.count)
                target += f"?sid={self.name}"
            if self.jar:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                tally.errors.append(f"{self.name}: {resp.status} {body[:80]!r}")
                return
            for value in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.partition("=")
                if name in self.drop:
                    continue
                if re.search(r"(?i);\s*max-age=0(;|$)", value):
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = rest.split(";")[0]
        except OSError as exc:
            tally.errors.append(f"{self.name}: {exc!r}")
            return
        finally:
            conn.close()
        doc = json.loads(body)
        tally.verdicts[doc["verdict"]] += 1
        if doc["verdict"] == "broken":
            tally.broken_users[self.name] += 1
        if doc["moved"]:
            tally.moves[doc["moved"]] += 1
        self.pod = doc["pod"]
        self.pods.append(doc["pod"])
        self.via.append(replica.address)
        self.seen_as.add(doc["client"])
        self.count = doc["count"]


def rounds(
    users: list[User],
    replicas: list[Proxy],
    rng: random.Random,
    *,
    count: int,
    gap: float,
) -> Tally:
    """``count`` rounds in which every user (in a shuffled order) sends one request to a
    random replica, ``gap`` seconds apart: the users' think time."""
    tally = Tally()
    for n in range(count):
        if n:
            time.sleep(gap)
        order = list(users)
        rng.shuffle(order)
        for user in order:
            user.request(rng.choice(replicas), tally)
    return tally


def loopback_backends(
    apps: dict[str, int],
    states: dict[str, BackendState] | None = None,
    *,
    deadline: float | None = None,
    hosts: dict[str, str] | None = None,
) -> tuple[Backend, ...]:
    """The plan's backends: each counter app by name on its port, at its address in
    ``hosts`` or else loopback, Active unless ``states`` says otherwise; a Draining one
    gets ``deadline``."""
    states = states or {}
    return tuple(
        Backend(
            id=BackendId(name),
            address=(hosts or {}).get(name, LOCAL),
            port=port,
            state=states.get(name, BackendState.ACTIVE),
            drain_deadline=deadline if states.get(name) is BackendState.DRAINING else None,
        )
        for name, port in apps.items()
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CookieFleet:
    """Counter apps (``apps``: name -> port, grown in place by a scale-out) behind
    replicas that share one Cookie or AppCookie affinity and one cookie key file;
    :meth:`plan` builds each version pushed to them, as the operator would."""

    apps: dict[str, int]
    affinity: AffinitySettings
    key_file: Path
    name: str
    min_idle: float

    def plan(
        self,
        version: int,
        *,
        states: dict[str, BackendState] | None = None,
        rebalance: RebalanceSchedule | None = None,
        deadline: float | None = None,
    ) -> Plan:
        return Plan(
            version=version,
            backends=loopback_backends(self.apps, states, deadline=deadline),
            affinity=self.affinity,
            drain=DrainSettings(min_idle=self.min_idle),
            rebalance=rebalance,
            cookie_keys=(load_cookie_key(self.key_file),),
            name=self.name,
        )


def cookie_fleet(
    mode: str, counters: Counters, tmp_path: Path, *, name: str, min_idle: float = 1.0
) -> CookieFleet:
    """Three counter apps (c1 to c3) and the ``mode`` ("cookie" or "app-cookie", the
    app's ``demo_sid``) affinity, with a shared cookie key written under ``tmp_path``."""
    key_file = tmp_path / "cookie.key"
    key_file.write_bytes(b"replicas-share-this-secret-0123456789")
    kind = AffinityType.COOKIE if mode == "cookie" else AffinityType.APP_COOKIE
    return CookieFleet(
        apps={app: counters.start(app).port for app in ("c1", "c2", "c3")},
        affinity=AffinitySettings(
            type=kind, app_cookie_name="demo_sid" if kind is AffinityType.APP_COOKIE else None
        ),
        key_file=key_file,
        name=name,
        min_idle=min_idle,
    )


def push(replicas: list[Proxy], plan: Plan) -> None:
    """Send ``plan`` to every replica's admin API, as the operator would."""
    body = plan_to_json(plan).encode()
    for p in replicas:
        status, answer = p.admin("PUT", "/v1/plan", body)
        assert status == 200, answer


class RedisServer:
    """A real ``redis-server`` (Debian's) on a free port of ``host`` (loopback unless
    told), run under ``wrap`` (e.g. the argv prefix that enters a network namespace), no
    persistence; with ``password``, clients must authenticate (``requirepass``)."""

    def __init__(
        self,
        tmp: Path,
        *,
        password: str | None = None,
        host: str = LOCAL,
        wrap: Sequence[str] = (),
    ) -> None:
        self.tmp = tmp
        self.host = host
        self.wrap = tuple(wrap)
        # Free on the host's loopback; a fresh namespace has every port free.
        self.port = _free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is missing: run tools/apt-deps.sh (Debian's redis-server)")
        argv = [*self.wrap, exe, "--port", str(self.port), "--bind", self.host, "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.tmp), "--protected-mode", "yes"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def command(self, *args: str) -> bytes:
        """One command in RESP, the raw reply (for the test's own look at the store)."""
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            if self.password is not None:
                s.sendall(_resp("AUTH", self.password))
                assert s.recv(64) == b"+OK\r\n"
            s.sendall(_resp(*args))
            return s.recv(1 << 16)


def _resp(*args: str) -> bytes:
    out = f"*{len(args)}\r\n".encode()
    for a in args:
        out += f"${len(a.encode())}\r\n{a}\r\n".encode()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
        return port
