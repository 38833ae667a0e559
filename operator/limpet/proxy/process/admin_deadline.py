"""A deadline on each admin connection: an answer within ``timeout`` of the connection
opening, or of the previous answer, or the connection is closed.

aiohttp's server has no request-head timeout and keeps an idle keep-alive connection for
an hour, so a client that can reach the admin port needs no token to hold connections
open (half-sent heads, a body trickled byte by byte, or nothing at all) until the
process has no descriptor left, for the traffic port either. Every admin request is
answered in seconds (a plan of the most backends a plan may list is staged in a few),
so one rule covers them all: the timer starts when the connection opens, again at each
byte the server writes, and again at the first byte of a request that follows an answer
(so each request has the whole time, however late in the idle time it comes); when it
runs out, the connection is closed. An idle keep-alive connection therefore lives
``timeout`` after its last answer, as with nginx's ``keepalive_timeout``, and a client
trickling a request (its head or its body) is cut ``timeout`` after its first byte.

Data flow: :class:`DeadlineRunner` is an ``AppRunner`` whose server wraps each aiohttp
protocol in :class:`Deadline`, which hands aiohttp a transport that reports writes.
Concurrency: the event loop only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

TIMEOUT = 30.0
"""Seconds an admin connection may go without an answer (see the module docstring)."""


class _Reporting:
    """The transport aiohttp writes to: each write restarts the connection's deadline."""

    def __init__(self, transport: Any, on_write: Any) -> None:
        self._transport = transport
        self._on_write = on_write

    def write(self, data: Any) -> None:
        self._on_write()
        self._transport.write(data)

    def writelines(self, data: Any) -> None:
        self._on_write()
        self._transport.writelines(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Deadline(asyncio.Protocol):
    """One admin connection: aiohttp's protocol, closed when its deadline passes."""

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self._inner = inner
        self._timeout = timeout
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self._transport = transport
        self._restart()
        self._inner.connection_made(_Reporting(transport, self._answering))  # type: ignore[arg-type]

    def _answering(self) -> None:
        self._restart()
        self._answered = True

    def _restart(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._timeout, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._answered:  # a new request on a kept-alive connection: its own full time
            self._answered = False
            self._restart()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _DeadlineServer:
    """aiohttp's ``web.Server``, whose protocols are wrapped in :class:`Deadline`."""

    def __init__(self, server: web.Server, timeout: float) -> None:
        self._server = server
        self._timeout = timeout

    def __call__(self) -> Deadline:
        return Deadline(self._server(), self._timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class DeadlineRunner(web.AppRunner):
    """An ``AppRunner`` whose connections each have a :class:`Deadline`."""

    def __init__(self, app: web.Application, *, timeout: float = TIMEOUT, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._deadline = timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return _DeadlineServer(server, self._deadline)  # type: ignore[return-value]
