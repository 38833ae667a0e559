"""Learned keys through a real ``redis-server``: replicas that race to place one key agree
on the first writer's backend; a request that waits for the store (a miss) loses no
byte of its body; the write-back script never rewinds a last-seen time nor undoes a move;
bytes in the store that are no entry are replaced, never trusted.

The race runs two session routers in this process, each with its own real store client
(``RedisStore``), whose bounded-load caps differ (one believes backend ``a`` is full), so
each would place many keys elsewhere than the other; both ask at once for every key.
The body test runs a real ``limpet proxy`` with ``--session-store`` and echo backends,
and sends uploads, with and without chunked framing, each under a key no replica holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import time
from collections.abc import AsyncIterator

import pytest

from limpet.affinity import (
    AffinitySettings,
    AffinityType,
    BackendId,
    Plan,
    SessionStoreSettings,
)
from limpet.proxy.engine.port import Route
from limpet.proxy.process.redis_store import RedisStore
from limpet.proxy.session.routing import RequestView, SessionRouter
from limpet.proxy.session.shared_keys import (
    StoredEntry,
    backend_prefix,
    decode_entry,
    encode_entry,
)
from limpet.proxy.session.store import Batch, KeyTouch

from ..conftest import Backends, Proxies
from ..routing_helpers import ABC, Wall, mkplan, mkrouter
from .fleet import RedisServer

pytestmark = pytest.mark.timeout(90)

KEYS = 120


async def _ask(router: SessionRouter, key: str) -> str:
    view = RequestView(b"GET", b"/", [(b"X-S", key.encode())], "192.0.2.1", None)
    got = router.dispatch(view)
    route = got if got is None or isinstance(got, Route) else await got
    assert route is not None
    return route.backend_id


def _alone(router: SessionRouter, key: str) -> str:
    view = RequestView(b"GET", b"/", [(b"X-S", key.encode())], "192.0.2.1", None)
    route = router.route(view)
    assert route is not None
    return route.backend_id


@contextlib.asynccontextmanager
async def _replicas(
    redis: RedisServer, prefix: str, count: int
) -> AsyncIterator[tuple[Plan, list[SessionRouter], list[RedisStore]]]:
    """``count`` Header-mode routers, each on its own connection to ``redis``: a plan,
    the routers and their stores (closed on exit)."""
    settings = SessionStoreSettings(address=redis.address, key_prefix=prefix, timeout=2.0)
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-S")
    plan = mkplan(1, ABC, affinity=aff, session_store=settings)
    routers = [mkrouter(Wall(), plan) for _ in range(count)]
    stores = [RedisStore(settings) for _ in routers]
    for r, store in zip(routers, stores, strict=True):
        r.store_attached()
        r.attach_keys(store)
    try:
        yield plan, routers, stores
    finally:
        for store in stores:
            await store.close()


async def test_racing_replicas_agree_on_the_first_writer(redis: RedisServer) -> None:
    async with _replicas(redis, "race:", 2) as (plan, routers, stores):
        # The second believes a is full cluster-wide: it would place a's keys elsewhere.
        routers[1].store_counts({"a": 10_000, "b": 0, "c": 0})
        keys = [f"k{i}" for i in range(KEYS)]
        first = await asyncio.gather(*(_ask(r, k) for k in keys for r in routers))
        pairs = list(zip(first[::2], first[1::2], strict=True))
        assert all(x == y for x, y in pairs), pairs
        # The two would have disagreed on the keys whose slot is a's: whichever claim
        # reached the store first decided, and both answered the same.
        alone = mkrouter(Wall(), plan)
        slot_a = [k for k in keys if _alone(alone, k) == "a"]
        assert slot_a
        assert len({x for x, _ in pairs}) >= 2
        # Each key was claimed by both; one won, the other adopted the winner's entry.
        claims = [r.stats().store["keyClaims"] for r in routers]
        adopted = [r.stats().store["keyAdopted"] for r in routers]
        assert claims == [KEYS, KEYS], [r.stats().store for r in routers]
        assert sum(adopted) == KEYS, adopted
        # Later requests are answered from each replica's table: no store round-trip.
        again = await asyncio.gather(*(_ask(r, k) for k in keys for r in routers))
        assert again == first
        assert [r.stats().store["keyClaims"] for r in routers] == claims
        assert all(r.stats().store["keyReads"] == 0 for r in routers)
        # The claims made in one loop turn went out as one pipeline: fewer round-trips.
        assert all(0 < s.round_trips < KEYS for s in stores), [s.round_trips for s in stores]


def _upload(port: int, key: str, body: bytes, *, chunked: bool) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"X-S": key, "Content-Type": "application/octet-stream"}
        if chunked:
            parts = [body[i : i + 65536] for i in range(0, len(body), 65536)]
            conn.request("POST", "/echo", body=iter(parts), headers=headers, encode_chunked=True)
        else:
            conn.request("POST", "/echo", body=body, headers=headers)
        resp = conn.getresponse()
        assert resp.status == 200
        doc: dict[str, object] = json.loads(resp.read())
        return doc
    finally:
        conn.close()


def test_a_request_that_waits_for_the_store_keeps_its_body(
    redis: RedisServer, backends: Backends, proxy: Proxies
) -> None:
    b1, b2 = backends.start("b1"), backends.start("b2")
    p = proxy.start(
        "--backend",
        f"b1={b1.address}",
        "--backend",
        f"b2={b2.address}",
        "--affinity",
        "header:X-S",
        "--session-store",
        redis.address,
        "--session-store-prefix",
        "body:",
    )
    body = bytes(range(256)) * 1200  # 300 KiB: more than the engine buffers unpaused
    want = hashlib.sha256(body).hexdigest()
    seen = []
    for i, chunked in enumerate([False, True] * 3):
        doc = _upload(p.address[1], f"upload-{i}", body, chunked=chunked)
        assert (doc["body_bytes"], doc["body_sha256"]) == (len(body), want), doc
        seen.append(doc["backend"])
        # The same key again: held now, answered locally, same backend.
        assert (
            _upload(p.address[1], f"upload-{i}", body, chunked=chunked)["backend"] == doc["backend"]
        )
    store = p.stats()["sessionStore"]
    assert store["keyClaims"] == 6, store
    assert store["keyReads"] == 0, store


def _touch(member: bytes, backend: str, created: float, last: float) -> KeyTouch:
    e = StoredEntry(BackendId(backend), created, last)
    return KeyTouch(member, encode_entry(e), backend_prefix(e.backend), 60_000)


async def _flush(store: RedisStore, *keys: KeyTouch) -> None:
    await store.flush(Batch(touches=[], backends=[], now=0.0, live_since=None, ttl=60, keys=keys))


async def test_the_write_back_never_rewinds_and_repairs_what_is_not_an_entry(
    redis: RedisServer,
) -> None:
    settings = SessionStoreSettings(address=redis.address, key_prefix="w:", timeout=2.0)
    store = RedisStore(settings)
    m = b"H" + b"\x01" * 8
    try:
        await _flush(store, _touch(m, "a", 100, 200))  # lost (never there): restored
        assert await store.get_key(m) == b"a 1000 2000 r"
        await _flush(store, _touch(m, "a", 100, 150))  # older: no rewind
        assert await store.get_key(m) == b"a 1000 2000 r"
        await _flush(store, _touch(m, "a", 100, 300))
        assert await store.get_key(m) == b"a 1000 3000 r"
        # Two restored copies disagree: the later last-seen wins.
        await _flush(store, _touch(m, "b", 100, 250))
        assert await store.get_key(m) == b"a 1000 3000 r"
        await _flush(store, _touch(m, "b", 100, 400))
        assert await store.get_key(m) == b"b 1000 4000 r"
        # A move (compare-and-set on the backend it leaves) is not undone by a stale copy.
        moved = encode_entry(StoredEntry(BackendId("c"), 100, 500))
        assert await store.move_key(m, b"a ", moved, 60_000) == b"b 1000 4000 r"  # lost
        assert await store.move_key(m, b"b ", moved, 60_000) == moved
        await _flush(store, _touch(m, "b", 100, 600))
        assert await store.get_key(m) == moved
        await _flush(store, _touch(m, "c", 100, 700))
        assert await store.get_key(m) == b"c 1000 7000"
        # Bytes that are no entry are replaced at the next write-back.
        await store.move_key(m, b"", b"\xff\x00 not an entry", 60_000)
        await _flush(store, _touch(m, "a", 100, 800))
        assert await store.get_key(m) == b"a 1000 8000 r"
    finally:
        await store.close()


async def test_a_value_that_is_no_entry_is_replaced_not_trusted(redis: RedisServer) -> None:
    async with _replicas(redis, "h:", 3) as (plan, routers, stores):
        await _ask(routers[0], "victim")
        (name,) = [k for k in redis.command("KEYS", "h:k:*").split(b"\r\n") if k[:4] == b"h:k:"]
        member = name[len(b"h:k:") :]
        await stores[0].move_key(member, b"", b"c 1 NaN", 60_000)  # hostile bytes
        second = await _ask(routers[1], "victim")
        assert routers[1].stats().store["keyCorrupt"] == 1
        repaired = decode_entry(await stores[0].get_key(member))
        assert repaired is not None
        assert repaired.backend == second
        assert await _ask(routers[2], "victim") == second  # the repaired entry is shared
        assert routers[2].stats().store["keyCorrupt"] == 0
        # A well-formed entry naming a backend no plan has: never routed to, announced.
        alien = encode_entry(StoredEntry(BackendId("evil-pod"), time.time(), time.time()))
        await stores[0].move_key(member, b"", alien, 60_000)
        view = RequestView(b"GET", b"/", [(b"X-S", b"victim")], "192.0.2.1", None)
        fresh = mkrouter(Wall(), plan)
        fresh.attach_keys(stores[0])
        got = fresh.dispatch(view)
        assert got is not None
        assert not isinstance(got, Route)
        route = await got
        assert route is not None
        assert route.backend_id in {"a", "b", "c"}
        assert dict(route.add_headers)[b"Limpet-Session-Moved"] == b"failover; from=evil-pod"


async def test_a_restored_entry_once_trusted_is_not_replaced_by_a_replica_alone(
    redis: RedisServer,
) -> None:
    """After the store lost its entries, write-backs restore them (marked), and the later
    last-seen wins between restored copies. The first replica to read one and trust it
    rewrites it unmarked: a replica that decided alone afterwards (its calls timing out)
    no longer replaces it with its write-back, which would leave the replicas that trust
    their copies disagreeing with the store, and so with every replica that asks it."""
    async with _replicas(redis, "c:", 2) as (plan, routers, stores):
        first = await _ask(routers[0], "k")
        (name,) = [k for k in redis.command("KEYS", "c:k:*").split(b"\r\n") if k[:4] == b"c:k:"]
        member = name[len(b"c:k:") :]
        now = time.time()
        await _flush(stores[0], _touch(member, first, now - 5, now - 1))
        # The store loses everything; a write-back restores the entry, marked.
        redis.command("FLUSHALL")
        await _flush(stores[0], _touch(member, first, now - 5, now - 1))
        assert (await stores[0].get_key(member) or b"").endswith(b" r")
        # The other replica meets the key (a claim that finds the entry) and trusts it.
        assert await _ask(routers[1], "k") == first
        assert routers[1].stats().store["keyConfirms"] == 1
        confirmed = decode_entry(await stores[0].get_key(member))
        assert confirmed is not None
        assert (confirmed.backend, confirmed.restored) == (first, False)
        # A replica that routed alone to another backend writes back a later last-seen.
        other = next(b.id for b in plan.backends if b.id != first)
        await _flush(stores[0], _touch(member, other, now - 5, now + 1))
        assert decode_entry(await stores[0].get_key(member)) == confirmed
        assert await _ask(routers[1], "k") == first
