"""The route cache's second life: when a cached answer runs out, the cookie it was
verified from is decided again without a second verification. Checked against a router
that verifies every time (its cache keeps no verified cookie), and on its own for what
time alone can change: a refresh, an idle expiry, a drain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.affinity import AffinitySettings, BackendState, DrainSettings
from limpet.proxy.session.routing import RequestView, Route, SessionRouter

from ..routing_helpers import ABC, T0, Client, Clock, be, mkplan, mkrouter

IDLE = 30.0
PLAN = mkplan(1, ABC, affinity=AffinitySettings(idle_timeout=IDLE))
DRAINING = mkplan(
    2,
    [be("a"), be("b", BackendState.DRAINING), be("c")],
    affinity=AffinitySettings(idle_timeout=IDLE),
    drain=DrainSettings(min_idle=2.0),
)


def _forget_verified(router: SessionRouter) -> None:
    """Make ``router`` verify every cookie again once its cached answer runs out (the
    behaviour before cached answers kept their verified cookie)."""
    cache = router._cache
    for header, (route, until, idx, _, rest) in list(cache.items()):
        cache[header] = (route, until, idx, None, rest)


def _cookies(n: int) -> list[bytes]:
    """``n`` LB cookie headers issued by a third router with the same plan and keys."""
    issuer = mkrouter(Clock(), PLAN)
    return [Client(other=None).get(issuer).set_cookie.split(b";")[0] for _ in range(n)]  # type: ignore[union-attr]


def _same(a: Route | None, b: Route | None, *, new: bool) -> None:
    assert (a is None) == (b is None)
    if a is None or b is None:
        return
    assert (a.cookie, a.cookie_changed, a.add_headers) == (
        b.cookie,
        b.cookie_changed,
        b.add_headers,
    )
    assert (a.set_cookie is None) == (b.set_cookie is None)
    if not new:  # a new session's id (and so its cookie and backend) is random
        assert (a.backend_id, a.set_cookie) == (b.backend_id, b.set_cookie)


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 4), st.sampled_from([0.0, 0.3, 1.0, 2.5, 7.0, 31.0]), st.booleans()
        ),
        min_size=1,
        max_size=50,
    )
)
def test_reused_verification_answers_as_a_fresh_one(
    steps: list[tuple[int, float, bool]],
) -> None:
    c1, c2, c3 = _cookies(3)
    headers = [c1, c2, c3, c1 + b"; app=1", c2 + b"; " + c3]
    ca, cb = Clock(), Clock()
    reusing, verifying = mkrouter(ca, PLAN), mkrouter(cb, PLAN)
    draining = False
    for i, dt, switch in steps:
        ca.t += dt
        cb.t += dt
        if switch:
            draining = not draining
            for r in (reusing, verifying):
                r.load_plan(DRAINING if draining else PLAN)
        before = sum(reusing.stats().rejected_cookies.values())
        view = RequestView(b"GET", b"/", [], "192.0.2.1", headers[i])
        a, b = reusing.route(view), verifying.route(view)
        _forget_verified(verifying)
        new = sum(reusing.stats().rejected_cookies.values()) > before
        _same(a, b, new=new)
    sa, sb = reusing.stats(), verifying.stats()
    assert sa.rejected_cookies == sb.rejected_cookies
    assert sa.migrations == sb.migrations


def test_a_cookie_past_its_cached_answer_is_refreshed_then_expires() -> None:
    clock = Clock()
    r = mkrouter(clock, PLAN)
    (cookie,) = _cookies(1)
    view = RequestView(b"GET", b"/", [], "192.0.2.1", cookie)
    first = r.route(view)
    assert first is not None
    assert first.set_cookie is None  # issued in this step: nothing to refresh
    (entry,) = r._cache.values()
    assert entry[3] is not None  # kept verified for when the answer runs out
    clock.t += 1.5  # the next step: the cached answer has run out
    again = r.route(view)
    assert again is not None
    assert again.backend_id == first.backend_id
    assert again.set_cookie is not None  # re-signed from the kept cookie
    assert r.stats().rejected_cookies["expired"] == 0
    clock.t = T0 + IDLE + 10  # idle for longer than the timeout (the client came back late)
    late = r.route(view)
    assert late is not None
    assert late.set_cookie is not None
    assert r.stats().rejected_cookies["expired"] == 1  # recheck sent it to a full decode


def test_a_tampered_cookie_is_never_taken_from_the_cache() -> None:
    clock = Clock()
    r = mkrouter(clock, PLAN)
    (cookie,) = _cookies(1)
    assert r.route(RequestView(b"GET", b"/", [], "192.0.2.1", cookie)) is not None
    clock.t += 1.5
    forged = cookie[:-3] + (b"AAA" if cookie[-3:] != b"AAA" else b"BBB")
    assert r.route(RequestView(b"GET", b"/", [], "192.0.2.1", forged)) is not None
    assert r.stats().rejected_cookies["tampered"] == 1


def test_a_full_cache_drops_its_oldest_eighth_not_everything() -> None:
    clock = Clock()
    r = mkrouter(clock, PLAN, route_cache_size=16)
    cookies = _cookies(20)
    views = [RequestView(b"GET", b"/", [], "192.0.2.1", c) for c in cookies]
    for v in views[:16]:
        assert r.route(v) is not None
    assert list(r._cache) == cookies[:16]
    clock.t += 1.5  # every answer runs out; c0 is decided again and becomes the newest
    assert r.route(views[0]) is not None
    assert list(r._cache) == [*cookies[1:16], cookies[0]]
    assert r.route(views[16]) is not None  # full: the two decided longest ago go
    assert list(r._cache) == [*cookies[3:16], cookies[0], cookies[16]]
    for v in views[17:]:
        assert r.route(v) is not None
    assert len(r._cache) == 16
    assert cookies[0] in r._cache  # kept: decided more recently than c3 .. c15
    before = dict(r.stats().rejected_cookies)
    clock.t += 0.1  # c0's answer (until the next step) is still current: a plain hit
    assert r.route(views[0]) is not None
    assert r.stats().rejected_cookies == before
