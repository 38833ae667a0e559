"""``--workers N``: processes share the port, the supervisor restarts a dead worker, plans
reach every worker and stats are merged."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from limpet.affinity.plan.codec import plan_to_json
from limpet.controller.model.counts import combine, parse_counts
from limpet.proxy.process.standalone import standalone_plan

from ..conftest import Backends, Conn, Proxies, Proxy, standalone_args


def processes(p: Proxy) -> list[dict[str, Any]]:
    procs: list[dict[str, Any]] = p.stats()["workers"]["processes"]
    return procs


def spread(p: Proxy, n: int = 200) -> None:
    """New connections, so SO_REUSEPORT spreads them over the workers."""
    for _ in range(n):
        with Conn(p.address) as c:
            assert c.request("GET", "/spread").status == 200


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_workers_share_the_port_and_restart(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--workers", "2")
    spread(p)
    procs = processes(p)
    assert len(procs) == 2
    assert all(w["requests"] > 0 for w in procs), procs
    assert p.stats()["engine"]["requests"] == 200

    victim = procs[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in [w["pid"] for w in processes(p)] and len(processes(p)) == 2)
    assert p.stats()["workers"]["restarts"] == 1
    spread(p)
    after = processes(p)
    assert all(w["requests"] > 0 for w in after), after
    assert "exited" in p.log_text()


def test_plan_push_reaches_every_worker(backends: Backends, proxy: Proxies) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1), "--workers", "2")
    plan = standalone_plan([("only-b2", "127.0.0.1", b2.port)], "header:X-Session", version=2)
    status, body = p.admin("PUT", "/v1/plan", plan_to_json(plan).encode())
    assert status == 200, body
    assert json.loads(body)["version"] == 2
    wait_for(lambda: p.stats()["planVersion"] == 2)
    for _ in range(40):
        with Conn(p.address) as c:
            assert c.request("GET", "/who").json()["backend"] == "b2"
    status, _ = p.admin("PUT", "/v1/plan", plan_to_json(plan).encode(), token="wrong")
    assert status == 401


def test_supervisor_stop_takes_workers_down(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--workers", "2")
    pids = [w["pid"] for w in processes(p)]
    p.stop()
    assert p.proc.returncode == 0
    for pid in pids:
        wait_for(lambda pid=pid: not os.path.exists(f"/proc/{pid}"), timeout=10)


def test_metrics_sum_the_workers_counters(backends: Backends, proxy: Proxies) -> None:
    """``/metrics`` with two workers: every counter is the sum of both workers' figures."""
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--workers", "2")
    idle = p.metrics()
    assert idle["limpet_proxy_workers"] == 2
    assert idle["limpet_proxy_http_requests_total"] == 0
    spread(p, 200)
    for _ in range(20):
        with Conn(p.address) as c:
            c.send(b"GET / HTTP/1.1\r\n\r\n")  # no Host: a parsed request, answered 400
            assert c.read_head()[0] == 400
            assert c.closed_by_peer()
    procs = processes(p)
    assert len(procs) == 2
    assert all(w["requests"] > 0 for w in procs), procs  # so the figures below are sums
    assert sum(w["requests"] for w in procs) == 220
    m = p.metrics()
    assert m["limpet_proxy_workers"] == 2
    assert m["limpet_proxy_http_requests_total"] == 220
    assert m['limpet_proxy_requests_total{backend="s1"}'] == 200  # routed to the backend
    assert m["limpet_proxy_http_responses_total"] == 200
    assert m['limpet_proxy_local_responses_total{status="400"}'] == 20
    assert m["limpet_proxy_connections_accepted_total"] == 220
    assert m["limpet_proxy_no_backend_total"] == 0
    assert m['limpet_proxy_backend_up{backend="s1"}'] == 1


def test_workers_sketches_are_united_so_sessions_count_once(
    backends: Backends, proxy: Proxies
) -> None:
    """Header sessions whose connections land on both workers are in both workers'
    tables; the supervisor's summed ``sessions`` counts them twice, the united sketch
    once (read by the operator's own parser)."""
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b, affinity="header:X-Session"), "--workers", "2")
    keys = 40
    for _ in range(5):
        for n in range(keys):
            with Conn(p.address) as c:  # a new connection: either worker may take it
                assert c.request("GET", "/", headers={"X-Session": f"k{n}"}).status == 200
    procs = processes(p)
    assert all(w["requests"] > 0 for w in procs), procs
    stats = p.stats()
    merged = stats["backends"]["s1"]
    assert merged["sessions"] > keys  # some keys reached both workers
    assert len(merged["sketch"]["hashes"]) == keys
    counts = combine({"p": parse_counts(stats)})
    assert counts.method["s1"] == "sketch"
    assert counts.sessions["s1"] == keys
