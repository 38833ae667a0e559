"""The write-back loop's store client (``proxy/process/store_sync.py``) follows the
router's plan from the moment each plan is installed, against a real ``redis-server``:
the first learned request of a plan naming a store asks that store, a plan naming another
store switches at once (the old client is closed by the next write-back), and a plan
naming none routes from the local tables."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from limpet.affinity import AffinitySettings, AffinityType, SessionStoreSettings
from limpet.proxy.process.redis_store import RedisStore
from limpet.proxy.process.store_sync import StoreSync
from limpet.proxy.session.routing import RequestView, Route, SessionRouter
from limpet.proxy.session.settings import RouterSettings
from limpet.proxy.session.store import Batch

from ..routing_helpers import ABC, Wall, mkplan, mkrouter
from .fleet import RedisServer

pytestmark = pytest.mark.timeout(60)

AFFINITY = AffinitySettings(type=AffinityType.HEADER, header_name="X-S", last_seen_granularity=1)


class Recorded(RedisStore):
    """The real store client, remembering whether it was closed."""

    def __init__(self, settings: SessionStoreSettings) -> None:
        super().__init__(settings)
        self.closed = False

    async def close(self) -> None:
        await super().close()
        self.closed = True


def _recording(made: list[Recorded]) -> Callable[[SessionStoreSettings], Recorded]:
    """A store factory that keeps each client it builds in ``made``."""

    def build(settings: SessionStoreSettings) -> Recorded:
        made.append(Recorded(settings))
        return made[-1]

    return build


def _view(key: str) -> RequestView:
    return RequestView(b"GET", b"/", [(b"X-S", key.encode())], "192.0.2.1", None)


async def _route(router: SessionRouter, key: str) -> Route:
    """The route for ``key``, which must come through the store (a coroutine)."""
    pending = router.dispatch(_view(key))
    assert isinstance(pending, Coroutine), pending
    route = await pending
    assert isinstance(route, Route)
    return route


def _keys(redis: RedisServer, prefix: str) -> int:
    reply = redis.command("KEYS", f"{prefix}*")
    return int(reply.split(b"\r\n", 1)[0][1:])


async def test_the_store_client_follows_each_plan_from_its_install(redis: RedisServer) -> None:
    made: list[Recorded] = []
    first = SessionStoreSettings(address=redis.address, key_prefix="a:", timeout=1.0)
    second = SessionStoreSettings(address=redis.address, key_prefix="b:", timeout=1.0)
    router = SessionRouter(settings=RouterSettings())  # the real clocks
    sync = StoreSync(router, _recording(made))
    try:
        assert router.dispatch(_view("k0")) is None  # no plan: no route, no client
        assert made == []
        router.load_plan(mkplan(1, ABC, affinity=AFFINITY, session_store=first))
        await _route(router, "k1")  # asked at once, no write-back in between
        assert (_keys(redis, "a:"), _keys(redis, "b:")) == (1, 0)

        router.load_plan(mkplan(2, ABC, affinity=AFFINITY, session_store=second))
        await _route(router, "k2")
        assert (_keys(redis, "a:"), _keys(redis, "b:")) == (1, 1)
        assert [s.closed for s in made] == [False, False]  # one in flight may still use it
        assert await sync.flush()
        assert [s.closed for s in made] == [True, False]

        router.load_plan(mkplan(3, ABC, affinity=AFFINITY))  # no store any more
        route = router.dispatch(_view("k3"))
        assert isinstance(route, Route)  # from the local tables, at once
        assert not await sync.flush()
        assert [s.closed for s in made] == [True, True]
        assert router.stats().store == {}
    finally:
        await sync.close()
    assert all(s.closed for s in made)


async def test_a_write_back_in_flight_when_the_plan_switches_says_nothing_of_the_new_store(
    redis: RedisServer,
) -> None:
    """The old store's write-back, still waiting when a plan naming another store is
    installed, fails late (a listener that never answers): that failure is the old
    store's. The new store is not marked down (learned keys keep asking it) and no
    fallback is counted; the batch goes to the new store at the next write-back."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        stalled = SessionStoreSettings(
            address=f"127.0.0.1:{silent.getsockname()[1]}", key_prefix="a:", timeout=0.3
        )
        live = SessionStoreSettings(address=redis.address, key_prefix="b:", timeout=1.0)
        made: list[Recorded] = []
        router = SessionRouter(settings=RouterSettings())
        router.load_plan(mkplan(1, ABC, affinity=AFFINITY, session_store=stalled))
        sync = StoreSync(router, _recording(made))
        try:
            old = asyncio.create_task(sync.flush())
            await asyncio.sleep(0.1)  # the write-back waits on the silent store
            router.load_plan(mkplan(2, ABC, affinity=AFFINITY, session_store=live))
            await _route(router, "k1")
            assert not await old  # failed, on the old store
            await _route(router, "k2")  # the new store is still asked
            assert router.stats().store["fallbacks"] == 0
            assert await sync.flush()
            assert _keys(redis, "b:k:") == 2  # learned keys; the flush wrote its counts too
        finally:
            await sync.close()
        assert [s.closed for s in made] == [True, True]


