"""Simulated users against real counter processes (no proxy: the pool's own accounting)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from limpet.demo.users import TrafficSnapshot, UserPool, UserSettings
from tests.demo.conftest import CounterFactory

FAST = UserSettings(
    population=8, burst=(1, 3), think=(0.0, 0.02), pause=(0.0, 0.05), lifetime=(4, 8)
)


async def drive(pool: UserPool, done: Callable[[TrafficSnapshot], bool]) -> None:
    """Run the pool until ``done`` holds for its snapshot (at least 1 s, at most 15 s: a
    loaded machine runs fewer requests a second)."""
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    await asyncio.sleep(1.0)
    await _until(pool, done)
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def _until(pool: UserPool, done: Callable[[TrafficSnapshot], bool]) -> None:
    deadline = time.monotonic() + 15
    while not done(pool.snapshot()):
        assert time.monotonic() < deadline, pool.snapshot()
        await asyncio.sleep(0.05)


async def test_one_pod_keeps_every_session(counters: CounterFactory) -> None:
    pool = UserPool([counters("solo")], settings=FAST, rng=random.Random(1))
    pool.set_phase("steady")
    await drive(pool, lambda s: s.total().requests > 50 and s.total().sessions > FAST.population)
    total = pool.snapshot().total()
    assert total.requests > 50
    assert total.errors == 0
    assert total.broken == 0
    assert total.sessions > FAST.population, "users leave and are replaced"
    assert set(total.verdicts) == {"new", "continued"}
    assert pool.snapshot().live_users == 0, "every user left after stop"


async def test_unsticky_spraying_is_seen_as_broken_sessions(counters: CounterFactory) -> None:
    # Two independent pods picked at random per request: exactly what stickiness prevents.
    pool = UserPool([counters("a"), counters("b")], settings=FAST, rng=random.Random(2))
    pool.set_phase("spray")
    await drive(pool, lambda s: s.phases["spray"].broken > 10)
    snap = pool.snapshot()
    assert snap.phases["spray"].broken > 10
    assert snap.total().errors == 0


async def test_failures_are_counted_per_phase(counters: CounterFactory) -> None:
    url = counters("live")
    dead = "http://127.0.0.1:9/"  # discard port: nothing listens there
    pool = UserPool([url], settings=FAST, rng=random.Random(3))
    pool.set_phase("one")
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    await asyncio.sleep(0.4)
    pool.set_phase("two")
    pool.set_targets([dead])  # the only proxy went away
    await asyncio.sleep(0.4)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    snap = pool.snapshot()
    assert snap.phases["one"].errors == 0
    assert snap.phases["two"].errors > 0
    assert snap.phases["two"].error_samples


async def test_quiesce_lets_every_request_in_flight_finish_and_starts_none(
    counters: CounterFactory,
) -> None:
    pool = UserPool([counters("solo")], settings=FAST, rng=random.Random(4))
    pool.set_phase("steady")
    stop = asyncio.Event()
    task = asyncio.create_task(pool.run(stop))
    await _until(pool, lambda s: s.total().requests > 20)
    await pool.quiesce()
    settled = pool.snapshot()
    assert settled.total().requests > 20
    assert settled.live_users > 0, "users are still there, only quiet"
    await asyncio.sleep(0.3)
    # No request started or ended since: the tallies are final.
    assert pool.snapshot().total().requests == settled.total().requests
    assert pool.snapshot().total().verdicts == settled.total().verdicts
    assert sum(settled.total().verdicts.values()) == settled.total().requests
    stop.set()
    await asyncio.wait_for(task, timeout=10)
