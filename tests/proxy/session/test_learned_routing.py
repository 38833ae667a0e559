"""The SessionRouter's learned sessions (learned_routing.py), driven by a controllable
clock: Header, Query, AppCookie and ClientIP modes, keyless requests, drain, a gradual
rebalance, failover and the sweep."""

from __future__ import annotations

import ipaddress
from collections import Counter

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    BackendState,
    ClientIPSettings,
    DrainSettings,
    RebalanceSchedule,
    slot_of,
    table,
    value_key,
)
from limpet.proxy.session.routing import RequestView, Route

from ..routing_helpers import ABC, T0, Clock, be, mkplan, mkrouter, moved


def test_header_mode() -> None:
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Session-Id")
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    seen: dict[bytes, str] = {}
    for i in range(300):
        sid = f"user-{i % 60}".encode()
        name = b"x-session-id" if i % 2 else b"X-Session-ID"
        route = r.route(
            RequestView(b"GET", b"/", [(b"Host", b"x"), (name, sid)], "192.0.2.1", b"a=1")
        )
        assert route is not None
        assert route.set_cookie is None
        assert not route.cookie_changed
        assert seen.setdefault(sid, route.backend_id) == route.backend_id
    assert len(set(seen.values())) == 3
    assert r.stats().learned["header"]["entries"] == 60


def test_query_mode() -> None:
    aff = AffinitySettings(type=AffinityType.QUERY, query_name="sid")
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    seen: dict[bytes, str] = {}
    for i in range(200):
        sid = f"s{i % 40}".encode()
        target = b"/cart?x=1&sid=" + sid + b"&y=2" if i % 2 else b"/?sid=" + sid
        route = r.route(RequestView(b"GET", target, [], "192.0.2.1", None))
        assert route is not None
        assert seen.setdefault(sid, route.backend_id) == route.backend_id
    assert len(set(seen.values())) == 3
    # No parameter (or an empty one, or a longer name): no session is learned.
    for target in (b"/", b"/?other=1", b"/?sid=", b"/?sidx=1"):
        assert r.route(RequestView(b"GET", target, [], "192.0.2.1", None)) is not None
    assert r.stats().learned["query"]["entries"] == 40


def test_app_cookie_learned_from_backend() -> None:
    aff = AffinitySettings(type=AffinityType.APP_COOKIE, app_cookie_name="JSESSIONID")
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    first = r.route(RequestView(b"GET", b"/login", [], "192.0.2.1", None))
    assert first is not None
    assert first.session_key is not None  # tells the engine to report Set-Cookie
    r.on_response(first, [b"other=1", b"JSESSIONID=abc123; Path=/; HttpOnly"])
    for _ in range(50):
        route = r.route(RequestView(b"GET", b"/", [], "192.0.2.1", b"x=1; JSESSIONID=abc123"))
        assert route is not None
        assert route.backend_id == first.backend_id
        assert route.set_cookie is None
        assert not route.cookie_changed  # app cookies are the app's: forwarded untouched
    # A deletion teaches nothing; a new value is learned where it was set.
    r.on_response(first, [b"JSESSIONID=; Max-Age=0", b"JSESSIONID=zzz; Max-Age=0"])
    assert r.stats().learned["app-cookie"]["entries"] == 1
    r.on_response(first, [b' JSESSIONID="q2"; Path=/'])
    assert r.stats().learned["app-cookie"]["entries"] == 2


def test_app_cookie_unknown_value_is_placed_by_hash_and_kept() -> None:
    aff = AffinitySettings(type=AffinityType.APP_COOKIE, app_cookie_name="JSESSIONID")
    plan = mkplan(1, ABC, affinity=aff, keys=())
    r1 = mkrouter(Clock(), plan)
    r2 = mkrouter(Clock(), plan)
    # Two replicas that never saw the Set-Cookie agree on where the value goes.
    for i in range(30):
        view = RequestView(b"GET", b"/", [], "192.0.2.1", f"JSESSIONID=v{i}".encode())
        a, b = r1.route(view), r2.route(view)
        assert a is not None
        assert b is not None
        assert a.backend_id == b.backend_id
        assert r1.route(view).backend_id == a.backend_id  # type: ignore[union-attr]


