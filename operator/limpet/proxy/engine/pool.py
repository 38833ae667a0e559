"""The per-backend keep-alive pool of upstream connections, and the engine's shared parts.

Data flow: :class:`~limpet.proxy.engine.server.Server` creates one :class:`UpstreamPool` per
process with the router (through :class:`RouterPort`), the coarse :class:`Clock` and the
:class:`EngineStats` counters. A client connection (``exchange.py``) asks
:meth:`UpstreamPool.acquire` for an idle connection to the routed backend (LIFO, the
warmest first) or awaits :meth:`UpstreamPool.connect` on a miss; when an answer is
complete the :class:`~limpet.proxy.engine.upstream.UpstreamConnection` hands itself back with
:meth:`UpstreamPool.release` (or closes). The connections read ``clock``, ``stats``,
``router``, ``classes`` and the timeouts straight off the pool's attributes on the hot
path, so those stay plain slots.

Concurrency: one event loop thread, no locks. A task exists only inside
:meth:`UpstreamPool.connect`, while a new connection is dialled. Timeouts use no timer
per request: :meth:`UpstreamPool.sweep`, called by the server's periodic sweep, drops
every live connection whose ``deadline`` has passed on the coarse clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from limpet.affinity import BackendId
from limpet.proxy.engine import fields
from limpet.proxy.engine.counters import Clock, EngineStats
from limpet.proxy.engine.port import RouterPort
from limpet.proxy.engine.upstream import BUSY, CLOSED, IDLE, TUNNEL, UpstreamConnection
from limpet.proxy.engine.write_batch import WriteBatch
from limpet.proxy.settings import ProxySettings


class PooledBackend:
    """One backend's address and its idle connections (the pool's LIFO stack)."""

    __slots__ = ("dial", "host", "id", "idle", "port")

    def __init__(self, backend_id: str, host: str, port: int, dial: tuple[str, int]) -> None:
        self.id = BackendId(backend_id)
        self.host = host
        self.port = port
        self.dial = dial
        self.idle: list[UpstreamConnection] = []


class UpstreamPool:
    """Idle keep-alive connections per backend (LIFO, so the warmest is reused first), and
    dialling on a miss."""

    __slots__ = (
        "_backends",
        "_loop",
        "batch",
        "classes",
        "clock",
        "live",
        "max_header_bytes",
        "max_headers",
        "max_idle",
        "pool_idle_timeout",
        "response_timeout",
        "router",
        "settings",
        "stats",
        "tunnel_idle_timeout",
    )

    def __init__(
        self,
        *,
        settings: ProxySettings,
        router: RouterPort,
        clock: Clock,
        stats: EngineStats,
        classes: fields.HeaderClasses,
        loop: asyncio.AbstractEventLoop,
        batch: WriteBatch,
    ) -> None:
        self.settings = settings
        self.batch = batch
        self.router = router
        self.clock = clock
        self.stats = stats
        self.classes = classes
        self._loop = loop
        self._backends: dict[str, PooledBackend] = {}
        self.live: set[UpstreamConnection] = set()
        self.max_idle = settings.pool_max_idle
        self.max_headers = settings.max_headers
        self.max_header_bytes = settings.max_header_bytes
        # Deadlines are set from the coarse clock, which may lag one tick: add it, as the
        # server does for the client side, so that no timeout fires early.
        tick = settings.sweep_interval
        self.pool_idle_timeout = settings.pool_idle_timeout + tick
        self.response_timeout = settings.response_timeout + tick
        self.tunnel_idle_timeout = settings.tunnel_idle_timeout + tick

    def _backend(self, backend_id: str, host: str, port: int) -> PooledBackend:
        b = self._backends.get(backend_id)
        if b is None or b.host != host or b.port != port:
            if b is not None:
                # The plan moved this id to a new address: drop the old connections.
                for conn in b.idle:
                    conn.abort()
            b = PooledBackend(backend_id, host, port, self.settings.dial_address(host, port))
            self._backends[backend_id] = b
        return b

    def acquire(self, backend_id: str, host: str, port: int) -> UpstreamConnection | None:
        b = self._backends.get(backend_id)
        if b is None or b.host != host or b.port != port:
            return None
        idle = b.idle
        while idle:
            conn = idle.pop()
            if conn.state == IDLE:
                self.stats.upstream_reuses += 1
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> bool:
        """Put a finished connection back; False if it must be closed instead."""
        b: PooledBackend = conn.backend  # type: ignore[assignment]  # (cast() is a call)
        if (
            conn.state == CLOSED
            or len(b.idle) >= self.max_idle
            or self._backends.get(b.id) is not b
        ):
            return False
        conn.state = IDLE
        if conn.paused:  # checked here: a call saved on every release
            conn.resume()
        conn.deadline = self.clock.now + self.pool_idle_timeout
        b.idle.append(conn)
        return True

    def forget_idle(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            cast(PooledBackend, conn.backend).idle.remove(conn)

    async def connect(self, backend_id: str, host: str, port: int) -> UpstreamConnection:
        """Dial a new connection (bounded by the connect timeout). Raises OSError or
        TimeoutError on failure."""
        b = self._backend(backend_id, host, port)
        self.stats.upstream_connects += 1
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                _, proto = await self._loop.create_connection(
                    lambda: UpstreamConnection(self, b), b.dial[0], b.dial[1]
                )
        except (OSError, TimeoutError):
            self.stats.upstream_connect_failures += 1
            raise
        return proto

    def sweep(self, now: float) -> None:
        expired = [c for c in self.live if 0.0 < c.deadline <= now and not c.paused]
        for conn in expired:
            # Idle in the pool too long, an answer overdue, or a silent tunnel: drop it,
            # then tell the client (504, or close the tunnel's other end).
            state = conn.state
            client = conn.client
            conn.abort()
            if state == BUSY:
                self.stats.timeout("response")
                if client is not None:
                    client.upstream_timeout()
            elif state == TUNNEL:
                self.stats.timeout("tunnel_idle")
                if client is not None:
                    client.close_after_flush()

    def idle_count(self) -> int:
        return sum(len(b.idle) for b in self._backends.values())

    def close(self) -> None:
        for conn in list(self.live):
            conn.abort()
        for b in self._backends.values():
            b.idle.clear()
