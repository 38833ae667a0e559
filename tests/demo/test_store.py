"""limpet.demo.store: what the report says about the session store, from real sources.

A real ``redis-server`` with a password on loopback holds keys under the service's
prefix and another one; small HTTP servers on loopback answer ``/v1/stats`` as proxies
do (only with the right bearer token), and a closed port stands for a proxy that is
gone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from limpet.demo.store import StoreWatch
from limpet.devcluster.redis import RedisEndpoint
from tests.proxy.replicas.fleet import RedisServer, _free_port

pytestmark = pytest.mark.timeout(60)
TOKEN = "t0ken"
PREFIX = "limpet-demo:counter-header:"


class Stats:
    """A fake proxy's admin API on loopback: ``/v1/stats`` behind the bearer token."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = json.dumps(owner.doc).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def stats(up: int, *, reads: int, moves: dict[str, int], fallbacks: int = 0) -> dict[str, Any]:
    return {
        "sessionStore": {"up": up, "fallbacks": fallbacks, "keyReads": reads, "keyMoves": 1},
        "migrations": moves,
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password="s3cret")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def proxies() -> Iterator[list[Stats]]:
    made = [
        Stats(stats(1, reads=10, moves={"drain": 2, "rebalance": 0})),
        Stats(stats(1, reads=5, moves={"drain": 1, "failover": 1})),
    ]
    try:
        yield made
    finally:
        for p in made:
            p.close()


def watch(store: RedisServer, urls: list[str], token: str = TOKEN) -> StoreWatch:
    endpoint = RedisEndpoint(
        host="127.0.0.1", port=store.port, password="s3cret", secret="limpet-redis", pod="-"
    )
    return StoreWatch(endpoint=endpoint, key_prefix=PREFIX, admin_urls=urls, token=token)


def test_figures_summed_over_proxies_and_read_from_the_store(
    store: RedisServer, proxies: list[Stats]
) -> None:
    store.command("SET", f"{PREFIX}k:\x01abc", "b1 1 2")
    store.command("SET", f"{PREFIX}k:\x01def", "b2 1 2")
    store.command("ZADD", f"{PREFIX}live:b1", "1", "s")
    store.command("SET", "limpet-demo:other:k:\x01abc", "b1 1 2")  # another service's
    w = watch(store, [p.url for p in proxies])
    w.sample()
    w.sample()
    state = w.finish([{"type": "ReplicasAgree", "status": "True", "reason": "SessionStore"}])
    assert (state.samples, state.samples_up, state.fallbacks) == (2, 2, 0)
    assert state.up
    assert state.keys["keyReads"] == 15
    assert state.keys["keyMoves"] == 2
    assert state.keys["keyFailures"] == 0
    assert state.proxy_moves == {"drain": 3, "failover": 1}
    assert state.replicas_agree == "True (SessionStore)"
    assert (state.learned_keys, state.live_sets) == (2, 1)
    assert state.errors == ()


def test_a_proxy_that_reports_the_store_down_or_cannot_be_read_makes_it_not_up(
    store: RedisServer, proxies: list[Stats]
) -> None:
    w = watch(store, [p.url for p in proxies])
    w.sample()
    proxies[1].doc = stats(0, reads=5, moves={}, fallbacks=3)
    w.sample()
    state = w.finish([])
    assert (state.samples, state.samples_up, state.fallbacks) == (2, 1, 3)
    assert not state.up
    assert state.replicas_agree == "? (-)"

    gone = watch(store, [proxies[0].url, f"http://127.0.0.1:{_free_port()}"])
    gone.sample()
    assert (gone.samples, gone.samples_up) == (1, 0)
    assert "127.0.0.1" in gone.errors[0]
    wrong = watch(store, [proxies[0].url], token="guess")
    wrong.sample()
    assert wrong.samples_up == 0
    assert "401" in wrong.errors[0]


def test_a_store_that_refuses_the_password_is_reported_not_counted(
    store: RedisServer, proxies: list[Stats]
) -> None:
    w = watch(store, [proxies[0].url])
    w.endpoint = RedisEndpoint(
        host="127.0.0.1", port=store.port, password="wrong", secret="x", pod="-"
    )
    state = w.finish([])
    assert (state.learned_keys, state.live_sets) == (-1, -1)
    assert "redis-server" in state.errors[0]
