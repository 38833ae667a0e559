"""The migration decision and its lifecycle properties (issue 3, item 5)."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from limpet.affinity import (
    KEEP,
    BackendState,
    Plan,
    Reason,
    Router,
    Session,
    decide,
    release_complete_at,
    release_fraction,
    released_fraction,
)
from limpet.affinity.plan import plan_from_json, plan_to_json

from .strategies import NOW, hashes, plans, sessions

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


def _expired(router: Router, s: Session, now: float) -> bool:
    idle, age = router.idle_timeout, router.absolute_timeout
    return (idle is not None and now - s.last_seen >= idle) or (
        age is not None and now - s.created >= age
    )


def _state(plan: Plan, backend: str) -> BackendState | None:
    return next((b.state for b in plan.backends if b.id == backend), None)


@SETTINGS
@given(plans(), sessions())
def test_moves_only_to_backends_taking_new_sessions(plan: Plan, s: Session) -> None:
    router = Router(plan)
    decision = decide(s, router, NOW)
    new = router.route_new(s.key_hash, NOW)
    for dest in (decision.backend, new):
        if dest is not None:
            state = _state(plan, dest)
            assert state is not None
            assert state.takes_new_sessions
    if not any(b.state.takes_new_sessions for b in plan.backends):
        assert new is None


@SETTINGS
@given(plans(), sessions())
def test_failover_never_leaves_a_session_on_a_failed_backend(plan: Plan, s: Session) -> None:
    router = Router(plan)
    state = _state(plan, s.backend)
    assume(state in (None, BackendState.FAILED, BackendState.GONE))
    decision = decide(s, router, NOW)
    assert not decision.keep
    assert decision.backend != s.backend
    if not _expired(router, s, NOW):
        assert decision.reason is Reason.FAILOVER


@SETTINGS
@given(plans(), sessions())
def test_unchanged_target_on_active_backend_never_moves(plan: Plan, s: Session) -> None:
    router = Router(plan)
    assume(_state(plan, s.backend) in (BackendState.ACTIVE, BackendState.WARMING))
    assume(not _expired(router, s, NOW))
    if router.schedule is not None:
        source = router.source_owners[s.key_hash % router.source_size]
        assume(source == router.owner(s.key_hash))
    assert decide(s, router, NOW) is KEEP


@SETTINGS
@given(plans(with_schedule=True), hashes, st.floats(0, 0.999), st.floats(0, 100))
def test_released_session_never_moves_while_busy(
    plan: Plan, h: int, busy: float, extra: float
) -> None:
    router = Router(plan)
    schedule = plan.rebalance
    assert schedule is not None
    assume(router.target is not None and schedule.min_idle > 0)
    source = router.source_owners[h % router.source_size]
    assume(_state(plan, source) in (BackendState.ACTIVE, BackendState.WARMING))
    # Fully released, yet seen less than minIdle ago: it must stay.
    now = max(NOW, release_complete_at(schedule)) + extra
    last_seen = now - busy * schedule.min_idle
    s = Session(backend=source, key_hash=h, last_seen=last_seen, created=schedule.start - 1)
    assume(not _expired(router, s, now))
    assert decide(s, router, now) is KEEP


@SETTINGS
@given(plans(with_schedule=True), hashes, st.floats(0, 100))
def test_after_the_window_every_changed_session_moves_when_idle(
    plan: Plan, h: int, extra: float
) -> None:
    router = Router(plan)
    schedule = plan.rebalance
    assert schedule is not None
    assume(router.target is not None)
    source = router.source_owners[h % router.source_size]
    target = router.owner(h)
    assume(source != target and _state(plan, source) in (BackendState.ACTIVE, BackendState.WARMING))
    now = max(NOW, release_complete_at(schedule)) + extra
    last_seen = now - schedule.min_idle - 0.01  # margin: epoch floats round
    s = Session(backend=source, key_hash=h, last_seen=last_seen, created=schedule.start - 1)
    assume(not _expired(router, s, now))
    decision = decide(s, router, now)
    assert decision.reason is Reason.REBALANCE
    assert decision.backend == target


@SETTINGS
@given(plans(with_schedule=True), sessions())
def test_rebalance_releases_by_key_fraction(plan: Plan, s: Session) -> None:
    router = Router(plan)
    schedule = plan.rebalance
    assert schedule is not None
    decision = decide(s, router, NOW)
    if decision.reason is Reason.REBALANCE:
        assert s.created < schedule.start
        assert release_fraction(s.key_hash) < released_fraction(schedule, NOW)
        assert NOW - s.last_seen >= schedule.min_idle
        source = router.source_owners[s.key_hash % router.source_size]
        assert source == s.backend or decision.backend in router.joined
        assert decision.backend == router.owner(s.key_hash) != s.backend


@SETTINGS
@given(plans(with_schedule=True), hashes, st.integers(min_value=0, max_value=7), st.floats(0, 100))
def test_a_session_pinned_off_the_tables_moves_only_to_a_pod_that_joined(
    plan: Plan, h: int, pick: int, extra: float
) -> None:
    """An app-cookie session is pinned before its key is known, so the "from" table may
    never have put it where it is. Once released and idle it still moves when its new
    owner joined since; it never moves between two pods the "from" table had."""
    router = Router(plan)
    schedule = plan.rebalance
    assert schedule is not None
    assume(router.target is not None)
    source = router.source_owners[h % router.source_size]
    target = router.owner(h)
    others = [m for m in router.members if m not in (source, target)]
    assume(others)
    pinned = others[pick % len(others)]
    assume(_state(plan, pinned) in (BackendState.ACTIVE, BackendState.WARMING))
    now = max(NOW, release_complete_at(schedule)) + extra
    last_seen = now - schedule.min_idle - 0.01  # margin: epoch floats round
    s = Session(backend=pinned, key_hash=h, last_seen=last_seen, created=schedule.start - 1)
    assume(not _expired(router, s, now))
    decision = decide(s, router, now)
    if target in router.joined:
        assert decision.reason is Reason.REBALANCE
        assert decision.backend == target
    else:
        assert decision is KEEP


@SETTINGS
@given(
    plans(with_schedule=True),
    hashes,
    st.integers(min_value=0, max_value=7),
    st.floats(0, 2000),
    st.floats(0, 1),
    st.floats(0, 5000),
)
def test_a_session_begun_since_the_schedule_started_never_rebalances(
    plan: Plan, h: int, pick: int, since: float, busy: float, extra: float
) -> None:
    """It was placed by the current table (or, off its owner, by bounded loads): however
    long the schedule lingers, idle or not, released or not, it is not moved to rebalance.
    (The same session begun before the start moves: the properties above.)"""
    router = Router(plan)
    schedule = plan.rebalance
    assert schedule is not None
    assume(router.members)
    pinned = router.members[pick % len(router.members)]
    created = schedule.start + since
    now = created + extra
    s = Session(backend=pinned, key_hash=h, last_seen=now - busy * extra, created=created)
    assert decide(s, router, now).reason is not Reason.REBALANCE


@SETTINGS
@given(plans(), hashes, st.floats(0, 120), st.integers(min_value=0, max_value=7))
def test_drain_moves_when_idle_or_at_deadline(plan: Plan, h: int, idle: float, pick: int) -> None:
    router = Router(plan)
    draining = [b for b in plan.backends if b.state is BackendState.DRAINING]
    assume(draining)
    backend = draining[pick % len(draining)]
    s = Session(backend=backend.id, key_hash=h, last_seen=NOW - idle, created=NOW - idle - 1)
    due = NOW - s.last_seen >= plan.drain.min_idle or (
        backend.drain_deadline is not None and backend.drain_deadline <= NOW
    )
    decision = decide(s, router, NOW)
    if due:
        assert decision.reason is Reason.DRAIN
        assert decision.backend != s.backend
        assert decision.backend == router.route_new(h, NOW)
    else:
        assert decision is KEEP


@SETTINGS
@given(plans(), sessions())
def test_expired_sessions_start_over(plan: Plan, s: Session) -> None:
    router = Router(plan)
    assume(_expired(router, s, NOW))
    decision = decide(s, router, NOW)
    assert decision.reason is Reason.EXPIRED
    assert decision.backend == router.route_new(s.key_hash, NOW)


@SETTINGS
@given(plans(), st.lists(sessions(), min_size=1, max_size=5))
def test_replicas_agree(plan: Plan, batch: list[Session]) -> None:
    # Two replicas: one got the plan object, the other parsed it from JSON.
    a, b = Router(plan), Router(plan_from_json(plan_to_json(plan)))
    for s in batch:
        for now in (NOW, NOW + 30, NOW + 3600):
            assert decide(s, a, now) == decide(s, b, now)
            assert a.route_new(s.key_hash, now) == b.route_new(s.key_hash, now)


@SETTINGS
@given(plans(with_schedule=True), st.floats(-1000, 5000), st.floats(0, 1000))
def test_released_fraction_rises_within_budget(plan: Plan, t: float, dt: float) -> None:
    schedule = plan.rebalance
    assert schedule is not None
    now = NOW + t
    f = released_fraction(schedule, now)
    assert 0.0 <= f <= 1.0
    assert released_fraction(schedule, now + dt) >= f
    elapsed = now - schedule.start
    if elapsed < 0:
        assert f == 0.0
    if schedule.window > 0 and now < release_complete_at(schedule):
        assert f <= max(0.0, elapsed / schedule.window) + 1e-12
    if schedule.max_moves_per_second is not None and schedule.expected_moves:
        budget = schedule.max_moves_per_second * max(0.0, elapsed)
        assert f * schedule.expected_moves <= budget * (1 + 1e-9)
    if now >= release_complete_at(schedule):
        assert f == 1.0 or math.isclose(f, 1.0)


def test_reuses_tables_of_the_previous_router() -> None:
    from limpet.affinity import Backend

    from .strategies import IDS, KEY

    plan = Plan(
        version=1,
        backends=tuple(Backend(id=b, address="10.0.0.1", port=80) for b in IDS[:3]),
        cookie_keys=KEY,
    )
    first = Router(plan)
    second = Router(Plan(version=2, backends=plan.backends, cookie_keys=KEY), previous=first)
    assert second.target is first.target
