"""The shared store under an attacker with write access to it, and going away mid-run:
two real ``limpet proxy`` replicas (Header affinity, whatever their build: compiled with
mypyc under ``make test``), echo backends and a real ``redis-server`` (Debian's).

Entries are tampered with through redis-py, directly in the server: values that are no
entry, entries of another type (a hash where a string belongs, a string where a backend's
sorted set belongs), an entry naming a backend the plan does not have, one with
impossible times. Every request must still be answered by a real backend, the store
must stay in use (one planted key must not turn sharing off for the whole fleet), and
what was planted must be replaced by real entries. The oracle is the backends' own
answers and the server's contents read back, not the proxy's view of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ..conftest import Backends, Conn, Proxies, Proxy
from .fleet import RedisServer

pytestmark = pytest.mark.timeout(120)

ENTRY = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._~-]{0,62} \d{1,15} \d{1,15}( r)?")
"""A well-formed learned-key entry: ``<backend> <created> <last seen>[ r]``."""


@pytest.fixture
def server(redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis_client(redis)
    try:
        yield client
    finally:
        client.close()


def redis_client(r: RedisServer) -> redis.Redis:
    return redis.Redis(host=r.host, port=r.port, socket_timeout=5)


def replicas(backends: Backends, proxy: Proxies, store: str) -> list[Proxy]:
    a, b = backends.start("a"), backends.start("b")
    args = ("--backend", f"a={a.address}", "--backend", f"b={b.address}")
    # A 1 s store timeout, not the 0.25 s default: a slow reply on a loaded machine would
    # be a counted failure (and a key placed alone) where these tests count none.
    store_args = ("--session-store", store, "--session-store-timeout", "1")
    return [proxy.start(*args, "--affinity", "header:X-S", *store_args) for _ in range(2)]


def ask(p: Proxy, key: str) -> str:
    """The backend that answered a request with session key ``key`` (a 200 or it fails)."""
    with Conn(p.address) as c:
        r = c.request("GET", "/who", headers={"X-S": key})
    assert r.status == 200, (key, r.status, r.body)
    backend: str = r.json()["backend"]
    return backend


def entry_of(server: redis.Redis, p: Proxy, key: str) -> bytes:
    """The store's name of ``key``'s entry: the one that appears when ``p`` places it."""
    before = set(server.keys(b"limpet:k:*"))
    ask(p, key)
    (name,) = set(server.keys(b"limpet:k:*")) - before
    assert isinstance(name, bytes)  # no decode_responses: redis-py answers bytes
    return name


def written_back(p: Proxy) -> None:
    """Wait until ``p`` has written back every session it has served: two more write-backs
    (the first may have taken its batch before the last request). Until then a write-back
    of ``p``'s (the touch of a key it placed) may restore an entry planted after it."""
    flushes = store_stats(p)["flushes"]
    wait_for(lambda: store_stats(p)["flushes"] >= flushes + 2)


def store_stats(p: Proxy) -> dict[str, int]:
    stats: dict[str, int] = p.stats()["sessionStore"]
    return stats


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_tampered_entries_are_replaced_and_the_store_stays_in_use(
    backends: Backends, proxy: Proxies, redis: RedisServer, server: redis.Redis
) -> None:
    first, second = replicas(backends, proxy, redis.address)
    now = int(time.time() * 10)  # entries' times are deciseconds of the epoch
    planted = {
        "not an entry": b"\x00\xff garbage \r\n",
        "backend id not ASCII": "a\u00e9 1 2".encode(),
        "last seen before created": b"a 50 3",
        "too many fields": b"a 1 2 r x",
        "a backend the plan lacks": b"zz-unknown %d %d" % (now, now),
        "empty": b"",
    }
    names = {what: entry_of(server, first, f"key-{i}") for i, what in enumerate(planted)}
    hashed = entry_of(server, first, "key-hash")
    written_back(first)
    for what, value in planted.items():
        server.set(names[what], value, px=600_000)
    server.delete(hashed)
    server.hset(hashed, "field", "value")  # another type where a string belongs
    for live in server.keys(b"limpet:live:*"):
        server.delete(live)
        server.set(live, b"not a sorted set")
    # The replica that never saw these keys must read each entry: every request is
    # still answered, by a backend the plan has.
    for i in range(len(planted)):
        assert ask(second, f"key-{i}") in ("a", "b")
    assert ask(second, "key-hash") in ("a", "b")
    stats = store_stats(second)
    # Corrupt: every planted value but the foreign backend's (a failover, announced),
    # plus the hash (it reads as a value that is no entry).
    assert stats["keyCorrupt"] == len(planted) - 1 + 1, str(stats)
    assert stats["keyFailures"] == 0, stats
    assert stats["up"] == 1, stats
    # Both replicas' write-backs go on: the backends' sets are sorted sets again, with
    # the sessions in them, and every planted entry is a real one now.
    for p in (first, second):
        wait_for(lambda p=p: store_stats(p)["flushes"] >= 3 and store_stats(p)["up"] == 1)
    wait_for(lambda: all(server.type(k) == b"zset" for k in server.keys(b"limpet:live:*")))
    assert sum(server.zcard(k) for k in server.keys(b"limpet:live:*")) >= len(planted) + 1
    for name in (*names.values(), hashed):
        stored = server.get(name)
        assert isinstance(stored, bytes)
        assert ENTRY.fullmatch(stored), (name, stored)
    for p in (first, second):
        assert store_stats(p)["up"] == 1
        assert p.stats()["clusterSessions"], p.stats()
        assert "Traceback" not in p.log_text()
    # The session of each key now answers alike on both replicas.
    for i in range(len(planted)):
        assert ask(first, f"key-{i}") == ask(second, f"key-{i}")


