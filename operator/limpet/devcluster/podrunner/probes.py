"""Probe and hook actions, as a kubelet runs them: HTTP GET, TCP connect, exec.

Data flow: a :class:`~.spec.Probe` or :class:`~.spec.Hook`, the pod IP and a way to run
a command inside the container (:data:`ExecIn`) in; :func:`check` returns a
:class:`Result` (success and a message for the container's events and logs).
:func:`run_hook` runs a preStop handler. HTTP and TCP go from the root namespace to the
pod IP, which the runner created and checked, exactly as a kubelet probes from its
node; HTTPS is not verified (as kubelet). A gRPC probe is reported as failing with
"not supported".

Asyncio; stateless (the prober loop with thresholds lives in :mod:`.container`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from limpet.devcluster.podrunner.spec import Hook, Probe

ExecIn = Callable[[Sequence[str], float], Awaitable[tuple[int, str]]]
"""Run argv in the container with a timeout: (exit code, output)."""

_NO_VERIFY = ssl.create_default_context()
_NO_VERIFY.check_hostname = False
_NO_VERIFY.verify_mode = ssl.CERT_NONE


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    message: str = ""


async def http_get(
    http: aiohttp.ClientSession,
    host: str,
    port: int,
    path: str,
    *,
    scheme: str = "HTTP",
    headers: Sequence[tuple[str, str]] = (),
    limit: float,
) -> Result:
    url = f"{scheme.lower()}://{host}:{port}{path if path.startswith('/') else '/' + path}"
    try:
        async with http.get(
            url,
            headers=dict(headers) or None,
            allow_redirects=False,
            ssl=_NO_VERIFY if scheme.upper() == "HTTPS" else True,
            timeout=aiohttp.ClientTimeout(total=limit),
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 400:
                return Result(True)
            return Result(False, f"HTTP probe failed with statuscode: {resp.status}")
    except (TimeoutError, aiohttp.ClientError, OSError) as e:
        return Result(False, f'Get "{url}": {type(e).__name__}: {e}')


async def tcp_connect(host: str, port: int, *, limit: float) -> Result:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), limit)
    except (TimeoutError, OSError) as e:
        return Result(False, f"dial tcp {host}:{port}: {type(e).__name__}: {e}")
    writer.close()
    await writer.wait_closed()
    return Result(True)


async def check(probe: Probe, *, http: aiohttp.ClientSession, host: str, exec_in: ExecIn) -> Result:
    if probe.kind == "http":
        return await http_get(
            http,
            host,
            probe.port,
            probe.path,
            scheme=probe.scheme,
            headers=probe.headers,
            limit=probe.timeout,
        )
    if probe.kind == "tcp":
        return await tcp_connect(host, probe.port, limit=probe.timeout)
    if probe.kind == "exec":
        code, output = await exec_in(probe.command, probe.timeout)
        if code == 0:
            return Result(True)
        return Result(False, f"exec probe exited with {code}: {output[-300:]}")
    return Result(False, "gRPC probes are not supported by the limpet pod runner")


async def run_hook(
    hook: Hook, *, http: aiohttp.ClientSession, host: str, exec_in: ExecIn, budget: float
) -> Result:
    """Run a preStop handler within ``budget`` seconds."""
    if hook.kind == "sleep":
        await asyncio.sleep(min(hook.seconds, budget))
        return Result(True)
    if hook.kind == "exec":
        code, output = await exec_in(hook.command, budget)
        return Result(code == 0, "" if code == 0 else f"exited with {code}: {output[-300:]}")
    if hook.kind == "http":
        return await http_get(
            http,
            host,
            hook.port,
            hook.path,
            scheme=hook.scheme,
            headers=hook.headers,
            limit=budget,
        )
    return await tcp_connect(host, hook.port, limit=budget)