def test_client_ip_mode_with_masks() -> None:
    ip = ClientIPSettings(ipv4_prefix_length=24, ipv6_prefix_length=64)
    aff = AffinitySettings(type=AffinityType.CLIENT_IP, client_ip=ip)
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))

    def where(peer: str, headers: list[tuple[bytes, bytes]] | None = None) -> str:
        route = r.route(RequestView(b"GET", b"/", headers or [], peer, None))
        assert route is not None
        return route.backend_id

    for net in range(30):
        first = where(f"10.0.{net}.1")
        assert all(where(f"10.0.{net}.{h}") == first for h in (2, 77, 254))
        v6 = where(f"2001:db8:0:{net:x}::1")
        assert where(f"2001:db8:0:{net:x}:ffff::9") == v6
    assert len({where(f"10.0.{n}.1") for n in range(30)}) == 3
    # Not trusted: X-Forwarded-For is ignored.
    spoof = [(b"X-Forwarded-For", b"10.0.5.1")]
    assert r.stats().learned["client-ip"]["entries"] == 60
    where("10.9.9.9", spoof)
    assert r.stats().learned["client-ip"]["entries"] == 61  # keyed by the peer, not 10.0.5.1


def test_client_ip_trusts_xff_only_from_trusted_proxies() -> None:
    ip = ClientIPSettings(
        ipv4_prefix_length=32, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    aff = AffinitySettings(type=AffinityType.CLIENT_IP, client_ip=ip)
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))

    def where(peer: str, xff: bytes | None) -> str:
        headers = [(b"x-forwarded-for", xff)] if xff else []
        route = r.route(RequestView(b"GET", b"/", headers, peer, None))
        assert route is not None
        return route.backend_id

    for n in range(40):
        client = f"198.51.100.{n}"
        direct = where(client, None)
        # Through a trusted proxy the real client is taken from X-Forwarded-For.
        assert where("127.0.0.1", client.encode()) == direct
        assert where("127.0.0.2", b"203.0.113.9, " + client.encode()) == direct
        # From an untrusted peer the header is ignored.
        assert where("192.0.2.200", client.encode()) == where("192.0.2.200", None)


def test_fallback_header_then_client_ip() -> None:
    aff = AffinitySettings(
        type=AffinityType.HEADER, header_name="X-Sid", fallback=(AffinityType.CLIENT_IP,)
    )
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    for n in range(20):
        peer = f"192.0.2.{n}"
        by_ip = r.route(RequestView(b"GET", b"/", [], peer, None))
        assert by_ip is not None
        again = r.route(RequestView(b"GET", b"/", [], peer, None))
        assert again is not None
        assert again.backend_id == by_ip.backend_id
    stats = r.stats().learned
    assert stats["client-ip"]["entries"] == 20
    assert stats["header"]["entries"] == 0
    r.route(RequestView(b"GET", b"/", [(b"X-Sid", b"u1")], "192.0.2.1", None))
    assert r.stats().learned["header"]["entries"] == 1
    assert r.stats().learned["client-ip"]["entries"] == 20  # the header won


def test_keyless_requests_spread() -> None:
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid")
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    got: Counter[str] = Counter()
    for _ in range(300):
        route = r.route(RequestView(b"GET", b"/", [], "192.0.2.1", None))
        assert route is not None
        got[route.backend_id] += 1
    assert set(got) == {"a", "b", "c"}


def test_drain_learned_sessions() -> None:
    clock = Clock()
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid")
    r = mkrouter(clock, mkplan(1, ABC, affinity=aff, keys=()))

    def get(sid: bytes) -> Route:
        route = r.route(RequestView(b"GET", b"/", [(b"X-Sid", sid)], "192.0.2.1", None))
        assert route is not None
        return route

    sids = [f"u{i}".encode() for i in range(90)]
    on_b = [s for s in sids if get(s).backend_id == "b"]
    r.load_plan(
        mkplan(
            2,
            [be("a"), be("b", BackendState.DRAINING, drain_deadline=T0 + 1000), be("c")],
            affinity=aff,
            keys=(),
            drain=DrainSettings(min_idle=10),
        )
    )
    clock.t += 5
    assert all(get(s).backend_id == "b" for s in on_b)  # idle only 5 s: kept
    clock.t += 11
    routes = [get(s) for s in on_b]
    assert all(x.backend_id != "b" and moved(x) == "drain; from=b" for x in routes)


