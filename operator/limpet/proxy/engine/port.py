"""The engine's port to the session layer: a :class:`RequestView` in, a :class:`Route` out,
through the :class:`RouterPort` protocol.

Data flow: the engine (``exchange.py``) fills one reusable :class:`RequestView` per client
connection and hands it to :meth:`RouterPort.route` (implemented by
:class:`limpet.proxy.session.routing.SessionRouter`); the answer is a frozen
:class:`Route`, often a shared object (the common sticky case allocates nothing). The
engine knows the session layer only through this module, so the layers stay one-way.
Pure values, no I/O; a view is owned by one connection on the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from limpet.affinity import BackendId

NO_HEADERS: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)
class RequestView:
    """What the engine tells the router about one request (may be reused)."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    peer_ip: str
    cookie: bytes | None = None  # all Cookie header values joined with b"; "


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes and how to rewrite it (see the proxy contract)."""

    backend_id: BackendId
    host: str
    port: int
    cookie: bytes | None
    add_headers: tuple[tuple[bytes, bytes], ...]
    set_cookie: bytes | None
    session_key: bytes | None
    cookie_changed: bool


class RouterPort(Protocol):
    """The router operations the engine calls (the session layer's ``SessionRouter``)."""

    def route(self, req: RequestView) -> Route | None: ...
    def reroute(self, req: RequestView, failed: Route) -> Route | None: ...
    def on_response(self, route: Route, set_cookies: Sequence[bytes]) -> Route: ...
    def backend_failed(self, backend_id: BackendId) -> None: ...
    def backend_succeeded(self, backend_id: BackendId) -> None: ...
