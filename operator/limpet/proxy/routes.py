"""What the engine and the session layer exchange: a :class:`RequestView` in, a
:class:`Route` out, and the session layer's per-process :class:`RouterSettings`.

Data flow: the engine (``client.py``) fills one reusable :class:`RequestView` per client
connection and hands it to :meth:`limpet.proxy.routing.Router.route`; the answer is a
frozen :class:`Route`, often a shared object (the common sticky case allocates nothing).
Pure values, no I/O; a view is owned by one connection on the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from limpet.affinity import BackendId

MOVED_HEADER = b"Limpet-Session-Moved"
"""The request header that tells the backend a session moved: ``<reason>; from=<id>``."""
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RouterSettings:
    """Session-layer knobs that are not in the plan (per process)."""

    learned_capacity: int = 1_000_000
    """Entries per learned table (one table per key mode, one for cookie sessions)."""
    cookie_granularity: int = 5
    """Seconds: the LB cookie's time resolution and its refresh interval while active.
    Keep it below the smallest drain/rebalance minIdle, and equal on every replica."""
    route_cache_size: int = 65536
    health_backoff: float = 1.0
    health_backoff_cap: float = 30.0
    sweep_budget: int = 65536
    """Entries each table examines per :meth:`Router.sweep` call."""

    def __post_init__(self) -> None:
        if self.learned_capacity < 1 or self.route_cache_size < 0 or self.sweep_budget < 1:
            raise ValueError("router capacities must be positive")
        if self.cookie_granularity < 1:
            raise ValueError("cookie_granularity must be at least 1 second")
