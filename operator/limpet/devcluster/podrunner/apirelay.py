"""The API server as pods see it: a TCP relay on the node's side of the pod network.

Data flow: the API server listens on loopback only. Pods live in their own network
namespaces, where loopback is their own, so the runner listens on the pod network's
bridge address (the gateway this run created, port 443 as the ``kubernetes`` Service)
and copies bytes both ways to the API server's loopback address. TLS passes through
untouched: the pod verifies the API server's own certificate, which the dev cluster
reissues with the bridge address (``DevCluster.serve_at``), and authenticates with its
service-account token as in any cluster.

:func:`service_env` is what a kubelet puts in every container for the ``kubernetes``
Service (``KUBERNETES_SERVICE_HOST`` and friends, set even with
``enableServiceLinks: false``), pointing at the relay.

Asyncio, the runner's event loop; one pair of copy tasks per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from urllib.parse import urlsplit

log = logging.getLogger("limpet.podrunner")

SERVICE_PORT = 443
API_PREFIX = "limpet pod runner: api server for pods at "
"""The runner's stdout line naming the relay (``...at 10.201.7.1:443``), for its parent."""


def service_env(host: str, port: int = SERVICE_PORT) -> dict[str, str]:
    """The kubelet's environment for the ``kubernetes`` Service at ``host:port``."""
    url = f"tcp://{host}:{port}"
    p = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        p: url,
        f"{p}_PROTO": "tcp",
        f"{p}_PORT": str(port),
        f"{p}_ADDR": host,
    }


def loopback_target(server: str) -> tuple[str, int]:
    """The API server's (host, port) from its URL; only a loopback address is relayed to."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the API server {server} is not on loopback; the relay only goes there")
    return host, parts.port or 443


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class ApiRelay:
    """Listens on ``listen``:443 and relays each connection to the API server."""

    def __init__(self, *, listen: str, target: tuple[str, int]) -> None:
        self.listen = listen
        self.target = target
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.listen, SERVICE_PORT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError as e:
            log.warning("api relay: the API server at %s:%d: %s", *self.target, e)
            writer.close()
            self._conns.discard(task)
            return
        try:
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._conns.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._conns, return_exceptions=True)
            await self._server.wait_closed()
