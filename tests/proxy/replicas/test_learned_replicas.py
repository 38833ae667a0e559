"""Learned keys across replicas without a store (issue 9): Header, Query and ClientIP
sessions through three real replicas, a random replica for every request, each ClientIP
user from a loopback address of its own (127.0.0.0/8 is all loopback).

While nothing moves, every replica places a new key by its slot, so they agree as long
as no replica's own bounded-load cap diverts a key that another would not: the plan uses
``loadFactor: 100`` (caps never bind at this size) to check exactly that. With real caps
they do diverge (at ``loadFactor: 2`` this run broke 1 to 3 of 30 sessions), and during
a drain or a rebalance these modes can split too, which is why docs/affinity.md
recommends Cookie or AppCookie with several replicas; neither is asserted here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    BalanceSettings,
    Plan,
)
from limpet.affinity.plan import plan_to_json

from ..conftest import Proxies
from .fleet import Counters, User, rounds

pytestmark = pytest.mark.timeout(120)

USERS = 30


@pytest.mark.parametrize("kind", [AffinityType.HEADER, AffinityType.QUERY, AffinityType.CLIENT_IP])
def test_learned_keys_agree_across_replicas_while_nothing_moves(
    kind: AffinityType, counters: Counters, proxy: Proxies, tmp_path: Path
) -> None:
    apps = {name: counters.start(name).port for name in ("c1", "c2", "c3")}
    plan = Plan(
        version=1,
        backends=tuple(
            Backend(id=BackendId(n), address="127.0.0.1", port=p) for n, p in apps.items()
        ),
        affinity=AffinitySettings(type=kind, header_name="X-Demo-Session", query_name="sid"),
        balance=BalanceSettings(load_factor=100.0),
    )
    path = tmp_path / "plan.json"
    path.write_text(plan_to_json(plan))
    replicas = [proxy.start("--plan", str(path)) for _ in range(3)]
    users = [User(f"k{i}", keyed=True, source=f"127.0.0.{10 + i}") for i in range(USERS)]
    tally = rounds(users, replicas, random.Random(5), count=4, gap=0.1)
    assert not tally.errors, tally.errors
    assert tally.verdicts == {"new": USERS, "continued": 3 * USERS}, tally
    assert len({u.pod for u in users}) == 3
    learned = {"HEADER": "header", "QUERY": "query", "CLIENT_IP": "client-ip"}[kind.name]
    assert all(p.stats()["learned"][learned]["entries"] > 0 for p in replicas)