def test_gradual_rebalance_learned() -> None:
    clock = Clock()
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid")
    r = mkrouter(clock, mkplan(1, ABC, affinity=aff, keys=()))

    def get(sid: bytes) -> Route:
        route = r.route(RequestView(b"GET", b"/", [(b"X-Sid", sid)], "192.0.2.1", None))
        assert route is not None
        return route

    sids = [f"user{i}".encode() for i in range(3000)]
    home = {s: get(s).backend_id for s in sids}
    busy = sids[:100]
    start = T0 + 10
    window = 100.0
    schedule = RebalanceSchedule(
        from_backends=(("a", 100), ("b", 100), ("c", 100)),  # type: ignore[arg-type]
        start=start,
        window=window,
        min_idle=5,
    )
    r.load_plan(mkplan(2, [*ABC, be("d")], affinity=aff, keys=(), rebalance=schedule))
    where = dict(home)
    moved_at: dict[bytes, float] = {}
    clock.t = start
    fractions = []
    while clock.t <= start + window + 10:
        clock.t += 1
        for s in busy:  # a request every second: never idle for 5 s
            route = get(s)
            assert route.backend_id == home[s]
        if int(clock.t - start) % 10 == 0:  # everyone else: every 10 s
            for s in sids[100:]:
                route = get(s)
                if route.backend_id != where[s]:
                    assert moved(route) == f"rebalance; from={where[s]}"
                    assert route.backend_id == "d"
                    moved_at[s] = clock.t
                    where[s] = route.backend_id
            fractions.append(len(moved_at))
    idle_sids = sids[100:]
    owners = table({"a": 100, "b": 100, "c": 100, "d": 100})
    candidates = [s for s in idle_sids if owners[slot_of(value_key(AffinityType.HEADER, s))] == "d"]
    assert 0.15 * len(idle_sids) < len(candidates) < 0.35 * len(idle_sids)
    # Every candidate has moved by the end of the window, and nothing else moved.
    assert set(moved_at) == set(candidates)
    # The moves were spread over the window, not done at once.
    assert fractions[0] < 0.2 * len(candidates)
    assert 0.3 * len(candidates) < fractions[4] < 0.7 * len(candidates)
    assert r.stats().migrations["rebalance"] == len(candidates)
    # New sessions use the new table at once.
    assert any(get(f"new{i}".encode()).backend_id == "d" for i in range(50))


def test_learned_sessions_fail_over_when_backend_leaves_plan() -> None:
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid")
    r = mkrouter(Clock(), mkplan(1, ABC, affinity=aff, keys=()))
    view = RequestView(b"GET", b"/", [(b"X-Sid", b"s1")], "192.0.2.1", None)
    first = r.route(view)
    assert first is not None
    r.load_plan(mkplan(2, [b for b in ABC if b.id != first.backend_id], affinity=aff, keys=()))
    route = r.route(view)
    assert route is not None
    assert moved(route) == f"failover; from={first.backend_id}"


def test_sweep_expires_idle_learned_sessions() -> None:
    clock = Clock()
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-Sid", idle_timeout=60)
    r = mkrouter(clock, mkplan(1, ABC, affinity=aff, keys=()))
    for i in range(50):
        r.route(RequestView(b"GET", b"/", [(b"X-Sid", str(i).encode())], "192.0.2.1", None))
    assert sum(b.sessions for b in r.stats().backends.values()) == 50
    clock.t += 30
    assert r.sweep() == 0
    clock.t += 31
    assert r.sweep() == 50
    assert sum(b.sessions for b in r.stats().backends.values()) == 0