async def test_a_closed_write_back_loop_builds_no_client_for_a_later_plan(
    redis: RedisServer,
) -> None:
    """After ``close`` (the proxy shutting down), a plan still being installed builds no
    store client that nothing would close: learned keys route from the local tables."""
    made: list[Recorded] = []
    router = SessionRouter(settings=RouterSettings())
    sync = StoreSync(router, _recording(made))
    await sync.close()
    store = SessionStoreSettings(address=redis.address, key_prefix="c:", timeout=1.0)
    router.load_plan(mkplan(1, ABC, affinity=AFFINITY, session_store=store))
    assert isinstance(router.dispatch(_view("k1")), Route)
    assert made == []


class Gated(RedisStore):
    """The real store client, whose write-backs wait for ``gate`` (a write-back in flight
    for as long as the test wants) and are counted."""

    def __init__(self, settings: SessionStoreSettings) -> None:
        super().__init__(settings)
        self.gate = asyncio.Event()
        self.gate.set()
        self.flushes = 0

    async def flush(self, batch: Batch) -> Mapping[str, int]:
        self.flushes += 1
        await self.gate.wait()
        return await super().flush(batch)


@dataclass
class Outage:
    """Replica ``a`` (its write-back loop ``sync``, its store client ``store``) and
    replica ``b`` (client ``b_store``), on one store that went away and is back."""

    a: SessionRouter
    sync: StoreSync
    store: Gated
    b: SessionRouter
    b_store: RedisStore
    wall: Wall
    mode: AffinityType

    async def decide_alone_in_flight(self) -> Route:
        """With A's write-back in flight (its batch taken; ``store.gate`` holds it), A
        places a new key alone: a Header key "k" it routes, or an AppCookie value the
        app sets through it. B comes to believe that A's backend for it is full (so B
        alone would place it elsewhere). Answers A's route."""
        await asyncio.sleep(0.1)  # the write-back has taken its batch and waits
        fresh = RequestView(b"GET", b"/", [], "192.0.2.1", None)
        route = self.a.dispatch(_view("k") if self.mode is AffinityType.HEADER else fresh)
        assert isinstance(route, Route), route  # no coroutine: decided alone
        if self.mode is AffinityType.APP_COOKIE:
            self.a.on_response(route, [b"sid=abc; Path=/"])
        self.b.store_counts({route.backend_id: 10_000})
        return route

    async def route_b(self) -> Route:
        """B's route for the key A placed, through the store."""
        if self.mode is AffinityType.HEADER:
            return await _route(self.b, "k")
        pending = self.b.dispatch(RequestView(b"GET", b"/", [], "192.0.2.1", b"sid=abc"))
        assert isinstance(pending, Coroutine), pending
        route = await pending
        assert isinstance(route, Route)
        return route

    async def close(self) -> None:
        await self.sync.close()
        await self.b_store.close()


@contextlib.asynccontextmanager
async def _outage(
    redis: RedisServer, *, step: int, mode: AffinityType = AffinityType.HEADER
) -> AsyncIterator[Outage]:
    """A's write-back fails (the store killed, so A decides alone), the store restarts
    empty, and A's next write-back will wait at ``store.gate``, which is closed."""
    wall = Wall()
    settings = SessionStoreSettings(address=redis.address, key_prefix="d:", timeout=1.0)
    aff = AffinitySettings(
        type=mode, header_name="X-S", app_cookie_name="sid", last_seen_granularity=step
    )
    plan = mkplan(1, ABC, affinity=aff, session_store=settings)
    made: list[Gated] = []

    def build(s: SessionStoreSettings) -> Gated:
        made.append(Gated(s))
        return made[-1]

    a, b = mkrouter(wall, plan), mkrouter(wall, plan)
    b_store = RedisStore(settings)
    b.attach_keys(b_store)
    scene = Outage(a, StoreSync(a, build), made[0], b, b_store, wall, mode)
    try:
        redis.kill()
        wall.stopped = time.time()  # no request tries the store again meanwhile
        assert not await scene.sync.flush()
        redis.start()
        scene.store.flushes = 0
        scene.store.gate.clear()
        yield scene
    finally:
        await scene.close()


