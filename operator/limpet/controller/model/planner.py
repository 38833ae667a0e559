"""Membership + spec + previous state -> the next plan, its events and the next deadline.

Data flow: the reconciler calls :func:`plan_next` with what it observed (members from
the EndpointSlices, or ``None`` when the Service is gone), the parsed spec, the cookie
keys, a session estimate from the proxies' stats, and the previous :class:`PlannerState`.
It returns a :class:`PlanResult`: the new state, the plan to push (a new version only when
its content changed, or when a proxy was seen ahead of us), the events to post, whether
the durable part of the state changed (then it is written to status before the push, so
a restart never replays a deadline or restarts a schedule), and the next instant at
which time alone changes something (slow start ends, a failed backend becomes Gone, the
rebalance window ends).

Each backend's lifecycle moves by :func:`limpet.affinity.advance` (every transition,
with its diagram, is in :mod:`limpet.affinity.lifecycle`). Rules beyond it:

- The first backends of an empty table start Active: slow start only protects a new pod
  from its warm peers.
- Scale-out (new members in the target table, the previous table non-empty) starts a
  gradual rebalance schedule from the previous table, unless rebalance.mode is Never. A
  scale-out during a running schedule keeps that schedule's "from" table (sessions not
  yet moved are still placed by it) and restarts the window.
- The slot table size follows :func:`limpet.affinity.recommended_size` (about 256 slots a
  backend, never shrinking, kept while it gives 64 or more), so 1000 backends still move
  close to the optimal share on a change. A size change reshuffles the table, so it only
  happens with a scale-out, whose schedule then carries the old size as ``fromSize``.
- A finished schedule stays in the plan for one idle timeout more, so sessions that were
  busy at the end of the window still move at their next idle moment, then it is dropped.

Pure: the clock is an argument, and equal inputs give equal outputs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import (
    BackendState,
    BackendStatus,
    LifecycleTiming,
    Observation,
    advance,
)
from limpet.affinity.migration import release_complete_at
from limpet.affinity.plan.model import (
    Backend,
    CookieKey,
    Plan,
    RebalanceSchedule,
    SessionStoreSettings,
)
from limpet.affinity.slottable import recommended_size
from limpet.controller.model.membership import Member
from limpet.controller.model.spec import StickySpec

DEFAULT_WEIGHT = 100


class EventKind(enum.Enum):
    SCALE_OUT = "ScaleOut"
    DRAIN_STARTED = "DrainStarted"
    DRAIN_FINISHED = "DrainFinished"
    FAILOVER = "Failover"
    RECOVERED = "BackendRecovered"
    REBALANCE_STARTED = "RebalanceStarted"
    REBALANCE_FINISHED = "RebalanceFinished"


@dataclass(frozen=True, slots=True)
class PlanEvent:
    kind: EventKind
    message: str
    warning: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedBackend:
    id: BackendId
    address: str
    port: int
    pod: str | None
    status: BackendStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerState:
    """What the next plan is derived from; the durable part is mirrored into status."""

    version: int = 0
    backends: Mapping[BackendId, TrackedBackend] = field(default_factory=dict)
    schedule: RebalanceSchedule | None = None
    schedule_finished: bool = False
    slot_table_size: int | None = None
    """The table size in force; ``None`` before the first plan."""
    plan: Plan | None = None

    def durable_key(self) -> tuple[object, ...]:
        """Everything a restart must not lose (compared to decide on a synchronous write)."""
        return (
            tuple(sorted((b.id, b.status) for b in self.backends.values())),
            self.schedule,
            self.schedule_finished,
            self.slot_table_size,
        )

    def table(self) -> dict[BackendId, int]:
        return {
            b.id: DEFAULT_WEIGHT
            for b in self.backends.values()
            if b.status.state.takes_new_sessions
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanInputs:
    name: str
    spec: StickySpec
    members: Mapping[BackendId, Member] | None
    """``None``: the Service does not exist (every backend is treated as absent)."""
    cookie_keys: tuple[CookieKey, ...]
    sessions: int | None = None
    """Total sessions across backends, from the proxies' stats, if known."""
    version_floor: int = 0
    """The highest plan version seen on a proxy that this state did not issue (a restart
    lost it, or another operator pushed it): the next version must exceed it. 0: none."""
    gone_after: float = 30.0
    forget_after: float = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanResult:
    state: PlannerState
    plan: Plan
    new_version: bool
    durable_changed: bool
    events: tuple[PlanEvent, ...]
    next_wakeup: float | None


