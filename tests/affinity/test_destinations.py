"""Bounded loads hold for every destination: new sessions and moves (failover, drain,
rebalance, expired), with backends excluded by the caller (a proxy's down backends).

The cap is recomputed here from the plan, independently of the router: over the eligible
members (Warming and Active, not excluded), ``ceil(loadFactor x (total + 1) x w / W)``
with ``total`` their sessions and ``W`` their slow-start ramped weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from limpet.affinity import (
    KEEP,
    Backend,
    BackendId,
    BackendState,
    BalanceSettings,
    Plan,
    Reason,
    RebalanceSchedule,
    Router,
    Session,
    decide,
    key_hash,
    ramp,
    release_complete_at,
    released_fraction,
    table,
)
from limpet.affinity.plan import plan_from_json, plan_to_json

from .strategies import IDS, KEY, NOW, hashes, plans, sessions

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)

loads_st = st.fixed_dictionaries(
    {b: st.integers(min_value=0, max_value=60) for b in [*IDS, BackendId("unknown")]}
)
excludes = st.frozensets(st.sampled_from(IDS), max_size=4)


def _eligible(plan: Plan, exclude: AbstractSet[BackendId]) -> list[Backend]:
    return [b for b in plan.backends if b.state.takes_new_sessions and b.id not in exclude]


def _weight(plan: Plan, b: Backend, now: float) -> float:
    if b.state is BackendState.WARMING:
        return b.weight * ramp(
            warming_since=b.warming_since, slow_start=plan.balance.slow_start, now=now
        )
    return float(b.weight)


def _under_cap(
    plan: Plan,
    dest: BackendId,
    loads: Mapping[BackendId, int],
    exclude: AbstractSet[BackendId],
    now: float,
) -> bool:
    """``loads[dest] < ceil(loadFactor x (total + 1) x w / W)`` over the eligible members."""
    eligible = _eligible(plan, exclude)
    total = sum(loads[b.id] for b in eligible)
    weights = {b.id: _weight(plan, b, now) for b in eligible}
    cap = plan.balance.load_factor * (total + 1) * weights[dest] / sum(weights.values())
    # A hair of tolerance: the router sums ramped weights in another order, which can
    # move an exact integer by one ulp and so its ceiling by one.
    return loads[dest] < math.ceil(cap + 1e-9)


def _check_destination(
    plan: Plan,
    router: Router,
    h: int,
    dest: BackendId | None,
    loads: Mapping[BackendId, int],
    exclude: AbstractSet[BackendId],
    now: float = NOW,
) -> None:
    eligible = _eligible(plan, exclude)
    if not eligible:
        assert dest is None
        return
    # Some eligible member is always under its cap, so there is always a destination.
    assert dest is not None
    state = plan.backend_map()[dest].state
    assert state.takes_new_sessions  # never Draining, Failed or Gone
    assert dest not in exclude  # never a locally-down backend
    assert _under_cap(plan, dest, loads, exclude, now)
    # ... and it is the first eligible member under its cap in the key's preference order.
    order = [b for b in router.preference(h) if b not in exclude]
    first = next(b for b in order if router.under_cap(b, now, loads, exclude=exclude))
    assert dest == first


@SETTINGS
@given(plans(), hashes, loads_st, excludes)
def test_new_sessions_go_under_the_cap_never_to_excluded(
    plan: Plan, h: int, loads: dict[BackendId, int], exclude: frozenset[BackendId]
) -> None:
    router = Router(plan)
    dest = router.route_new(h, NOW, loads, exclude=exclude)
    _check_destination(plan, router, h, dest, loads, exclude)
    # Without loads: the first eligible member of the preference order.
    plain = router.route_new(h, NOW, exclude=exclude)
    assert plain == next((b for b in router.preference(h) if b not in exclude), None)


@SETTINGS
@given(plans(), sessions(), loads_st, excludes, st.floats(0, 4000))
def test_no_move_goes_over_the_cap_or_to_an_unfit_backend(
    plan: Plan,
    s: Session,
    loads: dict[BackendId, int],
    exclude: frozenset[BackendId],
    later: float,
) -> None:
    router = Router(plan)
    now = NOW + later
    decision = decide(s, router, now, loads=loads, exclude=exclude)
    if decision.keep:
        return
    dest = decision.backend
    assert decision.reason is not None
    if decision.reason is Reason.REBALANCE:
        # A rebalance goes to the new owner only, and only while it is under its cap.
        assert dest == router.owner(s.key_hash)
        assert dest is not None
        assert dest not in exclude
        assert router.under_cap(dest, now, loads, exclude=exclude)
        return
    assert dest == router.route_new(s.key_hash, now, loads, exclude=exclude)
    _check_destination(plan, router, s.key_hash, dest, loads, exclude, now)


@SETTINGS
@given(plans(), sessions(), loads_st, excludes)
def test_sessions_on_excluded_backends_fail_over(
    plan: Plan, s: Session, loads: dict[BackendId, int], exclude: frozenset[BackendId]
) -> None:
    assume(s.backend in exclude)
    router = Router(plan)
    decision = decide(s, router, NOW, loads=loads, exclude=exclude)
    assert decision.reason in (Reason.FAILOVER, Reason.EXPIRED)
    assert decision.backend != s.backend
    _check_destination(plan, router, s.key_hash, decision.backend, loads, exclude)


@SETTINGS
@given(plans(), st.lists(sessions(), min_size=1, max_size=5), loads_st, excludes)
def test_replicas_agree_with_loads_and_exclusions(
    plan: Plan, batch: list[Session], loads: dict[BackendId, int], exclude: frozenset[BackendId]
) -> None:
    a, b = Router(plan), Router(plan_from_json(plan_to_json(plan)))
    for s in batch:
        for now in (NOW, NOW + 45):
            got = decide(s, a, now, loads=loads, exclude=exclude)
            assert got == decide(s, b, now, loads=dict(loads), exclude=set(exclude))
            assert a.route_new(s.key_hash, now, loads, exclude=exclude) == b.route_new(
                s.key_hash, now, loads, exclude=exclude
            )


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=2, max_value=8),
    st.floats(1.0, 2.0),
    st.lists(st.integers(min_value=0, max_value=30), min_size=8, max_size=8),
    st.integers(min_value=0, max_value=7),
)
def test_failover_storm_never_exceeds_the_cap(
    n: int, lf: float, start: list[int], down_index: int
) -> None:
    """Every session of a down backend fails over, one at a time, as a proxy would do it."""
    backends = tuple(Backend(id=IDS[i], address="10.0.0.1", port=80) for i in range(n))
    plan = Plan(
        version=1,
        backends=backends,
        balance=BalanceSettings(load_factor=lf),
        cookie_keys=KEY,
        slot_table_size=257,
    )
    router = Router(plan)
    down = frozenset({IDS[down_index % n]})
    loads = {IDS[i]: start[i] for i in range(n)}
    for i in range(loads[IDS[down_index % n]]):
        s = Session(
            backend=IDS[down_index % n],
            key_hash=key_hash(b"s%d" % i),
            last_seen=NOW - 1,
            created=NOW - 2,
        )
        d = decide(s, router, NOW, loads=loads, exclude=down)
        assert d.reason is Reason.FAILOVER
        assert d.backend is not None
        assert d.backend not in down
        others = sum(loads[b] for b in router.members if b not in down)
        limit = math.ceil(lf * (others + 1) / (n - 1) + 1e-9)
        assert loads[d.backend] + 1 <= limit
        loads[s.backend] -= 1
        loads[d.backend] += 1


def test_excluding_every_member_leaves_no_destination() -> None:
    backends = tuple(Backend(id=b, address="10.0.0.1", port=80) for b in IDS[:3])
    router = Router(Plan(version=1, backends=backends, cookie_keys=KEY, slot_table_size=13))
    everyone = frozenset(IDS[:3])
    loads = dict.fromkeys(IDS[:3], 5)
    assert router.route_new(7, NOW, loads, exclude=everyone) is None
    assert router.route_new(7, NOW, exclude=everyone) is None
    assert router.cap(IDS[0], NOW, loads, exclude=everyone) == 0
    assert router.eligible(everyone) == ()
    s = Session(backend=IDS[0], key_hash=7, last_seen=NOW - 1, created=NOW - 2)
    d = decide(s, router, NOW, loads=loads, exclude=everyone)
    assert d.reason is Reason.FAILOVER
    assert d.backend is None
    # A session on an eligible member stays where it is.
    assert decide(s, router, NOW, loads=loads, exclude=frozenset(IDS[1:3])) is KEEP


def _target_table(plan: Plan) -> Sequence[str]:
    """The plan's current table, built here from the backends' states and weights."""
    serving = (BackendState.WARMING, BackendState.ACTIVE)
    weights: dict[str, int] = {b.id: b.weight for b in plan.backends if b.state in serving}
    return table(weights, plan.slot_table_size)


def _assert_new_sessions_use_the_target(plan: Plan, keys: Sequence[int]) -> None:
    router = Router(plan)
    target = _target_table(plan)
    idle = {b.id: 0 for b in plan.backends}
    for h in keys:
        want = target[h % plan.slot_table_size]
        assert router.route_new(h, NOW) == want
        # No load: every member is under its cap, so bounded loads divert nothing.
        assert router.route_new(h, NOW, idle) == want


def test_new_sessions_use_the_target_table_during_a_rebalance() -> None:
    size = 1031
    backends = (
        *(
            Backend(id=IDS[i], address="10.0.0.1", port=80, weight=w)
            for i, w in enumerate([3, 1, 2, 2])
        ),
        Backend(
            id=IDS[4],
            address="10.0.0.1",
            port=80,
            state=BackendState.WARMING,
            weight=5,
            warming_since=NOW - 5,
        ),
        Backend(id=IDS[5], address="10.0.0.1", port=80, state=BackendState.DRAINING),
    )
    # A scale-out that also changed the table size and a weight: from-table and target
    # disagree on many slots, and the release is half-way, so both are in use.
    schedule = RebalanceSchedule.from_weights(
        {IDS[0]: 3, IDS[1]: 4, IDS[2]: 2, IDS[5]: 1},
        from_size=257,
        start=NOW - 300,
        window=600,
        min_idle=30,
        max_moves_per_second=5,
        expected_moves=1000,
    )
    plan = Plan(
        version=2,
        backends=backends,
        balance=BalanceSettings(slow_start=60),
        rebalance=schedule,
        cookie_keys=KEY,
        slot_table_size=size,
    )
    assert 0 < released_fraction(schedule, NOW) < 1
    source = table(dict[str, int](schedule.from_backends), schedule.from_size)
    target = _target_table(plan)
    rng = random.Random(7)
    keys = [*range(2 * size), *(rng.getrandbits(64) for _ in range(2000))]
    differ = sum(1 for h in keys if source[h % 257] != target[h % size])
    assert differ > len(keys) // 2
    _assert_new_sessions_use_the_target(plan, keys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(plans(with_schedule=True), st.lists(hashes, min_size=1, max_size=50))
def test_new_sessions_never_use_the_from_table(plan: Plan, keys: list[int]) -> None:
    schedule = plan.rebalance
    assert schedule is not None
    assume(schedule.start <= NOW < release_complete_at(schedule))
    assume(any(b.state.takes_new_sessions for b in plan.backends))
    _assert_new_sessions_use_the_target(plan, keys)
