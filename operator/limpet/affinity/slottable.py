"""The slot table: which backend owns each hash slot ("bounded rendezvous").

Algorithm (chosen by measurement; see docs/affinity.md):

1. Weighted rendezvous (HRW, :mod:`.rendezvous`): slot ``s`` scores backend ``b`` as
   ``cost = -ln(u) / w_b`` with ``u = fmix32(slot_hash(s) ^ seed(b))``, and goes to the
   lowest cost.
2. Bounds: every backend must hold between ``floor((1 - eps) x share + d)`` and
   ``floor((1 + eps) x share + d)`` slots, where ``share = size x w_b / W``, ``d`` is a
   stable per-backend dither in [0, 1) and ``eps = max(0.04, 2.5 / sqrt(size / N))``: about
   2.5 standard deviations of HRW's own noise, so the bounds rarely bind and barely add
   disruption, yet cap the worst backend while ``size / N`` is large. Unequal weights
   promise more (given at least 23 slots per backend): ``eps`` is capped at 0.045 and the
   bounds are clipped to within 5 % of the share, or to the two whole counts around a
   share too small for any count to lie within 5 % (see :func:`weighted_bounds`).
3. Upper bounds: deferred acceptance. An over-full backend keeps its cheapest slots and
   rejects the rest, which move to their next-cheapest backend, until none is over-full.
   With one cost per (slot, backend) shared by both sides, the result is the unique
   stable assignment, so it depends only on the inputs, never on processing order.
4. Lower bounds: each under-full backend, in id order, takes the slots it is cheapest for
   relative to their current owner, from owners with slots to spare.

Data flow: ``{backend id: weight}, size -> SlotTable`` once per plan, then
``table.owners[slot]`` per request (a tuple index, no allocation). A built table is
immutable and can be shared by any number of readers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import AffinityError
from .hashing import backend_dither, check_size
from .ids import BackendId
from .limits import DEFAULT_SIZE, LARGE_SIZE, MAX_WEIGHT
from .rendezvous import Scorer, rendezvous

MIN_EPS = 0.04
"""The tightest slot-count bound, relative to a backend's weighted share."""
MAX_EPS = 0.45
"""The loosest bound (tiny tables): keeps max/mean below 1.5."""
NOISE_SIGMAS = 2.5
"""How many standard deviations of rendezvous noise the bounds allow before binding."""
WEIGHT_TOLERANCE = 0.05
"""Unequal weights: every backend's slot count lies within this fraction of its share."""
WEIGHTED_MAX_EPS = 0.045
"""The loosest bound for unequal weights: below :data:`WEIGHT_TOLERANCE`, so that the
dithered rounding still lands within it for shares of 200 slots or more."""
WEIGHTED_MIN_SLOTS = 23
"""Slots per backend from which unequal weights get the tighter bounds. Below it the
bounds' rounding can leave the lower bounds summing above ``size`` or the upper ones
below it, so they could not all hold at once."""

SIZE_LADDER = (DEFAULT_SIZE, 131071, 262147, 524287, LARGE_SIZE)
"""Prime table sizes the operator chooses from (see :func:`recommended_size`)."""
SLOTS_PER_BACKEND = 256
"""The target ``size / N`` of :func:`recommended_size`."""

Weights = Mapping[str, int] | Mapping[BackendId, int] | Iterable[tuple[str, int]]
"""Backend id to weight: a mapping, or (id, weight) pairs (checked for duplicates)."""


def check_weights(backends: Weights) -> dict[BackendId, int]:
    """Validate backend weights: non-empty, unique non-empty string ids, ints in 1..MAX_WEIGHT."""
    pairs = backends.items() if isinstance(backends, Mapping) else backends
    result: dict[BackendId, int] = {}
    # Each item is checked here, so it is iterated as an object: compiled (mypyc), a
    # declared (str, int) item would raise TypeError on a bad one before the check.
    items: Iterable[object] = pairs
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise AffinityError(f"backends: expected (id, weight) pairs, got {item!r}")
        bid, weight = item
        if not isinstance(bid, str) or not bid:
            raise AffinityError(f"backend id must be a non-empty string, got {bid!r}")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise AffinityError(f"weight of {bid!r} must be an int, got {type(weight).__name__}")
        if weight <= 0:
            raise AffinityError(f"weight of {bid!r} must be positive, got {weight}")
        if weight > MAX_WEIGHT:
            raise AffinityError(f"weight of {bid!r} must be at most {MAX_WEIGHT}, got {weight}")
        if bid in result:
            raise AffinityError(f"duplicate backend id {bid!r}")
        result[BackendId(bid)] = weight
    if not result:
        raise AffinityError("backends: at least one backend is required")
    return result


