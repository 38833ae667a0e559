"""model/counts: distinct live sessions per backend from several proxies, counted once."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.controller.model.counts import (
    HASH_SPACE,
    ProxyCounts,
    Sketch,
    combine,
    parse_counts,
    union_estimate,
)


def _stats(
    backends: dict[str, dict[str, object]],
    store: dict[str, int] | None = None,
    cluster: dict[str, object] | None = None,
) -> dict[str, object]:
    """A stats body as ``limpet proxy`` serves it (``sessionStore`` is ``{}`` without a
    store, ``clusterSessions`` ``null`` while the store is down or absent)."""
    return {
        "planVersion": 3,
        "backends": backends,
        "sessionStore": store or {},
        "clusterSessions": cluster,
    }


def _sketch(hashes: set[int], k: int) -> dict[str, object]:
    smallest = sorted(hashes)[:k]
    return {"k": k, "hashes": [f"{h:016x}" for h in smallest]}


def test_without_sketches_the_max_not_the_sum() -> None:
    # The same 5 users through both proxies, and 2 more through the second only.
    a = parse_counts(_stats({"b1": {"sessions": 5}}))
    b = parse_counts(_stats({"b1": {"sessions": 7}, "b2": {"sessions": 1}}))
    counts = combine({"p0": a, "p1": b})
    assert counts.sessions == {"b1": 7, "b2": 1}  # a lower bound; the sum (12) over-counts
    assert counts.method == {"b1": "max", "b2": "max"}
    assert counts.total == 8


def test_complete_sketches_count_exactly() -> None:
    rng = random.Random(1)
    users = {rng.randrange(HASH_SPACE) for _ in range(40)}
    assert len(users) == 40
    ordered = sorted(users)
    via_a, via_b = set(ordered[:30]), set(ordered[10:])  # 20 users seen by both
    a = parse_counts(_stats({"b1": {"sessions": 30, "sketch": _sketch(via_a, 256)}}))
    b = parse_counts(_stats({"b1": {"sessions": 30, "sketch": _sketch(via_b, 256)}}))
    counts = combine({"p0": a, "p1": b})
    assert counts.sessions == {"b1": 40}
    assert counts.method == {"b1": "sketch"}


def test_one_proxy_without_a_sketch_falls_back_to_max() -> None:
    a = parse_counts(_stats({"b1": {"sessions": 3, "sketch": _sketch({1, 2, 3}, 16)}}))
    b = parse_counts(_stats({"b1": {"sessions": 4}}))
    counts = combine({"p0": a, "p1": b})
    assert (counts.sessions["b1"], counts.method["b1"]) == (4, "max")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=300, max_value=20_000),
    replicas=st.integers(min_value=1, max_value=4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_full_sketches_estimate_the_union(n: int, replicas: int, seed: int) -> None:
    rng = random.Random(seed)
    users = [rng.randrange(HASH_SPACE) for _ in range(n)]
    n = len(set(users))
    seen: list[set[int]] = [set() for _ in range(replicas)]
    for h in users:  # each user reached one to all replicas
        for r in rng.sample(range(replicas), rng.randint(1, replicas)):
            seen[r].add(h)
    k = 256
    estimate = union_estimate(Sketch(k=k, hashes=frozenset(sorted(s)[:k])) for s in seen if s)
    # KMV's relative standard error is about 1/sqrt(k - 2) (6.3 %); 5 of them never fails.
    assert abs(estimate - n) <= 5 * n / (k - 2) ** 0.5, (estimate, n)


def test_the_store_count_wins_and_its_state_is_reported() -> None:
    up = {"flushes": 9, "fallbacks": 0, "written": 40, "dropped": 0, "up": 1}
    down = {"flushes": 3, "fallbacks": 12, "written": 10, "dropped": 0, "up": 0}
    counts = combine(
        {
            "p0": parse_counts(_stats({"b1": {"sessions": 50}}, up, {"b1": 19, "b2": 4})),
            "p1": parse_counts(_stats({"b1": {"sessions": 40}}, up, {"b1": 17})),
            "p2": parse_counts(_stats({"b1": {"sessions": 9}}, down, None)),
        }
    )
    assert counts.sessions == {"b1": 19, "b2": 4}
    assert counts.method == {"b1": "store", "b2": "store"}
    assert counts.store_connected == 2
    assert counts.store_unreachable == {"p2": "its write-backs fail"}


def test_no_store_not_flushed_yet_or_behind_is_neither_connected_nor_down() -> None:
    fresh = {"flushes": 0, "fallbacks": 0, "written": 0, "dropped": 0, "up": 0}
    # Back after an outage, writing what it routed alone meanwhile: its write-backs answer.
    behind = {"flushes": 5, "fallbacks": 3, "written": 9, "dropped": 0, "up": 0, "behind": 1}
    for store in (None, fresh, behind):
        counts = combine({"p0": parse_counts(_stats({"b1": {"sessions": 2}}, store))})
        assert counts.store_connected == 0
        assert counts.store_unreachable == {}
        assert counts.method == {"b1": "max"}


def test_every_store_down_falls_back_to_the_proxies_counts() -> None:
    down = {"flushes": 1, "fallbacks": 2, "written": 1, "dropped": 0, "up": 0}
    counts = combine(
        {
            "p0": parse_counts(_stats({"b1": {"sessions": 5}}, down)),
            "p1": parse_counts(_stats({"b1": {"sessions": 3}}, down)),
        }
    )
    assert counts.sessions == {"b1": 5}
    assert set(counts.store_unreachable) == {"p0", "p1"}


def test_drain_live_counts_only_recent_sessions() -> None:
    def draining(b1: dict[str, object]) -> ProxyCounts:
        return parse_counts(_stats({"b1": {**b1, "state": "Draining"}}))

    # 6 sessions on the draining b1, none active within drain.minIdle on either proxy.
    a = draining({"sessions": 6, "drainLive": 0})
    b = draining({"sessions": 4, "drainLive": 0})
    assert combine({"p0": a, "p1": b}).drain_live == {"b1": 0}
    # One proxy still serves a live one there.
    c = draining({"sessions": 4, "drainLive": 1})
    assert combine({"p0": a, "p1": c}).drain_live == {"b1": 1}
    # A proxy that does not report drainLive: its whole count is taken as live.
    d = draining({"sessions": 2})
    assert combine({"p0": a, "p1": d}).drain_live == {"b1": 2}


def test_drain_is_judged_only_from_stats_read_under_the_drain_plan() -> None:
    """Stats read before a proxy ran the drain's plan (b1 still Active there, or not
    listed yet, or never read) say nothing about live sessions: no figure, so no
    DrainEmpty, rather than a 0 for sessions that stay."""
    a = parse_counts(_stats({"b1": {"sessions": 0, "drainLive": 0, "state": "Draining"}}))
    before = parse_counts(_stats({"b1": {"sessions": 0, "state": "Active"}}))
    assert combine({"p0": a, "p1": before}).drain_live == {}
    assert combine({"p0": a, "p1": parse_counts(_stats({}))}).drain_live == {}
    assert combine({"p0": a, "p1": ProxyCounts()}).drain_live == {}
    assert combine({"p0": a}).drain_live == {"b1": 0}


@pytest.mark.parametrize(
    "junk",
    [
        {"backends": "nope"},
        {"backends": {"b1": {"sessions": -3, "drainLive": "x"}}},
        {"backends": {"b1": {"sessions": 2, "sketch": {"k": 2, "hashes": []}}}},
        {"backends": {"b1": {"sessions": 2, "sketch": {"k": 8, "hashes": ["zz"]}}}},
        {"backends": {"b1": {"sessions": 2, "sketch": {"k": 8, "hashes": ["1", "01"]}}}},
        {"backends": {"b1": {"sketch": {"k": 8, "hashes": [f"{HASH_SPACE:x}"]}}}},
        {"backends": {"b1": {}}, "sessionStore": {"up": "yes"}},
        {"backends": {}, "sessionStore": {"up": 1}, "clusterSessions": {"b1": True}},
        {"backends": {}, "sessionStore": [], "clusterSessions": [3]},
    ],
)
def test_malformed_fields_are_ignored(junk: dict[str, object]) -> None:
    parsed = parse_counts(junk)
    assert all(b.sketch is None for b in parsed.backends.values())
    assert all(b.sessions >= 0 for b in parsed.backends.values())
    counts = combine({"p": parsed})
    assert all(n >= 0 for n in counts.sessions.values())


def test_no_proxies_no_counts() -> None:
    assert combine({}).sessions == {}
    assert combine({"p": ProxyCounts()}).total == 0
