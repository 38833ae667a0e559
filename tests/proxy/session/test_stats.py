"""SessionRouter statistics and their merge across worker processes."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.affinity import AffinitySettings, AffinityType, BackendState, DrainSettings, Plan
from limpet.controller.model.counts import combine, parse_counts
from limpet.proxy.session.routing import SessionRouter
from limpet.proxy.session.stats import merge_stats

from ..routing_helpers import ABC, T0, Client, Clock, be, mkplan, mkrouter


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


def _replicas(n: int, clock: Clock, plan: Plan) -> list[SessionRouter]:
    return [mkrouter(clock, plan) for _ in range(n)]


def _combined(routers: list[SessionRouter]) -> dict[str, int]:
    """What the operator makes of the replicas' ``GET /v1/stats`` bodies."""
    proxies = {
        f"p{n}": parse_counts(json.loads(json.dumps(r.stats().to_dict())))
        for n, r in enumerate(routers)
    }
    counts = combine(proxies)
    assert set(counts.method.values()) <= {"sketch"}
    return dict(counts.sessions)


@settings(max_examples=25, deadline=None)
@given(users=st.integers(0, 120), replicas=st.integers(1, 4), seed=st.integers(0, 1 << 16))
def test_replicas_sketches_count_distinct_cookie_sessions_exactly_below_k(
    users: int, replicas: int, seed: int
) -> None:
    """Users that pick a replica at random per request are in several replicas' own
    counts; the union of the sketches counts each once (exactly, below k per backend)."""
    rng = random.Random(seed)
    clock = Clock()
    routers = _replicas(replicas, clock, mkplan(1, ABC))
    truth: dict[str, set[int]] = {}
    clients = [Client() for _ in range(users)]
    for _ in range(3):
        for n, c in enumerate(clients):
            route = c.get(rng.choice(routers))
            truth.setdefault(route.backend_id, set()).add(n)
        clock.t += 1
    got = _combined(routers)
    assert {b: n for b, n in got.items() if n} == {b: len(s) for b, s in truth.items()}
    if replicas > 1 and users >= 30:
        summed = sum(
            b["sessions"] for r in routers for b in r.stats().to_dict()["backends"].values()
        )
        assert summed > sum(got.values())  # what the old sum would have claimed


def test_learned_keys_hash_the_same_on_every_replica() -> None:
    """Header sessions: the sketch hash is the key's, so replicas agree on it. (Without
    a store, replicas may place one key on two backends: it is then a session on each.)"""
    rng = random.Random(3)
    clock = Clock()
    plan = mkplan(1, ABC, affinity=AffinitySettings(type=AffinityType.HEADER, header_name="x-user"))
    routers = _replicas(3, clock, plan)
    truth: dict[str, set[int]] = {}
    for _ in range(4):
        for n in range(50):
            client = Client(other=None)
            route = client.get(rng.choice(routers), headers=[(b"x-user", b"u%d" % n)])
            truth.setdefault(route.backend_id, set()).add(n)
    got = _combined(routers)
    assert {b: n for b, n in got.items() if n} == {b: len(s) for b, s in truth.items()}
    assert (
        sum(b["sessions"] for r in routers for b in r.stats().to_dict()["backends"].values()) > 100
    )


def test_a_full_sketch_is_k_ascending_hex_hashes_and_estimates_the_count() -> None:
    clock = Clock()
    routers = _replicas(2, clock, mkplan(1, [be("a")]))
    rng = random.Random(5)
    for _ in range(2000):
        Client().get(rng.choice(routers))
    sketch = routers[0].stats().to_dict()["backends"]["a"]["sketch"]
    assert sketch["k"] == 256
    assert len(sketch["hashes"]) == 256
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in sketch["hashes"])
    assert [int(h, 16) for h in sketch["hashes"]] == sorted({int(h, 16) for h in sketch["hashes"]})
    estimate = _combined(routers)["a"]
    assert 2000 * 0.75 < estimate < 2000 * 1.25  # 4 standard errors at k = 256


def test_drain_live_counts_sessions_a_drain_keeps() -> None:
    """A Draining backend reports ``drainLive``: its sessions seen within ``minIdle``
    (plus the cookie's step, as the router measures a cached cookie session); 0 once
    every remaining one has been idle that long, while ``sessions`` still counts them."""
    clock = Clock()
    drain = DrainSettings(min_idle=4.0)
    r = mkrouter(clock, mkplan(1, [be("a"), be("b")], drain=drain))
    clients = [Client() for _ in range(40)]
    for c in clients:
        c.get(r)
    on_a = [c for c in clients if c.get(r).backend_id == "a"]
    assert "drainLive" not in r.stats().to_dict()["backends"]["a"]
    r.load_plan(mkplan(2, [be("a", BackendState.DRAINING), be("b")], drain=drain))
    step = r.plan.granularity if r.plan is not None else 0
    clock.t += 2
    busy = on_a[:5]
    for c in busy:
        assert c.get(r).backend_id == "a"  # not idle yet: stays
    a = r.stats().to_dict()["backends"]["a"]
    assert a["drainLive"] == len(on_a)
    assert "drainLive" not in r.stats().to_dict()["backends"]["b"]
    clock.t += 4 + step - 2 + 0.1  # the idle ones are past minIdle plus a step
    a = r.stats().to_dict()["backends"]["a"]
    assert a["drainLive"] == len(busy)
    assert a["sessions"] == len(on_a)
    clock.t += 2.0
    a = r.stats().to_dict()["backends"]["a"]
    assert a["drainLive"] == 0
    assert a["sessions"] == len(on_a)
    for c in on_a:
        assert c.get(r).backend_id == "b"  # each one idle: moved at its next request
    assert r.stats().to_dict()["backends"]["a"]["sessions"] == 0


