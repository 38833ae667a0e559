"""The SessionRouter's cookie sessions (cookie_routing.py), driven by a controllable clock:
stickiness and the route cache, what a cookie reveals, bad and expired cookies, key
rotation, attributes, a gradual rebalance, and refreshes a client ignores."""

from __future__ import annotations

from collections import Counter

import pytest

from limpet.affinity import (
    AffinitySettings,
    BackendState,
    CookieSettings,
    DrainSettings,
    LifetimeType,
    RebalanceSchedule,
    SameSite,
)
from limpet.proxy.session.routing import RequestView

from ..routing_helpers import ABC, K1, K2, K3, T0, Client, Clock, be, mkplan, mkrouter, moved


def test_cookie_sticky_over_many_requests_and_stripped() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC, affinity=AffinitySettings(last_seen_granularity=5)))
    c = Client()
    first = c.get(r)
    assert first.set_cookie is not None
    assert first.set_cookie.startswith(b"LIMPET=")
    assert b"Path=/" in first.set_cookie
    assert b"HttpOnly" in first.set_cookie
    assert b"SameSite=Lax" in first.set_cookie
    assert b"Max-Age" not in first.set_cookie  # a session cookie by default
    assert not first.cookie_changed  # the first request had no LB cookie to strip
    refreshes = 0
    for _ in range(600):
        clock.t += 1.0
        route = c.get(r)
        assert route.backend_id == first.backend_id
        assert route.cookie_changed
        assert route.cookie == b"app=1"
        assert moved(route) is None
        refreshes += route.set_cookie is not None
    # Refreshed once per 5 s granularity step (the plan's), not on every response.
    assert 110 <= refreshes <= 121
    stats = r.stats()
    assert stats.backends[first.backend_id].requests == 601
    assert stats.backends[first.backend_id].sessions == 1
    assert sum(stats.migrations.values()) == 0


def test_only_lb_cookie_means_header_dropped() -> None:
    r = mkrouter(Clock(), mkplan(1, ABC))
    c = Client(other=None)
    c.get(r)
    route = c.get(r)
    assert route.cookie_changed
    assert route.cookie is None


def test_sticky_route_is_cached_and_shared() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    c = Client()
    c.get(r)
    a = c.get(r)
    clock.t += 0.5
    b = c.get(r)
    assert a is b  # the common case reuses one Route object


def test_new_sessions_spread_with_bounded_loads() -> None:
    r = mkrouter(Clock(), mkplan(1, ABC))
    counts: Counter[str] = Counter(Client(other=None).get(r).backend_id for _ in range(900))
    assert set(counts) == {"a", "b", "c"}
    assert max(counts.values()) <= 1.25 * 300 + 1
    assert [r.stats().backends[b].sessions for b in "abc"] == [counts[b] for b in "abc"]


def test_cookie_reveals_no_backend_address_or_id() -> None:
    r = mkrouter(Clock(), mkplan(1, [be("pod-a.internal"), be("pod-b.internal")]))
    for _ in range(20):
        route = Client().get(r)
        assert route.set_cookie is not None
        value = route.set_cookie.split(b";")[0]
        assert b"pod-" not in value
        assert b"127.0.0.1" not in value


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda v: v[:10] + (b"A" if v[10:11] != b"A" else b"B") + v[11:], "tampered"),
        (lambda v: b"garbage", "garbage"),
        (lambda v: v[:-2], "garbage"),
    ],
)
def test_bad_cookie_starts_new_session(mutate: object, reason: str) -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    c = Client()
    c.get(r)
    c.jar[b"LIMPET"] = mutate(c.jar[b"LIMPET"])  # type: ignore[operator]
    route = c.get(r)
    assert route.set_cookie is not None  # a fresh session cookie
    assert route.cookie_changed
    assert route.cookie == b"app=1"  # the bad cookie is stripped all the same
    assert r.stats().rejected_cookies[reason] == 1
    assert moved(route) is None


def test_expired_and_unknown_backend_cookies() -> None:
    clock = Clock()
    aff = AffinitySettings(idle_timeout=600, absolute_timeout=3600)
    r = mkrouter(clock, mkplan(1, ABC, affinity=aff))
    c = Client()
    c.get(r)
    clock.t += 700
    c.get(r)
    assert r.stats().rejected_cookies["expired"] == 1
    # A cookie naming a backend the plan no longer has.
    pinned = c.get(r).backend_id
    r.load_plan(mkplan(2, [b for b in ABC if b.id != pinned], affinity=aff))
    route = c.get(r)
    assert route.backend_id != pinned
    assert r.stats().rejected_cookies["unknown_backend"] == 1
    # Absolute timeout: active all along, still expires.
    c2 = Client()
    c2.get(r)
    for _ in range(13):
        clock.t += 300
        c2.get(r)
    assert r.stats().rejected_cookies["expired"] == 2


