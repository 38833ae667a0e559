"""Helpers for driving the session layer's SessionRouter without sockets: a settable clock,
backends and plans in one line, and a browser-like client that keeps its cookies."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from limpet.affinity import (
    AffinitySettings,
    Backend,
    BackendId,
    BackendState,
    BalanceSettings,
    CookieKey,
    DrainSettings,
    Plan,
    RebalanceSchedule,
    SessionStoreSettings,
)
from limpet.proxy.session.routing import (
    MOVED_HEADER,
    RequestView,
    Route,
    RouterSettings,
    SessionRouter,
)

T0 = 1_800_000_000.0
K1 = CookieKey(id="k1", secret=b"1" * 32)
K2 = CookieKey(id="k2", secret=b"2" * 32)
K3 = CookieKey(id="k3", secret=b"3" * 32)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Wall:
    """The real wall clock (for routers on a real store, whose entries expire in real
    time), which a test can stop so that no request retries the store."""

    def __init__(self) -> None:
        self.stopped: float | None = None

    def __call__(self) -> float:
        return time.time() if self.stopped is None else self.stopped


def be(bid: str, state: BackendState = BackendState.ACTIVE, **kw: object) -> Backend:
    port = 10000 + sum(map(ord, bid))
    return Backend(id=BackendId(bid), address="127.0.0.1", port=port, state=state, **kw)  # type: ignore[arg-type]


def mkplan(
    version: int,
    backends: Sequence[Backend],
    *,
    affinity: AffinitySettings | None = None,
    keys: Sequence[CookieKey] = (K1,),
    drain: DrainSettings | None = None,
    rebalance: RebalanceSchedule | None = None,
    load_factor: float = 1.25,
    session_store: SessionStoreSettings | None = None,
) -> Plan:
    return Plan(
        version=version,
        backends=tuple(backends),
        affinity=affinity or AffinitySettings(),
        cookie_keys=tuple(keys),
        drain=drain or DrainSettings(),
        rebalance=rebalance,
        balance=BalanceSettings(load_factor=load_factor),
        session_store=session_store,
    )


def mkrouter(clock: Clock | Wall, plan: Plan | None = None, **kw: object) -> SessionRouter:
    r = SessionRouter(settings=RouterSettings(**kw), clock=clock, wall=clock)  # type: ignore[arg-type]
    if plan is not None:
        r.load_plan(plan)
    return r


@dataclass
class Client:
    """A browser-like client: keeps the cookies the proxy sets, sends them back."""

    peer: str = "192.0.2.10"
    jar: dict[bytes, bytes] = field(default_factory=dict)
    other: bytes | None = b"app=1"

    def view(
        self, target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None
    ) -> RequestView:
        parts = [k + b"=" + v for k, v in self.jar.items()]
        if self.other:
            parts.append(self.other)
        cookie = b"; ".join(parts) if parts else None
        return RequestView(b"GET", target, headers or [], self.peer, cookie)

    def get(
        self,
        router: SessionRouter,
        target: bytes = b"/",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> Route:
        route = router.route(self.view(target, headers))
        assert route is not None
        if route.set_cookie is not None:
            name, _, rest = route.set_cookie.partition(b"=")
            self.jar[name] = rest.split(b";")[0]
        return route


def moved(route: Route) -> str | None:
    for name, value in route.add_headers:
        if name == MOVED_HEADER:
            return value.decode()
    return None


ABC = [be("a"), be("b"), be("c")]
