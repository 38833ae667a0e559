"""Backend lifecycle: EndpointSlice conditions to states, transitions over time, slow start."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.affinity import (
    AffinityError,
    BackendState,
    BackendStatus,
    LifecycleTiming,
    Observation,
    advance,
    observe,
    ramp,
)
from limpet.affinity.lifecycle import MIN_RAMP

TIMING = LifecycleTiming(slow_start=60, drain_timeout=300, gone_after=30, forget_after=600)
W, A, D, F, G = (
    BackendState.WARMING,
    BackendState.ACTIVE,
    BackendState.DRAINING,
    BackendState.FAILED,
    BackendState.GONE,
)


@pytest.mark.parametrize(
    ("ready", "serving", "terminating", "expected"),
    [
        (True, True, False, Observation.READY),
        (None, None, None, Observation.READY),  # nil ready means true
        (True, None, None, Observation.READY),
        (False, False, False, Observation.NOT_SERVING),
        (False, None, None, Observation.NOT_SERVING),  # nil serving defers to ready
        (False, True, True, Observation.SERVING_TERMINATING),
        (False, False, True, Observation.NOT_SERVING),
        (False, None, True, Observation.NOT_SERVING),
        (None, None, True, Observation.SERVING_TERMINATING),
    ],
)
def test_observe(
    ready: bool | None, serving: bool | None, terminating: bool | None, expected: Observation
) -> None:
    assert observe(ready=ready, serving=serving, terminating=terminating) is expected


def test_new_backend_warms_then_activates() -> None:
    s = advance(None, Observation.READY, now=100, timing=TIMING)
    assert s == BackendStatus(state=W, since=100, warming_since=100)
    assert advance(s, Observation.READY, now=159, timing=TIMING) is s
    active = advance(s, Observation.READY, now=160, timing=TIMING)
    assert active is not None
    assert active.state is A
    assert active.warming_since == 100
    assert advance(active, Observation.READY, now=1000, timing=TIMING) is active


def test_no_slow_start_goes_straight_to_active() -> None:
    s = advance(None, Observation.READY, now=5, timing=LifecycleTiming(slow_start=0))
    assert s is not None
    assert s.state is A


def test_terminating_drains_with_a_deadline_kept_across_updates() -> None:
    active = BackendStatus(state=A, since=0)
    d = advance(active, Observation.SERVING_TERMINATING, now=10, timing=TIMING)
    assert d is not None
    assert (d.state, d.drain_deadline) == (D, 310)
    assert advance(d, Observation.SERVING_TERMINATING, now=200, timing=TIMING) is d
    # A draining pod that leaves the slices was deleted: its drain is over, it did not fail.
    gone = advance(d, Observation.ABSENT, now=320, timing=TIMING)
    assert gone == BackendStatus(state=G, since=320)
    failed = advance(d, Observation.NOT_SERVING, now=320, timing=TIMING)
    assert failed == BackendStatus(state=F, since=320)


def test_failed_then_gone_then_forgotten() -> None:
    f = advance(BackendStatus(state=A, since=0), Observation.NOT_SERVING, now=10, timing=TIMING)
    assert f is not None
    assert f.state is F
    assert advance(f, Observation.NOT_SERVING, now=1000, timing=TIMING) is f  # present: stays
    assert advance(f, Observation.ABSENT, now=39, timing=TIMING) is f
    g = advance(f, Observation.ABSENT, now=40, timing=TIMING)
    assert g is not None
    assert g.state is G
    assert advance(g, Observation.ABSENT, now=639, timing=TIMING) is g
    assert advance(g, Observation.ABSENT, now=640, timing=TIMING) is None
    back = advance(g, Observation.NOT_SERVING, now=50, timing=TIMING)
    assert back is not None
    assert back.state is F
    ready = advance(g, Observation.READY, now=60, timing=TIMING)
    assert ready is not None
    assert ready.state is W


def test_unknown_and_absent_stays_unknown() -> None:
    assert advance(None, Observation.ABSENT, now=0, timing=TIMING) is None


def test_a_pod_never_ready_is_not_listed_until_it_is() -> None:
    # The EndpointSlice controller lists a new pod as not ready until its probe passes:
    # that is start-up, not a failure.
    assert advance(None, Observation.NOT_SERVING, now=0, timing=TIMING) is None
    s = advance(None, Observation.READY, now=1, timing=TIMING)
    assert s is not None
    assert s.state is W
    failed = advance(s, Observation.NOT_SERVING, now=2, timing=TIMING)
    assert failed is not None
    assert failed.state is F


def test_flapping_drain_serves_again() -> None:
    d = BackendStatus(state=D, since=0, drain_deadline=300)
    s = advance(d, Observation.READY, now=5, timing=TIMING)
    assert s is not None
    assert s.state is A


@given(
    st.lists(st.sampled_from(list(Observation)), min_size=1, max_size=30),
    st.lists(st.floats(0, 100), min_size=30, max_size=30),
)
def test_state_always_matches_the_latest_observation(
    observations: list[Observation], gaps: list[float]
) -> None:
    status: BackendStatus | None = None
    now = 0.0
    for obs, gap in zip(observations, gaps, strict=False):
        now += gap
        status = advance(status, obs, now=now, timing=TIMING)
        if obs is Observation.READY:
            assert status is not None
            assert status.state in (W, A)
        elif obs is Observation.SERVING_TERMINATING:
            assert status is not None
            assert status.state is D
            assert status.drain_deadline is not None
            assert status.drain_deadline <= now + TIMING.drain_timeout
        elif status is not None:
            assert status.state in (F, G)


def test_ramp() -> None:
    assert ramp(warming_since=None, slow_start=60, now=0) == 1.0
    assert ramp(warming_since=0, slow_start=0, now=0) == 1.0
    assert ramp(warming_since=0, slow_start=60, now=0) == MIN_RAMP
    assert ramp(warming_since=0, slow_start=60, now=30) == 0.5
    assert ramp(warming_since=0, slow_start=60, now=90) == 1.0


def test_state_properties() -> None:
    assert [s for s in BackendState if s.takes_new_sessions] == [W, A]
    assert [s for s in BackendState if s.keeps_sessions] == [W, A, D]


@pytest.mark.parametrize("field", ["slow_start", "drain_timeout", "gone_after", "forget_after"])
def test_bad_timing(field: str) -> None:
    with pytest.raises(AffinityError, match=field):
        LifecycleTiming(**{field: -1.0})
