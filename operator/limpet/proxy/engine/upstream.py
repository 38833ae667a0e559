"""The upstream connection: the asyncio shell around one keep-alive TCP connection to a
backend.

Data flow: a client connection (``exchange.py``) takes an :class:`UpstreamConnection`
from the :class:`~limpet.proxy.engine.pool.UpstreamPool` (idle or newly dialled), binds
it to itself with :meth:`UpstreamConnection.bind` and writes the request. Each read of
the backend goes to the connection's sans-I/O
:class:`~limpet.proxy.engine.h1.response.ResponseMachine`, which returns the client's
bytes (handed to the client connection's one writer, ``flush_down``: one ``writelines``
per read) and an event; this shell acts on it: at the end of the answer it returns
itself to the pool if the machine's ``keep`` says so (what the sans-I/O
``h1.actions.after_answer`` decided) and the pool has room, else closes, and tells the
client connection, which then does what ``after_exchange`` says; after a 101 it becomes
a raw tunnel; on garbage it drops the connection and reports it. Every byte for the
client goes through the client connection's ``flush_down`` (the answer, the bytes after
a 101, tunnel bytes, the last chunk of a close-delimited body); this module writes only
the half-close of a tunnel (``write_eof``) itself. The machine holds all HTTP state.

Flow control is write-through: when the client's transport buffer passes its high-water
mark the client pauses this connection's reading, and vice versa for request bodies, so
no body is ever held whole in memory.

Concurrency: everything runs in one event loop thread, driven by protocol callbacks; no
task exists per request. Timeouts are enforced by one periodic sweep (``Server`` via
:meth:`UpstreamPool.sweep`) that compares the ``deadline`` attributes set here against
the pool's coarse clock, so no timer object is created per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol, cast

from limpet.affinity import BackendId
from limpet.proxy.engine import fields
from limpet.proxy.engine.counters import Clock, EngineStats
from limpet.proxy.engine.h1 import response
from limpet.proxy.engine.h1.response import ResponseMachine
from limpet.proxy.engine.port import Route, RouterPort
from limpet.proxy.engine.write_batch import WriteBatch

log = logging.getLogger(__name__)

# UpstreamConnection states.
CONNECTING: Final = 0
IDLE: Final = 1  # in the pool
BUSY: Final = 2  # bound to a client, request in flight
TUNNEL: Final = 3  # after 101: raw bytes both ways
CLOSED: Final = 4


class ClientSide(Protocol):
    """What an upstream connection needs from the client connection it serves
    (:class:`~limpet.proxy.engine.client.ClientConnection`)."""

    transport: asyncio.Transport
    keep_alive: bool
    state: int  # h1.connection.State
    half_closed: bool
    status: int

    def flush_down(self, out: list[bytes]) -> None: ...
    def response_done(self) -> None: ...
    def upstream_failed(self, up: UpstreamConnection, *, reset: bool) -> None: ...
    def upstream_aborted(self) -> None: ...
    def upstream_broken(self) -> None: ...
    def upstream_timeout(self) -> None: ...
    def upgraded(self, up: UpstreamConnection) -> None: ...
    def close_after_flush(self) -> None: ...
    def pause_reading_for_upstream(self) -> None: ...
    def resume_reading_for_upstream(self) -> None: ...


class BackendSlot(Protocol):
    """The backend an upstream connection belongs to (the pool's ``PooledBackend``)."""

    @property
    def id(self) -> BackendId: ...


class PoolSide(Protocol):
    """What an upstream connection needs from its pool
    (:class:`~limpet.proxy.engine.pool.UpstreamPool`)."""

    clock: Clock
    stats: EngineStats
    router: RouterPort
    classes: fields.HeaderClasses
    live: set[UpstreamConnection]
    response_timeout: float
    tunnel_idle_timeout: float
    max_headers: int
    max_header_bytes: int
    batch: WriteBatch

    def release(self, conn: UpstreamConnection) -> bool: ...
    def forget_idle(self, conn: UpstreamConnection) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend: the socket side of a
    :class:`~limpet.proxy.engine.h1.response.ResponseMachine`."""

    __slots__ = (
        "backend",
        "backend_id",
        "batch",
        "client",
        "clock",
        "deadline",
        "half_closed",
        "machine",
        "paused",
        "pool",
        "release",
        "response_timeout",
        "state",
        "stats",
        "succeeded",
        "transport",
        "tunnel_idle_timeout",
    )

    def __init__(self, pool: PoolSide, backend: BackendSlot) -> None:
        self.pool = pool
        self.backend = backend
        # The pool's parts that the hot path reads, copied once per connection: read
        # through ``pool`` (a Protocol to compiled code) each would be a generic attribute
        # lookup, about 150 instructions, several times a request.
        self.backend_id = backend.id
        self.clock = pool.clock
        self.stats = pool.stats
        self.response_timeout = pool.response_timeout
        self.tunnel_idle_timeout = pool.tunnel_idle_timeout
        # Called once a request, bound once: through a Protocol each call looks the
        # method up by name first.
        self.release: Callable[[UpstreamConnection], bool] = pool.release
        self.succeeded: Callable[[BackendId], None] = pool.router.backend_succeeded
        self.batch = pool.batch
        self.transport: asyncio.Transport | None = None
        self.machine = ResponseMachine(
            router=pool.router,
            classes=pool.classes,
            max_headers=pool.max_headers,
            max_header_bytes=pool.max_header_bytes,
        )
        self.client: ClientSide | None = None
        self.state = CONNECTING
        self.deadline = 0.0
        self.paused = False  # reading paused because the client cannot take more
        self.half_closed = False  # tunnel: the backend sent EOF

    # -- binding -------------------------------------------------------------------------

    def bind(
        self,
        client: ClientSide,
        *,
        route: Route,
        http11: bool,
        head_request: bool,
        upgrade: bool,
        write_paused: bool,
    ) -> None:
        """Serve ``client``'s request (its facts passed as values: read through the
        ``ClientSide`` Protocol, each would be a generic attribute lookup)."""
        self.client = client
        self.state = BUSY
        self.machine.expect(
            client, route=route, http11=http11, head_request=head_request, upgrade=upgrade
        )
        self.deadline = self.clock.now + self.response_timeout
        if write_paused:
            self.pause()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop this connection (never reused): the exchange on it failed."""
        self.client = None
        self.machine.out.clear()
        if self.state != CLOSED:
            self.state = CLOSED
            if self.transport is not None:
                self.batch.flush_to(self.transport)
                self.transport.abort()

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.pool.live.add(self)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # Bytes on an idle pooled connection are a protocol error: drop it.
            self.abort()
            return
        if self.state == TUNNEL:
            self.machine.out.append(data)
            client.flush_down(self.machine.out)
            self.deadline = self.clock.now + self.tunnel_idle_timeout
            return
        self.deadline = self.clock.now + self.response_timeout
        machine = self.machine
        event = machine.feed(data)
        if machine.out:
            client.flush_down(machine.out)
        if event == response.DONE:
            self._finish(client, keep=machine.keep)
        elif event:
            self._act(event, client)

    def _act(self, event: int, client: ClientSide) -> None:
        """Do what the machine's rarer events ask (TUNNEL, STRAY, BROKEN)."""
        failure = self.machine.failure
        if failure is not None:  # not the backend's fault: a bug behind the machine
            self.machine.failure = None
            log.error("relaying a backend's answer failed", exc_info=failure)
        if event == response.TUNNEL:
            self._tunnel(client)
        elif event == response.STRAY:
            # The backend sent a body for an earlier HEAD after all: the connection is
            # out of step. Drop it, and let the client retry as after a stale pooled
            # connection (once, if nothing of its request body was sent).
            self.abort()
            client.upstream_failed(self, reset=False)
        else:
            # Not HTTP: 502 (or cut the client short if the answer already started), and
            # never reuse this connection.
            self.stats.broken_responses += 1
            self.abort()
            client.upstream_broken()

    def _finish(self, client: ClientSide, *, keep: bool) -> None:
        """The answer is complete: pool the connection or close it, then tell the client."""
        self.client = None
        if not (keep and self.release(self)):
            self.state = CLOSED
            if self.transport is not None:
                self.batch.flush_to(self.transport)
                self.transport.close()
        self.stats.responses += 1
        self.succeeded(self.backend_id)
        client.response_done()

    def _tunnel(self, client: ClientSide) -> None:
        self.state = TUNNEL
        self.stats.tunnels += 1
        self.deadline = self.clock.now + self.tunnel_idle_timeout
        rest = self.machine.rest
        self.machine.rest = b""
        if rest:
            self.machine.out.append(rest)
            client.flush_down(self.machine.out)
        client.upgraded(self)

    def eof_received(self) -> bool | None:
        client = self.client
        if self.state == TUNNEL and client is not None:
            # Half-close: pass the backend's EOF on, keep the other direction open until
            # the client ends it too.
            self.half_closed = True
            transport = client.transport
            if not client.half_closed and transport.can_write_eof() and not transport.is_closing():
                self.batch.flush_to(transport)
                transport.write_eof()
                return True
            client.close_after_flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        pool = self.pool
        pool.live.discard(self)
        state = self.state
        self.state = CLOSED
        client = self.client
        self.client = None
        if state == IDLE:
            pool.forget_idle(self)
            return
        if client is None:
            return
        if state == TUNNEL:
            client.close_after_flush()
            return
        if state != BUSY:
            return
        machine = self.machine
        if machine.closed():
            # A close-delimited body ended normally.
            client.flush_down(machine.out)
            self.stats.responses += 1
            self.succeeded(self.backend_id)
            client.response_done()
        elif not machine.got_response:
            client.upstream_failed(self, reset=exc is not None)
        else:
            client.upstream_aborted()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for_upstream()
