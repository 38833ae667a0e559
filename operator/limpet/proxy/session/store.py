"""The shared session store, as the session layer sees it: a :class:`SessionStore`
protocol and the batch of sessions to write back (the loop that writes it is the process
layer's ``StoreSync``, since this package does no I/O).

Data flow: on the request path the router only notes each session it sees (a dict write,
no I/O; :meth:`SessionRouter.take_touches`). Once per interval (the plan's last-seen step)
``StoreSync`` hands the batch to the store in one round-trip and gets back, per
backend, the number of distinct sessions any replica has seen within ``idleTimeout``
(:meth:`SessionStore.flush`). The router then caps bounded loads against those counts
(plus the sessions it placed since), instead of its own. When the store fails or times
out, the router falls back to its own counts, the fallback is counted, and the batch is
kept (bounded) for the next try; when the store answers again the counts simply resume.
Counts only shape where new and moving sessions go, so a store coming back never
causes a burst of moves.

The implementation of the protocol (Redis protocol, redis-py) and the loop live in the
process layer (``limpet.proxy.process.redis_store``, ``store_sync``), so this package
depends on no client library. Pure values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Touch:
    """One session seen since the last flush: where it is now, and where it left."""

    member: bytes
    """Mode byte + the session's 64-bit key (cookie: its random id's first 8 bytes)."""
    backend: str
    last_seen: float
    moved_from: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    touches: Sequence[Touch]
    backends: Sequence[str]
    """The plan's backends: their counts are what the router needs back."""
    now: float
    live_since: float | None
    """Sessions last seen before this no longer count (``now - idleTimeout``)."""
    ttl: int
    """Seconds a backend's entry set outlives its last write."""


class SessionStore(Protocol):
    """A store shared by every replica (a Redis-protocol server in production)."""

    async def flush(self, batch: Batch) -> Mapping[str, int]:
        """Write the batch; return the distinct live sessions per backend."""
        ...

    async def close(self) -> None: ...
