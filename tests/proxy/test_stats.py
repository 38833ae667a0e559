"""SessionRouter statistics and their merge across worker processes."""

from __future__ import annotations

from limpet.proxy.session.stats import merge_stats

from .routing_helpers import ABC, Client, Clock, mkplan, mkrouter


def test_stats_dict_and_merge() -> None:
    r = mkrouter(Clock(), mkplan(4, ABC))
    for _ in range(10):
        Client().get(r)
    d = r.stats().to_dict()
    assert d["planVersion"] == 4
    assert d["requests"] == 10
    merged = merge_stats([d, d])
    assert merged["requests"] == 20
    assert merged["planVersion"] == 4
    assert sum(b["sessions"] for b in merged["backends"].values()) == 20
    lagging = dict(d, planVersion=3)
    assert merge_stats([d, lagging])["planVersion"] == 3
    assert merge_stats([d, dict(d, planVersion=None)])["planVersion"] is None


def test_merge_takes_the_worst_health_and_sums_learned_tables() -> None:
    up = {
        "planVersion": 2,
        "backends": {"a": {"sessions": 1, "requests": 2, "health": "up", "state": "Active"}},
        "learned": {"header": {"entries": 3}},
    }
    down = {
        "planVersion": 2,
        "backends": {"a": {"sessions": 4, "requests": 5, "health": "down", "state": "Active"}},
        "learned": {"header": {"entries": 4}},
    }
    merged = merge_stats([up, down, up])
    assert merged["backends"]["a"] == {
        "sessions": 6,
        "requests": 9,
        "health": "down",
        "state": "Active",
    }
    assert merged["learned"] == {"header": {"entries": 10}}
    assert merge_stats([])["planVersion"] is None


def test_merge_store_figures_sum_and_up_only_when_every_worker_is() -> None:
    a = {"sessionStore": {"flushes": 3, "fallbacks": 0, "up": 1}, "clusterSessions": {"b": 4}}
    b = {"sessionStore": {"flushes": 2, "fallbacks": 1, "up": 0}, "clusterSessions": None}
    merged = merge_stats([a, b])
    assert merged["sessionStore"] == {"flushes": 5, "fallbacks": 1, "up": 0}
    assert merged["clusterSessions"] == {"b": 4}
    assert merge_stats([a])["sessionStore"]["up"] == 1
