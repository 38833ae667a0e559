"""ClientIP sessions from distinct client addresses in real network namespaces (issue 9):
every part of the fleet runs in a namespace of its own on this run's pod subnet
(:class:`limpet.devcluster.netns.NetnsPodNetwork`): three ``limpet proxy`` replicas, three
counter apps (the oracle), a real ``redis-server`` as the session store, and
:data:`USERS` clients, each a process in its own namespace sending from that
namespace's address to a replica picked at random for every request
(``netns_client.py``).

Phases: steady state (every user stays on one pod, whichever replica it reaches), then a
drain of one app by a new plan pushed to every replica (each of its sessions moves once,
announced). No session may break. The proxies must have told the users apart by their
addresses: each user reached the apps as its own address (the ``X-Forwarded-For`` the
proxies added, which the counter app reports), and the store holds one learned key per
user.

Network rule: every address used is a pod IP that :meth:`NetnsPodNetwork.verify` proved
is this run's; the namespaces and everything in them are gone after the test, even when
it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    BackendState,
    DrainSettings,
    Plan,
    SessionStoreSettings,
)
from limpet.affinity.plan import plan_to_json
from limpet.devcluster.netns import NetnsPodNetwork, list_netns, netns_unavailable_reason
from limpet.devcluster.podslot import PodSlot

from ..conftest import Proxies, Proxy, _env, _stop
from .fleet import Counters, RedisServer, Tally, loopback_backends, push

pytestmark = pytest.mark.timeout(150)

USERS = 8
APPS = ("c1", "c2", "c3")
PASSWORD = "netns-store-secret"


@pytest.fixture
def net() -> Iterator[NetnsPodNetwork]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces are unavailable: {reason}")
    network = NetnsPodNetwork.create()
    try:
        yield network
    finally:
        network.close()
    left = [n for n in list_netns() if n.startswith(f"limpet-{network.run_id}-")]
    assert not left, left


def _pod(net: NetnsPodNetwork, name: str) -> tuple[PodSlot, list[str]]:
    """A fresh namespace, its address proved ours, and the argv prefix that enters it."""
    slot = net.attach(name, 0)
    net.verify(slot)
    return slot, net.wrap(slot, [])


def _plan(
    version: int,
    apps: dict[str, int],
    hosts: dict[str, str],
    store: SessionStoreSettings,
    states: dict[str, BackendState] | None = None,
) -> Plan:
    return Plan(
        version=version,
        backends=loopback_backends(apps, states, deadline=time.time() + 60, hosts=hosts),
        affinity=AffinitySettings(
            type=AffinityType.CLIENT_IP, header_name="X-Demo-Session", last_seen_granularity=1
        ),
        drain=DrainSettings(min_idle=1.0),
        session_store=store,
        name="netns",
    )


class Clients:
    """The users: one ``netns_client`` process per namespace, driven phase by phase."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []

    def start(self, net: NetnsPodNetwork, replicas: list[Proxy]) -> None:
        targets = [f"--replica={p.host}:{p.port}" for p in replicas]
        for i in range(USERS):
            slot, wrap = _pod(net, f"user{i}")
            argv = [sys.executable, "-m", "tests.proxy.replicas.netns_client"]
            argv += ["--name", f"u{i}", "--source", slot.address, "--seed", str(i), *targets]
            self.procs.append(
                subprocess.Popen(
                    [*wrap, *argv],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=_env(),
                )
            )
            self.addresses.append(slot.address)

    def phase(self, count: int, gap: float) -> tuple[Tally, list[dict[str, Any]]]:
        """All users at once: ``count`` requests each, ``gap`` apart; the summed verdicts
        and moves, and each user's report (``netns_client``)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{count} {gap}\n")
            proc.stdin.flush()
        tally, reports = Tally(), []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"a client died (exit {proc.poll()})"
            doc = json.loads(line)
            tally.verdicts.update(doc["verdicts"])
            tally.moves.update(doc["moves"])
            tally.errors += doc["errors"]
            reports.append(doc)
        return tally, reports

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()  # EOF: the client's normal end
            _stop(proc)


def test_client_ip_sessions_from_namespaces_hold_through_a_drain(
    net: NetnsPodNetwork, counters: Counters, proxy: Proxies, tmp_path: Path
) -> None:
    apps, hosts = {}, {}
    for name in APPS:
        slot, wrap = _pod(net, name)
        apps[name] = counters.start(name, host=slot.address, wrap=wrap).port
        hosts[name] = slot.address
    slot, wrap = _pod(net, "redis")
    # Off loopback, redis-server's protected mode serves only clients with a password.
    redis = RedisServer(tmp_path, host=slot.address, wrap=wrap, password=PASSWORD)
    redis.start()
    try:
        secret = tmp_path / "store-password"
        secret.write_text(PASSWORD)
        store = SessionStoreSettings(
            address=redis.address, password_file=str(secret), key_prefix="n:", timeout=1.0
        )
        first = tmp_path / "plan.json"
        first.write_text(plan_to_json(_plan(1, apps, hosts, store)))
        replicas = []
        for i in range(3):
            slot, wrap = _pod(net, f"proxy{i}")
            replicas.append(proxy.start("--plan", str(first), host=slot.address, wrap=wrap))
        clients = Clients()
        try:
            clients.start(net, replicas)
            _run(clients, replicas, redis, counters, hosts, store)
        finally:
            clients.close()
    finally:
        redis.kill()


def _run(
    clients: Clients,
    replicas: list[Proxy],
    redis: RedisServer,
    counters: Counters,
    hosts: dict[str, str],
    store: SessionStoreSettings,
) -> None:
    apps = {name: app.port for name, app in counters.apps.items()}
    # Steady state: each user placed once, by its address, and kept there by every replica.
    steady, reports = clients.phase(4, 0.2)
    assert not steady.errors, steady.errors
    assert steady.verdicts == {"new": USERS, "continued": 3 * USERS}, steady
    pods = [r["pods"] for r in reports]
    assert all(len(set(p)) == 1 for p in pods), pods
    # The apps' own tables: each session held once, where its user was answered from.
    placed = Counter(p[-1] for p in pods)
    assert {n: a.stats()["sessions"] for n, a in counters.apps.items()} == {
        n: placed[n] for n in APPS
    }, placed
    # Each user reached the apps as its own namespace's address (X-Forwarded-For).
    assert len(set(clients.addresses)) == USERS, clients.addresses
    assert [r["seenAs"] for r in reports] == [[a] for a in clients.addresses], reports
    # One learned key per client address: the proxies told the namespaces apart.
    keys = redis.command("KEYS", "n:k:*")
    print("steady", steady, "store keys", keys[:120])
    assert keys.startswith(f"*{USERS}\r\n".encode()), keys[:120]

    # Drain the busiest app: it takes no new session; each of its sessions leaves once,
    # announced.
    drained, held = placed.most_common(1)[0]
    push(replicas, _plan(2, apps, hosts, store, {drained: BackendState.DRAINING}))
    drain, reports = clients.phase(2, 1.5)
    pods = [r["pods"] for r in reports]
    print("drain", drain, "drained", drained, "held", held)
    assert not drain.errors, drain.errors
    assert drain.verdicts["broken"] == 0, drain
    assert drain.moves == {"drain": held}, drain
    assert not any(p[-1] == drained for p in pods), pods
    # Each move the apps saw was made (and counted) by exactly one replica.
    made = sum(sum(p.stats()["migrations"].values()) for p in replicas)
    assert made == held, made
    entries = [p.stats()["learned"]["client-ip"]["entries"] for p in replicas]
    assert all(0 < e <= USERS for e in entries), entries
