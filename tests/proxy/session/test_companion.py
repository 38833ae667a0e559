"""The AppCookie companion: the bound codec, the app cookie's scope, and routers that
agree on app-cookie sessions through any replica with no shared state."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.affinity import AffinitySettings, AffinityType, BackendState, DrainSettings
from limpet.proxy.session.companion import (
    AppCookieScope,
    CompanionCodec,
    parse_app_set_cookie,
)
from limpet.proxy.session.cookies import CookieRejection, SessionCookie, SigningKey
from limpet.proxy.session.routing import RequestView, Route, SessionRouter

from ..routing_helpers import ABC, K1, T0, Clock, be, mkplan, mkrouter, moved

S1 = SigningKey("k1", b"1" * 32)
S2 = SigningKey("k2", b"2" * 32)
APP = AffinitySettings(type=AffinityType.APP_COOKIE, app_cookie_name="JSESSIONID")


def codec(keys: list[SigningKey] | None = None) -> CompanionCodec:
    return CompanionCodec(
        name="LIMPETAPP",
        keys=keys or [S1],
        backends=["a", "b"],
        granularity=1,
        idle_timeout=1800,
        absolute_timeout=86400,
    )


def value_of(set_cookie: bytes) -> bytes:
    return set_cookie.partition(b"=")[2].split(b";")[0]


def test_companion_is_bound_to_the_app_cookie_value() -> None:
    c = codec()
    scope = AppCookieScope(path="/shop", domain="example.com", expires=int(T0) + 600)
    header = c.issue(
        session_id=b"",
        backend_id="a",
        key_hash=42,
        issued=int(T0),
        wall=T0,
        bind=b"v1",
        tail=scope.pack(),
    )
    assert header.startswith(b"LIMPETAPP=")
    assert b"; Path=/shop; Domain=example.com; Max-Age=600; HttpOnly" in header
    got = c.decode(value_of(header), T0 + 1, bind=b"v1")
    assert isinstance(got, SessionCookie)
    assert (got.backend_id, got.key_hash, got.issued) == ("a", 42, int(T0))
    assert AppCookieScope.unpack(got.tail) == scope
    # Another app-cookie value, or none: tampered. So is any flipped byte of the tail.
    assert c.decode(value_of(header), T0 + 1, bind=b"v2") is CookieRejection.TAMPERED
    assert c.decode(value_of(header), T0 + 1) is CookieRejection.TAMPERED
    # An app-cookie value as long as a header allows is compared, not refused.
    huge = b"v" * 32_000
    assert c.decode(value_of(header), T0 + 1, bind=huge) is CookieRejection.TAMPERED
    bound = c.issue(session_id=b"", backend_id="a", key_hash=42, issued=int(T0), wall=T0, bind=huge)
    assert isinstance(c.decode(value_of(bound), T0 + 1, bind=huge), SessionCookie)
    raw = bytearray(value_of(header))
    raw[-30] = ord("A") if raw[-30] != ord("A") else ord("B")
    assert c.decode(bytes(raw), T0 + 1, bind=b"v1") in (
        CookieRejection.TAMPERED,
        CookieRejection.GARBAGE,
    )
    # A refresh after the scope's expiry counted down keeps the absolute expiry.
    assert b"Max-Age=500" in c.set_cookie(value_of(header), got.tail, T0 + 100)
    # Rotation: an old key's companion verifies under the new key list.
    rotated = codec([S2, S1])
    assert isinstance(rotated.decode(value_of(header), T0 + 1, bind=b"v1"), SessionCookie)


@given(
    path=st.text(alphabet="/abcXYZ09-_.~", min_size=1, max_size=40).map(lambda p: "/" + p),
    domain=st.none() | st.sampled_from(["example.com", "a.b.example.org"]),
    expires=st.none() | st.integers(min_value=1, max_value=(1 << 32) - 1),
    secure=st.booleans(),
    same_site=st.sampled_from([None, "Strict", "Lax", "None"]),
)
def test_scope_round_trips(
    path: str, domain: str | None, expires: int | None, secure: bool, same_site: str | None
) -> None:
    scope = AppCookieScope(path, domain, expires, secure, same_site)
    assert AppCookieScope.unpack(scope.pack()) == scope


@given(st.binary(max_size=80))
def test_scope_unpack_never_raises(tail: bytes) -> None:
    got = AppCookieScope.unpack(tail)
    assert got is None or AppCookieScope.unpack(got.pack()) == got


@pytest.mark.parametrize(
    ("header", "value", "scope", "deleted"),
    [
        (b"JSESSIONID=abc; Path=/app; HttpOnly", b"abc", AppCookieScope(path="/app"), False),
        (
            b' JSESSIONID="q"; Max-Age=60; Expires=Wed, 09 Jun 2021 10:18:14 GMT; Secure',
            b"q",
            AppCookieScope(expires=int(T0) + 60, secure=True),
            False,
        ),
        (
            b"JSESSIONID=x; Expires=Wed, 09 Jun 2100 10:18:14 GMT; Domain=.Example.com; "
            b"SameSite=none; Path=relative",
            b"x",
            AppCookieScope(domain="example.com", expires=4116219494, same_site="None"),
            False,
        ),
        (b"JSESSIONID=; Path=/", b"", AppCookieScope(), True),
        (b"JSESSIONID=x; Max-Age=0", b"x", AppCookieScope(expires=int(T0)), True),
        (
            b"JSESSIONID=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
            b"x",
            AppCookieScope(expires=0),
            True,
        ),
    ],
)
def test_parse_app_set_cookie(
    header: bytes, value: bytes, scope: AppCookieScope, deleted: bool
) -> None:
    got = parse_app_set_cookie(header, b"JSESSIONID=", T0)
    assert got is not None
    assert (got.value, got.scope, got.deleted) == (value, scope, deleted)
    assert parse_app_set_cookie(b"OTHER=1", b"JSESSIONID=", T0) is None


class AppClient:
    """A browser with an app that sets JSESSIONID on the first response it serves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.jar: dict[bytes, bytes] = {}

    def view(self) -> RequestView:
        cookie = b"; ".join(k + b"=" + v for k, v in self.jar.items()) or None
        return RequestView(b"GET", b"/", [], "192.0.2.1", cookie)

    def get(self, r: SessionRouter, *, app_sets: bytes | None = None) -> Route:
        route = r.route(self.view())
        assert route is not None
        # The app sees its own cookie, never the companion.
        forwarded = route.cookie if route.cookie_changed else self.view().cookie
        assert b"LIMPETAPP" not in (forwarded or b"")
        if b"JSESSIONID" in self.jar:
            assert b"JSESSIONID=" + self.jar[b"JSESSIONID"] in (forwarded or b"")
        if app_sets is None and b"JSESSIONID" not in self.jar:
            app_sets = b"JSESSIONID=" + self.name.encode() + b"; Path=/; HttpOnly"
        if app_sets is not None:
            route = r.on_response(route, [app_sets])
            self.jar[b"JSESSIONID"] = app_sets.split(b";")[0].partition(b"=")[2]
        if route.set_cookie is not None:
            name, _, rest = route.set_cookie.partition(b"=")
            val = rest.split(b";")[0]
            if b"Max-Age=0" in route.set_cookie:
                self.jar.pop(name, None)
            else:
                self.jar[name] = val
        return route


