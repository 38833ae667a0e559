"""Learned keys shared through the store: the entry each key has there, and when this
replica may trust its own copy without asking.

A learned session (Header, Query, ClientIP, and AppCookie without its companion) has one
entry in the store under ``<keyPrefix>k:<member>`` (``member``: the table's code byte and
the key's 64-bit hash): ``"<backend> <created> <last seen>"`` with the times in
deciseconds of the Unix epoch (:func:`encode_entry`, :func:`decode_entry`), and `` r``
after them when a write-back restored an entry the store had lost (from one replica's
local copy, which may be stale). Between restored entries the later last-seen wins; the
first replica to read one and trust it rewrites it unmarked (confirmed), so that a
replica deciding alone later (its calls timing out) cannot replace an entry the others
now trust. The entry's
TTL ends ``idleTimeout + ttlSlack`` after its last write, and never later than
``absoluteTimeout + ttlSlack`` after the session began (:func:`entry_ttl_ms`).

Data flow (the router is :mod:`.routing`, the slow path :mod:`.learned_routing`):

- A request whose key this replica holds, on a backend that the plan cannot move away
  (no rebalance schedule; the backend Active or Warming), and that it checked against the
  store since the backend last became so (:class:`SharedKeys.settled`), is routed from
  the local table, without a store round-trip.
- Anything else (a key this replica does not hold; one the plan may move; a local copy
  that the migration decision would move or expire) reads the store's entry first
  (:func:`merge`): the store's backend wins over a local copy, the later last-seen time
  of the two counts. A new placement is written with ``SET NX`` (the first replica to
  place a key wins, the others adopt its backend); a move with a compare-and-set on the
  backend it leaves (the first replica to move a session wins).
- Last-seen times reach the store in the write-back batch (``store.Batch.keys``) at the
  plan's last-seen step; a write never rewinds a later last-seen nor touches an entry
  another replica has moved meanwhile.

When the store fails, :class:`SharedKeys` goes down (counted) and the router uses its local
tables and deterministic placement until a write-back succeeds again or, at most one
call per ``RETRY_AFTER``, a request's store call does. Every local copy is then checked
once more before it is trusted again: while the store was away each replica decided
alone (a drain, an expiry, a bounded-load cap), and the store's entry is the one all
replicas converge on. Concurrency: one instance per router, on the event loop only.
Pure: no I/O here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from limpet.affinity import BackendId, BackendState

_TICKS: Final = 10  # deciseconds
_MAX_TICK_DIGITS: Final = 15  # deciseconds: three hundred thousand years
MAX_KEY: Final = (1 << 64) - 1
SETTLE_GRACE: Final = 2.0
"""Seconds after a backend becomes immovable before a local copy checked then is trusted:
covers replicas that receive the same plan a little apart."""

RETRY_AFTER: Final = 1.0
"""Seconds after a failed store call before a request may try the store again."""

IMMOVABLE = frozenset({BackendState.ACTIVE, BackendState.WARMING})


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One learned key's entry in the store."""

    backend: BackendId
    created: float
    last_seen: float
    restored: bool = False
    """Re-created by a write-back after the store lost it, not by a placement or move."""


def member_of(code: int, h: int) -> bytes:
    """The key's name in the store: its table's code byte and its 64-bit hash."""
    return bytes((code,)) + (h & MAX_KEY).to_bytes(8, "little")


def encode_entry(e: StoredEntry) -> bytes:
    # Created rounds down and last seen up: neither idleness nor age is overstated.
    created = max(0, math.floor(e.created * _TICKS))
    last = max(created, math.ceil(e.last_seen * _TICKS))
    return b"%s %d %d%s" % (e.backend.encode(), created, last, b" r" if e.restored else b"")


def decode_entry(raw: bytes | None) -> StoredEntry | None:
    """The entry, or ``None`` for an absent or malformed value (which is then replaced)."""
    if raw is None:
        return None
    parts = raw.split(b" ")
    restored = len(parts) == 4 and parts[3] == b"r"
    if len(parts) != 3 + restored or not parts[0] or len(parts[0]) > 63:
        return None
    if not (_is_ticks(parts[1]) and _is_ticks(parts[2])):
        return None
    try:
        backend = parts[0].decode("ascii")
    except UnicodeDecodeError:
        return None
    created, last = int(parts[1]), int(parts[2])
    if last < created or not backend.isprintable():
        return None
    return StoredEntry(BackendId(backend), created / _TICKS, last / _TICKS, restored)


