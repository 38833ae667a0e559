"""Bounded loads for new sessions: caps, the per-key preference walk and slow start."""

from __future__ import annotations

import math

from hypothesis import given, settings
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
)
from limpet.affinity.bounded import load_cap

from .strategies import IDS, KEY, NOW, hashes

SIZE = 257


def router(
    n: int, *, load_factor: float = 1.25, weights: list[int] | None = None, **kw: object
) -> Router:
    ws = weights or [1] * n
    backends = tuple(
        Backend(id=IDS[i], address="10.0.0.1", port=80, weight=ws[i]) for i in range(n)
    )
    plan = Plan(
        version=1,
        backends=backends,
        balance=BalanceSettings(load_factor=load_factor, **kw),  # type: ignore[arg-type]
        cookie_keys=KEY,
        slot_table_size=SIZE,
    )
    return Router(plan)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=1, max_value=8),
    st.floats(1.0, 3.0),
    hashes,
    st.lists(st.integers(min_value=0, max_value=50), min_size=8, max_size=8),
)
def test_new_session_goes_under_its_cap(n: int, lf: float, h: int, counts: list[int]) -> None:
    r = router(n, load_factor=lf)
    loads = {IDS[i]: counts[i] for i in range(n)}
    loads[BackendId("draining-elsewhere")] = 10_000  # not a member: not counted
    total = sum(counts[:n])
    chosen = r.route_new(h, NOW, loads)
    assert chosen in r.members
    cap = math.ceil(lf * (total + 1) / n)
    assert loads[chosen] < cap
    owner = r.owner(h)
    assert owner is not None
    if loads[owner] < cap:
        assert chosen == owner
    else:
        # The first backend under its cap in the key's preference order.
        order = r.preference(h)
        assert chosen == next(b for b in order if loads[b] < cap)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=8), hashes)
def test_preference_is_a_deterministic_permutation_owner_first(n: int, h: int) -> None:
    a, b = router(n), router(n)
    order = a.preference(h)
    assert order == b.preference(h)
    assert sorted(order) == sorted(a.members)
    assert order[0] == a.owner(h)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=2, max_value=8),
    st.floats(1.0, 2.0),
    st.lists(st.integers(min_value=1, max_value=4), min_size=8, max_size=8),
)
def test_placing_many_sessions_never_exceeds_the_bound(
    n: int, lf: float, weights: list[int]
) -> None:
    r = router(n, load_factor=lf, weights=weights)
    loads = dict.fromkeys(r.members, 0)
    total_w = sum(weights[:n])
    sessions = 400
    for i in range(sessions):
        chosen = r.route_new(key_hash(str(i).encode()), NOW, loads)
        assert chosen is not None
        loads[chosen] += 1
    for i, bid in enumerate(IDS[:n]):
        assert loads[bid] <= math.ceil(lf * sessions * weights[i] / total_w)


def test_slow_start_limits_a_warming_backend() -> None:
    backends = (
        Backend(id=IDS[0], address="10.0.0.1", port=80),
        Backend(id=IDS[1], address="10.0.0.1", port=80),
        Backend(
            id=IDS[2], address="10.0.0.1", port=80, state=BackendState.WARMING, warming_since=NOW
        ),
    )
    plan = Plan(
        version=1,
        backends=backends,
        balance=BalanceSettings(load_factor=1.25, slow_start=100),
        cookie_keys=KEY,
        slot_table_size=SIZE,
    )
    r = Router(plan)
    loads = {IDS[0]: 50, IDS[1]: 50, IDS[2]: 1}
    # Just started: the ramp is at its floor, so one session already fills it.
    assert r.weight_at(IDS[2], NOW) == 1.0
    assert not r.under_cap(IDS[2], NOW, loads)
    # Half-way: weight 50 of 250 total, cap ceil(1.25 x 102 x 50 / 250) = 26.
    assert r.weight_at(IDS[2], NOW + 50) == 50.0
    assert r.cap(IDS[2], NOW + 50, loads) == 26
    assert r.cap(IDS[2], NOW + 200, loads) == math.ceil(1.25 * 102 / 3)
    for i in range(50):
        chosen = r.route_new(key_hash(b"%d" % i), NOW, loads)
        assert chosen != IDS[2]


def test_rebalance_waits_while_the_target_is_full() -> None:
    old = {IDS[0]: 100, IDS[1]: 100}
    backends = tuple(Backend(id=b, address="10.0.0.1", port=80) for b in IDS[:3])
    schedule = RebalanceSchedule.from_weights(old, from_size=SIZE, start=NOW - 10, window=0)
    plan = Plan(
        version=2, backends=backends, rebalance=schedule, cookie_keys=KEY, slot_table_size=SIZE
    )
    r = Router(plan)
    h = next(
        h for h in range(10_000) if r.owner(h) == IDS[2] and r.source_owners[h % SIZE] != IDS[2]
    )
    s = Session(backend=r.source_owners[h % SIZE], key_hash=h, last_seen=NOW - 60, created=NOW - 61)
    moving = decide(s, r, NOW)
    assert moving.reason is Reason.REBALANCE
    assert moving.backend == IDS[2]
    full = {IDS[0]: 10, IDS[1]: 10, IDS[2]: 100}
    assert decide(s, r, NOW, loads=full) is KEEP
    assert decide(s, r, NOW, loads={IDS[0]: 10, IDS[1]: 10, IDS[2]: 0}) == moving


def test_load_cap_formula() -> None:
    assert load_cap(1.25, 99, 1, 4) == math.ceil(1.25 * 100 / 4)
    assert load_cap(1.0, 0, 1, 1) == 1


def test_no_backend_means_no_route() -> None:
    plan = Plan(
        version=1,
        backends=(Backend(id=IDS[0], address="10.0.0.1", port=80, state=BackendState.DRAINING),),
        cookie_keys=KEY,
    )
    r = Router(plan)
    assert r.route_new(123, NOW) is None
    assert r.route_new(123, NOW, {}) is None
    assert r.owner(123) is None
    assert r.preference(123) == []
    s = Session(backend=IDS[0], key_hash=123, last_seen=NOW - 60, created=NOW - 61)
    decision = decide(s, r, NOW)
    assert decision.reason is Reason.DRAIN
    assert decision.backend is None
