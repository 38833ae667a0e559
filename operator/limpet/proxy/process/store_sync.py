"""The loop that writes the session router's batches to the shared store and brings back
cluster-wide session counts (see ``limpet.proxy.session.store`` for the data flow).

Once per last-seen step of the router's plan, :class:`StoreSync` takes the router's batch
and flushes it to the store the plan names (built by a factory, rebuilt when the plan's
``sessionStore`` changes). A failure or a timeout (``sessionStore.timeout``) makes the
router fall back to its own counts and keep the batch; the transition is logged once. (A
write-back may take up to one step, ``sessionStore.timeout`` at least: it is off the
request path, and a big one must not fail for its size.)
The client built is also the one the router asks about learned keys
(:meth:`SessionRouter.attach_keys`). Building it can fail too (a bad address, an
unreadable CA file): that is one more fallback, and the next interval builds it again;
the loop itself never ends on a store error, only when it is cancelled.
Concurrency: one task on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from limpet.affinity import SessionStoreSettings
from limpet.proxy.session.routing import SessionRouter
from limpet.proxy.session.store import SessionStore

log = logging.getLogger("limpet.proxy.store")

StoreFactory = Callable[[SessionStoreSettings], SessionStore]
MAX_BACKGROUND = 256


class StoreSync:
    """Writes the router's batches to the store of the router's plan, once per interval."""

    def __init__(self, router: SessionRouter, factory: StoreFactory) -> None:
        self._router = router
        self._factory = factory
        self._settings: SessionStoreSettings | None = None
        self._store: SessionStore | None = None
        self._up = True
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run one background store write for the router (bounded: beyond
        ``MAX_BACKGROUND`` in flight, the write is left to the next write-back)."""
        if len(self._tasks) >= MAX_BACKGROUND:
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Flush forever, at the plan's last-seen step (cancel to stop)."""
        try:
            while True:
                await self.flush()
                plan = self._router.plan
                await asyncio.sleep(1.0 if plan is None else float(plan.granularity))
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the store client (the loop may be restarted afterwards)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._switch(None)

    async def flush(self) -> bool:
        """One write-back; ``True`` when the store answered."""
        plan = self._router.plan
        settings = None if plan is None else plan.session_store
        if settings != self._settings:
            await self._switch(settings)
        if settings is None:
            self._router.store_detached()
            return False
        batch = self._router.take_touches()
        try:
            store = self._store
            if store is None:
                store = self._store = self._factory(settings)
                self._router.attach_keys(store, self._spawn)
            # A write-back is off the request path and may carry every session seen in a
            # step: it has until the next one is due (sessionStore.timeout at least).
            budget = max(settings.timeout, float(plan.granularity) if plan else 1.0)
            counts = await asyncio.wait_for(store.flush(batch), budget)
        except Exception as exc:  # any failure of the store: fall back, never fail traffic
            self._router.store_failed(batch)
            if self._up:
                # str() too: redis-py's repr names only the class ("auth:AuthenticationError").
                log.warning(
                    "session store %s unavailable, using local counts: %s: %s",
                    settings.address,
                    type(exc).__name__,
                    exc,
                )
            self._up = False
            return False
        self._router.store_counts(counts)
        if not self._up:
            log.info("session store %s is back", settings.address)
        self._up = True
        return True

    async def _switch(self, settings: SessionStoreSettings | None) -> None:
        """Close the client of the old settings; the next flush builds the new one."""
        old, self._store, self._settings = self._store, None, settings
        if old is not None:
            self._router.attach_keys(None)
            try:
                await old.close()
            except Exception:
                log.exception("closing the session store failed")


def start_store_sync(router: SessionRouter) -> Callable[[], None]:
    """Run :class:`StoreSync` with the Redis store on this loop; returns its stopper."""
    from limpet.proxy.process.redis_store import RedisStore

    task = asyncio.get_running_loop().create_task(StoreSync(router, RedisStore).run())
    return task.cancel  # type: ignore[return-value]
