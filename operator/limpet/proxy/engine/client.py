"""The input half of a client connection: the asyncio protocol that reads requests.

Data flow per request: bytes arrive in :meth:`ClientConnection.data_received` and go to
the connection's sans-I/O :class:`~limpet.proxy.engine.h1.request.RequestReader`, which
parses and bounds them (414 and 431 beyond the limits) and reports each request back to
this object (its ``RequestSink``): at the end of the head :meth:`ClientConnection.head`
starts the exchange (:class:`~limpet.proxy.engine.exchange.Exchange`, the base class);
body chunks are passed on as they are parsed. What the read produced for the backend is
written once the read is parsed. A request parsed while the previous one is still being
answered (pipelining) waits in a small queue, with reading paused. Whenever the request
or the answer ends, :meth:`ClientConnection._advance` does what the sans-I/O
``h1.actions.after_exchange`` returns for the state, keep-alive and the queue: go on,
read the next request, start the queued one, answer bad bytes that followed it, or
close. After an upgrade request's head the connection holds further bytes until the
backend answers (``h1.actions.after_upgrade_head``: state ``SWITCHING``,
:mod:`~limpet.proxy.engine.h1.connection`), or closes if it was answered already;
after ``101 Switching Protocols`` (``TUNNEL``) both connections become a
raw byte pipe (data, half-close and flow control pass straight through). A malformed
request gets a 400 and the connection closes; a request head that takes longer than the
head timeout gets a 408 (the :class:`~limpet.proxy.engine.server.Server` sweep calls
:meth:`ClientConnection.timed_out`).

Concurrency: one event loop, callbacks only. The reader, the header scan object and the
router's request view are allocated once per connection and reused for every request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import cast

from limpet.proxy.engine.exchange import R_PIPELINE, R_UPGRADE, Exchange, ServerSide
from limpet.proxy.engine.h1 import actions, request
from limpet.proxy.engine.h1.actions import (
    NEXT_CLOSE,
    NEXT_CONTINUE,
    NEXT_REFUSE_QUEUED,
    NEXT_SERVE_QUEUED,
    UPGRADE_CLOSE,
)
from limpet.proxy.engine.h1.connection import (
    BODY_DUE,
    CLOSE,
    CLOSED,
    DRAINING,
    DUPLEX,
    HTTP,
    IDLE,
    READING_BODY,
    REQUEST_DONE,
    SWITCH,
    TUNNEL,
    UPGRADE,
    step,
)
from limpet.proxy.engine.h1.request import RequestReader
from limpet.proxy.engine.upstream import UpstreamConnection

log = logging.getLogger(__name__)


class _Pending:
    """A pipelined request, parsed while the previous one is still being answered."""

    __slots__ = (
        "body",
        "complete",
        "headers",
        "keep_alive",
        "method",
        "trailers",
        "upgrade",
        "url",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.body: list[bytes] = []
        self.complete = False
        self.trailers: list[tuple[bytes, bytes]] | None = None


class ClientConnection(Exchange):
    """One client connection: parses requests and feeds them to the exchange."""

    __slots__ = (
        "deferred_status",
        "pending",
        "reader",
        "registered",
        "upgrade_buf",
    )

    def __init__(self, server: ServerSide) -> None:
        super().__init__(server)
        self.reader = RequestReader(
            self,
            max_request_line=server.max_request_line,
            max_header_bytes=server.max_header_bytes,
            max_headers=server.max_headers,
            head_guard=server.head_guard,
        )
        self.registered = False
        self.deferred_status = 0  # an error to answer once the current answer is out
        self.pending: deque[_Pending] | None = None
        self.upgrade_buf: list[bytes] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        server = self.server
        stats = self.stats
        stats.connections_accepted += 1
        if stats.connections_active >= server.max_connections:
            stats.connections_rejected += 1
            self._reply(503, close=True)
            self.state = step(self.state, CLOSE)
            self.batch.flush_to(t)
            t.close()
            return
        self.registered = True
        stats.connections_active += 1
        server.clients.add(self)
        peer = t.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else ""
        self.peer = peer_ip.encode("ascii", "replace")
        self.trusted = server.settings.is_trusted(peer_ip)
        self.view.peer_ip = peer_ip
        self.deadline = self.clock.now + self.head_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel = self.state == TUNNEL
        self.state = step(self.state, CLOSE)
        if self.registered:
            self.registered = False
            self.stats.connections_active -= 1
            self.server.clients.discard(self)
        task = self.dial_task
        if task is not None:
            self.dial_task = None
            task.cancel()
        up = self.up
        self.up = None
        self.pending = None
        if up is not None and up.client is self:
            if tunnel:
                up.client = None
                if up.transport is not None:
                    self.batch.flush_to(up.transport)
                    up.transport.close()
            else:
                # The client left mid-exchange: the upstream connection is mid-message.
                up.abort()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if not HTTP[state]:
            if state == TUNNEL:
                up = self.up
                if up is not None:
                    self.up_out.append(data)
                    self.flush_up()
                    up.deadline = self.clock.now + self.pool.tunnel_idle_timeout
            elif self.upgrade_buf is not None:  # SWITCHING or REFUSED: held
                self.upgrade_buf.append(data)
            return
        self.feeding = True
        result = self.reader.feed(data)
        # The read is parsed: send what it produced for the backend (inline: once a read).
        self.feeding = False
        if result == request.INVALID and not REQUEST_DONE[self.state]:
            # The request is refused: none of this read goes to a backend, not even the
            # head it queued before llhttp found the fault (the bound connection, if any,
            # is dropped with the exchange).
            self.up_out.clear()
        elif self.up_out:
            self.flush_up()
        if result == request.UPGRADE:
            self._upgrade_head_done(self.reader.rest)
        elif result == request.INVALID:
            failure = self.reader.failure
            if failure is not None:  # a bug behind the reader, not the client's fault
                self.reader.failure = None
                log.error("handling a request failed (answered 500)", exc_info=failure)
            if self.state != CLOSED:
                self._bad_request(self.reader.status)

    def eof_received(self) -> bool | None:
        up = self.up
        if self.state == TUNNEL and up is not None and up.transport is not None:
            self.half_closed = True
            transport = up.transport
            self.batch.flush_to(transport)
            if not up.half_closed and transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
                return True
            transport.close()  # both directions are finished
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.send_deadline = self.clock.now + self.send_timeout
        if self.up is not None:
            self.up.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.send_deadline = 0.0
        if self.up is not None:
            self.up.resume()

    # -- the request reader's events (h1.request.RequestSink) ----------------------------

    def begin(self) -> bool:
        state = self.state
        if state == CLOSED:
            return False  # answered and closing: whatever follows is not served
        if state != IDLE:
            # Pipelined: hold further input until the current answer is out.
            self._pause(R_PIPELINE)
        elif self.reader.requests:
            self.deadline = self.clock.now + self.head_timeout
        return True

    def head(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        if self.state != IDLE:
            pending = _Pending(method, target, headers, version, keep_alive, upgrade)
            if self.pending is None:
                self.pending = deque((pending,))
            else:
                self.pending.append(pending)
            return
        self.req_trailers = None
        self._start(method, target, headers, version, keep_alive, upgrade)

    def body(self, data: bytes) -> None:
        if self.pending is not None:
            self.pending[-1].body.append(data)
        elif BODY_DUE[self.state]:
            self._request_body(data)

    def complete(self) -> None:
        trailers = self.reader.trailers
        if self.pending is not None:
            self.pending[-1].complete = True
            self.pending[-1].trailers = trailers
            return
        if READING_BODY[self.state]:
            self.req_trailers = trailers
            self._request_complete()

    def _advance(self, state: int) -> None:
        action = actions.after_exchange(
            state,
            keep_alive=self.keep_alive,
            queued=self.pending is not None,
            refused=self.deferred_status != 0,
        )
        if action == NEXT_CONTINUE:
            return
        if state == IDLE:
            self._ready()
        if action == NEXT_CLOSE:
            self.close_after_flush()
            return
        self.deadline = self.clock.now + self.idle_timeout
        if action == NEXT_SERVE_QUEUED:
            self._serve_queued()
        elif action == NEXT_REFUSE_QUEUED:
            self._refuse(self.deferred_status)

    def _serve_queued(self) -> None:
        """Start the pipelined request parsed while the last one was answered."""
        pending = self.pending
        assert pending is not None
        p = pending.popleft()
        if not pending:
            self.pending = None
        self.req_trailers = p.trailers
        self._start(p.method, p.url, p.headers, p.version, p.keep_alive, p.upgrade)
        for chunk in p.body:
            if BODY_DUE[self.state]:
                self._request_body(chunk)
        if p.complete and READING_BODY[self.state]:
            self._request_complete()
        if self.pending is None:
            if self.upgrade_buf is not None and self.state != CLOSED:
                self._switching()  # the last request queued was an upgrade request
            self._resume(R_PIPELINE)

    # -- upgrade and tunnel --------------------------------------------------------------

    def _upgrade_head_done(self, rest: bytes) -> None:
        """The reader parsed an upgrade request's head: hold what follows until the
        backend answers it, and switch once that request is the one in flight (at once,
        or when it leaves the pipelining queue: :meth:`_serve_queued`)."""
        if self.state == CLOSED:
            return
        held = self.upgrade_buf
        if held is None:
            held = self.upgrade_buf = []
        if rest:
            held.append(rest)
        self._pause(R_UPGRADE)
        if self.pending is None:
            self._switching()

    def _switching(self) -> None:
        if actions.after_upgrade_head(self.state) == UPGRADE_CLOSE:
            # Answered already (or not a clean upgrade): nothing after the head can be
            # read as HTTP/1.1 any more, so the connection ends here.
            self.close_after_flush()
            return
        # Whatever the backend answers, no request follows on this connection: a 101
        # makes it a tunnel, anything else ends it.
        self.keep_alive = False
        self.state = step(self.state, UPGRADE)

    def upgraded(self, up: UpstreamConnection) -> None:
        """The backend answered 101: pipe raw bytes both ways from now on."""
        route = self.route
        if route is not None:  # counted and timed at the switch: a tunnel has no end
            self.stats.answered(route.backend_id, self.status, self.started)
        self.state = step(self.state, SWITCH)
        self.deadline = 0.0
        buffered = self.upgrade_buf
        self.upgrade_buf = None
        if buffered:
            self.up_out += buffered
            self.flush_up()
        self._resume(R_UPGRADE)

    # -- timeouts, limits, closing -------------------------------------------------------

    def timed_out(self) -> None:
        if 0.0 < self.send_deadline <= self.clock.now:
            # The client left what it was sent unread for --send-timeout: nothing more
            # can reach it, so it is cut, and its backend connection with it.
            self.send_deadline = 0.0
            self.stats.timeout("send")
            self.abort()
            return
        if HTTP[self.state] and self.reader.phase == request.HEAD:
            self.stats.timeout("head")
            self._reply(408, close=True)
        else:
            self.stats.timeout("idle" if self.reader.requests else "head")
        self.close_after_flush()

    def _bad_request(self, status: int) -> None:
        state = self.state
        if REQUEST_DONE[state]:
            # The bad bytes follow a complete request whose answer is still due: that
            # answer goes out first, then this error (see _advance), as nginx does.
            self.deferred_status = status
            self._pause(R_PIPELINE)
            return
        if state in (DUPLEX, DRAINING):
            # The body went bad while the answer streams: nothing sane can be sent.
            self.abort()
            return
        self._refuse(status)

    def _refuse(self, status: int) -> None:
        self._reply(status, close=True)
        self.close_after_flush()