def test_key_rotation() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC, keys=[K1]))
    c = Client()
    pinned = c.get(r).backend_id
    old_k1_cookie = c.jar[b"LIMPET"]
    # K2 becomes the signing key, K1 still verifies: same backend, cookie re-signed now.
    r.load_plan(mkplan(2, ABC, keys=[K2, K1]))
    route = c.get(r)
    assert route.backend_id == pinned
    assert route.set_cookie is not None
    assert c.jar[b"LIMPET"] != old_k1_cookie
    assert c.get(r).set_cookie is None  # re-signed once, not on every response
    # K1 retired: the K2 cookie still works, the old K1 one is an unknown key.
    r.load_plan(mkplan(3, ABC, keys=[K3, K2]))
    assert c.get(r).backend_id == pinned
    stale = Client(jar={b"LIMPET": old_k1_cookie})
    stale.get(r)
    assert r.stats().rejected_cookies["unknown_key"] == 1


def test_permanent_cookie_attributes() -> None:
    cookie = CookieSettings(
        name="SRV",
        path="/shop",
        domain="example.test",
        secure=True,
        same_site=SameSite.STRICT,
        lifetime_type=LifetimeType.PERMANENT,
    )
    aff = AffinitySettings(cookie=cookie, absolute_timeout=7200)
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff))
    route = Client().get(r)
    assert route.set_cookie is not None
    assert route.set_cookie.startswith(b"SRV=")
    attrs = route.set_cookie.split(b"; ")[1:]
    assert attrs == [
        b"Path=/shop",
        b"Domain=example.test",
        b"Max-Age=7200",
        b"Secure",
        b"HttpOnly",
        b"SameSite=Strict",
    ]


def test_gradual_rebalance_cookie() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC))
    clients = [Client(peer=f"192.0.2.{i % 250}") for i in range(600)]
    home = {id(c): c.get(r).backend_id for c in clients}
    start = T0 + 10
    schedule = RebalanceSchedule(
        from_backends=(("a", 100), ("b", 100), ("c", 100)),  # type: ignore[arg-type]
        start=start,
        window=60,
        min_idle=5,
    )
    r.load_plan(mkplan(2, [*ABC, be("d")], rebalance=schedule))
    clock.t = start + 30  # halfway
    half = sum(c.get(r).backend_id == "d" for c in clients)
    clock.t = start + 60 + 20
    done = sum(c.get(r).backend_id == "d" for c in clients)
    assert 0 < half < done
    assert 0.15 * len(clients) < done < 0.35 * len(clients)
    for c in clients:  # sticky afterwards, no further moves
        clock.t += 0.01
        route = c.get(r)
        assert moved(route) is None
        assert route.backend_id == "d" or route.backend_id == home[id(c)]


def test_client_ignoring_refreshes_gets_one_per_step() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, ABC, affinity=AffinitySettings(last_seen_granularity=5)))
    first = Client().get(r)
    assert first.set_cookie is not None
    fixed = first.set_cookie.split(b";")[0]  # like wrk: the same Cookie header forever
    view = RequestView(b"GET", b"/", [], "192.0.2.1", fixed)
    sent = 0
    for _ in range(300):  # 30 s at 10 requests per second
        clock.t += 0.1
        route = r.route(view)
        assert route is not None
        assert route.backend_id == first.backend_id
        sent += route.set_cookie is not None
    assert 5 <= sent <= 7  # once per 5 s step, not on every response


def test_busy_client_ignoring_refreshes_is_not_drained_early() -> None:
    clock = Clock()
    r = mkrouter(clock, mkplan(1, [be("a"), be("b")]))
    clients = [Client() for _ in range(20)]
    on_b = next(c for c in clients if c.get(r).backend_id == "b")
    view = on_b.view()  # frozen: refreshed cookies are never stored
    r.load_plan(
        mkplan(
            2,
            [be("a"), be("b", BackendState.DRAINING, drain_deadline=T0 + 120)],
            drain=DrainSettings(min_idle=10),
        )
    )
    while clock.t < T0 + 100:
        clock.t += 1.0
        route = r.route(view)
        assert route is not None
        assert route.backend_id == "b"  # the cookie looks idle, but this proxy saw it
    clock.t += 30  # now really idle (and past the deadline)
    route = r.route(view)
    assert route is not None
    assert route.backend_id == "a"


def test_granularity_follows_the_plan_and_cookies_state_their_own() -> None:
    clock = Clock()
    coarse = mkplan(1, ABC, affinity=AffinitySettings(last_seen_granularity=5))
    assert mkplan(1, ABC, drain=DrainSettings(min_idle=2.0)).granularity == 1
    assert mkplan(1, ABC, drain=DrainSettings(min_idle=30.0)).granularity == 3
    r = mkrouter(clock, coarse)
    c = Client()
    home = c.get(r).backend_id
    # A drain with minIdle 2 s and a 1 s step: a session last seen under the 5 s step is
    # still judged by its own step (it may have been active until T0+5)...
    fine = mkplan(
        2,
        [be(b, BackendState.DRAINING) if b == home else be(b) for b in "abc"],
        drain=DrainSettings(min_idle=2.0),
    )
    r.load_plan(fine)
    clock.t = T0 + 6.5
    route = c.get(r)
    assert route.backend_id == home
    assert route.set_cookie is not None  # re-issued at once under the plan's 1 s step
    # ...and from then on minIdle holds within that step: idle 2.5 s at T0+9 is within
    # the 1 s tolerance (kept), idle 3 s past the end of the step at T0+12.5 moves.
    clock.t = T0 + 9.0
    assert c.get(r).backend_id == home
    clock.t = T0 + 12.5
    route = c.get(r)
    assert route.backend_id != home
    assert moved(route) == f"drain; from={home}"
