"""bench/engine_cpu.py's untimed mode for instruction counters (``--count``)."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest

from bench import engine_cpu


def test_a_runner_gets_the_workloads_request_step() -> None:
    """The runner is handed the prepared step; what it returns is the measurement."""
    calls: list[int] = []

    def runner(step: Callable[[int], None]) -> engine_cpu.Timing:
        for i in range(3):
            step(i)
            calls.append(i)
        return 1.0, 2.0

    assert engine_cpu.router_us("new", 3, 1, runner=runner) == (1.0, 2.0)
    assert engine_cpu.engine_us("one", 3, 1, runner=runner) == (1.0, 2.0)
    assert calls == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(("workload", "target"), [("new", "engine"), ("one", "router")])
def test_count_leaves_the_collector_as_it_found_it(workload: str, target: str) -> None:
    assert gc.isenabled()
    frozen = gc.get_freeze_count()
    assert engine_cpu.main(["--count", "20", "--workload", workload, "--target", target]) == 0
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("argv", [["--count", "5"], ["--count", "5", "--workload", "new"] * 2])
def test_count_needs_exactly_one_workload(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        engine_cpu.main(argv)
    assert exc.value.code == 2