def replicas(clock: Clock, n: int = 3, **kw: object) -> list[SessionRouter]:
    plan = mkplan(1, ABC, affinity=APP, keys=(K1,), **kw)  # type: ignore[arg-type]
    return [mkrouter(clock, plan) for _ in range(n)]


def test_any_replica_keeps_the_app_session_from_the_first_request() -> None:
    clock = Clock()
    rs = replicas(clock)
    rng = random.Random(7)
    clients = [AppClient(f"user{i}") for i in range(60)]
    home: dict[str, str] = {}
    for step in range(8):
        clock.t = T0 + step * 2
        for c in clients:
            route = c.get(rng.choice(rs))
            assert home.setdefault(c.name, route.backend_id) == route.backend_id
            assert moved(route) is None
    assert len(set(home.values())) == 3
    outcomes = [r.stats().app_cookie for r in rs]
    assert all(n == 0 for o in outcomes for n in o.values())


def test_drain_moves_idle_app_sessions_announced_on_any_replica() -> None:
    clock = Clock()
    rs = replicas(clock, drain=DrainSettings(min_idle=2.0))
    rng = random.Random(3)
    clients = [AppClient(f"u{i}") for i in range(30)]
    first = {c.name: c.get(rng.choice(rs)).backend_id for c in clients}
    draining = mkplan(
        2,
        [be("a", BackendState.DRAINING), be("b"), be("c")],
        affinity=APP,
        keys=(K1,),
        drain=DrainSettings(min_idle=2.0),
    )
    for r in rs:
        r.load_plan(draining)
    clock.t = T0 + 1.5  # active 1.5 s ago at most: kept where they are
    for c in clients:
        assert c.get(rng.choice(rs)).backend_id == first[c.name]
    clock.t = T0 + 5  # idle past minIdle (2 s) plus the 1 s granularity
    moves = 0
    for c in clients:
        route = c.get(rng.choice(rs))
        if first[c.name] == "a":
            assert route.backend_id != "a"
            assert moved(route) == "drain; from=a"
            moves += 1
        else:
            assert route.backend_id == first[c.name]
        # Whichever replica comes next, the session stays where it moved.
        assert c.get(rng.choice(rs)).backend_id == route.backend_id
    assert moves > 0


