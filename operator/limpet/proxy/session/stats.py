"""The session layer's statistics: per-backend sessions and requests, migrations by
reason, rejected cookies, learned-table sizes; and the merge of several workers' figures.

Data flow: :meth:`limpet.proxy.session.routing.SessionRouter.stats` builds a
:class:`RouterStats` from its
counters; the admin API serves :meth:`RouterStats.to_dict` as ``GET /v1/stats``; with
``--workers N`` the supervisor collects every worker's dict and sums them with
:func:`merge_stats`. Pure values and pure functions, no I/O, no shared state.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


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
            "backends": {
                bid: {
                    "sessions": b.sessions,
                    "requests": b.requests,
                    "health": b.health,
                    "state": b.state,
                }
                for bid, b in self.backends.items()
            },
            "migrations": dict(self.migrations),
            "rejectedCookies": dict(self.rejected_cookies),
            "appCookie": dict(self.app_cookie),
            "sessionStore": dict(self.store),
            "clusterSessions": None if self.cluster is None else dict(self.cluster),
            "learned": {name: dict(v) for name, v in self.learned.items()},
        }


_HEALTH_RANK = {"up": 0, "probing": 1, "down": 2}


def merge_stats(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the stats dicts of several worker processes into one.

    Counters add up; a backend's health is the worst any worker sees; the plan version
    is the lowest any worker runs (so a lagging worker is visible).
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
    ups = [p["sessionStore"]["up"] for p in parts_list if "up" in p.get("sessionStore", {})]
    if ups:
        out["sessionStore"]["up"] = min(ups)  # up only while every worker reaches it
    if versions and not missing:
        out["planVersion"] = min(versions)
    return out
