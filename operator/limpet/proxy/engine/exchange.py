"""The exchange half of a client connection: one request and its answer at a time.

Data flow: when a request head is complete, :meth:`Exchange._start` scans its headers
once (``request_head.scan_request``), checks it (``request_head.check_request``: version,
method, Host, target form, body framing) and asks the router for a
:class:`~limpet.proxy.engine.port.Route`. What follows is decided by the
sans-I/O :mod:`~limpet.proxy.engine.h1.actions` from the facts this shell passes, and
done here: ``after_routing`` (send, await the shared store, or 503), ``connect`` (bind
the pool's idle connection, or dial one, buffering a bounded amount of body meanwhile),
``on_bind`` (how the rewritten head leaves) and ``after_dial`` (a dial's connection is
bound, or kept spare). When the request or the answer ends, the client connection does
what ``after_exchange`` returns (``ClientConnection._advance``). Body chunks follow as
they are parsed (re-chunked if the client sent chunks). Every byte for the backend goes
through ``up_out`` and one writer, :meth:`Exchange.flush_up`: writes are coalesced per
client read (the head of a request with a body and the body bytes of the same read leave
in one writev when the read is parsed), bytes held while routing or dialling leave at
bind time, and after a 101 the tunnel's bytes go the same way. The one exception is the
hot path's: the head of a request without a body, bound to a pooled connection, is
written by :meth:`Exchange._bind` itself (nothing else waits). Every byte for the client
goes through the other writer, :meth:`Exchange.flush_down` (the answer the upstream side
relays, tunnel bytes, and the proxy's own answers from :meth:`Exchange._reply`). Both
writers hand their bytes to the pool's :class:`~limpet.proxy.engine.write_batch.WriteBatch`,
which writes them all at the end of the loop's turn; every close, abort and half-close
first sends what the batch holds for that transport (``WriteBatch.flush_to``). The
answer is relayed by ``upstream.UpstreamConnection``, which calls
:meth:`Exchange.response_done` at its end, or reports a failure (``upstream_*``): a
connect failure is retried once on another backend, a stale pooled connection is
redialled once, anything else is a 502 or 504 from the proxy itself
(:meth:`Exchange._answer`): these decisions come from the sans-I/O
:mod:`~limpet.proxy.engine.h1.actions` as action values (``Do``, ``Fail``) that this
shell carries out. Each answer to a routed request, and each upstream failure, is
counted for its backend in the engine's stats (status class, error kind, and the time
from the head's end to the answer's: ``backend_stats.py``).

Where the exchange stands is one value, ``state``, of the sans-I/O client connection
state machine (:mod:`limpet.proxy.engine.h1.connection`): each event (the request's
head and end, the answer's head and end, the upgrade, the 101, the close) goes through
``connection.step``, which raises on an event the state does not allow. The backend
side's machine fires the answer's events on the same ``state``.

This is the base class of :class:`~limpet.proxy.engine.client.ClientConnection`, which owns the
input side (parsing, pipelining, limits, timeouts, the upgrade). The split is by concern;
both halves are one object per connection, so the upstream side calls one object.

Concurrency: one event loop, callbacks only. A task exists only while dialling a new
upstream connection. Reading is paused (never buffered without bound) whenever the other
side cannot keep up: the reasons are bits in ``read_paused``, and reading resumes when
none is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from limpet.proxy.engine import fields, framing, request_head, response_head
from limpet.proxy.engine.counters import Clock, EngineStats
from limpet.proxy.engine.h1 import actions
from limpet.proxy.engine.h1.actions import (
    BIND_HEAD,
    BIND_WITH_READ,
    CONNECT_BIND,
    DIALLED_BIND,
    ROUTE_AWAIT,
    ROUTE_SEND,
    Do,
    Fail,
)
from limpet.proxy.engine.h1.connection import (
    AFTER_ANSWER_END,
    AFTER_REQUEST,
    AFTER_REQUEST_END,
    ANSWER,
    ANSWER_END,
    ANSWER_OUT,
    CLOSE,
    CLOSED,
    IDLE,
    REQUEST,
    REQUEST_DONE,
    REQUEST_END,
    invalid,
    step,
)
from limpet.proxy.engine.pool import UpstreamPool
from limpet.proxy.engine.port import PendingRoute, RequestView, Route, RouterPort
from limpet.proxy.engine.upstream import BUSY, UpstreamConnection
from limpet.proxy.settings import ProxySettings

# Reasons for pausing the client's reading (a bit set: reading resumes when all clear).
R_UPSTREAM: Final = 1  # the upstream connection's write buffer is full
R_PIPELINE: Final = 2  # a pipelined request waits for the current answer
R_DIALLING: Final = 4  # request body buffered while the upstream connection is dialled
R_UPGRADE: Final = 8  # bytes after an upgrade request wait for the 101

DIAL_BUFFER_LIMIT: Final = 256 * 1024

# Final: compiled, a name imported from a module that is not compiled (``from time
# import perf_counter``) is looked up in this module's dict at every call.
_perf_counter: Final = time.perf_counter

log = logging.getLogger(__name__)


class ServerSide(Protocol):
    """What a client connection needs from its listener
    (:class:`~limpet.proxy.engine.server.Server`): shared parts, limits, timeouts."""

    settings: ProxySettings
    router: RouterPort
    stats: EngineStats
    clock: Clock
    classes: fields.HeaderClasses
    clients: set[Any]  # the server's ClientConnections
    head_timeout: float
    idle_timeout: float
    send_timeout: float
    head_guard: int
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    max_connections: int

    @property
    def pool(self) -> UpstreamPool: ...


class Exchange(asyncio.Protocol):
    """A client connection's state and its request/answer exchange (see the module)."""

    __slots__ = (
        "batch",
        "body_sent",
        "chunked_request",
        "classes",
        "clock",
        "deadline",
        "dial_task",
        "dispatch",
        "feeding",
        "half_closed",
        "head_request",
        "head_timeout",
        "held",
        "held_end",
        "holding",
        "http11",
        "idempotent",
        "idle_timeout",
        "keep_alive",
        "peer",
        "pool",
        "read_paused",
        "redialled",
        "req_trailers",
        "request_head",
        "retried",
        "route",
        "router",
        "scan",
        "send_deadline",
        "send_timeout",
        "server",
        "started",
        "state",
        "stats",
        "status",
        "transport",
        "trusted",
        "up",
        "up_out",
        "upgrade_requested",
        "view",
        "write_paused",
    )

    def __init__(self, server: ServerSide) -> None:
        self.server = server
        self.pool = server.pool
        self.batch = server.pool.batch  # the server's, one per event loop
        self.router = server.router
        # The router's entry point, bound once (through RouterPort, a Protocol, each call
        # looks the method up by name first).
        self.dispatch: Callable[[RequestView], Route | PendingRoute | None] = server.router.dispatch
        self.stats = server.stats
        self.clock = server.clock
        # The server's parts read once or more a request, copied once per connection:
        # read through ``server`` (a Protocol to compiled code) each would be a generic
        # attribute lookup, about 150 instructions.
        self.classes = server.classes
        self.head_timeout = server.head_timeout
        self.idle_timeout = server.idle_timeout
        self.send_timeout = server.send_timeout
        # Set while the client's write buffer is full (pause_writing), cleared when it
        # drains: the one timeout of an exchange whose client stops reading, since the
        # backend's response timeout is off while the client holds it back.
        self.send_deadline = 0.0
        self.transport = cast(asyncio.Transport, None)
        self.scan = request_head.RequestScan(kept=[])
        self.view = RequestView(method=b"", target=b"", headers=[], peer_ip="", cookie=None)
        self.peer = b""
        self.trusted = False
        self.state = IDLE  # the exchange and the connection (h1.connection)
        self.half_closed = False  # tunnel: the client sent EOF
        self.deadline = 0.0
        self.read_paused = 0
        self.write_paused = False
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        # Bytes for the backend not yet written: the request head and body (chunk-framed
        # if the client sent chunks), or tunnel bytes. flush_up is the one place they
        # are written (but for a lone head without a body: _bind): at the end of each
        # client read
        # (``feeding`` is True meanwhile, so a head and the body bytes of the same read
        # leave in one writev), at once outside a read, and at bind time for what was
        # held while routing or dialling (``holding``; ``held`` bytes, bounded;
        # ``held_end``: the last chunk is among them).
        self.feeding = False
        self.up_out: list[bytes] = []
        self.holding = False
        self.held = 0
        self.held_end = False
        # The exchange in flight.
        self.up: UpstreamConnection | None = None
        self.route: Route | None = None
        self.request_head = b""
        self.dial_task: asyncio.Task[None] | None = None
        self.body_sent = False
        self.keep_alive = True
        self.http11 = True
        self.head_request = False
        self.upgrade_requested = False
        self.chunked_request = False
        self.idempotent = True
        self.retried = False  # rerouted once after a connect failure
        self.redialled = False  # dialled afresh once after a pooled connection died
        self.started = 0.0  # perf_counter at the head's end (0.0: not timed)
        self.status = 0  # of the final answer (the backend's, or the proxy's own)

    # -- the exchange --------------------------------------------------------------------

    def _start(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        version: str,
        keep_alive: bool,
        upgrade: bool,
    ) -> None:
        self._begin(method, version, keep_alive)
        scan = self.scan
        request_head.scan_request(scan, headers, self.classes, trusted=self.trusted)
        self.upgrade_requested = upgrade and scan.upgrade is not None
        self.chunked_request = scan.transfer_encoding is not None
        status, origin = request_head.check_request(
            scan, method, target, version, upgrade=self.upgrade_requested
        )
        if status:
            self._answer(status)
            return
        view = self.view
        view.method = method
        view.target = origin
        view.headers = headers
        view.cookie = scan.cookie
        self._routed_to(self.dispatch(view))

    def _routed_to(self, route: Route | PendingRoute | None) -> None:
        """Do what the router's answer asks (``actions.after_routing``): send, await the
        shared store, or answer 503."""
        action = actions.after_routing(route)
        if action == ROUTE_SEND:
            self._send(route)  # type: ignore[arg-type]
        elif action == ROUTE_AWAIT:
            self._route_later(route)  # type: ignore[arg-type]
        else:
            self._answer(503)

    def _route_later(self, pending: PendingRoute) -> None:
        """The router must ask the shared store first: buffer the body (as while dialling)
        and send once it answers. The task is cancelled if the client goes away."""
        self._hold()
        self.dial_task = asyncio.get_running_loop().create_task(self._routed(pending))

    async def _routed(self, pending: PendingRoute) -> None:
        try:
            route = await pending
        except Exception:  # a router bug must not leave the client waiting
            log.exception("routing through the session store failed")
            route = None
        self.dial_task = None
        if not ANSWER_OUT[self.state]:
            self._routed_to(route)

    def _begin(self, method: bytes, version: str, keep_alive: bool) -> None:
        """A new exchange: reset its state."""
        stats = self.stats
        stats.requests += 1
        self.started = _perf_counter() if stats.timing else 0.0
        self.status = 0
        state = AFTER_REQUEST[self.state]
        if state < 0:
            invalid(self.state, REQUEST)
        self.state = state
        self.deadline = 0.0
        self.body_sent = False
        self.retried = False
        self.redialled = False
        self.route = None
        self.http11 = version == "1.1"
        self.keep_alive = keep_alive
        self.head_request = method == b"HEAD"
        # GET first: the set lookup hashes the method, a new bytes object every time.
        self.idempotent = method == b"GET" or method in request_head.IDEMPOTENT_METHODS

    def _send(self, route: Route) -> None:
        """Write the request head for ``route`` on a pooled connection, or start dialling."""
        self.route = route
        view = self.view
        scan = self.scan
        self.request_head = request_head.build_request_head(
            scan,
            view.method,
            view.target,
            peer=self.peer,
            cookie=route.cookie if route.cookie_changed else scan.cookie,
            add_headers=route.add_headers,
            upgrade=self.upgrade_requested,
        )
        up = self.pool.acquire(route.backend_id, route.host, route.port)
        if actions.connect(pooled=up is not None) == CONNECT_BIND:
            self._bind(up)  # type: ignore[arg-type]  # pooled: not None
            return
        self._hold()
        self.dial_task = asyncio.get_running_loop().create_task(self._dial(route))

    def _hold(self) -> None:
        """No upstream connection yet: body bytes wait in ``up_out`` (bounded)."""
        if not self.holding:
            self.holding = True
            self.held = 0
            self.held_end = False

    def _bind(self, up: UpstreamConnection) -> None:
        self.up = up
        route = self.route
        assert route is not None  # routed before any connection is bound
        up.bind(
            self,
            route=route,
            http11=self.http11,
            head_request=self.head_request,
            upgrade=self.upgrade_requested,
            write_paused=self.write_paused,
        )
        how = actions.on_bind(
            holding=self.holding, feeding=self.feeding, has_body=self.scan.has_body
        )
        if how == BIND_HEAD:
            # The common case, a request without a body: its head alone, now. What
            # flush_up would do, without the list: the one write towards a backend
            # outside flush_up, kept for the ~1 % of a GET's instructions it saves.
            transport = up.transport
            if transport is not None:
                self.batch.write(transport, self.request_head)
        elif how == BIND_WITH_READ:
            # Parsing the read that holds the head of a request with a body: its body
            # bytes join the head, and the end of the read writes them all at once.
            self.up_out.append(self.request_head)
        else:
            self._bind_held()

    def _bind_held(self) -> None:
        """Bound after routing through the store or dialling: what was held goes first."""
        self.holding = False
        out = self.up_out
        if out:
            self.body_sent = True  # body bytes held while routing or dialling
        out.insert(0, self.request_head)
        if REQUEST_DONE[self.state] and self.chunked_request and not self.held_end:
            out.append(self._last_chunk())  # ended, but not while held (a redial)
        if not (self.feeding and self.scan.has_body):
            self.flush_up()
        self._resume(R_DIALLING)

    def flush_up(self) -> None:
        """Write what waits for the backend (head and body: one writev at the turn's end,
        through the batch; tunnel bytes) and clear it; kept while no connection is
        bound, dropped if the bound one is no longer this exchange's. The one place
        bytes are written to a backend."""
        out = self.up_out
        up = self.up
        if not out or up is None:
            return
        transport = up.transport
        if up.client is self and transport is not None:
            self.batch.take(transport, out)
        else:
            out.clear()

    async def _dial(self, route: Route) -> None:
        try:
            up = await self.pool.connect(route.backend_id, route.host, route.port)
        except (OSError, TimeoutError):
            self.dial_task = None
            if self.state != CLOSED and self.route is route:
                self._dial_failed(route)
            return
        self.dial_task = None
        if actions.after_dial(self.state, current=self.route is route) == DIALLED_BIND:
            self._bind(up)
        elif not self.pool.release(up):  # spare: kept for the next request, if there is room
            up.abort()

    def _dial_failed(self, route: Route) -> None:
        """Nothing was sent: retry once on another backend, else answer 503/502."""
        self.stats.backend(route.backend_id).error("connect")
        action = actions.after_connect_failure(retried=self.retried)
        if type(action) is Fail:
            self._fail(action)
            return
        self.retried = True
        self.stats.retries += 1
        self._routed_to(self.router.redispatch(self.view, route))  # marks ``route`` failed

    def _request_body(self, body: bytes) -> None:
        if not body:
            return  # an empty chunk would read as the last one
        up = self.up
        if up is None and not self.holding:
            return  # answered by the proxy: nobody takes the body
        # A chunked body is re-framed chunk by chunk; any other goes through as it is.
        if self.chunked_request:
            self.up_out += framing.chunk(body)
        else:
            self.up_out.append(body)
        if up is not None:
            self.body_sent = True
            up.deadline = self.clock.now + self.pool.response_timeout
            if not self.feeding:
                self.flush_up()
        else:
            self.held += len(body)
            if self.held > DIAL_BUFFER_LIMIT:
                self._pause(R_DIALLING)

    def _last_chunk(self) -> bytes:
        return framing.last_chunk(self.req_trailers, self.classes)

    def _request_complete(self) -> None:
        state = AFTER_REQUEST_END[self.state]
        if state < 0:
            invalid(self.state, REQUEST_END)
        self.state = state
        if ANSWER_OUT[state]:  # it was answered already: the exchange may be complete
            self._advance(state)
            return
        if self.chunked_request and (self.up is not None or self.holding):
            self.up_out.append(self._last_chunk())
            if self.up is None:
                self.held_end = True
            elif not self.feeding:
                self.flush_up()

    def response_done(self) -> None:
        """Called by the upstream connection (or a local answer) when the answer is out."""
        state = AFTER_ANSWER_END[self.state]
        if state < 0:
            invalid(self.state, ANSWER_END)
        self.state = state
        route = self.route
        if route is not None:
            self.stats.answered(route.backend_id, self.status, self.started)
        up = self.up
        if up is not None and up.client is self:
            up.abort()  # the answer ended before the request did: not reusable
        self.up = None
        self._advance(state)

    def _advance(self, state: int) -> None:
        """The request or the answer ended (``state`` is the state after it): do what
        ``actions.after_exchange`` says (go on, read or serve the next request, close).
        :class:`~limpet.proxy.engine.client.ClientConnection` holds the pipelining queue,
        a fact of that decision, and implements this."""
        raise NotImplementedError

    def _ready(self) -> None:
        """The exchange is complete on both sides: clear it, for the next request or the
        close."""
        self.route = None
        self.holding = False
        if self.up_out:  # rarely: body bytes of a request answered early (a call saved)
            self.up_out.clear()
        if self.read_paused:  # rarely: a call saved on every request
            self._resume(R_UPSTREAM | R_DIALLING)

    def upgraded(self, up: UpstreamConnection) -> None:
        """The backend answered 101 (the input side,
        :class:`~limpet.proxy.engine.client.ClientConnection`, turns into a tunnel)."""

    def _fail(self, action: Fail) -> None:
        """Do a :class:`~limpet.proxy.engine.h1.actions.Fail`: the proxy's own error."""
        route = self.route
        if action.backend_failed and route is not None:
            self.router.backend_failed(route.backend_id)
        if action.close:
            self.keep_alive = False
        self._answer(action.status)

    def _answer(self, status: int) -> None:
        """Answer the current request from the proxy itself (an error)."""
        self.status = status
        close = actions.answer_closes(
            self.state,
            status,
            keep_alive=self.keep_alive,
            has_body=self.scan.has_body,
            upgrade=self.upgrade_requested,
        )
        self.keep_alive = not close
        self._reply(status, close=close)
        self.state = step(self.state, ANSWER)
        self.response_done()

    def _reply(self, status: int, *, close: bool) -> None:
        """Send one of the proxy's own answers (counted)."""
        self.stats.local(status)
        if self.state != CLOSED:
            self.flush_down([response_head.error_response(status, close=close)])

    def flush_down(self, out: list[bytes]) -> None:
        """Write ``out`` to the client (one writev at the turn's end, through the batch)
        and clear it: the one place bytes are written to a client. The upstream side
        passes what its machine produced (an answer's head and body, the bytes after a
        101, tunnel bytes, the last chunk of a close-delimited body); the proxy's own
        answers come through :meth:`_reply`."""
        self.batch.take(self.transport, out)

    # -- failures reported by the upstream side ------------------------------------------

    def upstream_failed(self, up: UpstreamConnection, *, reset: bool) -> None:
        """The upstream connection closed before any byte of the answer."""
        self.up = None
        route = self.route
        if route is None:
            return
        action = actions.after_upstream_closed(
            self.state,
            redialled=self.redialled,
            idempotent=self.idempotent,
            body_sent=self.body_sent,
            reset=reset,
        )
        if action == Do.REDIAL:
            self.redialled = True
            self.stats.retries += 1
            self.up_out.clear()
            self._hold()
            self.dial_task = asyncio.get_running_loop().create_task(self._dial(route))
        elif type(action) is Fail:
            self._backend_error("reset")
            self._fail(action)

    def upstream_aborted(self) -> None:
        """The backend went away in the middle of an answer: cut the client short too."""
        self.up = None
        self._backend_error("reset")
        self.abort()

    def upstream_broken(self) -> None:
        """The backend sent something that is not HTTP: 502, or cut short mid-answer."""
        self._backend_error("invalid_response")
        self._upstream_error(502)

    def upstream_timeout(self) -> None:
        """The backend stayed silent past the response timeout: 504, or cut short."""
        self._backend_error("timeout")
        self._upstream_error(504)

    def _backend_error(self, kind: str) -> None:
        route = self.route
        if route is not None:
            self.stats.backend(route.backend_id).error(kind)

    def _upstream_error(self, status: int) -> None:
        self.up = None
        action = actions.after_upstream_error(self.state, status)
        if action == Do.ABORT:
            self.abort()
        elif type(action) is Fail:
            self._fail(action)

    # -- closing and flow control -------------------------------------------------------

    def close_after_flush(self) -> None:
        if self.state != CLOSED:
            self.state = step(self.state, CLOSE)
            self.batch.flush_to(self.transport)
            self.transport.close()
        up = self.up
        if up is not None and up.client is self and up.state == BUSY:
            self.up = None
            up.abort()

    def abort(self) -> None:
        self.state = step(self.state, CLOSE)
        self.batch.flush_to(self.transport)
        self.transport.abort()

    def pause_reading_for_upstream(self) -> None:
        self._pause(R_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume(R_UPSTREAM)

    def _pause(self, reason: int) -> None:
        if not self.read_paused and self.state != CLOSED:
            self.transport.pause_reading()
        self.read_paused |= reason

    def _resume(self, reason: int) -> None:
        """Clear the ``reason`` bits (one or several); resume once none is left."""
        if self.read_paused & reason:
            self.read_paused &= ~reason
            if not self.read_paused and self.state != CLOSED:
                self.transport.resume_reading()
