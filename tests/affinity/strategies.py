"""Hypothesis strategies shared by the affinity tests: plans with small slot tables."""

from __future__ import annotations

from hypothesis import strategies as st

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
    Session,
    SessionStoreSettings,
)

NOW = 1_700_000_000.0
IDS = [BackendId(f"b{i}") for i in range(8)]
KEY = (CookieKey(id="k1", secret=b"0123456789abcdef"),)

states = st.sampled_from([BackendState.ACTIVE] * 4 + list(BackendState))
"""Every state, Active most often (so serving-only properties filter out few plans)."""
hashes = st.integers(min_value=0, max_value=(1 << 64) - 1)


@st.composite
def plans(draw: st.DrawFn, *, with_schedule: bool | None = None) -> Plan:
    """A valid plan around :data:`NOW`, with a small slot table so routers build quickly."""
    n = draw(st.integers(min_value=1, max_value=len(IDS)))
    backends = []
    for bid in IDS[:n]:
        state = draw(states)
        backends.append(
            Backend(
                id=bid,
                address="10.0.0.1",
                port=8080,
                state=state,
                weight=draw(st.integers(min_value=1, max_value=5)),
                warming_since=NOW - draw(st.floats(0, 120))
                if state is BackendState.WARMING
                else None,
                drain_deadline=(
                    NOW + draw(st.floats(-60, 60)) if state is BackendState.DRAINING else None
                ),
            )
        )
    size = draw(st.sampled_from([1, 13, 257]))
    schedule = None
    if with_schedule or (with_schedule is None and draw(st.booleans())):
        previous = draw(
            st.lists(st.sampled_from(IDS[: n + 2]), min_size=1, max_size=8, unique=True)
        )
        expected = draw(st.none() | st.integers(min_value=0, max_value=100_000))
        # A rate needs the estimate it is spread over (the plan rejects one alone).
        rate = None if expected is None else draw(st.none() | st.floats(0.5, 100))
        schedule = RebalanceSchedule.from_weights(
            {b: draw(st.integers(min_value=1, max_value=5)) for b in previous},
            from_size=draw(st.sampled_from([size, 13])),
            start=NOW - draw(st.floats(-100, 1000)),
            window=draw(st.floats(0, 600)),
            min_idle=draw(st.floats(0, 60)),
            max_moves_per_second=rate,
            expected_moves=expected,
        )
    granularity = draw(st.none() | st.integers(min_value=1, max_value=15))
    return Plan(
        version=draw(st.integers(min_value=1, max_value=1000)),
        backends=tuple(backends),
        affinity=AffinitySettings(last_seen_granularity=granularity),
        balance=BalanceSettings(
            load_factor=draw(st.floats(1.0, 3.0)), slow_start=draw(st.floats(0, 300))
        ),
        drain=DrainSettings(min_idle=draw(st.floats(0, 60))),
        rebalance=schedule,
        session_store=draw(
            st.none() | st.just(SessionStoreSettings(address="127.0.0.1:6379", database=1))
        ),
        cookie_keys=KEY,
        slot_table_size=size,
    )


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    """A session pinned to one of :data:`IDS` or an unknown id, seen before :data:`NOW`."""
    idle = draw(st.floats(0, 4000))
    age = idle + draw(st.floats(0, 90000))
    return Session(
        backend=draw(st.sampled_from([*IDS, BackendId("unknown")])),
        key_hash=draw(hashes),
        last_seen=NOW - idle,
        created=NOW - age,
    )
