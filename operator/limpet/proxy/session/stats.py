"""The session layer's statistics: per-backend sessions and requests, migrations by
reason, rejected cookies, learned-table sizes; and the merge of several workers' figures.

Data flow: :meth:`limpet.proxy.session.routing.SessionRouter.stats` builds a
:class:`RouterStats` from its
counters; the admin API serves :meth:`RouterStats.to_dict` as ``GET /v1/stats``; with
``--workers N`` the supervisor collects every worker's dict and sums them with
:func:`merge_stats` (sketches are united, not summed: :func:`union_sketch`). Pure values
and pure functions, no I/O, no shared state.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .sessions import SKETCH_K


class AppCookieOutcome(enum.Enum):
    """A request that carried only one of the app cookie and its companion, or a
    companion that failed verification; the value is the metric label. Each is served
    (from the learned table, or as a request without a key), never refused."""

    COMPANION_MISSING = "companion_missing"
    APP_COOKIE_MISSING = "app_cookie_missing"
    COMPANION_REJECTED = "companion_rejected"


@dataclass(frozen=True, slots=True)
class BackendStats:
    sessions: int
    requests: int
    health: str
    state: str
    sketch: Sequence[int] | None = None
    """The bottom-``SKETCH_K`` 64-bit hashes of the same sessions, ascending."""
    drain_live: int | None = None
    """A Draining backend's sessions last served here within ``drain.minIdle``."""


@dataclass(frozen=True, slots=True)
class RouterStats:
    plan_version: int | None
    backends: Mapping[str, BackendStats]
    migrations: Mapping[str, int]
    rejected_cookies: Mapping[str, int]
    no_backend: int
    learned: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    app_cookie: Mapping[str, int] = field(default_factory=dict)
    store: Mapping[str, int] = field(default_factory=dict)
    """Store write-backs (flushes, fallbacks, written, dropped) and ``up`` (0/1); empty:
    no store configured."""
    cluster: Mapping[str, int] | None = None
    """Distinct live sessions per backend across every replica (from the store)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form served by ``GET /v1/stats`` (and merged across workers)."""
        return {
            "planVersion": self.plan_version,
            "requests": sum(b.requests for b in self.backends.values()),
            "noBackend": self.no_backend,
            "backends": {bid: _backend_dict(b) for bid, b in self.backends.items()},
            "migrations": dict(self.migrations),
            "rejectedCookies": dict(self.rejected_cookies),
            "appCookie": dict(self.app_cookie),
            "sessionStore": dict(self.store),
            "clusterSessions": None if self.cluster is None else dict(self.cluster),
            "learned": {name: dict(v) for name, v in self.learned.items()},
        }


def _backend_dict(b: BackendStats) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sessions": b.sessions,
        "requests": b.requests,
        "health": b.health,
        "state": b.state,
    }
    if b.sketch is not None:
        out["sketch"] = {"k": SKETCH_K, "hashes": [f"{h:016x}" for h in b.sketch]}
    if b.drain_live is not None:
        out["drainLive"] = b.drain_live
    return out


def union_sketch(sketches: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The bottom-k sketch of the union of several sketches' sets (``k``: the smallest
    of theirs), which is what one process holding all their sessions would report."""
    parts = list(sketches)
    k = min(int(s["k"]) for s in parts)
    union = {int(h, 16) for s in parts for h in s["hashes"]}
    return {"k": k, "hashes": [f"{h:016x}" for h in heapq.nsmallest(k, union)]}


_HEALTH_RANK = {"up": 0, "probing": 1, "down": 2}


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the stats dicts of several worker processes into one.

    Counters add up; a backend's health is the worst any worker sees; the plan version
    is the lowest any worker runs (so a lagging worker is visible). A backend's sketch is
    the bottom-k of the union of the workers' sketches and its ``drainLive`` the sum
    (a session whose connections reached two workers is live in both, never in none).
    """
    out: dict[str, Any] = {
        "planVersion": None,
        "requests": 0,
        "noBackend": 0,
        "backends": {},
        "migrations": {},
        "rejectedCookies": {},
        "appCookie": {},
        "sessionStore": {},
        "clusterSessions": None,
        "learned": {},
    }
    versions: list[int] = []
    sketches: dict[str, list[Mapping[str, Any] | None]] = {}
    live: dict[str, list[int | None]] = {}
    missing = False
    parts_list = list(parts)
    for p in parts_list:
        v = p.get("planVersion")
        if isinstance(v, int):
            versions.append(v)
        else:
            missing = True
        out["requests"] += p.get("requests", 0)
        out["noBackend"] += p.get("noBackend", 0)
        for bid, b in p.get("backends", {}).items():
            acc = out["backends"].setdefault(
                bid, {"sessions": 0, "requests": 0, "health": "up", "state": b.get("state")}
            )
            acc["sessions"] += b.get("sessions", 0)
            acc["requests"] += b.get("requests", 0)
            sketches.setdefault(bid, []).append(b.get("sketch"))
            live.setdefault(bid, []).append(b.get("drainLive"))
            if _HEALTH_RANK.get(b.get("health", "up"), 0) > _HEALTH_RANK[acc["health"]]:
                acc["health"] = b["health"]
        if out["clusterSessions"] is None and p.get("clusterSessions") is not None:
            out["clusterSessions"] = dict(p["clusterSessions"])  # the same store for all
        for key in ("migrations", "rejectedCookies", "appCookie", "sessionStore"):
            for reason, n in p.get(key, {}).items():
                out[key][reason] = out[key].get(reason, 0) + n
        for name, t in p.get("learned", {}).items():
            acc_t = out["learned"].setdefault(name, {})
            for k, n in t.items():
                acc_t[k] = acc_t.get(k, 0) + n
    for bid, acc in out["backends"].items():
        # A figure only when every worker that knows the backend reports it: a partial
        # union would undercount, and a partial sum could read 0 while sessions live.
        got = sketches[bid]
        if all(s is not None for s in got):
            acc["sketch"] = union_sketch(s for s in got if s is not None)
        n = live[bid]
        if all(x is not None for x in n):
            acc["drainLive"] = sum(x for x in n if x is not None)
    ups = [p["sessionStore"]["up"] for p in parts_list if "up" in p.get("sessionStore", {})]
    if ups:
        out["sessionStore"]["up"] = min(ups)  # up only while every worker reaches it
    if versions and not missing:
        out["planVersion"] = min(versions)
    return out
