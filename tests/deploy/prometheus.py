"""A real Prometheus (Debian's) over the chart's rules, and the check that the chart's
dashboard and alerts work against what it scraped.

Used by the operator-and-proxies scene (tests/controller/test_monitoring.py) and by the
demo (tests/e2e/test_demo_monitoring.py). :func:`scrape_config` labels the targets the
way the chart's PodMonitors do (proxies: ``namespace``, ``pod``, ``stickyservice``; the
operator's series carry their own ``namespace``, so ``honor_labels``);
:func:`running_prometheus` runs it on a loopback port; :func:`check_prometheus` waits
for every target to be up and enough samples for ``rate()``, then asks every dashboard
query and every alert expression (and its left-hand side, before the threshold): no
error, at least one series, and a number rather than NaN for those over the proxies'
per-backend answers and request-duration histogram (a window without traffic gives 0
rates and NaN percentiles, which draw nothing). Every alerting rule must evaluate with
health "ok".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from limpet.devcluster.ports import free_port
from limpet.devcluster.process import ManagedProcess
from tests.controller.harness import eventually
from tests.deploy.monitoring import RULES, dashboard_exprs, rule_exprs

OPERATOR_NAMESPACE = "limpet-system"
TRAFFIC_METRICS = ("limpet_proxy_backend_responses_total", "limpet_proxy_request_duration_seconds")
"""Queries over these depend on traffic in the rate window: they must give numbers."""
_THRESHOLD = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*[0-9.]+\s*$")


def without_threshold(expr: str) -> str:
    return _THRESHOLD.sub("", expr.strip())


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "prometheus is missing: `make deps` installs Debian's prometheus package"
    return found


def scrape_config(
    *,
    operator: str,
    proxies: Mapping[str, Mapping[str, str]],
    token_file: Path,
) -> dict[str, Any]:
    """``operator``: HOST:PORT of its ``/metrics``; ``proxies``: admin HOST:PORT -> the
    labels the chart's PodMonitor would give that pod."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "limpet-operator",
                "honor_labels": True,
                "static_configs": [
                    {
                        "targets": [operator],
                        "labels": {"namespace": OPERATOR_NAMESPACE, "pod": "limpet-operator-0"},
                    }
                ],
            },
            {
                "job_name": "limpet-proxy",
                "authorization": {"credentials_file": str(token_file)},
                "static_configs": [
                    {"targets": [target], "labels": dict(labels)}
                    for target, labels in proxies.items()
                ],
            },
        ],
    }


@contextlib.contextmanager
def running_prometheus(config: Mapping[str, Any], work: Path) -> Iterator[str]:
    """Prometheus with ``config``, data and log under ``work``; yields its base URL."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config)))
    port = free_port()
    prom = ManagedProcess(
        "prometheus",
        [
            prometheus_binary(),
            f"--config.file={path}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=work / "prometheus.log",
    )
    prom.start()
    try:
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print(prom.tail(40))
        raise
    finally:
        prom.stop(timeout=10)


async def ambiguous_request(host: str, port: int) -> bytes:
    """Two different Content-Lengths, a framing ambiguity the proxy must answer 400 (and
    count as its own error answer, so that the dashboard's panel for those has a series);
    the status line it answered."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab")
    await writer.drain()
    head = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    await writer.wait_closed()
    return head


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        data: dict[str, Any] = await resp.json()
    return data


def _is_full_alert(name: str) -> bool:
    """A whole alert expression is empty while nothing is wrong; its left-hand side is not."""
    return name.startswith("alert ") and not name.endswith("(left-hand side)")


async def _wait_for_samples(http: aiohttp.ClientSession, base: str, targets: int) -> None:
    async def targets_up() -> bool:
        got = await query(http, base, "up")
        results = got.get("data", {}).get("result", [])
        return len(results) == targets and all(r["value"][1] == "1" for r in results)

    await eventually(targets_up, within=30, what="Prometheus scraping every target")

    async def rates_ready() -> bool:
        got = await query(http, base, "count_over_time(limpet_proxy_plan_version[1m])")
        return all(float(r["value"][1]) >= 4 for r in got["data"]["result"])

    await eventually(rates_ready, within=30, what="enough samples for rate()")


def _problem(name: str, got: dict[str, Any], traffic: bool) -> str | None:
    if got.get("status") != "success":
        return str(got.get("error"))
    if _is_full_alert(name):
        return None
    values = [float(r["value"][1]) for r in got["data"]["result"]]
    if not values:
        return "no series"
    if traffic and not any(math.isfinite(v) for v in values):
        return f"no number: {values}"
    return None


async def check_prometheus(http: aiohttp.ClientSession, base: str, *, targets: int) -> None:
    """The checks of the module docstring; ``targets``: how many scrape targets."""
    await _wait_for_samples(http, base, targets)
    exprs = dict(dashboard_exprs())
    for alert, expr in rule_exprs().items():
        exprs[f"alert {alert}"] = expr
        exprs[f"alert {alert} (left-hand side)"] = without_threshold(expr)
    traffic = {n for n, e in exprs.items() if any(m in e for m in TRAFFIC_METRICS)}
    assert len(traffic) >= 8, traffic  # the per-backend panels and two alerts' sides
    failures = {}
    for name, expr in exprs.items():
        problem = _problem(name, await query(http, base, expr), name in traffic)
        if problem is not None:
            failures[name] = problem
    assert failures == {}, "\n".join(f"{n}: {p}\n  {exprs[n]}" for n, p in failures.items())

    async def rules_evaluated() -> list[dict[str, Any]] | None:
        async with http.get(f"{base}/api/v1/rules") as resp:
            data = await resp.json()
        rules = [r for g in data["data"]["groups"] for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        return rules if rules and evaluated else None

    rules = await eventually(rules_evaluated, within=20, what="every rule evaluated")
    health = {r["name"]: r["health"] for r in rules}
    assert health == dict.fromkeys(rule_exprs(), "ok"), health
