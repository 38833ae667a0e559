"""The chart's alerts and dashboard against the real thing: running proxies and operator.

One scene (the operator with ``--metrics-listen``, two real proxies, three backends) is
given traffic that exercises every series the dashboard draws: sticky requests, a forged
cookie (rejected), a malformed request (answered 400 by the proxy), and a killed
backend (failover). Then:

- every ``limpet_*`` metric named by an alert or a dashboard query is in the exposition
  of a running proxy's or the running operator's ``/metrics``;
- a real Prometheus (Debian's, on loopback) scrapes them, labelled the way the chart's
  PodMonitors label them, loads files/prometheus-rules.yaml, and answers every dashboard
  query and every alert expression (and its left-hand side, before the threshold)
  without error and with at least one series; every alerting rule evaluates with
  health "ok". The users keep sending requests while Prometheus scrapes, so the
  queries over the proxies' per-backend answers and request-duration histogram (rates,
  error ratios, latency percentiles) must give numbers, not NaN: a rate over a window
  without traffic would be 0 and a percentile NaN, which shows nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from limpet.devcluster.ports import free_port
from limpet.devcluster.process import ManagedProcess
from tests.controller.harness import Scene, Scenes, User, eventually
from tests.deploy.monitoring import (
    RULES,
    dashboard_exprs,
    exposed_names,
    metric_names,
    rule_exprs,
)

_THRESHOLD = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*[0-9.]+\s*$")
OPERATOR_NAMESPACE = "limpet-system"


def without_threshold(expr: str) -> str:
    return _THRESHOLD.sub("", expr.strip())


async def text(http: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200, url
        return await resp.text()


async def bad_request(url: str) -> bytes:
    """Two different Content-Lengths: a framing ambiguity the proxy must answer 400."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    return head


# Queries whose value depends on traffic in the rate window: they must be numbers.
TRAFFIC_METRICS = ("limpet_proxy_backend_responses_total", "limpet_proxy_request_duration_seconds")


async def keep_browsing(http: aiohttp.ClientSession, scene: Scene, users: list[User]) -> None:
    """The users' requests, a few a second, until cancelled."""
    proxies = scene.fleet.urls()
    while True:
        for i, user in enumerate(users):
            await user.get(http, proxies[i % 2])
        await asyncio.sleep(0.2)


async def exercise(http: aiohttp.ClientSession, scene: Scene) -> list[User]:
    proxies = scene.fleet.urls()
    users = [User(f"u{i}") for i in range(20)]
    for _ in range(3):
        for i, user in enumerate(users):
            await user.get(http, proxies[i % 2])
    forged = User("forger", cookie="not-a-signed-cookie")
    await forged.get(http, proxies[0])
    assert (await bad_request(proxies[0])).startswith(b"HTTP/1.1 400")
    victim = max(scene.backends.pods, key=lambda p: sum(1 for u in users if u.pod == p))
    scene.backends.stop_backend(victim)
    scene.backends.set_conditions(victim, ready=False, serving=False)
    await eventually(lambda: scene.state_is(victim, "Failed"), within=10, what="Failed")
    await scene.converged()
    for i, user in enumerate(users):
        await user.get(http, proxies[i % 2])
    return users


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: `make deps` installs Debian's prometheus package"
    return found


def prometheus_config(scene: Scene, operator_port: int, tmp_path: Path) -> dict[str, Any]:
    """Scrape jobs labelled as the chart's PodMonitors label their targets."""
    proxy_targets = [
        {
            "targets": [urlsplit(scene.fleet.admin_url(pod)).netloc],
            "labels": {"namespace": scene.namespace, "pod": pod.name, "stickyservice": "shop"},
        }
        for pod in scene.fleet.pods
    ]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "limpet-operator",
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{operator_port}"],
                        "labels": {"namespace": OPERATOR_NAMESPACE, "pod": "limpet-operator-0"},
                    }
                ],
            },
            {
                "job_name": "limpet-proxy",
                "authorization": {"credentials_file": str(scene.fleet.token_file)},
                "static_configs": proxy_targets,
            },
        ],
    }


