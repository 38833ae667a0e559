"""``--liveness``: the probe endpoint deploy/'s operator Deployment points its probes at.

kopf serves it once the operator runs; it answers 200 with the probe results while the
operator lives, and nothing listens once the operator is gone.
"""

from __future__ import annotations

import aiohttp

from limpet.devcluster.ports import free_port
from tests.controller.harness import StartOperator, eventually


async def _status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            await resp.read()
            return resp.status
    except aiohttp.ClientConnectionError:
        return None


async def test_liveness_endpoint_follows_the_operator(
    http: aiohttp.ClientSession, start_operator: StartOperator
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    assert await _status(http, url) is None, "nothing listens before the operator starts"
    operator = start_operator("--standalone", f"--liveness=http://127.0.0.1:{port}/healthz")

    async def healthy() -> bool:
        return await _status(http, url) == 200

    await eventually(healthy, what="the operator's liveness endpoint to answer 200")
    async with http.get(f"http://127.0.0.1:{port}/elsewhere") as resp:
        assert resp.status == 404, "only the configured path is the probe"
    operator.stop()
    assert await _status(http, url) is None, "the endpoint went with the operator"
