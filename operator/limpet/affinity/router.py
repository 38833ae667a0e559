"""A plan compiled for routing: slot tables, states and settings in hot-path form.

Data flow: ``Plan -> Router`` once per accepted plan (builds the target table and, during
a rebalance, the "from" table; reuses identical tables of the previous router), then per
request :meth:`Router.route_new` for a new session and :meth:`Router.decide` (the rules
of :mod:`limpet.affinity.migration`, whose :func:`~limpet.affinity.migration.decide` calls
it) for an existing one. A router is immutable after
construction and can be shared by every task of a process; building one takes tens of
milliseconds for tens of backends, so the proxy builds it off the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Final

from .bounded import Preferences, load_cap
from .hashing import release_fraction
from .ids import NO_BACKENDS, BackendId
from .lifecycle import BackendState, ramp
from .migration import KEEP, Decision, Reason, released_fraction
from .plan.model import Backend, Plan, RebalanceSchedule
from .slottable import SlotTable

# Enum members read per request, as Final module constants: compiled code reads
# such a constant directly, where ``BackendState.FAILED`` is a globals look-up and then
# a class attribute look-up (about 1 000 instructions on Python 3.11).
_FAILED: Final = BackendState.FAILED
_GONE: Final = BackendState.GONE
_DRAINING: Final = BackendState.DRAINING
_EXPIRED: Final = Reason.EXPIRED
_FAILOVER: Final = Reason.FAILOVER
_DRAIN: Final = Reason.DRAIN
_REBALANCE: Final = Reason.REBALANCE


class Router:
    """The routing view of one plan. Attributes are read-only by convention."""

    __slots__ = (
        "_decisions",
        "_prefs",
        "_ramped",
        "_weights",
        "absolute_timeout",
        "backends",
        "drain_deadlines",
        "drain_min_idle",
        "idle_timeout",
        "joined",
        "load_factor",
        "members",
        "owners",
        "plan",
        "schedule",
        "size",
        "slow_start",
        "source",
        "source_owners",
        "source_size",
        "states",
        "target",
        "total_weight",
    )

    def __init__(self, plan: Plan, *, previous: Router | None = None) -> None:
        self.plan = plan
        self.backends: Mapping[BackendId, Backend] = plan.backend_map()
        # dicts, not Mappings: compiled, a dict's ``get`` is a C call, a Mapping's a
        # generic method call (read per decided request).
        self.states: dict[BackendId, BackendState] = {b.id: b.state for b in plan.backends}
        self.drain_deadlines: dict[BackendId, float] = {
            b.id: b.drain_deadline
            for b in plan.backends
            if b.state is _DRAINING and b.drain_deadline is not None
        }
        self.idle_timeout = plan.affinity.idle_timeout
        self.absolute_timeout = plan.affinity.absolute_timeout
        self.drain_min_idle = plan.drain.min_idle
        self.load_factor = plan.balance.load_factor
        self.slow_start = plan.balance.slow_start
        self.size = plan.slot_table_size
        weights = plan.table_weights()
        reuse = _tables(previous)
        self.target: SlotTable | None = None
        self.owners: tuple[BackendId, ...] = ()
        if weights:
            self.target = _table(weights, self.size, reuse)
            self.owners = self.target.owners
        self.members: tuple[BackendId, ...] = () if self.target is None else self.target.members
        self._weights: dict[BackendId, int] = weights
        self.total_weight = sum(weights.values())
        # Backends whose bounded-load weight still ramps: (id, weight, warming_since).
        self._ramped = tuple(
            (b.id, b.weight, b.warming_since)
            for b in plan.backends
            if b.state is BackendState.WARMING and b.warming_since is not None
        )
        self._prefs: Preferences | None = None
        if self.target is not None:
            self._prefs = Preferences(self.members, self.target.weights, self.size)
        self.schedule: RebalanceSchedule | None = None
        self.source: SlotTable | None = None
        self.source_owners: tuple[BackendId, ...] = ()
        self.source_size = 1
        self.joined: frozenset[BackendId] = frozenset()
        if plan.rebalance is not None and self.target is not None:
            self.schedule = plan.rebalance
            self.source = _table(
                dict(plan.rebalance.from_backends), plan.rebalance.from_size, reuse
            )
            self.source_owners = self.source.owners
            self.source_size = self.source.size
            self.joined = frozenset(self.members) - frozenset(self.source.members)
        self._decisions: dict[tuple[Reason, BackendId | None], Decision] = {
            (reason, m): Decision(reason, m) for reason in Reason for m in (*self.members, None)
        }

    @property
    def version(self) -> int:
        """The plan version."""
        return self.plan.version

    def owner(self, key_hash: int) -> BackendId | None:
        """The slot owner for a key hash in the target table (``None``: no backend)."""
        return self.owners[key_hash % self.size] if self.owners else None

    def preference(self, key_hash: int) -> list[BackendId]:
        """The key's preference order: its slot owner, then the other members by score."""
        if self._prefs is None:
            return []
        slot = key_hash % self.size
        owner = self.owners[slot]
        order = self._prefs.order(slot)
        order.remove(owner)
        order.insert(0, owner)
        return order

    def weight_at(self, backend: BackendId, now: float) -> float:
        """A member's bounded-load weight at ``now`` (slow start ramps Warming backends)."""
        weight = self._weights[backend]
        for bid, w, since in self._ramped:
            if bid == backend:
                return w * ramp(warming_since=since, slow_start=self.slow_start, now=now)
        return float(weight)

    def eligible(self, exclude: AbstractSet[BackendId] = NO_BACKENDS) -> tuple[BackendId, ...]:
        """The members that may take sessions: the table's members not in ``exclude``."""
        if not exclude:
            return self.members
        return tuple(m for m in self.members if m not in exclude)

    def _total_weight_at(self, now: float, exclude: AbstractSet[BackendId]) -> float:
        total = float(self.total_weight)
        for _, w, since in self._ramped:
            total -= w * (1.0 - ramp(warming_since=since, slow_start=self.slow_start, now=now))
        if exclude:
            weights = self._weights
            for b in exclude:
                if b in weights:
                    total -= self.weight_at(b, now)
        return total

    def _total(
        self,
        loads: Mapping[BackendId, int],
        total: int | None,
        exclude: AbstractSet[BackendId],
    ) -> int:
        if total is not None:
            return total
        get = loads.get
        if exclude:
            return sum([get(m, 0) for m in self.members if m not in exclude])
        return sum([get(m, 0) for m in self.members])

    def cap(
        self,
        backend: BackendId,
        now: float,
        loads: Mapping[BackendId, int],
        total: int | None = None,
        *,
        exclude: AbstractSet[BackendId] = NO_BACKENDS,
    ) -> int:
        """The bounded-load cap of a member for the next session placed on it.

        ``ceil(load_factor x (total + 1) x w / W)`` over the eligible members (see
        :mod:`.bounded`); 0 for a backend that is excluded or not a member.
        """
        if backend not in self._weights or (exclude and backend in exclude):
            return 0
        return load_cap(
            self.load_factor,
            self._total(loads, total, exclude),
            self.weight_at(backend, now),
            self._total_weight_at(now, exclude),
        )

    def under_cap(
        self,
        backend: BackendId,
        now: float,
        loads: Mapping[BackendId, int],
        total: int | None = None,
        *,
        exclude: AbstractSet[BackendId] = NO_BACKENDS,
    ) -> bool:
        """Whether a member may take one more session under bounded loads."""
        return loads.get(backend, 0) < self.cap(backend, now, loads, total, exclude=exclude)

    def route_new(
        self,
        key_hash: int,
        now: float,
        loads: Mapping[BackendId, int] | None = None,
        total: int | None = None,
        *,
        exclude: AbstractSet[BackendId] = NO_BACKENDS,
    ) -> BackendId | None:
        """Where a session of this key goes when it is placed (new) or moved.

        The first eligible member of the key's preference order (slot owner first) that is
        under its bounded-load cap. Without ``loads`` it is the first eligible member, the
        slot owner unless ``exclude`` names it. ``None`` when no member is eligible.
        ``total``, when given, must be the sum of ``loads`` over the eligible members.
        """
        if not self.owners:
            return None
        owner = self.owners[key_hash % self.size]
        if loads is None:
            if not exclude or owner not in exclude:
                return owner
            return next((b for b in self.preference(key_hash) if b not in exclude), None)
        total = self._total(loads, total, exclude)
        lf = self.load_factor
        # The common case first (no backend down, none warming): plain weights.
        plain = not exclude and not self._ramped
        if plain and loads.get(owner, 0) < load_cap(
            lf, total, self._weights[owner], self.total_weight
        ):
            return owner
        total_weight = self._total_weight_at(now, exclude)
        free = (not exclude or owner not in exclude) and loads.get(owner, 0) < load_cap(
            lf, total, self.weight_at(owner, now), total_weight
        )
        if free:
            return owner
        fallback: BackendId | None = None
        for backend in self.preference(key_hash):
            if exclude and backend in exclude:
                continue
            limit = load_cap(lf, total, self.weight_at(backend, now), total_weight)
            if loads.get(backend, 0) < limit:
                return backend
            fallback = fallback or backend
        # Unreachable while ``loads`` are counts and ``total`` their eligible sum: the caps
        # of the eligible members add up to more than ``total``.
        return fallback

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
        exclude: AbstractSet[BackendId] = NO_BACKENDS,
    ) -> Decision:
        """Keep or move the session of ``key_hash`` pinned to ``backend``, last seen at
        ``last_seen`` and created at ``created``, at ``now``: the rules of
        :mod:`limpet.affinity.migration`, in their order. A method, with the session's
        fields as arguments, so that compiled callers read this router's fields directly
        (through the module's protocols each read was an attribute look-up)."""
        idle = now - last_seen
        idle_timeout = self.idle_timeout
        absolute_timeout = self.absolute_timeout
        if (idle_timeout is not None and idle >= idle_timeout) or (
            absolute_timeout is not None and now - created >= absolute_timeout
        ):
            return self.move(_EXPIRED, key_hash, now, loads, total, exclude=exclude)
        state = self.states.get(backend)
        if state is None or state is _FAILED or state is _GONE or (exclude and backend in exclude):
            return self.move(_FAILOVER, key_hash, now, loads, total, exclude=exclude)
        if state is _DRAINING:
            deadline = self.drain_deadlines.get(backend)
            if idle >= self.drain_min_idle or (deadline is not None and now >= deadline):
                return self.move(_DRAIN, key_hash, now, loads, total, exclude=exclude)
            return KEEP
        schedule = self.schedule
        # A session begun since the schedule started was placed by the current table
        # (bounded loads included): moving it would be churn, not balance.
        if schedule is None or created >= schedule.start:
            return KEEP
        target = self.owners[key_hash % self.size]
        if target == backend or (
            self.source_owners[key_hash % self.source_size] != backend and target not in self.joined
        ):
            return KEEP
        if idle < schedule.min_idle or release_fraction(key_hash) >= released_fraction(
            schedule, now
        ):
            return KEEP
        if exclude and target in exclude:
            return KEEP
        if loads is not None and not self.under_cap(target, now, loads, total, exclude=exclude):
            return KEEP
        return self.moved_to(_REBALANCE, target)

    def move(
        self,
        reason: Reason,
        key_hash: int,
        now: float,
        loads: Mapping[BackendId, int] | None,
        total: int | None,
        *,
        exclude: AbstractSet[BackendId] = NO_BACKENDS,
    ) -> Decision:
        """A move of a key to where :meth:`route_new` would place it now."""
        dest = self.route_new(key_hash, now, loads, total, exclude=exclude)
        return self._decisions[(reason, dest)]

    def moved_to(self, reason: Reason, backend: BackendId) -> Decision:
        """The cached decision to move to ``backend`` for ``reason``."""
        return self._decisions.get((reason, backend)) or Decision(reason, backend)


def _tables(router: Router | None) -> list[SlotTable]:
    if router is None:
        return []
    return [t for t in (router.target, router.source) if t is not None]


def _table(weights: Mapping[BackendId, int], size: int, reuse: list[SlotTable]) -> SlotTable:
    members = tuple(sorted(weights))
    w = tuple(weights[m] for m in members)
    for t in reuse:
        if t.size == size and t.members == members and t.weights == w:
            return t
    return SlotTable.build(weights, size)