def _pods(tracked: list[TrackedBackend]) -> str:
    names = [t.pod or t.id for t in tracked]
    shown = ", ".join(sorted(names)[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _advance_all(
    inputs: PlanInputs, previous: PlannerState, now: float
) -> tuple[dict[BackendId, TrackedBackend], list[PlanEvent]]:
    spec = inputs.spec
    members = inputs.members or {}
    warm_peers = bool(previous.table())
    timing = LifecycleTiming(
        slow_start=spec.slow_start if warm_peers else 0.0,
        drain_timeout=spec.drain_timeout,
        gone_after=inputs.gone_after,
        forget_after=inputs.forget_after,
    )
    out: dict[BackendId, TrackedBackend] = {}
    moves: list[tuple[BackendState | None, TrackedBackend]] = []
    for bid in sorted(set(members) | set(previous.backends)):
        member = members.get(bid)
        prev = previous.backends.get(bid)
        obs = member.observation if member is not None else Observation.ABSENT
        prev_status = prev.status if prev is not None else None
        status = advance(prev_status, obs, now=now, timing=timing)
        if status is None:
            continue
        if member is not None:
            tracked = TrackedBackend(
                id=bid, address=member.address, port=member.port, pod=member.pod, status=status
            )
        else:
            assert prev is not None
            tracked = replace(prev, status=status)
        out[bid] = tracked
        moves.append((prev_status.state if prev_status is not None else None, tracked))
    return out, _lifecycle_events(spec, moves, warm_peers=warm_peers)


def _lifecycle_events(
    spec: StickySpec,
    moves: list[tuple[BackendState | None, TrackedBackend]],
    *,
    warm_peers: bool,
) -> list[PlanEvent]:
    """The Events of one pass's transitions: each backend's state before, and now."""
    joined: list[TrackedBackend] = []
    draining: list[TrackedBackend] = []
    drained: list[TrackedBackend] = []
    failed: list[TrackedBackend] = []
    recovered: list[TrackedBackend] = []
    for before, tracked in moves:
        after = tracked.status.state
        if after.takes_new_sessions and (before is None or not before.keeps_sessions):
            (recovered if before is not None else joined).append(tracked)
        elif after is BackendState.DRAINING and before is not BackendState.DRAINING:
            draining.append(tracked)
        elif before is BackendState.DRAINING and after is BackendState.GONE:
            drained.append(tracked)
        elif after is BackendState.FAILED and before is not None and before.keeps_sessions:
            failed.append(tracked)
    events: list[PlanEvent] = []
    if joined and warm_peers:
        events.append(PlanEvent(EventKind.SCALE_OUT, f"new backends: {_pods(joined)}"))
    if draining:
        events.append(
            PlanEvent(
                EventKind.DRAIN_STARTED,
                f"draining {_pods(draining)} (no new sessions; deadline in "
                f"{spec.drain_timeout:g}s, idle sessions move after {spec.drain_min_idle:g}s)",
            )
        )
    if drained:
        events.append(PlanEvent(EventKind.DRAIN_FINISHED, f"drained and gone: {_pods(drained)}"))
    if failed:
        events.append(
            PlanEvent(
                EventKind.FAILOVER,
                f"backends not serving, their sessions fail over: {_pods(failed)}",
                warning=True,
            )
        )
    if recovered:
        events.append(PlanEvent(EventKind.RECOVERED, f"serving again: {_pods(recovered)}"))
    return events


def _schedule(
    inputs: PlanInputs,
    previous: PlannerState,
    old_table: Mapping[BackendId, int],
    new_table: Mapping[BackendId, int],
    old_size: int,
    now: float,
) -> tuple[RebalanceSchedule | None, bool, list[PlanEvent]]:
    spec = inputs.spec
    schedule, finished = previous.schedule, previous.schedule_finished
    events: list[PlanEvent] = []
    added = set(new_table) - set(old_table)
    if spec.rebalance.mode != "Gradual" or not new_table:
        return None, False, events
    if added and old_table:
        running = schedule is not None and not finished
        base = schedule.from_weights_map if schedule is not None and running else old_table
        from_size = schedule.from_size if schedule is not None and running else old_size
        new_total = sum(new_table.values()) or 1
        moved_share = sum(w for b, w in new_table.items() if b not in base) / new_total
        expected = None
        if inputs.sessions is not None:
            expected = max(1, round(inputs.sessions * moved_share))
        schedule = RebalanceSchedule.from_weights(
            base,
            from_size=from_size,
            start=now,
            window=spec.rebalance.window,
            min_idle=spec.rebalance.min_idle,
            # The rate caps a fraction of the estimate, so without one it cannot apply.
            max_moves_per_second=(
                None if expected is None else float(spec.rebalance.max_moves_per_second)
            ),
            expected_moves=expected,
        )
        finished = False
        events.append(
            PlanEvent(
                EventKind.REBALANCE_STARTED,
                f"gradual rebalance onto {len(added)} new backend(s) over "
                f"{spec.rebalance.window:g}s, about {moved_share:.0%} of sessions"
                + (f" (~{expected})" if expected is not None else ""),
            )
        )
    if schedule is not None:
        done_at = release_complete_at(schedule)
        if not finished and now >= done_at:
            finished = True
            events.append(
                PlanEvent(EventKind.REBALANCE_FINISHED, "rebalance window over: all released")
            )
        grace = max(spec.affinity.idle_timeout or 0.0, schedule.min_idle)
        if finished and now >= done_at + grace:
            schedule, finished = None, False
    return schedule, finished, events


def _next_wakeup(
    backends: Mapping[BackendId, TrackedBackend],
    schedule: RebalanceSchedule | None,
    finished: bool,
    inputs: PlanInputs,
    now: float,
) -> float | None:
    times: list[float] = []
    for b in backends.values():
        st = b.status
        if st.state is BackendState.WARMING and st.warming_since is not None:
            times.append(st.warming_since + inputs.spec.slow_start)
        elif st.state is BackendState.DRAINING and st.drain_deadline is not None:
            times.append(st.drain_deadline)
        elif st.state is BackendState.FAILED:
            times.append(st.since + inputs.gone_after)
        elif st.state is BackendState.GONE:
            times.append(st.since + inputs.forget_after)
    if schedule is not None:
        done_at = release_complete_at(schedule)
        grace = max(inputs.spec.affinity.idle_timeout or 0.0, schedule.min_idle)
        times.append(done_at + grace if finished else done_at)
    future = [t for t in times if t > now]
    return min(future) if future else None


def _content(plan: Plan) -> Plan:
    return replace(plan, version=1, generated_at=None)


def _plan(
    inputs: PlanInputs,
    backends: Mapping[BackendId, TrackedBackend],
    schedule: RebalanceSchedule | None,
    size: int,
    *,
    version: int,
) -> Plan:
    """The plan of these backends, schedule and table size, from the spec."""
    spec = inputs.spec
    return Plan(
        version=version,
        backends=tuple(
            Backend(
                id=b.id,
                address=b.address,
                port=b.port,
                state=b.status.state,
                weight=DEFAULT_WEIGHT,
                warming_since=b.status.warming_since
                if b.status.state is BackendState.WARMING
                else None,
                drain_deadline=b.status.drain_deadline,
            )
            for b in sorted(backends.values(), key=lambda t: t.id)
        ),
        affinity=spec.plan_affinity(),
        balance=spec.balance_settings(),
        drain=spec.drain_settings(),
        rebalance=schedule,
        cookie_keys=inputs.cookie_keys,
        slot_table_size=size,
        name=inputs.name,
        session_store=_store(inputs),
    )


def _store(inputs: PlanInputs) -> SessionStoreSettings | None:
    """The plan's ``sessionStore``; its key prefix defaults per StickyService."""
    store = inputs.spec.session_store
    if store is None:
        return None
    namespace, _, name = inputs.name.partition("/")
    return store.plan_settings(namespace, name)


def plan_next(inputs: PlanInputs, previous: PlannerState, *, now: float) -> PlanResult:
    """The next state and plan; see the module docstring for the rules."""
    old_table = previous.table()
    backends, events = _advance_all(inputs, previous, now)
    new_table = {
        b.id: DEFAULT_WEIGHT for b in backends.values() if b.status.state.takes_new_sessions
    }
    old_size = previous.slot_table_size
    size = recommended_size(max(1, len(new_table)), current=old_size)
    schedule, finished, sched_events = _schedule(
        inputs, previous, old_table, new_table, old_size or size, now
    )
    events.extend(sched_events)
    plan = _plan(inputs, backends, schedule, size, version=max(previous.version, 1))
    changed = previous.plan is None or _content(previous.plan) != _content(plan)
    behind = inputs.version_floor > 0 and inputs.version_floor >= previous.version
    new_version = changed or (behind and previous.plan is not None) or previous.version == 0
    version = max(previous.version, inputs.version_floor) + 1 if new_version else previous.version
    plan = replace(plan, version=version, generated_at=now)
    if not new_version and previous.plan is not None:
        plan = previous.plan
    state = PlannerState(
        version=version,
        backends=backends,
        schedule=schedule,
        schedule_finished=finished,
        slot_table_size=size,
        plan=plan,
    )
    return PlanResult(
        state=state,
        plan=plan,
        new_version=new_version,
        durable_changed=state.durable_key() != previous.durable_key(),
        events=tuple(events),
        next_wakeup=_next_wakeup(backends, schedule, finished, inputs, now),
    )
