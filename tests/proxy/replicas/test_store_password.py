"""The store's password file (``sessionStore.passwordFile``) against a real
``redis-server`` with ``requirepass``: a file that is missing, or goes missing while the
server restarts, is a counted fallback and a retry on the next interval; the write-back
loop never ends on it, and it resumes once the file is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from limpet.affinity import AffinitySettings, AffinityType, SessionStoreSettings
from limpet.proxy.process.redis_store import RedisStore
from limpet.proxy.process.store_sync import StoreSync
from limpet.proxy.session.routing import RequestView, SessionRouter

from ..routing_helpers import ABC, Wall, mkplan, mkrouter
from .fleet import RedisServer

pytestmark = pytest.mark.timeout(60)


def _request(router: SessionRouter, key: str) -> None:
    view = RequestView(b"GET", b"/", [(b"X-S", key.encode())], "192.0.2.1", None)
    assert router.route(view) is not None


async def _until(
    router: SessionRouter, up: int, *, fallbacks: int = 0, within: float = 20.0
) -> Mapping[str, int]:
    """The store's stats once ``up`` is ``up`` and at least ``fallbacks`` were counted
    (polled: a loaded machine runs the write-back intervals late)."""
    deadline = time.monotonic() + within
    while True:
        store = router.stats().store
        if store.get("up") == up and store["fallbacks"] >= fallbacks:
            return store
        assert time.monotonic() < deadline, store
        await asyncio.sleep(0.1)


async def test_a_missing_password_file_is_a_fallback_and_a_retry(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret-store")
    server.start()
    secret = tmp_path / "password"
    settings = SessionStoreSettings(
        address=server.address, password_file=str(secret), key_prefix="pw:", timeout=0.5
    )
    aff = AffinitySettings(type=AffinityType.HEADER, header_name="X-S", last_seen_granularity=1)
    router = mkrouter(Wall(), mkplan(1, ABC, affinity=aff, session_store=settings))
    sync = StoreSync(router, RedisStore)
    task = asyncio.get_running_loop().create_task(sync.run())
    try:
        # No file yet: every interval is a counted fallback, and the loop goes on.
        await _until(router, 0, fallbacks=1)
        _request(router, "one")  # noted for the store, kept until a write-back lands
        await _until(router, 0, fallbacks=2)
        assert not task.done()
        assert b"pw:" not in server.command("KEYS", "*")

        # The file appears: the next interval authenticates, the kept batch lands.
        secret.write_text("s3cret-store\n")
        await _until(router, 1)
        assert b"pw:live:" in server.command("KEYS", "*")

        # The server restarts while the file is gone: fallbacks again, then back.
        secret.unlink()
        server.kill()
        server.start()
        _request(router, "two")
        store = await _until(router, 0)
        await _until(router, 0, fallbacks=store["fallbacks"] + 1)
        assert not task.done()
        secret.write_text("s3cret-store")
        await _until(router, 1)
        assert server.command("ZCARD", f"pw:live:{_home(router, 'two')}") == b":1\r\n"

        # A wrong password is refused by the server: a fallback, not the end of the loop.
        secret.write_text("wrong")
        server.command("CLIENT", "KILL", "TYPE", "normal")
        await _until(router, 0)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.kill()


def _home(router: SessionRouter, key: str) -> str:
    view = RequestView(b"GET", b"/", [(b"X-S", key.encode())], "192.0.2.1", None)
    route = router.route(view)
    assert route is not None
    return route.backend_id
