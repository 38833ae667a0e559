"""The engine's port to the session layer: a :class:`RequestView` in, a :class:`Route` out,
through the :class:`RouterPort` protocol.

Data flow: the engine (``exchange.py``) fills one reusable :class:`RequestView` per client
connection and hands it to :meth:`RouterPort.dispatch` (implemented by
:class:`limpet.proxy.session.routing.SessionRouter`); the answer is an immutable
:class:`Route`, often a shared object (the common sticky case allocates nothing), or
rarely a :data:`PendingRoute`: a coroutine the engine awaits before it forwards anything,
when the router must ask the shared session store first (a learned key this replica does
not hold, or one the plan may move). The engine knows the session layer only through
this module, so the layers stay one-way. Pure values, no I/O; a view is owned by one
connection on the event loop.
"""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

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


class Route(NamedTuple):
    """Where a request goes and how to rewrite it (see the proxy contract).

    Immutable, and a named tuple rather than a frozen dataclass because the session layer
    builds one for every new or refreshed session: a frozen dataclass's ``__init__`` goes
    through ``object.__setattr__`` per field, about 1 µs here against 0.2 µs. Only
    attribute access is part of the contract; never unpack or index a route."""

    backend_id: BackendId
    host: str
    port: int
    cookie: bytes | None
    add_headers: tuple[tuple[bytes, bytes], ...]
    set_cookie: bytes | None
    session_key: bytes | None
    cookie_changed: bool


PendingRoute = Coroutine[Any, Any, "Route | None"]
"""A route that needs the shared store: awaited by the engine (the request's body is
buffered meanwhile, as while dialling)."""


class RouterPort(Protocol):
    """The router operations the engine calls (the session layer's ``SessionRouter``)."""

    def dispatch(self, req: RequestView) -> Route | PendingRoute | None: ...
    def redispatch(self, req: RequestView, failed: Route) -> Route | PendingRoute | None: ...
    def on_response(self, route: Route, set_cookies: Sequence[bytes]) -> Route: ...
    def backend_failed(self, backend_id: BackendId) -> None: ...
    def backend_succeeded(self, backend_id: BackendId) -> None: ...
