"""Distinct live sessions across proxy replicas (issue 9, part 3), through real sockets.

Three real ``limpet proxy`` replicas, three counter backends (the demo app, which counts
the sessions it holds itself: the oracle), and users that pick a replica at random for
every request. The operator's own :func:`~limpet.controller.model.counts.combine` over
the replicas' real ``GET /v1/stats`` bodies must give each backend's true number of
distinct sessions, where the old sum counted a user once per replica that served them.
Then a drain: ``drainLive`` must reach 0 on every replica as soon as the sessions left
on the pod are idle past ``drain.minIdle`` (plus the cookie's step), while ``sessions``
still counts them; and the next request of each of them moves it, announced.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from limpet.affinity import (
    BackendState,
)
from limpet.affinity.plan import plan_to_json
from limpet.controller.model.counts import SessionCounts, combine, parse_counts

from ..conftest import Proxies, Proxy
from .fleet import Counters, Tally, User, cookie_fleet, push, rounds

pytestmark = pytest.mark.timeout(180)

USERS = 45
REPLICAS = 3
MIN_IDLE = 1.0


def _counts(replicas: list[Proxy]) -> SessionCounts:
    """What the operator makes of the replicas' stats."""
    return combine({f"p{n}": parse_counts(p.stats()) for n, p in enumerate(replicas)})


@pytest.mark.parametrize("mode", ["cookie", "app-cookie"])
def test_replicas_count_each_live_session_once_and_drain_live_empties_promptly(
    mode: str, counters: Counters, proxy: Proxies, tmp_path: Path
) -> None:
    rng = random.Random(93)
    fleet = cookie_fleet(mode, counters, tmp_path, name="counts", min_idle=MIN_IDLE)
    apps = fleet.apps
    first = tmp_path / "plan.json"
    plan = fleet.plan(1)
    first.write_text(plan_to_json(plan))
    replicas = [proxy.start("--plan", str(first)) for _ in range(REPLICAS)]
    users = [User(f"u{i}") for i in range(USERS)]

    steady = rounds(users, replicas, rng, count=5, gap=0.05)
    assert not steady.errors, steady.errors
    assert steady.verdicts["broken"] == 0, steady
    # The oracle: the sessions each counter app holds, as it counts them itself.
    truth = {name: app.stats()["sessions"] for name, app in counters.apps.items()}
    assert sum(truth.values()) == USERS
    assert truth == {b: sum(u.pod == b for u in users) for b in apps}
    counts = _counts(replicas)
    assert dict(counts.method) == dict.fromkeys(apps, "sketch")
    assert dict(counts.sessions) == truth
    summed = sum(b["sessions"] for p in replicas for b in p.stats()["backends"].values())
    print(f"{mode}: {USERS} live users; the replicas' summed counts {summed}")
    assert summed > 2 * USERS  # what status showed before: a user once per replica

    # Drain c1. Its busy users keep it live; once every one of them is idle past
    # minIdle (plus the cookie's step), drainLive is 0 everywhere, long before
    # idleTimeout, though the sessions are still counted.
    on_c1 = [u for u in users if u.pod == "c1"]
    assert len(on_c1) >= 3
    busy = on_c1[:3]
    # Just before the push, so that their next requests come well within minIdle (the
    # stats reads above can take over a second on a loaded machine, after which the
    # proxies would rightly drain them).
    before = rounds(busy, replicas, rng, count=1, gap=0)
    push(replicas, fleet.plan(2, states={"c1": BackendState.DRAINING}, deadline=time.time() + 120))
    step = plan.granularity
    active = rounds(busy, replicas, rng, count=4, gap=0.3)
    assert before.verdicts["continued"] == len(busy), before
    assert active.verdicts["continued"] == 4 * len(busy), active  # busy: kept on c1
    last = time.monotonic()
    counts = _counts(replicas)
    assert counts.drain_live["c1"] >= len(busy), counts
    backends = replicas[0].stats()["backends"]
    assert "drainLive" not in backends["c2"]  # reported for a Draining backend only
    empty_after = None
    live_at = 0.0  # when the last read that still saw a live session began
    while time.monotonic() - last < MIN_IDLE + step + 5:
        began = time.monotonic() - last
        counts = _counts(replicas)
        if counts.drain_live["c1"] == 0:
            empty_after = time.monotonic() - last
            break
        live_at = began
        time.sleep(0.1)
    print(
        f"{mode}: drainLive 0 {empty_after} s after the last request, last seen live by a "
        f"read begun at {live_at:.2f} s (minIdle 1 s, step {step} s)"
    )
    assert empty_after is not None, counts
    assert empty_after >= MIN_IDLE - 0.2
    # No read begun after minIdle plus the step may see a live session (how long the
    # reads themselves take on a loaded machine does not count against the proxy).
    assert live_at <= MIN_IDLE + step + 0.2, live_at
    assert counts.sessions["c1"] == len(on_c1)  # still counted: not yet idleTimeout old

    # drainLive 0 means none stays: each one's next request moves it, announced.
    moved = Tally()
    for u in on_c1:
        u.request(rng.choice(replicas), moved)
    assert not moved.errors, moved.errors
    assert moved.moves["drain"] == len(on_c1), moved
    assert moved.verdicts["broken"] == 0, moved
    assert not any(u.pod == "c1" for u in on_c1)