def test_merge_unites_sketches_and_sums_drain_live() -> None:
    def part(hashes: set[int], live: int | None, *, sketch: bool = True) -> dict[str, Any]:
        b: dict[str, object] = {
            "sessions": len(hashes),
            "requests": 1,
            "health": "up",
            "state": "Draining",
        }
        if sketch:
            b["sketch"] = {"k": 4, "hashes": [f"{h:016x}" for h in sorted(hashes)[:4]]}
        if live is not None:
            b["drainLive"] = live
        return {"planVersion": 1, "backends": {"a": b}}

    merged = merge_stats([part({9, 3, 7}, 2), part({3, 1, 8, 20, 30}, 0)])["backends"]["a"]
    assert merged["sketch"] == {"k": 4, "hashes": [f"{h:016x}" for h in (1, 3, 7, 8)]}
    assert merged["drainLive"] == 2
    partial = merge_stats([part({1}, 1), part({2}, None)])["backends"]["a"]
    assert "drainLive" not in partial  # a worker without it: no figure, not a low one
    no_sketch = part({5}, 0, sketch=False)
    assert "sketch" not in merge_stats([part({1}, 0), no_sketch])["backends"]["a"]


@settings(max_examples=60, deadline=None)
@given(
    hashes=st.sets(st.integers(0, (1 << 64) - 1), max_size=300),
    workers=st.integers(1, 4),
    k=st.integers(3, 64),
    seed=st.integers(0, 1000),
)
def test_merged_worker_sketches_are_the_sketch_of_all_their_sessions(
    hashes: set[int], workers: int, k: int, seed: int
) -> None:
    """Spreading sessions over workers (a session may reach several) and merging gives
    what one process holding them all would report, and the operator counts it exactly
    below k."""
    rng = random.Random(seed)
    shares: list[set[int]] = [set() for _ in range(workers)]
    for h in hashes:
        for w in rng.sample(range(workers), rng.randint(1, workers)):
            shares[w].add(h)
    parts = [
        {"backends": {"a": {"sketch": {"k": k, "hashes": [f"{h:016x}" for h in sorted(s)[:k]]}}}}
        for s in shares
    ]
    merged = merge_stats(parts)["backends"]["a"]["sketch"]
    assert merged == {"k": k, "hashes": [f"{h:016x}" for h in sorted(hashes)[:k]]}
    if len(hashes) < k:
        assert combine({"p": parse_counts(merge_stats(parts))}).sessions["a"] == len(hashes)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["cookie", "header"]),
    offsets=st.lists(st.integers(0, 100), min_size=1, max_size=30),
    min_idle=st.sampled_from([1.0, 2.0, 4.0]),
    later=st.integers(0, 70),
)
def test_drain_live_is_what_the_drain_decision_keeps(
    mode: str, offsets: list[int], min_idle: float, later: int
) -> None:
    """At any instant, a Draining backend's ``drainLive`` is exactly the number of its
    sessions that its next request would leave where they are (one router)."""
    clock = Clock()
    affinity = (
        AffinitySettings()
        if mode == "cookie"
        else AffinitySettings(type=AffinityType.HEADER, header_name="x-user")
    )
    drain = DrainSettings(min_idle=min_idle)
    plan = mkplan(1, [be("a"), be("b")], affinity=affinity, drain=drain)
    r = mkrouter(clock, plan)
    clients: list[tuple[Client, list[tuple[bytes, bytes]]]] = []
    for n, offset in enumerate(sorted(offsets)):
        clock.t = T0 + offset / 10  # requests spread over 10 s, a decisecond apart
        c, headers = Client(), [(b"x-user", b"u%d" % n)]
        c.get(r, headers=headers)
        clients.append((c, headers))
    on_a = [(c, h) for c, h in clients if c.get(r, headers=h).backend_id == "a"]
    r.load_plan(
        mkplan(2, [be("a", BackendState.DRAINING), be("b")], affinity=affinity, drain=drain)
    )
    # Half a tick off the table's decisecond grid: exactly on it, the float sums of the
    # drain decision and of the count can round to different sides (one tick of the
    # table's resolution, which docs/plan.md states).
    clock.t = T0 + 10 + later / 10 + 0.05
    live = r.stats().to_dict()["backends"]["a"]["drainLive"]
    stays = sum(c.get(r, headers=h).backend_id == "a" for c, h in on_a)
    assert live == stays
