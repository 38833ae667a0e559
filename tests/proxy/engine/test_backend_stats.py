"""The per-backend figures without sockets: the histogram's bucket arithmetic (checked
against a plain count, the Prometheus definition ``le`` = "at most"), status classes,
the merge across workers, pruning, and the rendering read back with prometheus-client's
own parser."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from limpet.proxy.engine.backend_stats import (
    DURATION_BOUNDS,
    BackendCounters,
    backends_dict,
    cumulative,
    merge_backends,
    prune,
)
from limpet.proxy.engine.counters import EngineStats
from limpet.proxy.process.backend_metrics import backend_families

durations = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
        st.sampled_from(DURATION_BOUNDS),  # exactly on a bound: counted in its bucket
    ),
    max_size=60,
)


def recorded(values: list[float]) -> BackendCounters:
    c = BackendCounters()
    for v in values:
        c.timed(v)
    return c


@given(durations)
def test_buckets_count_durations_at_most_their_bound(values: list[float]) -> None:
    c = recorded(values)
    pairs = cumulative(c.buckets)
    assert [le for le, _ in pairs] == [*(repr(b) for b in DURATION_BOUNDS), "+Inf"]
    for le, n in pairs:
        assert n == sum(1 for v in values if v <= float(le))
    assert pairs[-1][1] == len(values)
    assert math.isclose(c.duration_sum, math.fsum(values), rel_tol=1e-9, abs_tol=1e-9)


def test_bounds_are_sorted_and_bucket_edges_are_inclusive() -> None:
    assert list(DURATION_BOUNDS) == sorted(set(DURATION_BOUNDS))
    c = recorded([0.0005, 0.00051, 30.0, 30.5])
    assert c.buckets[0] == 1  # le="0.0005" holds 0.0005 itself
    assert c.buckets[1] == 1
    assert c.buckets[-2] == 1  # le="30.0"
    assert c.buckets[-1] == 1  # +Inf only


@given(st.lists(durations, min_size=1, max_size=4))
def test_merge_equals_recording_everything_in_one_place(parts: list[list[float]]) -> None:
    merged = merge_backends(backends_dict({"b": recorded(p)}, timed=True) for p in parts)
    whole = recorded([v for p in parts for v in p]).as_dict()
    assert merged["b"]["duration"]["buckets"] == whole["duration"]["buckets"]
    assert math.isclose(merged["b"]["duration"]["sum"], whole["duration"]["sum"], abs_tol=1e-9)
    assert merged["b"]["errors"] == whole["errors"]


def test_status_classes_and_errors() -> None:
    stats = EngineStats(timing=False)
    for status in (101, 200, 204, 302, 404, 502, 504, 999):
        stats.answered("a", status, 0.0)
    stats.backend("a").error("connect")
    stats.backend("a").error("timeout")
    stats.backend("a").error("timeout")
    d = backends_dict(stats.backends, timed=stats.timing)["a"]
    assert d["responses"] == {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 2, "other": 1}
    assert d["errors"] == {"connect": 1, "reset": 0, "timeout": 2, "invalid_response": 0}
    assert "duration" not in d  # not timed: no histogram at all
    with pytest.raises(KeyError):
        stats.backend("a").error("no-such-kind")


def test_timed_answers_measure_from_the_given_start() -> None:
    stats = EngineStats()
    stats.answered("a", 200, time.perf_counter() - 0.7)  # 0.7 s ago: in le="1.0"
    stats.answered("a", 200, 0.0)  # not timed: counted, never bucketed
    c = stats.backends["a"]
    assert sum(c.buckets) == 1
    assert c.buckets[DURATION_BOUNDS.index(1.0)] == 1
    assert 0.7 <= c.duration_sum < 1.0
    assert c.classes[2] == 2


def test_prune_forgets_backends_off_the_plan() -> None:
    counters = {"a": BackendCounters(), "b": BackendCounters(), "c": BackendCounters()}
    prune(counters, {"a", "c", "d"})
    assert sorted(counters) == ["a", "c"]
    stats = EngineStats()
    stats.answered("gone", 200, 0.0)
    stats.answered("kept", 200, 0.0)
    assert list(stats.as_dict(keep={"kept"})["backends"]) == ["kept"]  # type: ignore[call-overload]
    assert list(stats.backends) == ["kept"]


class _Families(Collector):
    def __init__(self, engine: dict[str, object]) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        yield from backend_families(self.engine)


def exposition(engine: dict[str, object]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(_Families(engine))
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_rendered_families_read_back_by_an_independent_parser() -> None:
    stats = EngineStats()
    b = stats.backend("s1")
    for v in (0.0002, 0.003, 0.003, 0.7, 12.0):
        b.answered(200, 0.0)
        b.timed(v)
    b.answered(503, 0.0)
    b.timed(0.0001)
    b.error("reset")
    got = exposition({"backends": backends_dict(stats.backends, timed=True)})
    buckets = got["limpet_proxy_request_duration_seconds_bucket"]
    assert buckets[(("backend", "s1"), ("le", "0.0005"))] == 2
    assert buckets[(("backend", "s1"), ("le", "0.0025"))] == 2
    assert buckets[(("backend", "s1"), ("le", "0.005"))] == 4
    assert buckets[(("backend", "s1"), ("le", "0.5"))] == 4
    assert buckets[(("backend", "s1"), ("le", "1.0"))] == 5
    assert buckets[(("backend", "s1"), ("le", "+Inf"))] == 6
    assert got["limpet_proxy_request_duration_seconds_count"][(("backend", "s1"),)] == 6
    total = got["limpet_proxy_request_duration_seconds_sum"][(("backend", "s1"),)]
    assert total == pytest.approx(12.7063)
    responses = got["limpet_proxy_backend_responses_total"]
    assert responses[(("backend", "s1"), ("code", "2xx"))] == 5
    assert responses[(("backend", "s1"), ("code", "5xx"))] == 1
    assert responses[(("backend", "s1"), ("code", "4xx"))] == 0
    errors = got["limpet_proxy_backend_errors_total"]
    assert errors[(("backend", "s1"), ("kind", "reset"))] == 1
    assert errors[(("backend", "s1"), ("kind", "connect"))] == 0


def test_untimed_exposition_has_no_histogram() -> None:
    stats = EngineStats(timing=False)
    stats.answered("s1", 200, 0.0)
    got = exposition({"backends": backends_dict(stats.backends, timed=False)})
    assert not any(name.startswith("limpet_proxy_request_duration") for name in got)
    assert got["limpet_proxy_backend_responses_total"][(("backend", "s1"), ("code", "2xx"))] == 1