def recommended_size(backends: int, *, current: int | None = None) -> int:
    """A table size for ``backends`` members: about 256 slots each, from :data:`SIZE_LADDER`.

    Changing the size reshuffles every slot, so a ``current`` size is kept while it still
    gives at least 64 slots per backend, and the size never shrinks.
    """
    if current is not None and current >= 64 * backends:
        return current
    wanted = SLOTS_PER_BACKEND * backends
    for size in SIZE_LADDER:
        if size >= wanted and (current is None or size >= current):
            return size
    return max(SIZE_LADDER[-1], current or 0)


def bound_eps(size: int, members: int, *, weighted: bool = False) -> float:
    """The relative slot-count bound for ``members`` backends in ``size`` slots.

    ``weighted`` (see :func:`weighted_bounds`) caps it at :data:`WEIGHTED_MAX_EPS`.
    """
    eps = min(MAX_EPS, max(MIN_EPS, NOISE_SIGMAS / math.sqrt(size / members)))
    return min(eps, WEIGHTED_MAX_EPS) if weighted else eps


def weighted_bounds(weights: Sequence[int], size: int) -> bool:
    """Whether a table gets the weighted bounds: unequal weights, enough slots per backend.

    Every backend's count then lies within :data:`WEIGHT_TOLERANCE` (5 %) of its share
    ``size x w / W``. A share under 10 slots may have no whole count within 5 % of it; such
    a backend gets one of the two whole counts around its share instead. Equal weights
    keep the plain bounds (their balance target is looser than 5 % at large N, and
    tightening them would cost disruption), and so do tables with fewer than
    :data:`WEIGHTED_MIN_SLOTS` slots per backend.
    """
    return len(set(weights)) > 1 and size >= WEIGHTED_MIN_SLOTS * len(weights)


@dataclass(frozen=True, slots=True, eq=False)
class SlotTable:
    """An immutable slot table: ``owners[slot]`` is the backend that owns ``slot``."""

    size: int
    members: tuple[BackendId, ...]
    """The backends, sorted by id; ``index`` refers to positions in this tuple."""
    weights: tuple[int, ...]
    index: npt.NDArray[np.int32]
    """Slot to member position (read-only)."""
    owners: tuple[BackendId, ...]
    """Slot to backend id (the hot-path view)."""

    @classmethod
    def build(cls, backends: Weights, size: int = DEFAULT_SIZE) -> SlotTable:
        """Build the table for these weights; raises :class:`AffinityError` on bad input."""
        weights = check_weights(backends)
        check_size(size)
        members = tuple(sorted(weights))
        w = tuple(weights[m] for m in members)
        index = build_index(members, w, size)
        index.setflags(write=False)
        names = np.array(members, dtype=object)
        return cls(size=size, members=members, weights=w, index=index, owners=tuple(names[index]))

    def owner(self, slot: int) -> BackendId:
        """The backend that owns ``slot``."""
        return self.owners[slot]

    def counts(self) -> dict[BackendId, int]:
        """Slots owned by each member."""
        counts = np.bincount(self.index, minlength=len(self.members))
        return {m: int(c) for m, c in zip(self.members, counts, strict=True)}


def table(backends: Mapping[str, int], size: int = DEFAULT_SIZE) -> Sequence[str]:
    """The owner of each slot, given backend id to weight (see :class:`SlotTable`)."""
    return SlotTable.build(backends, size).owners


