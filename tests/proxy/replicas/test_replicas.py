"""Sessions agree across proxy replicas (issue 9): three real ``limpet proxy`` replicas
with the same backends and cookie key, real counter backends that judge every request
themselves, and users that pick a replica at random for every request.

Phases, in Cookie and in AppCookie mode: steady state; scale-out with a gradual
rebalance (a new plan pushed to every replica through the admin API); a drain; a killed
pod; a replica restarted from its saved plan. Outside the pod kill, no session may
break, and every move must be announced (``Limpet-Session-Moved``): a move the app was
not told about shows as ``broken`` in its own verdict.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from limpet.affinity import (
    AffinityType,
    BackendId,
    BackendState,
    RebalanceSchedule,
)
from limpet.affinity.plan import plan_to_json

from ..conftest import Proxies, Proxy
from .fleet import Counters, Tally, User, cookie_fleet, push, rounds

pytestmark = pytest.mark.timeout(240)

USERS = 36
REPLICAS = 3


@pytest.mark.parametrize("mode", ["cookie", "app-cookie"])
def test_sessions_agree_across_replicas_through_every_phase(
    mode: str, counters: Counters, proxy: Proxies, tmp_path: Path
) -> None:
    rng = random.Random(9)
    fleet = cookie_fleet(mode, counters, tmp_path, name="replicas")
    apps = fleet.apps
    # Started as the operator runs them: from a plan, saving every pushed plan, so that
    # a restarted replica comes back on the newest plan it was given.
    first = tmp_path / "plan.json"
    first.write_text(plan_to_json(fleet.plan(1)))
    replicas: list[Proxy] = []
    for i in range(REPLICAS):
        state = tmp_path / f"state-{i}"
        state.mkdir()
        replicas.append(proxy.start("--plan", str(first), "--state-dir", str(state)))
    push(replicas, fleet.plan(2))
    users = [User(f"u{i}") for i in range(USERS)]
    total = Tally()

    # Steady state: every session stays where its first request put it.
    steady = rounds(users, replicas, rng, count=4, gap=0.2)
    total.add(steady)
    assert steady.verdicts["new"] == USERS, steady
    assert steady.verdicts["continued"] == 3 * USERS, steady
    assert all(len(set(u.pods)) == 1 for u in users)

    # Scale-out: c4 joins; existing sessions move to it gradually, idle ones only.
    apps["c4"] = counters.start("c4").port
    schedule = RebalanceSchedule.from_weights(
        {BackendId(n): 100 for n in ("c1", "c2", "c3")},
        start=time.time(),
        window=3.0,
        min_idle=1.0,
    )
    push(replicas, fleet.plan(3, rebalance=schedule))
    scale = rounds(users, replicas, rng, count=4, gap=1.6)
    total.add(scale)
    assert scale.moves["rebalance"] > 0, scale
    assert sum(u.pod == "c4" for u in users) > 0

    # Drain: c1 takes no new session; its idle sessions leave, announced.
    on_c1 = [u for u in users if u.pod == "c1"]
    assert on_c1
    states = {"c1": BackendState.DRAINING}
    push(replicas, fleet.plan(4, states=states, deadline=time.time() + 60))
    drain = rounds(users, replicas, rng, count=2, gap=2.5)
    total.add(drain)
    assert drain.moves["drain"] >= len(on_c1), drain
    assert not any(u.pod == "c1" for u in users)

    # Pod kill: c2 dies; its sessions fail over (announced), nobody sees an error page.
    killed = {u.name for u in users if u.pod == "c2"}
    counters.apps["c2"].kill()
    kill = rounds(users, replicas, rng, count=2, gap=0.3)
    states["c2"] = BackendState.FAILED
    push(replicas, fleet.plan(5, states=states, deadline=time.time() + 60))
    kill.add(rounds(users, replicas, rng, count=2, gap=0.3))
    total.add(kill)
    assert not kill.errors, kill.errors
    assert kill.moves["failover"] >= len(killed), kill

    # A replica restarts from its saved plan; the others never stopped.
    old = replicas.pop(0)
    old.stop()
    replicas.insert(0, proxy.start(*old.args))
    assert replicas[0].stats()["planVersion"] == 5
    after = rounds(users, replicas, rng, count=3, gap=0.3)
    total.add(after)
    assert after.verdicts["continued"] == 3 * USERS, after

    assert total.verdicts["broken"] == 0, total
    assert not total.errors, total.errors
    # Every move the app saw was announced by a replica, and counted by one.
    migrations = sum(sum(p.stats()["migrations"].values()) for p in replicas[1:])
    assert migrations > 0
    if fleet.affinity.type is AffinityType.APP_COOKIE:
        outcomes = [p.stats()["appCookie"] for p in replicas]
        assert all(n == 0 for o in outcomes for n in o.values()), outcomes