async def test_a_replica_reports_the_store_up_once_it_holds_what_the_replica_decided_alone(
    redis: RedisServer,
) -> None:
    """The write-back that finds the store back carries a batch taken before the replica
    last decided alone. Until that decision is written too, the replica does not report
    the store in use (``up``, which the operator's ReplicasAgree reads), and its next
    write-back carries it. It reported ``up`` at once, and a replica that read the key
    then found no entry and placed the session elsewhere, unannounced."""
    async with _outage(redis, step=1) as scene:
        a = scene.a
        in_flight = asyncio.create_task(scene.sync.flush())
        alone = await scene.decide_alone_in_flight()
        scene.store.gate.set()
        assert await in_flight
        scene.wall.stopped = None
        assert a.stats().store["up"] == 0, a.stats().store
        assert a.stats().store["behind"] == 1, a.stats().store
        assert a.store_behind()
        assert await scene.sync.flush()
        assert (a.stats().store["up"], a.stats().store["behind"]) == (1, 0), a.stats().store
        assert not a.store_behind()
        assert (await scene.route_b()).backend_id == alone.backend_id


@pytest.mark.parametrize("mode", [AffinityType.HEADER, AffinityType.APP_COOKIE])
async def test_the_write_back_loop_writes_what_was_decided_alone_without_waiting_a_step(
    redis: RedisServer, mode: AffinityType
) -> None:
    async with _outage(redis, step=15, mode=mode) as scene:
        loop = asyncio.create_task(scene.sync.run())
        try:
            alone = await scene.decide_alone_in_flight()
            scene.store.gate.set()
            deadline = time.monotonic() + 10  # the loop's next step is 15 s away
            while scene.a.stats().store["up"] != 1:
                assert time.monotonic() < deadline, scene.a.stats().store
                await asyncio.sleep(0.05)
            assert scene.store.flushes == 2  # the one in flight, and one at once
            scene.wall.stopped = None
            assert (await scene.route_b()).backend_id == alone.backend_id
        finally:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)


async def test_a_learned_key_call_that_fails_is_logged_once_until_one_answers(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The router counts each failed call and routes that request alone; the store client
    logs why (the call, how long it took, the error) on the first failure after an
    answer, not on every one, and at most once per interval (here 2 s)."""
    settings = SessionStoreSettings(address=redis.address, key_prefix="e:", timeout=1.0)
    store = RedisStore(settings, failure_log_every=2.0)
    caplog.set_level(logging.WARNING, logger="limpet.proxy.store")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "limpet.proxy.store"]

    try:
        assert await store.get_key(b"k") is None
        redis.kill()
        for _ in range(3):
            with pytest.raises(RedisConnectionError):
                await store.claim_key(b"k", b"a 1 1", 60_000)
        (line,) = logged()
        assert line.startswith(f"session store {redis.address}: SET NX failed after "), line
        assert "routing from local tables: ConnectionError" in line, line
        redis.start()
        assert await store.get_key(b"k") is None  # answered: the next failure is news...
        redis.kill()
        with pytest.raises(RedisConnectionError):
            await store.get_key(b"k")
        assert len(logged()) == 1, logged()  # ...but not within the interval
        redis.start()
        await asyncio.sleep(2.0)
        assert await store.get_key(b"k") is None
        redis.kill()
        with pytest.raises(RedisConnectionError):
            await store.move_key(b"k", b"", b"a 1 1", 60_000)
        assert len(logged()) == 2, logged()
        assert ": MOVE failed after " in logged()[1]
    finally:
        await store.close()


async def test_a_restarted_store_fails_no_call_on_the_pools_dead_connections(
    redis: RedisServer,
) -> None:
    """Calls that overlap leave several connections in the client's pool; when the store
    restarts every one of them is dead, and redis-py's check at checkout misses some. A
    burst of calls after the restart failed on them (18 of 120 here, each a request
    routed alone); one retry on a connection error, at once, costs none."""
    store = RedisStore(SessionStoreSettings(address=redis.address, key_prefix="f:", timeout=1.0))

    async def burst(tag: bytes) -> list[str]:
        failed: list[str] = []

        async def one(i: int) -> None:
            await asyncio.sleep(i / 10_000)  # spread over loop turns: several connections
            try:
                await store.get_key(tag + b"%d" % i)
            except Exception as e:
                failed.append(f"{type(e).__name__}: {e}")

        await asyncio.gather(*(one(i) for i in range(40)))
        return failed

    try:
        for _ in range(3):
            assert await burst(b"before") == []
        clients = redis.command("CLIENT", "LIST").count(b"cmd=")
        assert clients > 2, clients  # the pool holds several connections (and ours)
        redis.kill()
        redis.start()
        failed = [f for _ in range(3) for f in await burst(b"after")]
        assert failed == [], failed
    finally:
        await store.close()
