"""The traffic listener of one process: it accepts client connections, owns the upstream
pool, and runs the one periodic sweep that enforces every timeout.

Data flow: :meth:`Server.start` creates the :class:`~limpet.proxy.engine.pool.UpstreamPool`
and the listening socket (its own, or one handed over by the worker supervisor with
SO_REUSEPORT); each accepted connection is a
:class:`~limpet.proxy.engine.client.ClientConnection`. Limits come from the settings once:
request line, header bytes and count, connections (503 beyond). Timeouts use no timer per
request: connections set a ``deadline`` attribute against a coarse clock, and
:meth:`Server._sweep`, every ``sweep_interval`` seconds, updates the clock, times out
client connections (head read, idle keep-alive) and lets the pool time out upstream ones
(connect, response, tunnel idle, pooled idle). Deadlines include one tick, so nothing
fires early.

Concurrency: one event loop; the sweep is a plain ``call_later`` chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Collection
from typing import Any

from limpet.proxy.engine import fields
from limpet.proxy.engine.client import ClientConnection
from limpet.proxy.engine.counters import Clock, EngineStats
from limpet.proxy.engine.pool import UpstreamPool
from limpet.proxy.engine.port import RouterPort
from limpet.proxy.engine.write_batch import WriteBatch
from limpet.proxy.settings import ProxySettings

log = logging.getLogger(__name__)


class Server:
    """The traffic listener of one process, its upstream pool and the timeout sweep."""

    def __init__(self, *, settings: ProxySettings, router: RouterPort) -> None:
        self.settings = settings
        self.router = router
        self.stats = EngineStats(timing=settings.latency_histogram)
        self.classes = fields.HeaderClasses()
        self.clients: set[ClientConnection] = set()
        tick = settings.sweep_interval
        self.tick = tick
        # Deadlines are set from a clock that may lag one tick: add it so no timeout
        # fires early.
        self.head_timeout = settings.head_timeout + tick
        self.idle_timeout = settings.idle_timeout + tick
        self.send_timeout = settings.send_timeout + tick
        self.max_request_line = settings.max_request_line
        self.max_header_bytes = settings.max_header_bytes
        self.max_headers = settings.max_headers
        self.max_connections = settings.max_connections
        # httptools buffers one header internally until it is complete; this bounds it.
        self.head_guard = settings.max_request_line + settings.max_header_bytes + 1024
        self.clock = Clock(0.0)
        self._pool: UpstreamPool | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def pool(self) -> UpstreamPool:
        assert self._pool is not None, "Server.start() first"
        return self._pool

    async def start(self, *, sock: socket.socket | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.clock.now = loop.time()
        self._pool = UpstreamPool(
            settings=self.settings,
            router=self.router,
            clock=self.clock,
            stats=self.stats,
            classes=self.classes,
            loop=loop,
            batch=WriteBatch(loop),
        )
        listen = self.settings.listen
        if sock is not None:
            self._server = await loop.create_server(
                lambda: ClientConnection(self), sock=sock, backlog=self.settings.backlog
            )
        else:
            self._server = await loop.create_server(
                lambda: ClientConnection(self),
                listen.host,
                listen.port,
                backlog=self.settings.backlog,
                reuse_port=self.settings.workers > 1,
            )
        self._sweeper = loop.call_later(self.tick, self._sweep)

    @property
    def port(self) -> int:
        # Any: uvloop's Server.sockets is a list, not typeshed's tuple, and compiled with
        # mypyc (limpet.proxy.process.native) the declared type is checked.
        server: Any = self._server
        assert server is not None
        port: int = server.sockets[0].getsockname()[1]
        return port

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.clock.now = now
        try:
            expired = [
                c for c in self.clients if 0.0 < c.deadline <= now or 0.0 < c.send_deadline <= now
            ]
            for conn in expired:
                conn.timed_out()
            self.pool.sweep(now)
        except Exception:  # a bug here must not stop every future timeout
            log.exception("timeout sweep failed")
        self._sweeper = loop.call_later(self.tick, self._sweep)

    def stats_dict(self, *, keep: Collection[str] | None = None) -> dict[str, object]:
        """The engine's counters; ``keep``: the backend ids of the plan in use (the
        per-backend figures of any other are dropped)."""
        out = self.stats.as_dict(keep=keep)
        out["upstream_idle"] = self.pool.idle_count() if self._pool is not None else 0
        return out

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for conn in list(self.clients):
            conn.abort()
        if self._pool is not None:
            self._pool.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # Let transports finish closing so no ResourceWarning escapes.
        await asyncio.sleep(0)
