"""The SessionRouter, driven by a controllable clock: no plan, the fallback from cookie to
ClientIP, drain, failover and passive health, and bounded loads for every destination.
Cookie sessions are in test_cookie_routing.py, learned ones in test_learned_routing.py."""

from __future__ import annotations

import math
from collections.abc import Sequence

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    BackendId,
    BackendState,
    DrainSettings,
)
from limpet.proxy.session.routing import RequestView, SessionRouter

from ..routing_helpers import ABC, T0, Client, Clock, be, mkplan, mkrouter, moved

# -- no plan, and the fallback from one mode to the next -----------------------------------------


def test_no_plan_means_no_route() -> None:
    r = mkrouter(Clock())
    assert r.route(Client().view()) is None
    assert r.stats().no_backend == 1
    assert r.plan_version is None


def test_fallback_cookie_then_client_ip() -> None:
    aff = AffinitySettings(fallback=(AffinityType.CLIENT_IP,))
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff))
    for n in range(30):
        peer = f"192.0.2.{n}"
        # A client that never keeps cookies is sticky by its address...
        anon = [r.route(RequestView(b"GET", b"/", [], peer, None)) for _ in range(3)]
        assert len({x.backend_id for x in anon if x is not None}) == 1
        # ...and a browser at the same address gets a cookie pinned to the same backend.
        c = Client(peer=peer)
        first = c.get(r)
        assert first.backend_id == anon[0].backend_id  # type: ignore[union-attr]
        assert first.set_cookie is not None
        c.peer = "203.0.113.1"  # then it roams: the cookie keeps it where it was
        assert c.get(r).backend_id == first.backend_id


# -- drain -------------------------------------------------------------------------------------


def test_drain_keeps_busy_sessions_moves_idle_ones_and_all_at_deadline() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    clients = [Client(peer=f"192.0.2.{i}") for i in range(120)]
    where = {id(c): c.get(r).backend_id for c in clients}
    on_b = [c for c in clients if where[id(c)] == "b"]
    assert len(on_b) >= 20
    busy, idle = on_b[: len(on_b) // 2], on_b[len(on_b) // 2 :]
    deadline = T0 + 300
    r.load_plan(
        mkplan(
            2,
            [be("a"), be("b", BackendState.DRAINING, drain_deadline=deadline), be("c")],
            drain=DrainSettings(min_idle=10),
        )
    )
    # No new session lands on the draining backend.
    for _ in range(200):
        assert Client().get(r).backend_id != "b"
    # Busy sessions (a request every 3 s) stay until the deadline.
    while clock.t + 3 < deadline:
        clock.t += 3
        for c in busy:
            route = c.get(r)
            assert route.backend_id == "b"
            assert moved(route) is None
    # Idle sessions move at their next request, announced.
    for c in idle:
        route = c.get(r)
        assert route.backend_id in ("a", "c")
        assert moved(route) == "drain; from=b"
        assert route.set_cookie is not None
        assert c.get(r).backend_id == route.backend_id  # and stay there, silently
    # At the deadline the busy ones move too.
    clock.t = deadline
    for c in busy:
        route = c.get(r)
        assert route.backend_id in ("a", "c")
        assert moved(route) == "drain; from=b"
    assert r.stats().migrations["drain"] == len(on_b)
    assert r.stats().backends["b"].sessions == 0


def test_all_draining_means_no_new_sessions_but_existing_kept() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, [be("a")]))
    c = Client()
    c.get(r)
    r.load_plan(
        mkplan(
            2,
            [be("a", BackendState.DRAINING, drain_deadline=T0 + 100)],
            drain=DrainSettings(min_idle=1),
        )
    )
    assert r.route(Client().view()) is None  # 503 for a new session
    clock.t += 30
    assert c.get(r).backend_id == "a"  # idle, but there is nowhere to drain to


# -- failover and passive health ---------------------------------------------------------------


def test_failover_by_plan_is_immediate() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    clients = [Client() for _ in range(90)]
    on_c = [c for c in clients if c.get(r).backend_id == "c"]
    r.load_plan(mkplan(2, [be("a"), be("b"), be("c", BackendState.FAILED)]))
    for c in on_c:
        route = c.get(r)  # no idle wait
        assert route.backend_id in ("a", "b")
        assert moved(route) == "failover; from=c"
        assert c.get(r).backend_id == route.backend_id
    assert r.stats().migrations["failover"] == len(on_c)


def test_passive_health_failover_and_recovery() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC), health_backoff=2.0, health_backoff_cap=8.0)
    clients = [Client() for _ in range(90)]
    on_b = [c for c in clients if c.get(r).backend_id == "b"]
    r.backend_failed(BackendId("b"))
    assert r.stats().backends["b"].health == "down"
    for c in on_b:
        route = c.get(r)
        assert route.backend_id != "b"
        assert moved(route) == "failover; from=b"
    assert all(Client().get(r).backend_id != "b" for _ in range(100))
    clock.t += 2.0
    assert r.stats().backends["b"].health == "probing"
    assert any(Client().get(r).backend_id == "b" for _ in range(100))
    r.backend_succeeded(BackendId("b"))
    assert r.stats().backends["b"].health == "up"


def test_reroute_after_connect_failure() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    c = Client()
    first = c.get(r)
    view = c.view()
    other = r.reroute(view, first)
    assert other is not None
    assert other.backend_id != first.backend_id
    assert moved(other) == f"failover; from={first.backend_id}"
    single = mkrouter(clock, mkplan(1, [be("a")]))
    c2 = Client()
    only = c2.get(single)
    assert single.reroute(c2.view(), only) is None