def test_one_cookie_dropped_is_counted_and_served() -> None:
    clock = Clock()
    (r,) = replicas(clock, n=1)
    c = AppClient("lost")
    c.get(r)
    assert set(c.jar) == {b"JSESSIONID", b"LIMPETAPP"}
    companion = c.jar.pop(b"LIMPETAPP")
    c.get(r, app_sets=None)  # served from this replica's learned table
    assert r.stats().app_cookie["companion_missing"] == 1
    del c.jar[b"JSESSIONID"]
    c.jar[b"LIMPETAPP"] = companion
    route = r.route(c.view())
    assert route is not None
    assert route.cookie is None  # stripped, never forwarded
    assert route.cookie_changed
    assert r.stats().app_cookie["app_cookie_missing"] == 1
    # Someone else's companion beside this app cookie: tampered, counted, still served.
    other = AppClient("other")
    other.get(r)
    c.jar = {b"JSESSIONID": b"lost", b"LIMPETAPP": other.jar[b"LIMPETAPP"]}
    assert r.route(c.view()) is not None
    stats = r.stats()
    assert stats.app_cookie["companion_rejected"] == 1
    assert stats.rejected_cookies["tampered"] == 1


def test_app_deletes_its_cookie_and_the_companion_goes_too() -> None:
    clock = Clock()
    (r,) = replicas(clock, n=1)
    c = AppClient("bye")
    c.get(r)
    route = c.get(r, app_sets=b"JSESSIONID=; Path=/; Max-Age=0")
    assert route.set_cookie is not None
    assert route.set_cookie.startswith(b"LIMPETAPP=;")
    assert b"Max-Age=0" in route.set_cookie
    assert b"LIMPETAPP" not in c.jar


def test_rotated_app_cookie_value_gets_a_new_companion_on_the_same_backend() -> None:
    clock = Clock()
    rs = replicas(clock)
    c = AppClient("before")
    home = c.get(rs[0]).backend_id
    clock.t = T0 + 3
    route = c.get(rs[1], app_sets=b"JSESSIONID=after; Path=/")
    assert route.backend_id == home
    for r in rs:
        assert c.get(r).backend_id == home
    assert all(n == 0 for r in rs for n in r.stats().app_cookie.values())


def test_sticky_app_sessions_are_answered_from_the_route_cache() -> None:
    clock = Clock()
    (r,) = replicas(clock, n=1)
    c = AppClient("cached")
    c.get(r)
    clock.t += 0.2  # inside the companion's step: no refresh due
    first = r.route(c.view())
    assert first is not None
    assert first.set_cookie is None
    assert r.route(c.view()) is first  # the cached answer, no HMAC
    clock.t += 1.0  # the next step: refreshed, not cached past its step
    again = r.route(c.view())
    assert again is not None
    assert again is not first
    assert again.set_cookie is not None
    assert again.set_cookie.startswith(b"LIMPETAPP=")
