"""The scenario's phases and the timings derived from the run's length."""

from __future__ import annotations

import pytest

from limpet.demo.backend import SESSION_HEADER
from limpet.demo.scenario import (
    ScenarioSettings,
    drain_timeout,
    header_spec,
    phase_lengths,
    phases,
    pre_stop,
    sticky_spec,
)


def test_phases_are_numbered_in_order_with_the_rollout_on_real_pods() -> None:
    chosen = phases()
    assert [p.name for p, _ in chosen] == [
        "steady",
        "scale-out",
        "drain",
        "failover",
        "rollout",
        "steady-again",
    ]
    assert [p.title.split()[0] for p, _ in chosen] == ["1", "2", "3", "4", "5", "6"]
    assert [p.name for p, _ in chosen if p.failover] == ["failover"]
    assert sum(f for _, f in chosen) == pytest.approx(1.0)


def test_fake_pods_leave_the_rollout_out_and_last_as_long() -> None:
    chosen = phases(rollout=False)
    assert "rollout" not in [p.name for p, _ in chosen]
    assert chosen[-1][0].title == "5 steady again"
    assert sum(phase_lengths(100, rollout=False).values()) == pytest.approx(100)
    assert phase_lengths(100, rollout=False)["drain"] > phase_lengths(100)["drain"]


@pytest.mark.parametrize("duration", [30.0, 48.0, 150.0, 600.0])
def test_a_terminating_pod_serves_past_its_drain_deadline(duration: float) -> None:
    settings = ScenarioSettings(duration=duration)
    timeout = drain_timeout(settings)
    assert 1 <= timeout < phase_lengths(duration)["drain"]
    # Users pause up to 8 s: every one of them comes back while the pod still serves.
    assert pre_stop(settings) >= timeout + 5
    assert sticky_spec(settings)["drain"]["timeout"] == f"{timeout}s"


def test_the_header_service_keys_on_the_session_header_with_the_same_windows() -> None:
    settings = ScenarioSettings(duration=48.0)
    cookie, header = sticky_spec(settings), header_spec(settings)
    assert header["affinity"] == {
        "type": "Header",
        "header": {"name": SESSION_HEADER},
        "idleTimeout": cookie["affinity"]["idleTimeout"],
    }
    # Everything but the key is the Cookie service's, so the two are comparable.
    assert {k: v for k, v in header.items() if k != "affinity"} == {
        k: v for k, v in cookie.items() if k != "affinity"
    }
    assert "sessionStore" not in header  # filled in by the stage from its Redis pod
