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

Learned keys (:mod:`.shared_keys`) are shared through the same store: the batch carries
each learned session's entry (:class:`KeyTouch`: a last-seen write-back, or the entry
itself when the store lost it), and the router's slow path reads, claims and moves
single entries (:meth:`SessionStore.get_key`, :meth:`SessionStore.claim_key`,
:meth:`SessionStore.move_key`), one round-trip each.

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
class KeyTouch:
    """A learned key's entry as this replica last saw it, for the write-back: it raises
    the stored last-seen time (never lowers it), re-creates an entry the store lost, and
    leaves alone an entry that another replica moved to another backend."""

    member: bytes
    value: bytes
    """The encoded entry (``shared_keys.encode_entry``)."""
    backend_prefix: bytes
    ttl_ms: int


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
    keys: Sequence[KeyTouch] = ()


class SessionStore(Protocol):
    """A store shared by every replica (a Redis-protocol server in production)."""

    async def flush(self, batch: Batch) -> Mapping[str, int]:
        """Write the batch; return the distinct live sessions per backend."""
        ...

    async def get_key(self, member: bytes) -> bytes | None:
        """A learned key's entry, or ``None``."""
        ...

    async def claim_key(self, member: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """Store ``value`` unless the key has an entry (``SET NX``): ``None`` when this
        value was stored, else the entry another replica wrote first."""
        ...

    async def move_key(self, member: bytes, expect: bytes, value: bytes, ttl_ms: int) -> bytes:
        """Replace the entry with ``value`` if it is absent or still starts with
        ``expect`` (its backend); return the entry stored afterwards."""
        ...

    async def close(self) -> None: ...
