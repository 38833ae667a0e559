"""The write-back loop's store client (``proxy/process/store_sync.py``) follows the
router's plan from the moment each plan is installed, against a real ``redis-server``:
the first learned request of a plan naming a store asks that store, a plan naming another
store switches at once (the old client is closed by the next write-back), and a plan
naming none routes from the local tables."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine

import pytest

from limpet.affinity import AffinitySettings, AffinityType, SessionStoreSettings
from limpet.proxy.process.redis_store import RedisStore
from limpet.proxy.process.store_sync import StoreSync
from limpet.proxy.session.routing import RequestView, Route, SessionRouter
from limpet.proxy.session.settings import RouterSettings

from ..routing_helpers import ABC, mkplan
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
