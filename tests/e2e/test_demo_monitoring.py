"""The chart's dashboard and alerts against the demo: a real Prometheus scrapes a running
``limpet demo``, its operator (``--operator-metrics``) and its proxies (the pod IPs of
their fake pods, admin port 9901, with the demo's admin token), labelled as the chart's
PodMonitors label them, while the demo's users browse through scale-out, drain and
failover, and one hostile client sends a proxy an ambiguous request (so the panel of
the proxies' own error answers has a series: a healthy demo makes none). Every
dashboard query and every alert must evaluate without error and return series, with
numbers for the per-backend traffic and latency (``tests/deploy/prometheus.py``); the
demo must still pass.

The demo runs on the test session's cluster (``LIMPET_USE_KUBECONFIG=1``), as
test_demo.py's kubeconfig test does, which needs no second control plane.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from limpet.demo.stage import PROXY_PORT
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.ports import free_port
from limpet.devcluster.proxypod import ADMIN_PORT
from tests.deploy.prometheus import (
    ambiguous_request,
    check_prometheus,
    running_prometheus,
    scrape_config,
)

pytestmark = pytest.mark.apiserver

NAMESPACE = re.compile(r"^namespace (\S+)$")
PROXIES = re.compile(r"^\d+ proxies at (.+)$")


class DemoOutput:
    """The demo's output, read as it comes; ``stage`` is set once the proxies are up."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.namespace = ""
        self.proxy_hosts: list[str] = []
        self.stage = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if m := NAMESPACE.match(text):
                self.namespace = m.group(1)
            elif m := PROXIES.match(text):
                urls = [u.strip() for u in m.group(1).split(",")]
                self.proxy_hosts = [str(urlsplit(u).hostname) for u in urls]
                self.stage.set()

    def tail(self) -> str:
        return "\n".join(self.lines[-60:])


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Ctrl-C (the demo then removes what it started), SIGKILL if that hangs."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(300)
async def test_prometheus_scrapes_the_demo(devcluster: DevCluster, tmp_path: Path) -> None:
    operator = f"127.0.0.1:{free_port()}"
    report = tmp_path / "report"
    argv = [sys.executable, "-m", "limpet.cli", "demo", "--report-dir", str(report)]
    argv += ["--duration", "60", "--users", "30", "--seed", "5", "--operator-metrics", operator]
    env = {**os.environ, "LIMPET_USE_KUBECONFIG": "1", "KUBECONFIG": str(devcluster.kubeconfig)}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    assert proc.stdout is not None
    out = DemoOutput(proc.stdout)
    try:
        await asyncio.wait_for(out.stage.wait(), 120)
        assert out.namespace, out.tail()
        proxies = {
            f"{host}:{ADMIN_PORT}": {
                "namespace": out.namespace,
                "pod": f"proxy-{i}",
                "stickyservice": "counter",
            }
            for i, host in enumerate(out.proxy_hosts)
        }
        assert len(proxies) == 2, out.tail()
        assert (await ambiguous_request(out.proxy_hosts[0], PROXY_PORT)).startswith(b"HTTP/1.1 400")
        config = scrape_config(
            operator=operator, proxies=proxies, token_file=report / "logs" / "admin-token"
        )
        with running_prometheus(config, tmp_path / "prometheus") as base:
            async with aiohttp.ClientSession() as http:
                await check_prometheus(http, base, targets=1 + len(proxies))
        rc = await asyncio.wait_for(proc.wait(), 150)
        await out.task
        assert rc == 0, out.tail()
    except BaseException:
        print(out.tail())
        raise
    finally:
        await _stop(proc)
        out.task.cancel()
