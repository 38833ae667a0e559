"""Backend lifecycle: EndpointSlice conditions to backend states, and the slow-start ramp.

Data flow (operator side): each EndpointSlice endpoint's conditions are reduced to an
:class:`Observation` by :func:`observe`; :func:`advance` folds it into the backend's
previous :class:`BackendStatus` at an instant and yields the next one, which the operator
writes into the plan. The proxy only reads the state, and uses :func:`ramp` for the
slow-start weight of a Warming backend. Pure functions over frozen values; callers pass
the clock in, so replicas given the same inputs agree. Every transition of a backend's
lifecycle is here; the planner only applies them.

States (``absent``: not in any EndpointSlice; ``!serving``: listed, not serving)::

    (new) --ready--> Warming --slowStart elapsed--> Active
    Warming|Active --serving && terminating--> Draining (no new sessions, a deadline)
    Draining --ready--> Active                 (conditions flapped: serve it again)
    Draining --absent--> Gone                  (the drain finished: the pod was deleted)
    Warming|Active|Draining --!serving--> Failed
    Warming|Active --absent--> Failed
    Failed --absent for goneAfter--> Gone --absent for forgetAfter--> (dropped)
    Gone --!serving--> Failed
    Failed|Gone --ready--> Warming (Active without slow start)
    (new) --!serving or absent--> (not listed)

A pod that has never been ready is not a failure: the EndpointSlice controller lists
every new pod as not ready until its readiness probe passes, so on every scale-out or
rollout the new pods would show as Failed (a Degraded StickyService, a "recovered"
Event instead of a scale-out) for the length of their start-up.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .errors import AffinityError


class BackendState(enum.Enum):
    """The state of a backend in a plan. The value is its JSON spelling."""

    WARMING = "Warming"
    """Ready and new: takes new sessions, its weight for bounded loads ramps over slowStart."""
    ACTIVE = "Active"
    """Ready: owns slots, takes new sessions."""
    DRAINING = "Draining"
    """Serving but terminating: keeps its sessions until idle or its deadline, takes no new ones."""
    FAILED = "Failed"
    """Not serving: its sessions fail over at once."""
    GONE = "Gone"
    """Absent for a while; kept in the plan only so old cookies resolve to a failover."""

    @property
    def takes_new_sessions(self) -> bool:
        """Whether the backend is in the target table (Warming or Active)."""
        return self is BackendState.WARMING or self is BackendState.ACTIVE

    @property
    def keeps_sessions(self) -> bool:
        """Whether sessions pinned to it may stay (Warming, Active or Draining)."""
        return self is not BackendState.FAILED and self is not BackendState.GONE


class Observation(enum.Enum):
    """What one EndpointSlice endpoint says about a backend, reduced to what matters."""

    READY = "ready"
    SERVING_TERMINATING = "serving-terminating"
    NOT_SERVING = "not-serving"
    ABSENT = "absent"


def observe(*, ready: bool | None, serving: bool | None, terminating: bool | None) -> Observation:
    """Reduce an endpoint's conditions, with the API's nil rules, to an :class:`Observation`.

    discovery.k8s.io/v1: a nil ``ready`` means true, a nil ``serving`` defers to ``ready``,
    and a nil ``terminating`` means false.
    """
    is_ready = True if ready is None else ready
    is_serving = is_ready if serving is None else serving
    if terminating:
        return Observation.SERVING_TERMINATING if is_serving else Observation.NOT_SERVING
    return Observation.READY if is_ready else Observation.NOT_SERVING


@dataclass(frozen=True, slots=True, kw_only=True)
class LifecycleTiming:
    """Durations (seconds) that drive the lifecycle; from the StickyService spec."""

    slow_start: float = 0.0
    """How long a new backend stays Warming; 0 skips Warming."""
    drain_timeout: float = 300.0
    """From entering Draining to its deadline, when its remaining sessions move regardless."""
    gone_after: float = 60.0
    """How long a Failed backend that is absent stays Failed before it becomes Gone."""
    forget_after: float = 86400.0
    """How long a Gone backend stays in the plan (old cookies then fail over, not 'unknown')."""

    def __post_init__(self) -> None:
        for name in ("slow_start", "drain_timeout", "gone_after", "forget_after"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise AffinityError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStatus:
    """A backend's lifecycle position: its state, when it entered it, and its deadlines."""

    state: BackendState
    since: float
    """Epoch seconds when ``state`` was entered."""
    warming_since: float | None = None
    """Epoch seconds when slow start began (Warming, and kept once Active)."""
    drain_deadline: float | None = None
    """Epoch seconds when a Draining backend's sessions move even if busy."""


def advance(
    previous: BackendStatus | None,
    observation: Observation,
    *,
    now: float,
    timing: LifecycleTiming,
) -> BackendStatus | None:
    """The next lifecycle status of one backend; ``None`` means it is not (or no longer) listed.

    Idempotent: folding the same observation again at a later instant only advances the
    time-driven transitions (Warming to Active, Failed to Gone, Gone to dropped).
    """
    if observation is Observation.READY:
        if previous is None or not previous.state.keeps_sessions:
            if timing.slow_start > 0:
                return BackendStatus(state=BackendState.WARMING, since=now, warming_since=now)
            return BackendStatus(state=BackendState.ACTIVE, since=now)
        if previous.state is BackendState.WARMING:
            started = previous.warming_since if previous.warming_since is not None else now
            if now - started >= timing.slow_start:
                return BackendStatus(state=BackendState.ACTIVE, since=now, warming_since=started)
            return previous
        if previous.state is BackendState.DRAINING:
            # Terminating pods do not come back, but conditions can flap: serve it again.
            return BackendStatus(
                state=BackendState.ACTIVE, since=now, warming_since=previous.warming_since
            )
        return previous
    if observation is Observation.SERVING_TERMINATING:
        if previous is not None and previous.state is BackendState.DRAINING:
            return previous
        return BackendStatus(
            state=BackendState.DRAINING,
            since=now,
            warming_since=None if previous is None else previous.warming_since,
            drain_deadline=now + timing.drain_timeout,
        )
    # NOT_SERVING or ABSENT
    if previous is None:
        return None
    if previous.state is BackendState.DRAINING and observation is Observation.ABSENT:
        # A drained pod leaves the slices when it is deleted: its drain is over, it did
        # not fail (its remaining sessions move either way).
        return BackendStatus(state=BackendState.GONE, since=now)
    if previous.state.keeps_sessions:
        return BackendStatus(state=BackendState.FAILED, since=now)
    if previous.state is BackendState.FAILED:
        if observation is Observation.ABSENT and now - previous.since >= timing.gone_after:
            return BackendStatus(state=BackendState.GONE, since=now)
        return previous
    # GONE
    if observation is Observation.NOT_SERVING:
        return BackendStatus(state=BackendState.FAILED, since=now)
    if now - previous.since >= timing.forget_after:
        return None
    return previous


MIN_RAMP = 0.01
"""The smallest slow-start factor, so a just-added backend still takes some new sessions."""


def ramp(*, warming_since: float | None, slow_start: float, now: float) -> float:
    """The slow-start factor in ``[MIN_RAMP, 1]``: linear from warming_since over slow_start."""
    if warming_since is None or slow_start <= 0:
        return 1.0
    progress = (now - warming_since) / slow_start
    if progress >= 1.0:
        return 1.0
    return progress if progress > MIN_RAMP else MIN_RAMP
