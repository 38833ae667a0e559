"""The operator's one retry pacing (limpet.controller.model.backoff)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from limpet.controller.model.backoff import Backoff, delay
from limpet.controller.model.settings import RETRY, BackoffSettings


@given(
    st.floats(0.001, 5.0),
    st.floats(0.001, 100.0),
    st.integers(0, 200),
    st.floats(0.0, 0.999999),
)
def test_delay_doubles_caps_and_jitters_by_half(
    initial: float, maximum: float, attempt: int, r: float
) -> None:
    s = BackoffSettings(initial=initial, maximum=maximum)
    base = min(initial * 2**attempt, maximum)
    d = delay(s, attempt, rng=lambda: r)
    assert d == base * (0.5 + r)
    assert 0.5 * base <= d < 1.5 * base


def test_backoff_counts_failures_and_resets() -> None:
    b = Backoff(BackoffSettings(initial=0.1, maximum=0.5), rng=lambda: 0.5)
    assert [round(b.next_delay(), 9) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    b.reset()
    assert b.next_delay() == 0.1


def test_the_default_retry_is_the_watches_old_pacing() -> None:
    assert (RETRY.initial, RETRY.maximum) == (0.1, 10.0)
