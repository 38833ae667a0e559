"""The loop that writes the session router's batches to the shared store and brings back
cluster-wide session counts (see ``limpet.proxy.session.store`` for the data flow).

Once per last-seen step of the router's plan, :class:`StoreSync` takes the router's batch
and flushes it to the store the plan names (built by a factory, rebuilt when the plan's
``sessionStore`` changes). A failure or a timeout (``sessionStore.timeout``) makes the
router fall back to its own counts and keep the batch; the transition is logged once. A
write-back that answers while the router routed learned keys alone meanwhile (its batch
was taken before) is followed at once by another, which carries them. (A
write-back may take up to one step, ``sessionStore.timeout`` at least: it is off the
request path, and a big one must not fail for its size.)
The client built is also the one the router asks about learned keys
(:meth:`SessionRouter.attach_keys`), so it is built as soon as the router installs a plan
naming the store (:meth:`StoreSync.follow_plan`, called by the router), before any
request routes by that plan; the client of a plan's earlier store is closed by the next
write-back. A write-back still in flight on that earlier client when the plan switched
says nothing about the new store: whether it fails or answers, its batch is put back
for the new store and its outcome is not applied. Building a client can fail too (a
bad address, an unreadable CA file): that is one more fallback, and the next interval
builds it again; the loop itself never ends on a store error, only when it is cancelled.
Concurrency: one task on the proxy's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from limpet.affinity import SessionStoreSettings
from limpet.proxy.session.routing import SessionRouter
from limpet.proxy.session.store import Batch, SessionStore

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
        self._retired: list[SessionStore] = []  # clients of earlier plans, to close
        self._up = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfollow = router.on_install(self.follow_plan)
        self.follow_plan()  # the plan the router already has, if any

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
                if await self.flush() and self._router.store_behind():
                    # The store is back, but what this replica decided alone while its
                    # batch was in flight is not in it yet: write that now, not a step
                    # later (at most once a step, whatever the router does meanwhile).
                    await self.flush()
                plan = self._router.plan
                await asyncio.sleep(1.0 if plan is None else float(plan.granularity))
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop following plans and close every store client (for good)."""
        self._unfollow()
        self._unfollow = _nothing
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._detach(None)
        await self._close_retired()

    def follow_plan(self) -> None:
        """The router installed a plan: if it names another store (or none), attach the
        new store's client now, before any request routes by the plan. Waiting for the
        next write-back left a replica that had just been given its plan placing learned
        keys alone for up to a step, splitting sessions that other replicas had placed
        through the store. A client that cannot be built (a bad address, an unreadable CA
        file) is built again, and its failure counted and logged, by the next write-back."""
        plan = self._router.plan
        settings = None if plan is None else plan.session_store
        if settings == self._settings:
            return
        self._detach(settings)
        if settings is None:
            self._router.store_detached()
            return
        with contextlib.suppress(Exception):
            self._attach(settings)

    def _attach(self, settings: SessionStoreSettings) -> SessionStore:
        store = self._store = self._factory(settings)
        self._router.attach_keys(store, self._spawn)
        return store

    def _detach(self, settings: SessionStoreSettings | None) -> None:
        """Drop the current client, the plan now naming ``settings``. It is closed by the
        next write-back, so that a write-back in flight finishes on it."""
        old, self._store, self._settings = self._store, None, settings
        if old is not None:
            self._router.attach_keys(None)
            self._retired.append(old)

    async def _close_retired(self) -> None:
        while self._retired:
            try:
                await self._retired.pop().close()
            except Exception:
                log.exception("closing the session store failed")

    async def flush(self) -> bool:
        """One write-back; ``True`` when the store answered."""
        await self._close_retired()
        plan = self._router.plan
        settings = None if plan is None else plan.session_store
        if settings is None:
            self._router.store_detached()
            return False
        batch = self._router.take_touches()
        store = self._store
        try:
            if store is None:
                store = self._attach(settings)
            # A write-back is off the request path and may carry every session seen in a
            # step: it has until the next one is due (sessionStore.timeout at least).
            budget = max(settings.timeout, float(plan.granularity) if plan else 1.0)
            counts = await asyncio.wait_for(store.flush(batch), budget)
        except Exception as exc:  # any failure of the store: fall back, never fail traffic
            if self._switched(store, batch):
                return False
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
        if self._switched(store, batch):
            return False
        self._router.store_counts(counts)
        if not self._up:
            log.info("session store %s is back", settings.address)
        self._up = True
        return True

    def _switched(self, store: SessionStore | None, batch: Batch) -> bool:
        """Whether the plan named another store while ``store`` was written: then the
        write-back's outcome is the old store's (marking the new one down, or capping
        bounded loads by the old one's counts, would be wrong), and its batch goes to
        the new store at the next write-back."""
        if store is self._store:
            return False
        self._router.requeue_touches(batch)
        return True


def _nothing() -> None:
    pass


def start_store_sync(router: SessionRouter) -> Callable[[], None]:
    """Run :class:`StoreSync` with the Redis store on this loop; returns its stopper."""
    from limpet.proxy.process.redis_store import RedisStore

    task = asyncio.get_running_loop().create_task(StoreSync(router, RedisStore).run())
    return task.cancel  # type: ignore[return-value]
