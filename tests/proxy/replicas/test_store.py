"""The shared session store with real processes: three ``limpet proxy`` replicas, a real
``redis-server`` (Debian's), counter backends as the oracle, users on a random replica
for every request, in the two modes whose sessions live in cookies (Cookie and AppCookie;
learned keys through the store are ``test_learned_store.py``).

Every replica must report the same cluster-wide session counts, and they must equal the
sessions each backend itself holds (each counted once, not once per replica). Killing
``redis-server`` must not fail a request: the replicas fall back to their own counts and
count the fallback; when it comes back (empty) they resume, with no burst of moves.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    Backend,
    BackendId,
    CookieKey,
    Plan,
    SessionStoreSettings,
)
from limpet.affinity.plan import plan_to_json

from ..conftest import Proxies, Proxy
from .fleet import Counters, RedisServer, Tally, User, rounds

pytestmark = pytest.mark.timeout(180)

USERS = 30


def _held(counters: Counters) -> dict[str, int]:
    return {name: app.stats()["sessions"] for name, app in counters.apps.items()}


def _cluster(replicas: list[Proxy]) -> list[dict[str, int] | None]:
    return [p.stats()["clusterSessions"] for p in replicas]


def _wait_counts(replicas: list[Proxy], want: dict[str, int], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while True:
        got = _cluster(replicas)
        if all(g == want for g in got):
            return
        assert time.monotonic() < deadline, (got, want)
        time.sleep(0.2)


@pytest.mark.parametrize("kind", [AffinityType.COOKIE, AffinityType.APP_COOKIE])
def test_cluster_counts_survive_a_store_outage(
    kind: AffinityType,
    counters: Counters,
    redis: RedisServer,
    proxy: Proxies,
    tmp_path: Path,
) -> None:
    rng = random.Random(11)
    apps = {name: counters.start(name).port for name in ("c1", "c2", "c3")}
    plan = Plan(
        version=1,
        backends=tuple(
            Backend(id=BackendId(n), address="127.0.0.1", port=p) for n, p in apps.items()
        ),
        affinity=AffinitySettings(
            type=kind, app_cookie_name="demo_sid" if kind is AffinityType.APP_COOKIE else None
        ),
        session_store=SessionStoreSettings(address=redis.address, key_prefix="t:", timeout=0.5),
        cookie_keys=(CookieKey(id="k", secret=b"s" * 32),),
    )
    path = tmp_path / "plan.json"
    path.write_text(plan_to_json(plan))
    replicas = [proxy.start("--plan", str(path)) for _ in range(3)]
    users = [User(f"u{i}") for i in range(USERS)]
    total = Tally()

    total.add(rounds(users, replicas, rng, count=3, gap=0.3))
    held = _held(counters)
    assert sum(held.values()) == USERS
    # Each session counted once, by every replica alike, as the backends themselves hold
    # them; each replica's own counts cover the sessions it happened to see.
    _wait_counts(replicas, held)
    local = [sum(b["sessions"] for b in p.stats()["backends"].values()) for p in replicas]
    assert sum(local) > USERS, local
    assert b"t:live:c1" in redis.command("KEYS", "t:*")

    # The store dies: nothing fails, the replicas fall back to their own counts.
    redis.kill()
    total.add(rounds(users, replicas, rng, count=3, gap=0.5))
    time.sleep(1.5)
    for p in replicas:
        store = p.stats()["sessionStore"]
        assert store["up"] == 0, store
        assert store["fallbacks"] > 0, store
        assert p.stats()["clusterSessions"] is None
        assert p.metrics()["limpet_proxy_session_store_up"] == 0

    # It comes back empty: the batches kept and the next requests rebuild the counts.
    redis.start()
    total.add(rounds(users, replicas, rng, count=2, gap=0.3))
    _wait_counts(replicas, _held(counters))
    assert all(p.metrics()["limpet_proxy_session_store_up"] == 1 for p in replicas)

    assert total.verdicts["broken"] == 0, total
    assert not total.errors, total.errors
    assert total.verdicts["new"] == USERS, total
    assert not total.moves, total  # no burst of moves when the store returns
    assert all(sum(p.stats()["migrations"].values()) == 0 for p in replicas)
