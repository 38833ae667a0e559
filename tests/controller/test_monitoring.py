"""The chart's alerts and dashboard against the real thing: running proxies and operator.

One scene (the operator with ``--metrics-listen``, two real proxies, three backends) is
given traffic that exercises every series the dashboard draws: sticky requests, a forged
cookie (rejected), a malformed request (answered 400 by the proxy), and a killed
backend (failover). Then:

- every ``limpet_*`` metric named by an alert or a dashboard query is in the exposition
  of a running proxy's or the running operator's ``/metrics``;
- a real Prometheus (Debian's, on loopback) scrapes them while the users keep browsing,
  and every dashboard query and alert works (``tests/deploy/prometheus.py`` says how
  that is checked). tests/e2e/test_demo_monitoring.py does the same against the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from limpet.devcluster.ports import free_port
from tests.controller.harness import Scene, Scenes, User, eventually
from tests.deploy.monitoring import dashboard_exprs, exposed_names, metric_names, rule_exprs
from tests.deploy.prometheus import (
    ambiguous_request,
    check_prometheus,
    running_prometheus,
    scrape_config,
)


async def text(http: aiohttp.ClientSession, url: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200, url
        return await resp.text()


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
    parts = urlsplit(proxies[0])
    assert parts.hostname is not None
    assert parts.port is not None
    assert (await ambiguous_request(parts.hostname, parts.port)).startswith(b"HTTP/1.1 400")
    victim = max(scene.backends.pods, key=lambda p: sum(1 for u in users if u.pod == p))
    scene.backends.stop_backend(victim)
    scene.backends.set_conditions(victim, ready=False, serving=False)
    await eventually(lambda: scene.state_is(victim, "Failed"), within=10, what="Failed")
    await scene.converged()
    for i, user in enumerate(users):
        await user.get(http, proxies[i % 2])
    return users


async def test_alerts_and_dashboard_against_running_proxies_and_operator(
    http: aiohttp.ClientSession, scenes: Scenes, tmp_path: Path
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

    # A real Prometheus scrapes them while the users keep browsing.
    config = scrape_config(
        operator=f"127.0.0.1:{operator_port}",
        proxies={
            urlsplit(scene.fleet.admin_url(pod)).netloc: {
                "namespace": scene.namespace,
                "pod": pod.name,
                "stickyservice": "shop",
            }
            for pod in scene.fleet.pods
        },
        token_file=scene.fleet.token_file,
    )
    browsing = asyncio.get_running_loop().create_task(keep_browsing(http, scene, users))
    try:
        with running_prometheus(config, tmp_path / "prometheus") as base:
            await check_prometheus(http, base, targets=1 + len(scene.fleet.pods))
    finally:
        browsing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await browsing
