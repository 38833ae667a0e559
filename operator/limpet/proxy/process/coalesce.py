"""Single-key store calls made in the same event-loop turn, sent as one pipeline.

Data flow: the router's slow path calls ``RedisStore.get_key`` / ``claim_key`` once per
request that must ask the store. Under load many such requests are parsed in the same
turn of the loop; :class:`Coalescer` queues each call's command with a future, and at
the end of the turn (``loop.call_soon``) one task sends the queue as one pipelined
round-trip and resolves every future with its own reply (or the failure). The Python
cost of a round-trip (connection checkout, packing, the read) is then paid once per
turn instead of once per request. A caller that gives up (its timeout, a closed client
connection) just leaves its future; the reply is dropped.

Concurrency: one event loop; the queue is swapped out before the pipeline is sent, so
calls made meanwhile go into the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

Command = tuple[Any, ...]


class Coalescer:
    """Queues commands of one loop turn and sends them as one pipeline."""

    def __init__(self, redis: aioredis.Redis, *, on_round_trip: Callable[[], None]) -> None:
        self._redis = redis
        self._queue: list[tuple[Command, dict[str, Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_round_trip = on_round_trip

    def call(self, *args: Any, **options: Any) -> asyncio.Future[Any]:
        """Queue one command (``execute_command`` arguments); its future has the reply."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, options, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)
        return fut

    def _send(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        if queue:
            task = asyncio.get_running_loop().create_task(self._run(queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, queue: list[tuple[Command, dict[str, Any], asyncio.Future[Any]]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for args, options, _ in queue:
                    pipe.execute_command(*args, **options)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the store is away: every caller falls back
            for _, _, fut in queue:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._on_round_trip()
        for (_, _, fut), reply in zip(queue, replies, strict=True):
            if fut.done():
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def close(self) -> None:
        """Cancel the pipelines in flight (their callers fall back)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
