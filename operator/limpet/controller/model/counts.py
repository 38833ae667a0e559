"""Distinct live sessions per backend from several proxies' stats, counted once.

Data flow: the pusher hands each proxy's ``GET /v1/stats`` body to :func:`parse_counts`
and keeps the :class:`ProxyCounts`; :func:`combine` merges every reachable proxy's into
one :class:`SessionCounts`, which status (``backends[].sessions``, DrainEmpty, the
store conditions) and the planner (``expectedMoves``) read. Pure functions, no I/O.

Each proxy counts the sessions *it* served within ``idleTimeout``; a user whose requests
are spread over replicas is in several proxies' counts. So, per backend, best first:

1. ``store``: a proxy connected to the session store (``sessionStore.up``) reports the
   store's cluster-wide count (``clusterSessions``); every connected proxy reads the
   same store, and the largest report wins (a lagging reader only lowers its own).
2. ``sketch``: each proxy reports a bottom-k sketch of its sessions' 64-bit hashes (the
   same hash for the same session in every replica); the union of the sketches is the
   sketch of the union, so the distinct count is exact below k sessions and a KMV
   estimate above (relative standard error about 1/sqrt(k - 2): 6.3 % at k = 256).
3. ``max``: otherwise, the largest single proxy's count: a lower bound of the distinct
   count (the sum would be an upper bound, off by up to the replica count).

A Draining backend is empty once no proxy holds a *live* session on it: one whose last
request was within ``drain.minIdle`` (``drainLive``; an older one moves at its next
request anyway). Proxies that do not report ``drainLive`` fall back to ``sessions``. It
is judged only from stats that every proxy served while running the drain's plan.
See docs/plan.md, "Stats the operator reads", for the fields.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

HASH_SPACE = 1 << 64
Method = Literal["store", "sketch", "max"]


@dataclass(frozen=True, slots=True)
class Sketch:
    """The ``k`` smallest distinct 64-bit session hashes (all of them if fewer)."""

    k: int
    hashes: frozenset[int]

    @property
    def complete(self) -> bool:
        return len(self.hashes) < self.k


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendCounts:
    sessions: int = 0
    drain_live: int | None = None
    sketch: Sketch | None = None
    draining: bool = False
    """The proxy runs a plan in which the backend is Draining (``state``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreState:
    """``sessionStore`` in a proxy's stats."""

    state: str
    """``connected``, ``unreachable`` or ``pending`` (configured, nothing flushed yet)."""
    error: str | None = None
    fallbacks: int = 0
    backends: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyCounts:
    backends: Mapping[str, BackendCounts] = field(default_factory=dict)
    store: StoreState | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCounts:
    sessions: Mapping[str, int] = field(default_factory=dict)
    """Distinct live sessions per backend id (see ``method``)."""
    method: Mapping[str, Method] = field(default_factory=dict)
    drain_live: Mapping[str, int] = field(default_factory=dict)
    """Per backend that every proxy reports Draining: the most live sessions any proxy
    holds (``drainLive``, else ``sessions``); 0 means no proxy holds a live session
    there. A backend is left out while any proxy's last stats predate its drain (they
    could show 0 for sessions that stay, or not list it at all)."""
    store_unreachable: Mapping[str, str] = field(default_factory=dict)
    """Proxy name -> its error, for proxies that report the store unreachable."""
    store_connected: int = 0

    @property
    def total(self) -> int:
        return sum(self.sessions.values())


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _sketch(raw: object) -> Sketch | None:
    if not isinstance(raw, Mapping):
        return None
    k, hashes = _int(raw.get("k")), raw.get("hashes")
    if k is None or k < 3 or not isinstance(hashes, list) or len(hashes) > k:
        return None
    try:
        values = frozenset(int(h, 16) for h in hashes)
    except (TypeError, ValueError):
        return None
    if any(v >= HASH_SPACE for v in values) or len(values) != len(hashes):
        return None
    return Sketch(k=k, hashes=values)


def _backend(raw: Mapping[str, Any]) -> BackendCounts:
    return BackendCounts(
        sessions=_int(raw.get("sessions")) or 0,
        drain_live=_int(raw.get("drainLive")),
        sketch=_sketch(raw.get("sketch")),
        draining=raw.get("state") == "Draining",
    )


def _store(raw: object, cluster: object) -> StoreState | None:
    """``sessionStore`` (``{}`` without a store; else write-back counters, ``up`` and
    ``behind``) and ``clusterSessions`` (the store's per-backend counts, ``null`` while
    it is down)."""
    if not isinstance(raw, Mapping) or not raw:
        return None
    up, fallbacks = _int(raw.get("up")), _int(raw.get("fallbacks")) or 0
    if up:
        state = "connected"
    elif up == 0 and fallbacks and not _int(raw.get("behind")):
        state = "unreachable"
    else:
        # Not flushed yet, or back but writing what it routed alone meanwhile (behind):
        # neither claimed nor blamed.
        state = "pending"
    counts = cluster if isinstance(cluster, Mapping) else {}
    return StoreState(
        state=state,
        # No count in the text: a message that changed at every flush would rewrite
        # status every second for as long as the store is down.
        error="its write-backs fail" if state == "unreachable" else None,
        fallbacks=fallbacks,
        backends={str(b): n for b, v in counts.items() if (n := _int(v)) is not None},
    )


def parse_counts(stats: Mapping[str, Any]) -> ProxyCounts:
    """The counting fields of one proxy's ``GET /v1/stats``; malformed parts are ignored."""
    backends = stats.get("backends")
    return ProxyCounts(
        backends={
            str(bid): _backend(b)
            for bid, b in (backends.items() if isinstance(backends, Mapping) else ())
            if isinstance(b, Mapping)
        },
        store=_store(stats.get("sessionStore"), stats.get("clusterSessions")),
    )


def union_estimate(sketches: Iterable[Sketch]) -> int:
    """Distinct hashes in the union of bottom-k sketches: exact while every sketch is
    complete, else the KMV estimate (k - 1) / (k-th smallest hash, as a fraction)."""
    parts = list(sketches)
    union: set[int] = set().union(*(s.hashes for s in parts))
    if all(s.complete for s in parts):
        return len(union)
    k = min(s.k for s in parts)
    smallest = heapq.nsmallest(k, union)
    if len(smallest) < k:
        # A full sketch holds k values, so the union has at least k: only unreachable
        # with inconsistent k; count what is there.
        return len(union)
    return max(len(smallest), math.floor((k - 1) * HASH_SPACE / (smallest[-1] + 1)))


def _distinct(parts: list[BackendCounts], store: int | None) -> tuple[int, Method]:
    if store is not None:
        return store, "store"
    sketches = [p.sketch for p in parts]
    if parts and all(s is not None for s in sketches):
        return union_estimate(s for s in sketches if s is not None), "sketch"
    return max((p.sessions for p in parts), default=0), "max"


def combine(proxies: Mapping[str, ProxyCounts]) -> SessionCounts:
    """One distinct count per backend from every reachable proxy's counts."""
    per_backend: dict[str, list[BackendCounts]] = {}
    store_counts: dict[str, int] = {}
    unreachable: dict[str, str] = {}
    connected = 0
    for name, counts in proxies.items():
        for bid, b in counts.backends.items():
            per_backend.setdefault(bid, []).append(b)
        store = counts.store
        if store is None or store.state == "pending":
            continue
        if store.state == "connected":
            connected += 1
            for bid, n in store.backends.items():
                store_counts[bid] = max(store_counts.get(bid, 0), n)
        else:
            unreachable[name] = store.error or store.state
    sessions: dict[str, int] = {}
    method: dict[str, Method] = {}
    live: dict[str, int] = {}
    for bid in sorted(per_backend.keys() | store_counts.keys()):
        parts = per_backend.get(bid, [])
        from_store = store_counts.get(bid, 0) if connected else None
        sessions[bid], method[bid] = _distinct(parts, from_store)
        if len(parts) == len(proxies) and all(p.draining for p in parts):
            live[bid] = max(p.drain_live if p.drain_live is not None else p.sessions for p in parts)
    return SessionCounts(
        sessions=sessions,
        method=method,
        drain_live=live,
        store_unreachable=unreachable,
        store_connected=connected,
    )
