"""Per-backend metrics over real sockets: a real proxy process, real backend processes,
and ``/metrics`` read with prometheus-client's own parser (``Proxy.metrics``).

Each request must show up once, under the backend that answered it: in its status class,
in the duration bucket its known delay puts it in, and, for a failure, under its error
kind. With ``--workers 2`` the supervisor's figures are the workers' sums; with
``--no-latency-histogram`` the histogram is absent and the counters stay; a backend
dropped from the plan drops its series.
"""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from limpet.affinity.plan.codec import plan_to_json
from limpet.proxy.process.standalone import standalone_plan

from ..conftest import Backends, Conn, Proxies, standalone_args

DURATION = "limpet_proxy_request_duration_seconds"


def bucket(m: dict[str, float], backend: str, le: str) -> float:
    return m[f'{DURATION}_bucket{{backend="{backend}",le="{le}"}}']


def answers(m: dict[str, float], backend: str, code: str) -> float:
    return m[f'limpet_proxy_backend_responses_total{{backend="{backend}",code="{code}"}}']


def errors(m: dict[str, float], backend: str, kind: str) -> float:
    return m[f'limpet_proxy_backend_errors_total{{backend="{backend}",kind="{kind}"}}']


def test_each_request_lands_in_its_class_bucket_and_error_kind(
    backends: Backends, proxy: Proxies
) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--response-timeout", "3")
    with Conn(p.address) as c:
        for _ in range(10):
            assert c.request("GET", "/fast").status == 200
        for _ in range(3):
            assert c.request("GET", "/sleep?s=1.3").status == 200
        for _ in range(2):
            assert c.request("GET", "/status/404").status == 404
        assert c.request("GET", "/broken").status == 502
    with Conn(p.address) as c:
        assert c.request("GET", "/sleep?s=5").status == 504
    with Conn(p.address) as c, pytest.raises(ConnectionError):
        c.request("GET", "/truncate")  # cut short as the backend cut it: not an answer
    m = p.metrics()
    assert answers(m, "s1", "2xx") == 13
    assert answers(m, "s1", "4xx") == 2
    assert answers(m, "s1", "5xx") == 2  # the proxy's 502 and 504 for this backend
    assert answers(m, "s1", "3xx") == answers(m, "s1", "1xx") == 0
    assert errors(m, "s1", "invalid_response") == 1
    assert errors(m, "s1", "timeout") == 1
    assert errors(m, "s1", "reset") == 1
    assert errors(m, "s1", "connect") == 0
    # The fast ones and the 404s and the 502 under 1 s; the three 1.3 s sleepers above
    # it and (with 1.2 s to spare, for a loaded machine) under 2.5 s; the 504 after the
    # 3 s response timeout.
    assert bucket(m, "s1", "1.0") == 13
    assert bucket(m, "s1", "2.5") == 16
    assert bucket(m, "s1", "+Inf") == m[f'{DURATION}_count{{backend="s1"}}'] == 17
    assert m[f'{DURATION}_sum{{backend="s1"}}'] >= 3 * 1.3 + 3
    # The engine's own figures agree: every relayed answer, the proxy's two errors.
    assert m["limpet_proxy_http_responses_total"] == 15
    assert m['limpet_proxy_local_responses_total{status="502"}'] == 1
    assert m['limpet_proxy_local_responses_total{status="504"}'] == 1


def test_workers_histograms_add_up(backends: Backends, proxy: Proxies) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(*standalone_args(b1, b2), "--workers", "2")
    seen = {"b1": 0, "b2": 0}
    for _ in range(120):
        with Conn(p.address) as c:  # new connections: SO_REUSEPORT spreads them
            seen[c.request("GET", "/who").json()["backend"]] += 1
    workers = p.stats()["workers"]["processes"]
    assert all(w["requests"] > 0 for w in workers), workers  # the figures below are sums
    m = p.metrics()
    for sid, name in (("s1", "b1"), ("s2", "b2")):
        assert answers(m, sid, "2xx") == seen[name]
        assert bucket(m, sid, "+Inf") == seen[name]
        assert m[f'limpet_proxy_requests_total{{backend="{sid}"}}'] == seen[name]
    assert min(seen.values()) > 0


def test_without_the_histogram_the_counters_stay(backends: Backends, proxy: Proxies) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b), "--no-latency-histogram")
    with Conn(p.address) as c:
        for _ in range(5):
            assert c.request("GET", "/").status == 200
    m = p.metrics()
    assert answers(m, "s1", "2xx") == 5
    assert not [k for k in m if k.startswith(DURATION)]
    assert "duration" not in p.stats()["engine"]["backends"]["s1"]


def test_connect_errors_and_series_of_a_backend_gone_from_the_plan(
    backends: Backends, proxy: Proxies
) -> None:
    live = backends.start("b1")
    with socket.socket() as s:  # a loopback port nobody listens on: connections refused
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    p = proxy.start(
        "--backend", f"live=127.0.0.1:{live.port}", "--backend", f"dead=127.0.0.1:{dead_port}"
    )
    for _ in range(20):  # new sessions: some are placed on "dead" until it is marked down
        with Conn(p.address) as c:
            assert c.request("GET", "/").json()["backend"] == "b1"
    m = p.metrics()
    assert errors(m, "dead", "connect") >= 1
    assert answers(m, "dead", "5xx") == answers(m, "dead", "2xx") == 0  # retried on "live"
    assert answers(m, "live", "2xx") == 20
    plan = standalone_plan([("live", "127.0.0.1", live.port)], "cookie", version=2)
    status, body = p.admin("PUT", "/v1/plan", plan_to_json(plan).encode())
    assert status == 200, body
    deadline = time.monotonic() + 10
    while p.stats()["planVersion"] != 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    m = p.metrics()
    assert not [k for k in m if 'backend="dead"' in k]
    assert answers(m, "live", "2xx") == 20  # the backend that stays keeps its counts


async def test_an_upgrade_counts_once_as_1xx_timed_to_the_switch(
    backends: Backends, proxy: Proxies
) -> None:
    b = backends.start("b1")
    p = proxy.start(*standalone_args(b))
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(p.url("/ws")) as ws,
    ):
        for i in range(3):
            await ws.send_str(f"m{i}")
            assert (await ws.receive()).data == f"b1:m{i}"
        await asyncio.sleep(3.0)  # the tunnel stays open: its lifetime is not a duration
        m = p.metrics()
        await ws.close()
    assert answers(m, "s1", "1xx") == 1
    assert answers(m, "s1", "2xx") == 0
    assert bucket(m, "s1", "+Inf") == 1
    assert bucket(m, "s1", "2.5") == 1  # the switch, not the 3 s of tunnel