def _bounds(
    members: Sequence[BackendId],
    weights: Sequence[int],
    size: int,
    eps: float,
    tolerance: float | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per-member (lower, upper) slot counts; the uppers sum to at least ``size``.

    ``tolerance`` clips both bounds to within that fraction of the share, or, where no
    whole count fits, to the two whole counts around it (see :func:`weighted_bounds`).
    """
    w = np.array(weights, dtype=np.float64)
    share = size * w / w.sum()
    dither = np.array([backend_dither(m) for m in members])
    lower = np.floor((1.0 - eps) * share + dither).astype(np.int64)
    upper = np.floor((1.0 + eps) * share + dither).astype(np.int64)
    if tolerance is not None:
        # The 1e-9 keeps a count exactly at the tolerance from being lost to rounding.
        least = np.ceil((1.0 - tolerance) * share - 1e-9)
        most = np.floor((1.0 + tolerance) * share + 1e-9)
        none_fits = least > most
        least[none_fits] = np.floor(share[none_fits])
        most[none_fits] = np.ceil(share[none_fits])
        lower = np.clip(lower, least, most).astype(np.int64)
        upper = np.clip(upper, least, most).astype(np.int64)
    if upper.sum() < size:  # tiny tables: dithered rounding may fall short
        upper = np.ceil((1.0 + eps) * share).astype(np.int64)
    lower = np.minimum(lower, upper)
    if lower.sum() > size:
        lower = np.floor((1.0 - eps) * share).astype(np.int64)
    return lower, upper


def _enforce_upper(
    scorer: Scorer,
    owner: npt.NDArray[np.intp],
    cost: npt.NDArray[np.float64],
    upper: npt.NDArray[np.int64],
) -> None:
    """Deferred acceptance: over-full members reject their dearest slots until none is over."""
    n = len(upper)
    while True:
        counts = np.bincount(owner, minlength=n)
        over = counts > upper
        if not over.any():
            return
        held = np.nonzero(over[owner])[0]
        held = held[np.lexsort((cost[held], owner[held]))]
        by = owner[held]
        rank = np.arange(len(held)) - np.searchsorted(by, by, side="left")
        rejected = held[rank >= upper[by]]
        step = max(1, (1 << 20) // n)
        for lo in range(0, len(rejected), step):
            slots = rejected[lo : lo + step]
            rows = scorer.rows(slots)
            # Propose to the next member in the slot's order: strictly dearer than the last.
            rows[rows <= cost[slots][:, None]] = np.inf
            choice = np.argmin(rows, axis=1)
            owner[slots] = choice
            cost[slots] = rows[np.arange(len(slots)), choice]


def _enforce_lower(
    scorer: Scorer,
    owner: npt.NDArray[np.intp],
    cost: npt.NDArray[np.float64],
    lower: npt.NDArray[np.int64],
) -> None:
    """Under-full members, in id order, take their relatively cheapest slots from donors."""
    n = len(lower)
    counts = np.bincount(owner, minlength=n).astype(np.int64)
    for member in np.nonzero(counts < lower)[0]:
        need = int(lower[member] - counts[member])
        if need <= 0:
            continue
        mine = scorer.column(int(member))
        regret = mine / cost
        regret[owner == member] = np.inf
        for order in _cheapest_first(regret, need):
            for slot in order:
                donor = owner[slot]
                if donor == member or counts[donor] <= lower[donor]:
                    continue
                owner[slot] = member
                cost[slot] = mine[slot]
                counts[donor] -= 1
                counts[member] += 1
                need -= 1
                if need == 0:
                    break
            if need == 0:
                break


def _cheapest_first(values: npt.NDArray[np.float64], need: int) -> Iterator[npt.NDArray[np.intp]]:
    """Slot orders by ascending value (ties by slot): a short prefix first, then all the rest."""
    k = need * 4 + 256
    if k < len(values):
        head = np.argpartition(values, k)[:k]
        head = head[np.lexsort((head, values[head]))]
        yield head
        rest = np.ones(len(values), dtype=bool)
        rest[head] = False
        tail = np.nonzero(rest)[0]
        yield tail[np.lexsort((tail, values[tail]))]
    else:
        yield np.lexsort((np.arange(len(values)), values))


def build_index(
    members: Sequence[BackendId], weights: Sequence[int], size: int, *, eps: float | None = None
) -> npt.NDArray[np.int32]:
    """Slot to member position for members sorted by id (see the module docstring).

    ``eps`` overrides :func:`bound_eps` for comparisons only (the benchmark): ``0`` gives
    exact quotas, ``math.inf`` plain weighted rendezvous; it also turns off the weighted
    clipping.
    """
    scorer = Scorer(members, weights, size)
    owner, cost = rendezvous(scorer, weights, size)
    tolerance: float | None = None
    if eps is None:
        weighted = weighted_bounds(weights, size)
        eps = bound_eps(size, len(members), weighted=weighted)
        tolerance = WEIGHT_TOLERANCE if weighted else None
    if len(members) > 1 and math.isfinite(eps):
        lower, upper = _bounds(members, weights, size, eps, tolerance)
        _enforce_upper(scorer, owner, cost, upper)
        _enforce_lower(scorer, owner, cost, lower)
    return owner.astype(np.int32)