def _is_ticks(raw: bytes) -> bool:
    # ASCII digits only (int() would also take signs, "_" and spaces) and at most 15 of
    # them: a time of 400 digits, planted by whoever can write to the store, overflowed
    # the float division, which read as a failing store instead of a corrupt entry.
    return 0 < len(raw) <= _MAX_TICK_DIGITS and raw.isdigit()


def backend_prefix(backend: BackendId) -> bytes:
    """What an entry on ``backend`` starts with (the compare-and-set's expectation)."""
    return backend.encode() + b" "


def merge(local: StoredEntry | None, stored: StoredEntry | None) -> StoredEntry | None:
    """The session as the replicas know it: the store's backend and creation time, and
    the later last-seen time when this replica's copy is on the same backend."""
    if stored is None:
        return local
    if local is None or local.backend != stored.backend or local.last_seen <= stored.last_seen:
        return stored
    return StoredEntry(stored.backend, stored.created, local.last_seen, stored.restored)


def unannounced_move(local: StoredEntry | None, adopted: StoredEntry) -> bool:
    """Whether adopting ``adopted`` moves a session nobody announced: this replica sent
    the session's latest request to another backend than the store's entry names. It
    decided alone meanwhile (the store away, or its call timed out), or the store lost
    the entry and another replica restored or placed it afresh elsewhere. Either way
    the entry's backend has not seen that request. A local copy older than the entry is
    one whose session has been living on the entry's backend since (moved there, and
    announced, by whoever moved it)."""
    if local is None or local.backend == adopted.backend:
        return False
    return local.last_seen > adopted.last_seen


def entry_ttl_ms(
    e: StoredEntry,
    now: float,
    *,
    idle_timeout: float | None,
    absolute_timeout: float | None,
    slack: float,
) -> int:
    """Milliseconds the entry lives after a write at ``now`` (at least one second)."""
    ends = [now + idle_timeout + slack] if idle_timeout is not None else []
    if absolute_timeout is not None:
        ends.append(e.created + absolute_timeout + slack)
    end = min(ends) if ends else now + 86400.0 + slack
    return max(1000, int((end - now) * 1000))


class SharedKeys:
    """The store's state as the router sees it: up or down, its counters, and since when
    each backend's local copies may be trusted (indexed by backend number)."""

    __slots__ = ("counters", "retry_at", "settled", "since", "up")

    def __init__(self, since: float) -> None:
        self.up = True
        self.retry_at = 0.0
        self.since = since
        """Local copies made before the store was attached are checked once, like all."""
        self.settled: list[float] = []
        """By backend number: local copies checked at or after this wall time are trusted
        (``inf``: the plan may move this backend's sessions, always ask)."""
        self.counters = dict.fromkeys(
            (
                "reads",
                "claims",
                "moves",
                "confirms",
                "published",
                "lost",
                "adopted",
                "corrupt",
                "foreign",
                "failures",
            ),
            0,
        )

    def adopt_plan(
        self,
        states: dict[int, BackendState],
        *,
        schedule: bool,
        wall: float,
        backends: int,
    ) -> None:
        """A new plan: backends whose sessions it may move are never settled; a backend
        that just became immovable is settled ``SETTLE_GRACE`` from now."""
        settled = self.settled
        if len(settled) < backends:
            settled.extend([self.since] * (backends - len(settled)))
        for i in range(len(settled)):
            state = states.get(i)
            if schedule or state is None or state not in IMMOVABLE:
                settled[i] = math.inf
            elif settled[i] == math.inf:
                settled[i] = wall + SETTLE_GRACE

    def failed(self, wall: float) -> None:
        """A store call failed: local tables until a write-back succeeds, or until a
        request tries again ``RETRY_AFTER`` from now."""
        self.counters["failures"] += 1
        self.up = False
        self.retry_at = wall + RETRY_AFTER

    def answered(self, wall: float) -> None:
        """A write-back succeeded."""
        if not self.up:
            self._back(wall)

    def usable(self, wall: float) -> bool:
        """Whether to ask the store now: it is up, or it is time to try it again."""
        if not self.up and wall >= self.retry_at:
            self._back(wall)
        return self.up

    def _back(self, wall: float) -> None:
        """Up again: every local copy is checked once before it is trusted."""
        self.up = True
        settled = self.settled
        for i, s in enumerate(settled):
            if s != math.inf:
                settled[i] = max(s, wall)

    def trusted(self, backend: int, checked: float) -> bool:
        """Whether a local copy on ``backend`` checked at ``checked`` needs no store read."""
        settled = self.settled
        return backend < len(settled) and checked >= settled[backend]