# -- bounded loads for every destination -------------------------------------------------------


def _loads(r: SessionRouter) -> dict[str, int]:
    return {bid: b.sessions for bid, b in r.stats().backends.items()}


def _cap(loads: dict[str, int], eligible: Sequence[str], load_factor: float = 1.25) -> int:
    total = sum(loads[b] for b in eligible)
    return math.ceil(load_factor * (total + 1) / len(eligible))


def _pinned_to_a(clock: Clock, r: SessionRouter, n: int) -> None:
    """``n`` sessions on "a" that ``r`` learns of (placed while "a" was alone)."""
    solo = mkrouter(clock, mkplan(1, [be("a")]))
    for _ in range(n):
        c = Client(other=None)
        c.get(solo)
        assert c.get(r).backend_id == "a"


def test_failover_from_a_down_backend_respects_the_cap() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    clients = [Client(other=None) for _ in range(300)]
    for c in clients:
        c.get(r)
    _pinned_to_a(clock, r, 150)  # "a" is now above the cap of the backends still up
    r.backend_failed(BackendId("c"))
    assert _loads(r)["a"] > _cap(_loads(r), "ab")
    moves = 0
    for c in clients:
        before = _loads(r)
        route = c.get(r)
        assert route.backend_id != "c"
        after = _loads(r)
        if moved(route) is not None:
            moves += 1
            # The destination was under the cap computed over the backends still up.
            assert before[route.backend_id] < _cap(before, "ab")
            assert after[route.backend_id] <= _cap(before, "ab")
    assert moves == r.stats().migrations["failover"] > 50
    assert _loads(r)["c"] == 0
    # New sessions meanwhile respect the same cap, and never go to the down backend.
    for _ in range(100):
        before = _loads(r)
        bid = Client(other=None).get(r).backend_id
        assert bid != "c"
        assert before[bid] < _cap(before, "ab")


def test_drain_destinations_respect_the_cap() -> None:
    clock = Clock()
    four = [be("a"), be("b"), be("c"), be("d")]
    r = mkrouter(clock, mkplan(1, four))
    clients = [Client(other=None) for _ in range(400)]
    where = {id(c): c.get(r).backend_id for c in clients}
    r.load_plan(
        mkplan(2, [be("a"), be("b"), be("c"), be("d", BackendState.DRAINING, drain_deadline=T0)])
    )
    _pinned_to_a(clock, r, 120)
    assert _loads(r)["a"] > _cap(_loads(r), "abc")
    clock.t += 60
    drained = 0
    for c in clients:
        if where[id(c)] != "d":
            continue
        before = _loads(r)
        route = c.get(r)
        assert moved(route) == "drain; from=d"
        # Never onto a backend at its cap ("a" takes some only once the mean has caught up).
        assert before[route.backend_id] < _cap(before, "abc")
        drained += 1
    assert drained > 50
    assert _loads(r)["d"] == 0


def test_cookie_sessions_count_only_while_active() -> None:
    clock = Clock()
    aff = AffinitySettings(idle_timeout=60, absolute_timeout=3600)
    r = mkrouter(clock, mkplan(1, ABC, affinity=aff))
    busy = [Client(other=None) for _ in range(30)]
    for c in [*busy, *(Client(other=None) for _ in range(20))]:
        c.get(r)
    assert sum(_loads(r).values()) == 50
    for _ in range(70):  # 30 stay active; 20 left and went quiet
        clock.t += 1
        for c in busy:
            c.get(r)
        r.sweep()
    assert sum(_loads(r).values()) == 30
    # A session that outlives absoluteTimeout starts over; the old one is not counted.
    for _ in range(3600 // 30):
        clock.t += 30
        for c in busy:
            c.get(r)
        r.sweep()
        assert sum(_loads(r).values()) == 30
    assert r.stats().rejected_cookies["expired"] + r.stats().migrations["expired"] >= 30
    assert sum(_loads(r).values()) == 30


def test_new_sessions_place_as_the_core_sums_loads_itself() -> None:
    """``_place`` hands the core the total of the book's counts while the book numbers
    exactly the table's members; whatever the plan, it must place every key where the
    core, summing the loads itself, would."""
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC, load_factor=1.05))
    book = r._book
    a = r._snap.plan.affinity  # type: ignore[union-attr]
    # Uneven loads, near the caps, so that a wrong total would move some keys.
    for i in range(300):
        book.insert(AffinityType.HEADER, 7_000_000 + i, BackendId("abc"[i % 7 % 3]), T0, a)

    def agree(expect_fast: bool) -> None:
        snap = r._snap
        assert snap is not None
        assert (len(r._ids) == r._members) is expect_fast
        for h in range(0, 2**64, 2**64 // 997):
            slow = snap.core.route_new(h, clock(), r._loads(), exclude=r._down())
            assert r._place(snap, h, clock()) == slow

    agree(expect_fast=True)
    # c drains, its sessions still counted in the book: no longer the members' total.
    r.load_plan(mkplan(2, [be("a"), be("b"), be("c", BackendState.DRAINING)], load_factor=1.05))
    agree(expect_fast=False)
    # c is gone from the plan but still numbered here.
    r.load_plan(mkplan(3, [be("a"), be("b")], load_factor=1.05))
    agree(expect_fast=False)
    # All three again; b marked down by passive health: the core excludes it.
    r.load_plan(mkplan(4, ABC, load_factor=1.05))
    for _ in range(5):
        r.backend_failed(BackendId("b"))
    assert r._down()
    agree(expect_fast=True)
