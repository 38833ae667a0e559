"""The migration decision: for one session at one instant, keep it or move it, and why.

Data flow (proxy, per request of an existing session): the session's pinned backend, key
hash, last-seen and created times, a compiled plan (a :class:`CompiledPlan`, which
:class:`limpet.affinity.router.Router` is) and the request's arrival time go in; a
:class:`Decision` comes out. The function is pure: every proxy replica given the same
inputs returns the same answer. The common case returns the shared :data:`KEEP` object,
and moves return decisions cached per router, so the hot path allocates nothing.

Order of the rules (the first that applies wins):

1. expired: idle for ``affinity.idleTimeout`` or older than ``affinity.absoluteTimeout``;
   the session is over and the key is placed as a new session;
2. failover: the pinned backend is Failed, Gone, not in the plan, or excluded by the
   caller (a proxy excludes the backends its passive health has marked down); immediate;
3. drain: the pinned backend is Draining and the session is idle for ``drain.minIdle``,
   or the backend's drain deadline has passed;
4. rebalance: a rebalance schedule is active; the session began before it started (one
   begun since was placed by the current table, bounded loads included, so moving it
   would be churn, and a lingering finished schedule would move it in steady state);
   the current table puts this key elsewhere than its pinned backend; either the "from"
   table put it on the pinned backend, or its new owner is a member the "from" table did
   not have (so a session pinned before its key was known, as an app cookie's is, still
   moves to a pod that joined); the key's release fraction is below the schedule's
   released fraction; the session is idle for ``rebalance.minIdle``; the new owner is not
   excluded and (when loads are given) it is under its bounded-load cap;
5. otherwise keep.

Destinations: expired, failover and drain go where a new session of the key would go
(:meth:`CompiledPlan.move`, the router's ``route_new``): the first eligible member of the
key's preference order under its bounded-load cap. A rebalance goes only to the new owner,
and waits while it is full. So, with loads given, no destination is ever at or above its
cap, and none is Draining, Failed, Gone or excluded.

"Idle" is ``now - last_seen``: the gap before the current request, so a session moves
only between two of its requests.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from .ids import NO_BACKENDS, BackendId

if TYPE_CHECKING:
    from .plan.model import RebalanceSchedule


class Reason(enum.Enum):
    """Why a session moves. The value is its spelling in headers and metrics."""

    FAILOVER = "failover"
    DRAIN = "drain"
    REBALANCE = "rebalance"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Decision:
    """Keep (``reason is None``), or move to ``backend`` for ``reason``.

    A move with ``backend is None`` means there is nowhere to go (no backend takes new
    sessions): the proxy answers 503.
    """

    reason: Reason | None = None
    backend: BackendId | None = None

    @property
    def keep(self) -> bool:
        """Whether the session stays where it is."""
        return self.reason is None


KEEP: Final = Decision()
"""The shared keep decision."""


class SessionLike(Protocol):
    """What the decision reads from a session (the proxy's own record type fits)."""

    @property
    def backend(self) -> BackendId: ...
    @property
    def key_hash(self) -> int: ...
    @property
    def last_seen(self) -> float: ...
    @property
    def created(self) -> float: ...


class CompiledPlan(Protocol):
    """What the decision needs of a compiled plan: the rules, applied to its tables.

    :class:`limpet.affinity.router.Router` fits (its ``decide`` method holds the rules
    above, next to the fields they read); the router builds on this module's
    :class:`Decision`, so this module names the router only through this protocol (the
    import graph stays acyclic).
    """

    def decide(
        self,
        backend: BackendId,
        key_hash: int,
        last_seen: float,
        created: float,
        now: float,
        loads: Mapping[BackendId, int] | None = None,
        total: int | None = None,
        *,
        exclude: AbstractSet[BackendId] = ...,
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class Session:
    """A plain session record, for callers without their own type."""

    backend: BackendId
    key_hash: int
    last_seen: float
    created: float


def released_fraction(schedule: RebalanceSchedule, now: float) -> float:
    """The fraction of candidate keys released to move at ``now``, in ``[0, 1]``.

    Linear from 0 at ``start`` to 1 at ``start + window``, and never more than
    ``max_moves_per_second x elapsed / expected_moves`` when both are set.
    """
    elapsed = now - schedule.start
    if elapsed < 0:
        return 0.0
    if now >= release_complete_at(schedule):  # exactly 1 from then on, whatever the rounding
        return 1.0
    fraction = 1.0 if schedule.window <= 0 else min(1.0, elapsed / schedule.window)
    rate, expected = schedule.max_moves_per_second, schedule.expected_moves
    if rate is not None and expected:
        fraction = min(fraction, rate * elapsed / expected)
    return fraction


def release_complete_at(schedule: RebalanceSchedule) -> float:
    """The instant at which :func:`released_fraction` reaches 1."""
    duration = schedule.window
    rate, expected = schedule.max_moves_per_second, schedule.expected_moves
    if rate is not None and expected:
        duration = max(duration, expected / rate)
    return schedule.start + duration


def decide(
    session: SessionLike,
    router: CompiledPlan,
    now: float,
    *,
    loads: Mapping[BackendId, int] | None = None,
    total: int | None = None,
    exclude: AbstractSet[BackendId] = NO_BACKENDS,
) -> Decision:
    """Keep or move one session at ``now`` (see the module docstring for the rules).

    ``loads`` (sessions per backend, as this proxy counts them) and ``total`` (their sum
    over the eligible members, computed when omitted) enable bounded loads for the
    destination. ``exclude`` names backends that must not hold sessions right now (a
    proxy's locally-down backends): sessions on them fail over, and no destination is one
    of them, nor does their weight count towards the caps of the others.
    """
    return router.decide(
        session.backend,
        session.key_hash,
        session.last_seen,
        session.created,
        now,
        loads,
        total,
        exclude=exclude,
    )
