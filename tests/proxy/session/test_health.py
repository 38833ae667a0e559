"""Passive health: down marks, capped exponential back-off, probe-on-expiry."""

from __future__ import annotations

import pytest

from limpet.proxy.session.health import HealthState, PassiveHealth


def test_up_by_default() -> None:
    h = PassiveHealth()
    assert h.available("a", 0.0)
    assert h.state("a", 0.0).state is HealthState.UP
    assert not h.any_down()


def test_backoff_doubles_and_caps() -> None:
    h = PassiveHealth(base=0.5, cap=4.0)
    assert [h.backoff(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert h.backoff(10_000) == 4.0


def test_down_then_probe_then_up() -> None:
    h = PassiveHealth(base=1.0, cap=8.0)
    g = h.generation
    h.failed("a", 100.0)
    assert h.generation == g + 1
    assert not h.available("a", 100.5)
    assert h.available("b", 100.5)
    v = h.state("a", 100.5)
    assert v.state is HealthState.DOWN
    assert v.down_for == pytest.approx(0.5)
    # Expiry: eligible again as a probe.
    assert h.available("a", 101.0)
    assert h.state("a", 101.0).state is HealthState.PROBING
    # The probe fails: down again for twice as long.
    h.failed("a", 101.0)
    assert not h.available("a", 102.9)
    assert h.available("a", 103.0)
    h.failed("a", 103.0)
    assert not h.available("a", 106.9)
    assert h.state("a", 103.0).consecutive_failures == 3
    # The probe succeeds: up, back-off reset.
    h.succeeded("a")
    assert h.state("a", 107.0).state is HealthState.UP
    h.failed("a", 200.0)
    assert h.available("a", 201.0)


def test_failures_inside_a_down_period_do_not_extend_it() -> None:
    h = PassiveHealth(base=1.0, cap=30.0)
    h.failed("a", 0.0)
    g = h.generation
    h.failed("a", 0.2)  # in-flight connects failing for the same outage
    h.failed("a", 0.9)
    assert h.generation == g
    assert h.available("a", 1.0)
    assert h.state("a", 0.5).consecutive_failures == 1


def test_forget() -> None:
    h = PassiveHealth()
    h.failed("a", 0.0)
    h.failed("b", 0.0)
    h.forget({"b"})
    assert h.available("a", 0.0)
    assert not h.available("b", 0.0)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="back-off"):
        PassiveHealth(base=0)
    with pytest.raises(ValueError, match="back-off"):
        PassiveHealth(base=2, cap=1)


def test_down_set_follows_records_and_time() -> None:
    h = PassiveHealth(base=1.0, cap=8.0)
    assert h.down(0.0) == frozenset()
    h.failed("a", 10.0)
    h.failed("b", 10.5)
    assert h.down(10.6) == {"a", "b"}
    assert h.down(11.2) == {"b"}  # a's down period ended: probing, eligible again
    assert h.down(11.6) == frozenset()
    h.failed("a", 12.0)  # a second failure: down for 2 s
    assert h.down(12.1) == {"a"}
    h.succeeded("a")
    assert h.down(12.2) == frozenset()
    h.failed("c", 20.0)
    h.forget({"a", "b"})
    assert h.down(20.1) == frozenset()