@pytest.fixture
def prometheus_dir(tmp_path: Path) -> Path:
    path = tmp_path / "prometheus"
    path.mkdir()
    return path


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        data: dict[str, Any] = await resp.json()
    return data


async def test_alerts_and_dashboard_against_running_proxies_and_operator(
    http: aiohttp.ClientSession,
    scenes: Scenes,
    prometheus_binary: str,
    prometheus_dir: Path,
) -> None:
    operator_port = free_port()
    scene = await scenes.open(
        operator_args=["--standalone", f"--metrics-listen=127.0.0.1:{operator_port}"]
    )
    users = await exercise(http, scene)
    token = scene.fleet.token_file.read_text()

    # Every metric the alerts and the dashboard name is exposed by a proxy or the operator.
    exposed = exposed_names(await text(http, f"http://127.0.0.1:{operator_port}/metrics"))
    for pod in scene.fleet.pods:
        exposed |= exposed_names(await text(http, scene.fleet.admin_url(pod) + "/metrics", token))
    used = {
        name
        for expr in [*rule_exprs().values(), *dashboard_exprs().values()]
        for name in metric_names(expr)
    }
    assert len(used) >= 15
    assert sorted(used - exposed) == []

    # A real Prometheus scrapes them and answers every query with series.
    config = prometheus_dir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(scene, operator_port, prometheus_dir)))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    prom = ManagedProcess(
        "prometheus",
        [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={prometheus_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=prometheus_dir / "prometheus.log",
    )
    prom.start()
    browsing = asyncio.get_running_loop().create_task(keep_browsing(http, scene, users))
    try:
        await check_prometheus(http, base, scene)
    except BaseException:
        print(prom.tail(40))
        raise
    finally:
        browsing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await browsing
        prom.stop(timeout=10)


def _is_full_alert(name: str) -> bool:
    """A whole alert expression is empty while nothing is wrong; its left-hand side is not."""
    return name.startswith("alert ") and not name.endswith("(left-hand side)")


async def check_prometheus(http: aiohttp.ClientSession, base: str, scene: Scene) -> None:
    async def targets_up() -> bool:
        got = await query(http, base, "up")
        results = got.get("data", {}).get("result", [])
        return len(results) == 1 + len(scene.fleet.pods) and all(
            r["value"][1] == "1" for r in results
        )

    await eventually(targets_up, within=30, what="Prometheus scraping every target")

    async def rates_ready() -> bool:
        got = await query(http, base, "count_over_time(limpet_proxy_plan_version[1m])")
        return all(float(r["value"][1]) >= 4 for r in got["data"]["result"])

    await eventually(rates_ready, within=30, what="enough samples for rate()")
    exprs = dict(dashboard_exprs())
    for alert, expr in rule_exprs().items():
        exprs[f"alert {alert}"] = expr
        exprs[f"alert {alert} (left-hand side)"] = without_threshold(expr)
    traffic = [n for n, e in exprs.items() if any(m in e for m in TRAFFIC_METRICS)]
    assert len(traffic) >= 8  # the dashboard's per-backend panels and two alerts' sides
    failures = {}
    for name, expr in exprs.items():
        got = await query(http, base, expr)
        if got.get("status") != "success":
            failures[name] = got.get("error")
        elif not got["data"]["result"] and not _is_full_alert(name):
            failures[name] = "no series"
        elif name in traffic and not _is_full_alert(name):
            values = [float(r["value"][1]) for r in got["data"]["result"]]
            if not any(math.isfinite(v) for v in values):
                failures[name] = f"no number: {values}"
    assert failures == {}

    async def rules_evaluated() -> list[dict[str, Any]] | None:
        async with http.get(f"{base}/api/v1/rules") as resp:
            data = await resp.json()
        rules = [r for g in data["data"]["groups"] for r in g["rules"]]
        return (
            rules
            if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules)
            else None
        )

    rules = await eventually(rules_evaluated, within=20, what="every rule evaluated")
    assert {r["name"] for r in rules} == set(rule_exprs())
    assert {r["name"]: r["health"] for r in rules} == dict.fromkeys(rule_exprs(), "ok")
