"""StickyService status: what the reconciler writes, and the state it recovers from it.

Data flow, out: the reconciler gathers a :class:`StatusView` (planner state, proxy sync,
sessions from the proxies' stats, a problem if any) and :func:`build_status` renders the
``status`` object: observedGeneration, planVersion, per-backend state/weight/sessions/
deadlines, proxies desired/synced, rebalance progress, key ids, and the conditions Ready,
Progressing, Degraded and ReplicasAgree (:mod:`.sharing`) with reasons
(``lastTransitionTime`` kept while a condition's status is unchanged). ``sessions`` are
distinct live sessions, counted once across proxies (:mod:`.counts`).

Data flow, in: on (re)start :func:`recover_state` reads the same status back into a
:class:`~.planner.PlannerState`: plan version, each backend's lifecycle (state, since,
warming start, drain deadline, last address) and the running rebalance schedule. That is
how a restarted operator resumes instead of restarting drains and windows from zero.
Times are written as RFC 3339 with microseconds, and the planner works on times rounded
to microseconds, so the round trip is exact enough to rebuild the same plan.

Pure functions.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import BackendState, BackendStatus, ramp
from limpet.affinity.limits import DEFAULT_SIZE
from limpet.affinity.migration import release_complete_at
from limpet.affinity.plan.model import RebalanceSchedule
from limpet.controller.model.planner import DEFAULT_WEIGHT, PlannerState, TrackedBackend
from limpet.controller.model.sharing import Sharing, replicas_agree, store_degraded


def ts(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return (
        dt.datetime.fromtimestamp(epoch, dt.UTC)
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def parse_ts(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return round(dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp(), 6)
    except ValueError:
        return None


def weight(status: BackendStatus, *, slow_start: float, now: float) -> int:
    """A backend's weight for new sessions as the proxies apply it at ``now``: the plan's
    weight, ramped during slow start as each proxy ramps it (:func:`limpet.affinity.ramp`).
    Rounded down, so it shows full only once the ramp is; at least 1, as a Warming backend
    takes some sessions. 0 for Draining, Failed and Gone, which take none. (The plan's
    weight itself stays full: the ramp and the states are the proxies' arithmetic.)"""
    if not status.state.takes_new_sessions:
        return 0
    if status.state is not BackendState.WARMING:
        return DEFAULT_WEIGHT
    factor = ramp(warming_since=status.warming_since, slow_start=slow_start, now=now)
    return max(1, math.floor(DEFAULT_WEIGHT * factor))


@dataclass(frozen=True, slots=True)
class Problem:
    """Why the StickyService cannot work as specified (Ready=False with this reason)."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySync:
    desired: int
    discovered: int
    synced: int
    out_of_sync: tuple[str, ...] = ()
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusView:
    generation: int
    state: PlannerState
    proxies: ProxySync
    sessions: Mapping[str, int] = field(default_factory=dict)
    problem: Problem | None = None
    rebalance_moved: int | None = None
    key_ids: Sequence[str] = ()
    keys_rotated_at: float | None = None
    rotation_request: str | None = None
    slow_start: float = 0.0
    now: float = 0.0
    sharing: Sharing = field(default_factory=Sharing)


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    previous: Mapping[str, Mapping[str, Any]],
    generation: int,
    now: float,
) -> dict[str, Any]:
    value = "True" if status else "False"
    old = previous.get(kind)
    since = old.get("lastTransitionTime") if old and old.get("status") == value else None
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or ts(now),
        "observedGeneration": generation,
    }


Verdict = tuple[bool, str, str]
"""A condition's status, reason and message."""


def _in_state(view: StatusView, state: BackendState) -> list[TrackedBackend]:
    return [b for b in view.state.backends.values() if b.status.state is state]


def _ready(view: StatusView) -> Verdict:
    """Ready: proxies found, a backend takes sessions, every proxy runs this plan."""
    px = view.proxies
    taking = sum(1 for b in view.state.backends.values() if b.status.state.takes_new_sessions)
    if view.problem is not None:
        ready = (False, view.problem.reason, view.problem.message)
    elif px.discovered == 0:
        ready = (False, "NoProxies", "no proxy pods found in the proxies' EndpointSlices yet")
    elif taking == 0:
        ready = (False, "NoBackends", "no backend is ready: proxies answer 503")
    elif px.synced < px.discovered:
        ready = (
            False,
            "ProxiesOutOfSync",
            f"{px.synced}/{px.discovered} proxies run plan {view.state.version}",
        )
    else:
        ready = (
            True,
            "Synced",
            f"{px.synced} proxies run plan {view.state.version} with {taking} backend(s)",
        )
    return ready


def _progressing(view: StatusView) -> Verdict:
    """Progressing: a rebalance, a drain, a slow start or a push under way."""
    sched = view.state.schedule
    draining = _in_state(view, BackendState.DRAINING)
    warming = _in_state(view, BackendState.WARMING)
    if sched is not None and not view.state.schedule_finished:
        return True, "Rebalancing", f"gradual rebalance until {ts(release_complete_at(sched))}"
    if draining:
        return True, "Draining", f"{len(draining)} backend(s) draining"
    if warming:
        return True, "Warming", f"{len(warming)} backend(s) in slow start"
    if view.proxies.synced < view.proxies.discovered:
        return True, "Syncing", "pushing the plan to the proxies"
    return False, "Stable", "nothing in progress"


def _degraded(view: StatusView) -> Verdict:
    """Degraded: a problem, an unreachable proxy, a failed backend or missing proxies."""
    px = view.proxies
    failed = _in_state(view, BackendState.FAILED)
    if view.problem is not None:
        return True, view.problem.reason, view.problem.message
    if px.unreachable:
        names = ", ".join(sorted(px.unreachable)[:5])
        return True, "ProxyUnreachable", f"admin API unreachable: {names}"
    store = store_degraded(view.sharing)
    if store is not None:
        return store
    if failed:
        names = ", ".join(sorted(b.pod or b.id for b in failed)[:5])
        return True, "BackendsFailed", f"{len(failed)} backend(s) not serving: {names}"
    if px.desired > px.discovered:
        return True, "ProxiesMissing", f"{px.discovered}/{px.desired} proxies found"
    return False, "AsExpected", "all backends and proxies healthy"


def _conditions(view: StatusView, previous: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    prev = {str(c.get("type")): c for c in previous if isinstance(c, Mapping)}
    g, now = view.generation, view.now
    return [
        _condition("Ready", *_ready(view), prev, g, now),
        _condition("Progressing", *_progressing(view), prev, g, now),
        _condition("Degraded", *_degraded(view), prev, g, now),
        _condition("ReplicasAgree", *replicas_agree(view.sharing), prev, g, now),
    ]


def _backends(view: StatusView) -> list[dict[str, Any]]:
    """``status.backends``: each backend's state, weight now, sessions and deadlines."""
    backends = []
    for b in sorted(view.state.backends.values(), key=lambda t: (t.pod or "", t.id)):
        s = b.status
        entry: dict[str, Any] = {
            "id": b.id,
            "pod": b.pod,
            "address": b.address,
            "port": b.port,
            "state": s.state.value,
            "weight": weight(s, slow_start=view.slow_start, now=view.now),
            "sessions": int(view.sessions.get(b.id, 0)),
            "since": ts(s.since),
            "warmingSince": ts(s.warming_since),
            "drainDeadline": ts(s.drain_deadline),
        }
        backends.append({k: v for k, v in entry.items() if v is not None})
    return backends


def _rebalance(view: StatusView) -> dict[str, Any]:
    """``status.rebalance``: the schedule (enough to resume it) and its progress."""
    sched = view.state.schedule
    if sched is None:
        return {"phase": "Idle"}
    done = view.state.schedule_finished
    rebalance: dict[str, Any] = {
        "phase": "Complete" if done else "InProgress",
        "startedAt": ts(sched.start),
        "endsAt": ts(release_complete_at(sched)),
        "window": sched.window,
        "minIdle": sched.min_idle,
        "fromBackends": [{"id": bid, "weight": w} for bid, w in sched.from_backends],
        "fromSize": sched.from_size,
    }
    if sched.max_moves_per_second is not None:
        rebalance["maxMovesPerSecond"] = sched.max_moves_per_second
    if sched.expected_moves is not None:
        rebalance["expectedMoves"] = sched.expected_moves
    if view.rebalance_moved is not None:
        rebalance["moved"] = view.rebalance_moved
        if sched.expected_moves is not None:
            rebalance["remaining"] = (
                0 if done else max(0, sched.expected_moves - view.rebalance_moved)
            )
    return rebalance


def _keys(view: StatusView) -> dict[str, Any] | None:
    """``status.keys``: the cookie key ids (signing one first) and the last rotation."""
    if not view.key_ids:
        return None
    keys: dict[str, Any] = {"active": view.key_ids[0], "ids": list(view.key_ids)}
    if view.keys_rotated_at is not None:
        keys["rotatedAt"] = ts(view.keys_rotated_at)
    if view.rotation_request is not None:
        keys["rotationRequest"] = view.rotation_request
    return keys


def build_status(view: StatusView, previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """The full ``status`` object (a merge-patch replaces lists whole, as intended)."""
    previous = previous or {}
    st = view.state
    px = view.proxies
    status: dict[str, Any] = {
        "observedGeneration": view.generation,
        "backendCount": sum(
            1 for b in st.backends.values() if b.status.state is not BackendState.GONE
        ),
        "backends": _backends(view),
        "proxies": {
            "desired": px.desired,
            "discovered": px.discovered,
            "synced": px.synced,
            "summary": f"{px.synced}/{px.discovered}",
            "outOfSync": sorted(px.out_of_sync),
        },
        "rebalance": _rebalance(view),
        "conditions": _conditions(view, previous.get("conditions") or []),
    }
    if st.version:
        # Only a plan that exists: status is written before the first one too (a
        # reconcile that keeps failing still shows its conditions), and 0 is no plan.
        status["planVersion"] = st.version
    if st.slot_table_size is not None:
        status["slotTableSize"] = st.slot_table_size
    keys = _keys(view)
    if keys is not None:
        status["keys"] = keys
    return status


_STATES = {s.value: s for s in BackendState}


def recover_state(status: Mapping[str, Any] | None) -> PlannerState:
    """The planner state a previous run left in ``status`` (empty state if none)."""
    if not status:
        return PlannerState()
    version = status.get("planVersion")
    backends: dict[BackendId, TrackedBackend] = {}
    for raw in status.get("backends") or ():
        try:
            state = _STATES[raw["state"]]
            since = parse_ts(raw.get("since"))
            bid = BackendId(str(raw["id"]))
            backends[bid] = TrackedBackend(
                id=bid,
                address=str(raw["address"]),
                port=int(raw["port"]),
                pod=raw.get("pod"),
                status=BackendStatus(
                    state=state,
                    since=since if since is not None else 0.0,
                    warming_since=parse_ts(raw.get("warmingSince")),
                    drain_deadline=parse_ts(raw.get("drainDeadline")),
                ),
            )
        except (KeyError, TypeError, ValueError):
            continue
    schedule = None
    finished = False
    reb = status.get("rebalance") or {}
    if reb.get("phase") in ("InProgress", "Complete") and reb.get("fromBackends"):
        try:
            start = parse_ts(reb.get("startedAt"))
            if start is not None:
                expected = int(reb["expectedMoves"]) if "expectedMoves" in reb else None
                # Older operators wrote a rate without an estimate. That rate never applied,
                # so drop it instead of failing validation and losing the running schedule.
                rate = (
                    float(reb["maxMovesPerSecond"])
                    if "maxMovesPerSecond" in reb and expected is not None
                    else None
                )
                schedule = RebalanceSchedule.from_weights(
                    {BackendId(str(e["id"])): int(e["weight"]) for e in reb["fromBackends"]},
                    from_size=int(reb.get("fromSize", DEFAULT_SIZE)),
                    start=start,
                    window=float(reb["window"]),
                    min_idle=float(reb["minIdle"]),
                    max_moves_per_second=rate,
                    expected_moves=expected,
                )
                finished = reb.get("phase") == "Complete"
        except (KeyError, TypeError, ValueError):
            schedule = None
    return PlannerState(
        version=int(version) if isinstance(version, int) else 0,
        backends=backends,
        schedule=schedule,
        schedule_finished=finished,
        slot_table_size=_positive_int(status.get("slotTableSize")),
        plan=None,
    )


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