def test_an_entry_with_impossible_numbers_is_corrupt_not_a_store_failure(
    backends: Backends, proxy: Proxies, redis: RedisServer, server: redis.Redis
) -> None:
    first, second = replicas(backends, proxy, redis.address)
    name = entry_of(server, first, "huge")
    written_back(first)
    server.set(name, b"a " + b"9" * 400 + b" " + b"9" * 400, px=600_000)
    assert ask(second, "huge") in ("a", "b")
    stats = store_stats(second)
    assert (stats["keyCorrupt"], stats["keyFailures"], stats["up"]) == (1, 0, 1), stats


def test_the_store_going_away_mid_run_costs_no_request(
    backends: Backends, proxy: Proxies, redis: RedisServer
) -> None:
    first, second = replicas(backends, proxy, redis.address)
    keys = [f"s{i}" for i in range(40)]
    placed = {k: ask(first, k) for k in keys}
    assert {k: ask(second, k) for k in keys} == placed
    redis.kill()
    # Every request is answered while the store is away, each session where it was.
    for p in (first, second, first):
        assert {k: ask(p, k) for k in keys} == placed
    new = {f"n{i}": ask(second, f"n{i}") for i in range(20)}
    assert set(new.values()) <= {"a", "b"}
    for p in (first, second):
        wait_for(lambda p=p: store_stats(p)["up"] == 0)
        assert store_stats(p)["fallbacks"] >= 1
    # Back, empty: the replicas use it again and keep their sessions where they were.
    redis.start()
    for p in (first, second):
        wait_for(lambda p=p: store_stats(p)["up"] == 1)
    assert {k: ask(second, k) for k in keys} == placed
    assert {k: ask(first, k) for k in keys} == placed
    client = redis_client(redis)
    try:
        wait_for(lambda: len(client.keys(b"limpet:k:*")) >= len(keys))
    finally:
        client.close()
    for p in (first, second):
        assert p.proc.poll() is None
        assert "Traceback" not in p.log_text()


def test_a_store_that_is_not_redis_costs_no_request(backends: Backends, proxy: Proxies) -> None:
    """A ``sessionStore`` address where something else listens: an HTTP server, a peer
    that accepts and never answers, one that answers RESP-like junk. Each is a store
    failure (counted, logged once), never a failed request; sessions stay where the
    local table put them."""
    a, b = backends.start("a"), backends.start("b")
    silent = socket.create_server(("127.0.0.1", 0), backlog=64)
    junk = socket.create_server(("127.0.0.1", 0), backlog=64)
    stop = threading.Event()

    def answer_junk() -> None:
        junk.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = junk.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.sendall(b"\x00\xff*-1\r\n$99999999999\r\nHTTP/1.1 200 OK\r\n" * 50)

    thread = threading.Thread(target=answer_junk, daemon=True)
    thread.start()
    try:
        for store in (a.address, f"127.0.0.1:{silent.getsockname()[1]}",
                      f"127.0.0.1:{junk.getsockname()[1]}"):  # fmt: skip
            args = ("--backend", f"a={a.address}", "--backend", f"b={b.address}")
            p = proxy.start(*args, "--affinity", "header:X-S", "--session-store", store)
            placed = {f"k{i}": ask(p, f"k{i}") for i in range(20)}
            wait_for(lambda p=p: store_stats(p)["up"] == 0 and store_stats(p)["fallbacks"] >= 1)
            assert {k: ask(p, k) for k in placed} == placed, store
            wait_for(lambda p=p: "unavailable, using local counts" in p.log_text())
            assert "Traceback" not in p.log_text()
            p.stop()
    finally:
        stop.set()
        thread.join()
        silent.close()
        junk.close()


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "ca-fifo"])
def test_a_password_file_that_is_no_small_file_is_a_fallback_not_a_hang(
    backends: Backends, proxy: Proxies, redis: RedisServer, tmp_path: Path, kind: str
) -> None:
    """A pushed plan whose ``passwordFile`` is a FIFO (opening it waits for a writer),
    ``/dev/zero`` (reading it never ends) or a 1 MiB file: the credentials are read on
    the event loop at each new store connection, so any of these stalled the proxy; now
    each is a store failure naming the file, and traffic flows. The same for a ``caFile``
    that is a FIFO, which the TLS handshake would open on the event loop."""
    a = backends.start("a")
    p = proxy.start("--backend", f"a={a.address}")
    if kind in ("fifo", "ca-fifo"):
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "huge":
        path = tmp_path / "huge"
        path.write_bytes(b"p" * (1 << 20))
    else:
        path = Path("/dev/zero")
    plan = {
        "schemaVersion": 1,
        "version": 2,
        "backends": [{"id": "a", "address": "127.0.0.1", "port": a.port, "state": "Active",
                      "weight": 1}],
        "affinity": {"type": "Header", "header": {"name": "X-S"}},
        "sessionStore": {"address": redis.address, "passwordFile": str(path)},
    }  # fmt: skip
    if kind == "ca-fifo":  # the same for a CA file, which TLS would open on the loop
        plan["sessionStore"] = {"address": redis.address, "tls": True, "caFile": str(path)}
    status, answer = p.admin("PUT", "/v1/plan", json.dumps(plan).encode())
    assert status == 200, answer
    for i in range(10):
        assert ask(p, f"k{i}") == "a"
    wait_for(lambda: store_stats(p).get("fallbacks", 0) >= 1)
    wait_for(lambda: f"{path} is not a regular file" in p.log_text() or "larger" in p.log_text())
    assert p.admin("GET", "/healthz")[0] == 200
    assert p.rss() < 1 << 30
    assert "Traceback" not in p.log_text()
