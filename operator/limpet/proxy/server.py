"""Client side of the data path: one asyncio Protocol per client connection, and the listener.

Data flow per request: bytes arrive in :meth:`ClientConnection.data_received` and go
straight into the connection's httptools parser. Its callbacks collect the request line
and headers; at the end of the head the connection scans the headers once
(``http.scan_request``), asks the router for a :class:`Route`, takes an idle upstream
connection from the pool (or dials one) and writes the rewritten head. Body chunks are
written through as they are parsed (re-chunked if the client sent chunks). The answer is
relayed by ``upstream.UpstreamConnection``, which calls :meth:`ClientConnection.response_done`
at its end; the connection then waits for the next keep-alive request.

After ``101 Switching Protocols`` both connections become a raw byte pipe. Pipelined
requests are parsed into a small queue and served one after another.

Concurrency: one event loop, callbacks only. A task exists only while dialling a new
upstream connection. The parser, the header scan object and the router's request view
are allocated once per connection and reused for every request. Timeouts use the
``deadline`` attribute and one periodic sweep in :class:`Server`; reading is paused
(never buffered without bound) whenever the other side cannot keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from typing import Final, cast

import httptools

from limpet.proxy import http
from limpet.proxy.routing import RequestView, Route
from limpet.proxy.settings import ProxySettings
from limpet.proxy.upstream import (
    BUSY,
    TUNNEL,
    Clock,
    EngineStats,
    RouterPort,
    UpstreamConnection,
    UpstreamPool,
)

log = logging.getLogger(__name__)

# Parse phases of a client connection.
P_IDLE: Final = 0  # between requests
P_HEAD: Final = 1  # inside a request head
P_BODY: Final = 2  # inside a request body
P_UPGRADED: Final = 3  # after an upgrade request's head: raw bytes, held until 101
P_TUNNEL: Final = 4  # raw byte pipe
P_CLOSED: Final = 5

# Reasons for pausing the client's reading (a bit set: reading resumes when all clear).
R_UPSTREAM: Final = 1  # the upstream connection's write buffer is full
R_PIPELINE: Final = 2  # a pipelined request waits for the current answer
R_DIALLING: Final = 4  # request body buffered while the upstream connection is dialled
R_UPGRADE: Final = 8  # bytes after an upgrade request wait for the 101

DIAL_BUFFER_LIMIT: Final = 256 * 1024


class _Limit(Exception):
    """Raised from a parser callback when a request exceeds a size limit."""


class _Closing(Exception):
    """Raised from a parser callback to stop parsing input of a closing connection."""


class _Pending:
    """A pipelined request, parsed while the previous one is still being answered."""

    __slots__ = ("body", "complete", "headers", "keep_alive", "method", "upgrade", "url", "version")

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


class ClientConnection(asyncio.Protocol):
    """One client connection: parses requests, dispatches them, tracks the exchange."""

    __slots__ = (
        "active",
        "body_buf",
        "body_buf_size",
        "body_sent",
        "chunked_request",
        "clock",
        "closing",
        "deadline",
        "dial_task",
        "half_closed",
        "head_bytes",
        "head_request",
        "header_bytes",
        "headers",
        "http11",
        "idempotent",
        "keep_alive",
        "limit_status",
        "parser",
        "peer",
        "pending",
        "phase",
        "pool",
        "read_paused",
        "redialled",
        "registered",
        "req_trailers",
        "request_done",
        "request_head",
        "requests",
        "response_finished",
        "response_started",
        "retried",
        "route",
        "router",
        "scan",
        "server",
        "stats",
        "transport",
        "trusted",
        "up",
        "upgrade_buf",
        "upgrade_requested",
        "url",
        "view",
        "write_paused",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.pool = server.pool
        self.router = server.router
        self.stats = server.stats
        self.clock = server.clock
        self.transport = cast(asyncio.Transport, None)
        self.parser = httptools.HttpRequestParser(self)
        self.scan = http.RequestScan(kept=[])
        self.view = RequestView(method=b"", target=b"", headers=[], peer_ip="", cookie=None)
        self.peer = b""
        self.trusted = False
        self.registered = False
        self.closing = False
        self.half_closed = False  # tunnel: the client sent EOF
        self.deadline = 0.0
        self.read_paused = 0
        self.write_paused = False
        # Parse state.
        self.phase = P_IDLE
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.header_bytes = 0
        self.limit_status = 0
        self.requests = 0
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        self.pending: deque[_Pending] | None = None
        self.upgrade_buf: list[bytes] | None = None
        # The exchange in flight.
        self.active = False
        self.up: UpstreamConnection | None = None
        self.route: Route | None = None
        self.request_head = b""
        self.dial_task: asyncio.Task[None] | None = None
        self.body_buf: list[bytes] | None = None
        self.body_buf_size = 0
        self.body_sent = False
        self.request_done = True
        self.response_started = False
        self.response_finished = False
        self.keep_alive = True
        self.http11 = True
        self.head_request = False
        self.upgrade_requested = False
        self.chunked_request = False
        self.idempotent = True
        self.retried = False  # rerouted once after a connect failure
        self.redialled = False  # dialled afresh once after a pooled connection died

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        server = self.server
        stats = self.stats
        stats.connections_accepted += 1
        if stats.connections_active >= server.max_connections:
            stats.connections_rejected += 1
            stats.local(503)
            self.closing = True
            self.phase = P_CLOSED
            t.write(http.error_response(503, close=True))
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
        self.deadline = self.clock.now + server.head_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.phase = P_CLOSED
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
            if up.state == TUNNEL:
                up.client = None
                if up.transport is not None:
                    up.transport.close()
            else:
                # The client left mid-exchange: the upstream connection is mid-message.
                up.abort()

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase >= P_UPGRADED:
            if phase == P_TUNNEL:
                up = self.up
                if up is not None and up.transport is not None:
                    up.transport.write(data)
                    up.deadline = self.clock.now + self.pool.tunnel_idle_timeout
            elif phase == P_UPGRADED and self.upgrade_buf is not None:
                self.upgrade_buf.append(data)
            return
        if phase != P_BODY:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_head_done(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._bad_request(exc)
            return
        if self.phase == P_HEAD and self.head_bytes > self.server.head_guard:
            self.limit_status = 414 if not self.headers else 431
            self._bad_request(None)

    def eof_received(self) -> bool | None:
        up = self.up
        if self.phase == P_TUNNEL and up is not None and up.transport is not None:
            self.half_closed = True
            transport = up.transport
            if not up.half_closed and transport.can_write_eof() and not transport.is_closing():
                transport.write_eof()
                return True
            transport.close()  # both directions are finished
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None:
            self.up.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None:
            self.up.resume()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.closing:
            # Answered and closing: whatever follows in this read is not served.
            raise _Closing
        self.phase = P_HEAD
        self.url = b""
        self.headers = []
        self.header_bytes = 0
        self.req_trailers = None
        if self.active:
            # Pipelined: hold further input until the current answer is out.
            self._pause(R_PIPELINE)
        elif self.requests:
            self.deadline = self.clock.now + self.server.head_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.server.max_request_line:
            self.limit_status = 414
            raise _Limit

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == P_BODY:
            if self.req_trailers is None:
                self.req_trailers = [(name, value)]
            else:
                self.req_trailers.append((name, value))
            return
        self.headers.append((name, value))
        self.header_bytes += len(name) + len(value) + 4
        server = self.server
        if self.header_bytes > server.max_header_bytes or len(self.headers) > server.max_headers:
            self.limit_status = 431
            raise _Limit

    def on_headers_complete(self) -> None:
        self.phase = P_BODY
        self.requests += 1
        parser = self.parser
        method: bytes = parser.get_method()
        version: str = parser.get_http_version()
        keep_alive: bool = parser.should_keep_alive()
        upgrade: bool = parser.should_upgrade()
        if self.active:
            pending = _Pending(method, self.url, self.headers, version, keep_alive, upgrade)
            if self.pending is None:
                self.pending = deque((pending,))
            else:
                self.pending.append(pending)
            return
        self._start(method, self.url, self.headers, version, keep_alive, upgrade)

    def on_body(self, body: bytes) -> None:
        if self.pending is not None:
            self.pending[-1].body.append(body)
        elif self.active and not self.response_finished:
            self._request_body(body)

    def on_message_complete(self) -> None:
        self.phase = P_IDLE
        self.head_bytes = 0
        if self.pending is not None:
            self.pending[-1].complete = True
            return
        if self.active:
            self._request_complete()

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
        self.stats.requests += 1
        self.active = True
        self.deadline = 0.0
        self.request_done = False
        self.response_started = False
        self.response_finished = False
        self.body_sent = False
        self.retried = False
        self.redialled = False
        self.route = None
        self.http11 = version == "1.1"
        self.keep_alive = keep_alive
        self.head_request = method == b"HEAD"
        scan = self.scan
        http.scan_request(scan, headers, self.server.classes, trusted=self.trusted)
        self.upgrade_requested = upgrade and scan.upgrade is not None
        self.chunked_request = scan.transfer_encoding is not None
        self.idempotent = method in http.IDEMPOTENT_METHODS
        if version != "1.1" and version != "1.0":
            self._answer(505)
            return
        if method == b"CONNECT":
            self._answer(405)
            return
        if scan.host_count > 1 or (self.http11 and scan.host_count == 0):
            self._answer(400)
            return
        if target[:1] != b"/":
            converted = _origin_form(method, target)
            if converted is None:
                self._answer(400)
                return
            target = converted
        view = self.view
        view.method = method
        view.target = target
        view.headers = headers
        view.cookie = scan.cookie
        route = self.router.route(view)
        if route is None:
            self._answer(503)
            return
        self._send(route)

    def _send(self, route: Route) -> None:
        """Write the request head for ``route`` on a pooled connection, or start dialling."""
        self.route = route
        view = self.view
        scan = self.scan
        self.request_head = http.build_request_head(
            scan,
            view.method,
            view.target,
            peer=self.peer,
            cookie=route.cookie if route.cookie_changed else scan.cookie,
            add_headers=route.add_headers,
            upgrade=self.upgrade_requested,
        )
        up = self.pool.acquire(route.backend_id, route.host, route.port)
        if up is not None:
            self._bind(up)
            return
        if self.body_buf is None:
            self.body_buf = []
            self.body_buf_size = 0
        self.dial_task = asyncio.get_running_loop().create_task(self._dial(route))

    def _bind(self, up: UpstreamConnection) -> None:
        self.up = up
        up.bind(self)
        transport = up.transport
        assert transport is not None
        transport.write(self.request_head)
        if self.body_buf is not None:
            if self.body_buf:
                transport.writelines(self.body_buf)
                self.body_sent = True
            self.body_buf = None
            self.body_buf_size = 0
            self._resume(R_DIALLING)
        if self.request_done and self.chunked_request:
            transport.write(self._last_chunk())

    async def _dial(self, route: Route) -> None:
        try:
            up = await self.pool.connect(route.backend_id, route.host, route.port)
        except (OSError, TimeoutError):
            self.dial_task = None
            if not self.closing and self.route is route:
                self._dial_failed(route)
            return
        self.dial_task = None
        if self.closing or self.route is not route or self.response_finished:
            # Nobody waits for it any more; keep the fresh connection for the next one.
            if not self.pool.release(up):
                up.abort()
            return
        self._bind(up)

    def _dial_failed(self, route: Route) -> None:
        """Nothing was sent: retry once on another backend, else answer 503/502."""
        if self.retried:
            self.router.backend_failed(route.backend_id)
            self._answer(502)
            return
        self.retried = True
        self.stats.retries += 1
        other = self.router.reroute(self.view, route)  # marks ``route`` failed
        if other is None:
            self._answer(503)
        else:
            self._send(other)

    def _request_body(self, body: bytes) -> None:
        up = self.up
        if up is not None:
            transport = up.transport
            assert transport is not None
            if self.chunked_request:
                transport.writelines((http.chunk_header(len(body)), body, b"\r\n"))
            else:
                transport.write(body)
            self.body_sent = True
            up.deadline = self.clock.now + self.pool.response_timeout
        elif self.body_buf is not None:
            if self.chunked_request:
                self.body_buf.append(http.chunk_header(len(body)))
                self.body_buf.append(body)
                self.body_buf.append(b"\r\n")
            else:
                self.body_buf.append(body)
            self.body_buf_size += len(body)
            if self.body_buf_size > DIAL_BUFFER_LIMIT:
                self._pause(R_DIALLING)

    def _last_chunk(self) -> bytes:
        trailers = self.req_trailers
        if trailers is None:
            return http.LAST_CHUNK
        kept = http.scan_response(trailers, self.server.classes, learn_cookies=False).kept
        return b"0\r\n" + b"".join(kept) + b"\r\n"

    def _request_complete(self) -> None:
        self.request_done = True
        if self.response_finished:
            self._next()
            return
        if self.chunked_request:
            up = self.up
            if up is not None and up.transport is not None:
                up.transport.write(self._last_chunk())
            elif self.body_buf is not None:
                self.body_buf.append(self._last_chunk())
                self.chunked_request = False  # the terminator is in the buffer now

    def response_done(self) -> None:
        """Called by the upstream connection (or a local answer) when the answer is out."""
        self.response_finished = True
        up = self.up
        if up is not None and up.client is self:
            up.abort()  # the answer ended before the request did: not reusable
        self.up = None
        if self.request_done:
            self._next()
        elif not self.keep_alive:
            self.close_after_flush()

    def _next(self) -> None:
        """The exchange is complete on both sides: get ready for the next request."""
        self.active = False
        self.up = None
        self.route = None
        self.body_buf = None
        self._resume(R_UPSTREAM | R_DIALLING)
        if not self.keep_alive:
            self.close_after_flush()
            return
        self.deadline = self.clock.now + self.server.idle_timeout
        pending = self.pending
        if pending is None:
            return
        p = pending.popleft()
        if not pending:
            self.pending = None
        self._start(p.method, p.url, p.headers, p.version, p.keep_alive, p.upgrade)
        for chunk in p.body:
            if self.active and not self.response_finished:
                self._request_body(chunk)
        if p.complete and self.active:
            self._request_complete()
        if self.pending is None:
            self._resume(R_PIPELINE)

    def _answer(self, status: int) -> None:
        """Answer the current request from the proxy itself (an error)."""
        self.stats.local(status)
        close = not self.keep_alive or (
            not self.request_done and (self.scan.has_body or self.upgrade_requested)
        )
        if status in (400, 405, 505):
            close = True
        self.keep_alive = not close
        if not self.closing:
            self.transport.write(http.error_response(status, close=close))
        self.response_started = True
        self.response_done()

    # -- upgrade and tunnel --------------------------------------------------------------

    def _upgrade_head_done(self, rest: bytes) -> None:
        if self.closing:
            return
        self.phase = P_UPGRADED
        self.upgrade_buf = [rest] if rest else []
        self._pause(R_UPGRADE)

    def upgraded(self, up: UpstreamConnection) -> None:
        """The backend answered 101: pipe raw bytes both ways from now on."""
        self.phase = P_TUNNEL
        self.deadline = 0.0
        buffered = self.upgrade_buf
        self.upgrade_buf = None
        if buffered and up.transport is not None:
            up.transport.writelines(buffered)
        self._resume(R_UPGRADE)

    # -- failures reported by the upstream side ------------------------------------------

    def upstream_failed(self, up: UpstreamConnection, *, reset: bool) -> None:
        """The upstream connection closed before any byte of the answer."""
        self.up = None
        route = self.route
        if self.response_finished or route is None:
            return
        if not self.redialled and self.idempotent and not self.body_sent:
            # Usually a pooled connection the backend had just closed: dial afresh once.
            # If the backend is really gone the dial fails and fails over.
            self.redialled = True
            self.stats.retries += 1
            if self.body_buf is None:
                self.body_buf = []
                self.body_buf_size = 0
            self.dial_task = asyncio.get_running_loop().create_task(self._dial(route))
            return
        if reset:
            self.router.backend_failed(route.backend_id)
        self._answer(502)

    def upstream_aborted(self) -> None:
        """The backend went away in the middle of an answer: cut the client short too."""
        self.up = None
        self.abort()

    def upstream_broken(self) -> None:
        self.up = None
        if self.response_started:
            self.abort()
        else:
            self.keep_alive = False
            self._answer(502)

    def upstream_timeout(self) -> None:
        self.up = None
        if self.response_started:
            self.abort()
        else:
            self.keep_alive = False
            self._answer(504)

    # -- timeouts, limits, closing -------------------------------------------------------

    def timed_out(self) -> None:
        if self.phase == P_HEAD:
            self.stats.timeout("head")
            self.stats.local(408)
            self.transport.write(http.error_response(408, close=True))
        else:
            self.stats.timeout("idle" if self.requests else "head")
        self.close_after_flush()

    def _bad_request(self, exc: Exception | None) -> None:
        status = self.limit_status or 400
        if self.response_started and self.active:
            # The body went bad while the answer streams: nothing sane can be sent.
            self.abort()
            return
        self.stats.local(status)
        if not self.closing:
            self.transport.write(http.error_response(status, close=True))
        self.close_after_flush()

    def close_after_flush(self) -> None:
        self.phase = P_CLOSED
        if not self.closing:
            self.closing = True
            self.transport.close()
        up = self.up
        if up is not None and up.client is self and up.state == BUSY:
            self.up = None
            up.abort()

    def abort(self) -> None:
        self.phase = P_CLOSED
        self.closing = True
        self.transport.abort()

    def pause_reading_for_upstream(self) -> None:
        self._pause(R_UPSTREAM)

    def resume_reading_for_upstream(self) -> None:
        self._resume(R_UPSTREAM)

    def _pause(self, reason: int) -> None:
        if not self.read_paused and not self.closing:
            self.transport.pause_reading()
        self.read_paused |= reason

    def _resume(self, reason: int) -> None:
        """Clear the ``reason`` bits (one or several); resume once none is left."""
        if self.read_paused & reason:
            self.read_paused &= ~reason
            if not self.read_paused and not self.closing:
                self.transport.resume_reading()


def _origin_form(method: bytes, target: bytes) -> bytes | None:
    """Turn an absolute-form target into origin form; ``*`` only for OPTIONS."""
    if target == b"*":
        return target if method == b"OPTIONS" else None
    if not target.lower().startswith((b"http://", b"https://")):
        return None
    try:
        url = httptools.parse_url(target)
    except httptools.HttpParserInvalidURLError:
        return None
    path: bytes = url.path or b"/"
    return path + b"?" + url.query if url.query else path


class Server:
    """The traffic listener of one process, its upstream pool and the timeout sweep."""

    def __init__(self, *, settings: ProxySettings, router: RouterPort) -> None:
        self.settings = settings
        self.router = router
        self.stats = EngineStats()
        self.classes = http.HeaderClasses()
        self.clients: set[ClientConnection] = set()
        tick = settings.sweep_interval
        self.tick = tick
        # Deadlines are set from a clock that may lag one tick: add it so no timeout
        # fires early.
        self.head_timeout = settings.head_timeout + tick
        self.idle_timeout = settings.idle_timeout + tick
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
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.clock.now = now
        try:
            expired = [c for c in self.clients if 0.0 < c.deadline <= now]
            for conn in expired:
                conn.timed_out()
            self.pool.sweep(now)
        except Exception:  # a bug here must not stop every future timeout
            log.exception("timeout sweep failed")
        self._sweeper = loop.call_later(self.tick, self._sweep)

    def stats_dict(self) -> dict[str, object]:
        out = self.stats.as_dict()
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
