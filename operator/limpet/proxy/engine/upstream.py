"""The upstream connection: one keep-alive TCP connection to a backend, relaying its answers.

Data flow: a client connection (``exchange.py``) takes an :class:`UpstreamConnection`
from the :class:`~limpet.proxy.engine.pool.UpstreamPool` (idle or newly dialled), binds it to
itself with :meth:`UpstreamConnection.bind` and writes the request. The connection
parses the answer with httptools and writes it straight through to the client's
transport: the head rewritten (hop-by-hop stripped, the router's Set-Cookie added, the
body re-framed if needed), body bytes as they arrive. When the answer is complete it
returns itself to the pool (or closes, if it cannot be reused) and tells the client
connection, which then reads the next request. After a 101 it becomes a raw tunnel.

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
from typing import Final, Protocol, cast

import httptools

from limpet.affinity import BackendId
from limpet.proxy.engine import http
from limpet.proxy.engine.counters import Clock, EngineStats
from limpet.proxy.engine.port import Route, RouterPort

# UpstreamConnection states.
CONNECTING: Final = 0
IDLE: Final = 1  # in the pool
BUSY: Final = 2  # bound to a client, request in flight
TUNNEL: Final = 3  # after 101: raw bytes both ways
CLOSED: Final = 4


class ClientSide(Protocol):
    """What an upstream connection needs from the client connection it serves
    (:class:`~limpet.proxy.engine.client.ClientSide`)."""

    transport: asyncio.Transport
    route: Route | None
    keep_alive: bool
    request_done: bool
    http11: bool
    head_request: bool
    upgrade_requested: bool
    write_paused: bool
    response_started: bool
    half_closed: bool
    status: int

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
    classes: http.HeaderClasses
    live: set[UpstreamConnection]
    response_timeout: float
    tunnel_idle_timeout: float
    max_headers: int
    max_header_bytes: int

    def release(self, conn: UpstreamConnection) -> bool: ...
    def forget_idle(self, conn: UpstreamConnection) -> None: ...


class _StopParsing(Exception):
    """Raised from a parser callback to stop httptools: a HEAD answer is complete, or
    bytes follow a complete answer."""


class _TooLarge(Exception):
    """Raised from a parser callback when a response's trailer section passes the limits."""


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to a backend. Parses responses and relays them to the bound
    client connection."""

    __slots__ = (
        "_after_head",
        "_expect_eof",
        "_framing",
        "_head_done",
        "_head_keep",
        "_head_tail",
        "_head_unsent",
        "_headers",
        "_informational",
        "_out",
        "_reason",
        "_trailer_bytes",
        "_trailers",
        "backend",
        "client",
        "deadline",
        "got_response",
        "half_closed",
        "parser",
        "paused",
        "pool",
        "reusable",
        "state",
        "transport",
    )

    def __init__(self, pool: PoolSide, backend: BackendSlot) -> None:
        self.pool = pool
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientSide | None = None
        self.state = CONNECTING
        self.deadline = 0.0
        self.paused = False  # reading paused because the client cannot take more
        self.got_response = False  # any byte of the current answer arrived
        self.half_closed = False  # tunnel: the backend sent EOF
        self.reusable = True
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._informational = False
        self._framing = http.FRAME_NONE
        self._expect_eof = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._trailer_bytes = 0
        # Answering a HEAD request: the last bytes already fed (a head's end may straddle
        # two reads), or None for any other request. See _head_data.
        self._head_tail: bytes | None = None
        self._head_done = False  # the final head of a HEAD answer has been parsed
        self._head_unsent = False  # the final head waits in _out (see _broken)
        self._head_keep = False  # ... and the backend keeps the connection alive
        # Pooled after a HEAD answer, and no head parsed since: garbage now means the
        # backend sent a body for HEAD after all (see _stray).
        self._after_head = False
        # Bytes for the client produced while parsing one read; written with one
        # writelines (one writev) at its end, so head and body share a syscall.
        self._out: list[bytes] = []

    # -- binding -------------------------------------------------------------------------

    def bind(self, client: ClientSide) -> None:
        self.client = client
        self.state = BUSY
        self.got_response = False
        # After an upgrade request the backend may be in another protocol, or still wait
        # for what the client sends next: only a 101 answers it, and nothing else is pooled.
        self.reusable = not client.upgrade_requested
        self._framing = http.FRAME_NONE
        self._expect_eof = False
        self._head_tail = b"" if client.head_request else None
        self._head_done = False
        self._head_unsent = False
        self.deadline = self.pool.clock.now + self.pool.response_timeout
        if client.write_paused:
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
        self._out.clear()
        if self.state != CLOSED:
            self.state = CLOSED
            if self.transport is not None:
                self.transport.abort()

    def _flush(self, client: ClientSide) -> None:
        out = self._out
        if out:
            client.transport.writelines(out)
            out.clear()
            self._head_unsent = False

    def _finish(self, keep: bool) -> None:
        """The answer is complete: pool the connection or close it, then tell the client."""
        client = self.client
        if client is not None:
            self._flush(client)
        self.client = None
        if keep and self.pool.release(self):
            pass
        else:
            self.state = CLOSED
            if self.transport is not None:
                self.transport.close()
        self.pool.stats.responses += 1
        if client is not None:
            client.response_done()

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
            client.transport.write(data)
            self.deadline = self.pool.clock.now + self.pool.tunnel_idle_timeout
            return
        self.got_response = True
        self.deadline = self.pool.clock.now + self.pool.response_timeout
        if self._head_tail is not None:
            self._head_data(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._tunnel(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            if self.state == CLOSED:
                pass
            elif isinstance(exc.__context__, _StopParsing):
                self.abort()  # bytes beyond the answer: the connection is out of step
            elif self._after_head:
                self._stray()
            else:
                self._broken()
        if self._out and self.client is not None:
            self._flush(self.client)

    def eof_received(self) -> bool | None:
        client = self.client
        if self.state == TUNNEL and client is not None:
            # Half-close: pass the backend's EOF on, keep the other direction open until
            # the client ends it too.
            self.half_closed = True
            transport = client.transport
            if not client.half_closed and transport.can_write_eof() and not transport.is_closing():
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
        if self._headers_done_eof_body():
            # A close-delimited body ended normally.
            self._flush(client)
            if self._framing == http.FRAME_CHUNKED:
                client.transport.write(http.LAST_CHUNK)
            pool.stats.responses += 1
            pool.router.backend_succeeded(self.backend.id)
            client.response_done()
            return
        if not self.got_response:
            client.upstream_failed(self, reset=exc is not None)
        else:
            client.upstream_aborted()

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for_upstream()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for_upstream()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.client is None:
            raise _StopParsing  # an answer nobody asked for
        self._headers = []
        self._trailers = None
        self._framing = http.FRAME_NONE
        self._expect_eof = False

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._framing == http.FRAME_NONE or self._informational:
            self._headers.append((name, value))
            return
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
            self._trailer_bytes = 0
        trailers.append((name, value))
        self._trailer_bytes += len(name) + len(value) + 4
        pool = self.pool
        if self._trailer_bytes > pool.max_header_bytes or len(trailers) > pool.max_headers:
            raise _TooLarge

    def on_headers_complete(self) -> None:
        client = self.client
        assert client is not None
        pool = self.pool
        self._after_head = False
        status: int = self.parser.get_status_code()
        scan = http.scan_response(self._headers, pool.classes, learn_cookies=True)
        if status < 200:
            self._interim_head(client, status, scan)
            return
        te = scan.transfer_encoding
        if te is not None and not http.response_coding_clean(te):
            raise httptools.HttpParserError("ambiguous Transfer-Encoding")
        client.status = status
        route = client.route
        assert route is not None
        if scan.set_cookies is not None:
            route = pool.router.on_response(route, scan.set_cookies)
        framing = http.response_framing(
            status, head_request=client.head_request, scan=scan, http11=client.http11
        )
        self._framing = framing
        keep_alive = client.keep_alive and client.request_done and not client.upgrade_requested
        if not keep_alive:
            client.keep_alive = False
        self._out.append(
            http.build_response_head(
                status,
                self._reason,
                scan,
                framing=framing,
                set_cookie=route.set_cookie,
                keep_alive=keep_alive,
                http11=client.http11,
            )
        )
        client.response_started = True
        self._head_unsent = True
        if framing == http.FRAME_CLOSE:
            client.keep_alive = False
        # A close-delimited upstream body: neither length nor chunking, body expected.
        self._expect_eof = (
            framing != http.FRAME_NONE
            and (scan.transfer_encoding is None or not http.ends_chunked(scan.transfer_encoding))
            and scan.content_length < 0
        )
        if client.head_request:
            # httptools cannot be told that a HEAD answer has no body: stop it here, and
            # _head_data finishes the answer and gives the next exchange a fresh parser.
            pool.router.backend_succeeded(self.backend.id)
            self._head_done = True
            self._head_keep = (
                self.reusable
                and client.request_done
                and http.response_keeps_alive(self.parser.get_http_version(), scan)
            )
            raise _StopParsing

    def _interim_head(self, client: ClientSide, status: int, scan: http.ResponseScan) -> None:
        """A 1xx head: 101 turns the connection into a tunnel (only after an upgrade
        request), any other is relayed to HTTP/1.1 clients and the final head follows."""
        if status == 101:
            if not client.upgrade_requested:
                raise httptools.HttpParserError("unexpected 101")
            self._out.append(http.build_switching_head(status, self._reason, scan))
            client.status = status
            client.response_started = True
            self.state = TUNNEL
            return
        self._informational = True
        if client.http11:
            self._out.append(http.build_informational_head(status, self._reason, scan))

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None:
            return
        if self._framing == http.FRAME_CHUNKED:
            if body:  # an empty chunk would read as the last one
                self._out += http.chunk(body)
        else:
            self._out.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        client = self.client
        if client is None or self.state == TUNNEL:
            return
        if self._framing == http.FRAME_CHUNKED:
            self._out.append(http.last_chunk(self._trailers, self.pool.classes))
        self.pool.router.backend_succeeded(self.backend.id)
        self._finish(keep=self.reusable and client.request_done and self.parser.should_keep_alive())

    # -- answers to HEAD -------------------------------------------------------------------

    def _head_data(self, data: bytes) -> None:
        """Bytes of the answer to a HEAD request: one or more heads (1xx, then the final
        one) and nothing else.

        The parser gets the bytes as they come, but never past the empty line that ends a
        head, so the end of the final head is known exactly. There the answer is complete:
        the connection goes back to the pool with a fresh parser (the old one would wait
        for the body the head describes), unless bytes follow the head, which would put
        it out of step.
        """
        tail = self._head_tail
        buf = tail + data if tail else data
        fed = len(tail) if tail else 0
        pos = 0
        parser = self.parser
        while True:
            i = buf.find(b"\r\n\r\n", pos)
            end = len(buf) if i < 0 else i + 4
            try:
                parser.feed_data(buf[fed:end])
            except httptools.HttpParserUpgrade:
                self._head_tail = None
                self._tunnel(buf[end:])
                return
            except httptools.HttpParserError as exc:
                if not (self._head_done and isinstance(exc.__context__, _StopParsing)):
                    if self.state == CLOSED:
                        pass
                    elif self._after_head:
                        self._stray()
                    else:
                        self._broken()
                    return
            if self._head_done:
                keep = self._head_keep and end == len(buf)
                self._head_tail = None
                self._after_head = keep
                self.parser = httptools.HttpResponseParser(self)
                self._finish(keep=keep)
                return
            if i < 0:
                self._head_tail = buf[max(pos, len(buf) - 3) :]
                break
            fed = pos = end  # a 1xx head, relayed; the final head follows
        if self._out and self.client is not None:
            self._flush(self.client)

    # -- helpers -------------------------------------------------------------------------

    def _headers_done_eof_body(self) -> bool:
        return self._framing != http.FRAME_NONE and self._expect_eof

    def _tunnel(self, rest: bytes) -> None:
        client = self.client
        if client is None or self.state != TUNNEL:
            self._broken()
            return
        self.pool.stats.tunnels += 1
        self.deadline = self.pool.clock.now + self.pool.tunnel_idle_timeout
        self._flush(client)
        if rest:
            client.transport.write(rest)
        client.upgraded(self)

    def _stray(self) -> None:
        """The first bytes on a connection pooled after a HEAD answer are not a response:
        the backend sent a body for HEAD after all, which arrived only now. The
        connection is out of step: drop it, and let the client connection retry as after
        a stale pooled connection (once, if nothing of its request body was sent)."""
        client = self.client
        self._out.clear()
        self.abort()
        if client is not None:
            client.upstream_failed(self, reset=False)

    def _broken(self) -> None:
        """The backend sent something that is not HTTP: 502 (or cut the client short if the
        answer already started), and never reuse this connection."""
        self.pool.stats.broken_responses += 1
        client = self.client
        self._out.clear()
        self.abort()
        if client is not None:
            if self._head_unsent:
                # The head was parsed but never written: the client can still get a 502.
                client.response_started = False
            client.upstream_broken()
