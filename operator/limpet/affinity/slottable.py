"""The slot table: which backend owns each hash slot ("bounded rendezvous").

Algorithm (chosen by measurement; see docs/affinity.md):

1. Weighted rendezvous (HRW): slot ``s`` scores backend ``b`` as
   ``cost = -ln(u) / w_b`` with ``u = fmix32(slot_hash(s) ^ seed(b))``, and goes to the
   lowest cost. Backends of equal weight compare raw 32-bit scores, so the logarithm is
   taken once per weight class and slot.
2. Bounds: every backend must hold between ``floor((1 - eps) x share + d)`` and
   ``floor((1 + eps) x share + d)`` slots, where ``share = size x w_b / W``, ``d`` is a
   stable per-backend dither in [0, 1) and ``eps = max(0.04, 2.5 / sqrt(size / N))``: about
   2.5 standard deviations of HRW's own noise, so the bounds rarely bind and barely add
   disruption, yet cap the worst backend and keep weights within 4 % while
   ``size / N`` is large.
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
from .hashing import (
    DEFAULT_SIZE,
    LARGE_SIZE,
    backend_dither,
    backend_seed,
    check_size,
    fmix32_array,
    slot_hashes,
)
from .ids import BackendId

MAX_WEIGHT = 1_000_000
"""The largest accepted weight (also the plan's limit)."""

MIN_EPS = 0.04
"""The tightest slot-count bound, relative to a backend's weighted share."""
MAX_EPS = 0.45
"""The loosest bound (tiny tables): keeps max/mean below 1.5."""
NOISE_SIGMAS = 2.5
"""How many standard deviations of rendezvous noise the bounds allow before binding."""

SIZE_LADDER = (DEFAULT_SIZE, 131071, 262147, 524287, LARGE_SIZE)
"""Prime table sizes the operator chooses from (see :func:`recommended_size`)."""
SLOTS_PER_BACKEND = 256
"""The target ``size / N`` of :func:`recommended_size`."""

Weights = Mapping[str, int] | Mapping[BackendId, int] | Iterable[tuple[str, int]]
"""Backend id to weight: a mapping, or (id, weight) pairs (checked for duplicates)."""

_BLOCK_ELEMENTS = 1 << 16
"""Score-matrix block: 256 KiB of uint32, small enough to stay in a CPU's L2 cache."""
_INV_2_32 = 1.0 / 4294967296.0


def check_weights(backends: Weights) -> dict[BackendId, int]:
    """Validate backend weights: non-empty, unique non-empty string ids, ints in 1..MAX_WEIGHT."""
    pairs = backends.items() if isinstance(backends, Mapping) else backends
    result: dict[BackendId, int] = {}
    for item in pairs:
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


def bound_eps(size: int, members: int) -> float:
    """The relative slot-count bound for ``members`` backends in ``size`` slots."""
    return min(MAX_EPS, max(MIN_EPS, NOISE_SIGMAS / math.sqrt(size / members)))


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


class Scorer:
    """Rendezvous costs of (slot, member) pairs, ``-ln(u) / w``, for members sorted by id."""

    def __init__(self, members: Sequence[BackendId], weights: Sequence[int], size: int) -> None:
        self.seeds = np.array([backend_seed(m) for m in members], dtype=np.uint32)
        self.weights = np.array(weights, dtype=np.float64)
        self.hashes = slot_hashes(size)

    def rows(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        """The full cost matrix of some slots (len(slots) x members)."""
        x = self.hashes[slots][:, None] ^ self.seeds[None, :]
        fmix32_array(x, np.empty_like(x))
        return _cost(x, self.weights[None, :])

    def slot(self, slot: int) -> npt.NDArray[np.float64]:
        """Every member's cost for one slot."""
        x = self.seeds ^ self.hashes[slot]
        fmix32_array(x, np.empty_like(x))
        return _cost(x, self.weights)

    def column(self, member: int) -> npt.NDArray[np.float64]:
        """One member's cost for every slot."""
        x = self.hashes ^ self.seeds[member]
        fmix32_array(x, np.empty_like(x))
        return _cost(x, self.weights[member])


def _cost(
    u32: npt.NDArray[np.uint32], weight: float | npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    u = (u32.astype(np.float64) + 0.5) * _INV_2_32
    result: npt.NDArray[np.float64] = -np.log(u) / weight
    return result


def _rendezvous(
    scorer: Scorer, weights: Sequence[int], size: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Each slot's cheapest member and its cost."""
    owner = np.zeros(size, dtype=np.intp)
    best = np.full(size, np.inf)
    classes: dict[int, list[int]] = {}
    for i, w in enumerate(weights):
        classes.setdefault(w, []).append(i)
    for w, positions in sorted(classes.items()):
        pos = np.array(positions, dtype=np.intp)
        seeds = scorer.seeds[pos]
        rows = max(1, _BLOCK_ELEMENTS // len(pos))
        block = np.empty((min(rows, size), len(pos)), dtype=np.uint32)
        scratch = np.empty_like(block)
        arg = np.empty(size, dtype=np.intp)
        top = np.empty(size, dtype=np.uint32)
        for lo in range(0, size, rows):
            hi = min(size, lo + rows)
            x, t = block[: hi - lo], scratch[: hi - lo]
            np.bitwise_xor(scorer.hashes[lo:hi, None], seeds[None, :], out=x)
            fmix32_array(x, t)
            a = np.argmax(x, axis=1)
            arg[lo:hi] = a
            top[lo:hi] = x[np.arange(hi - lo), a]
        cost = _cost(top, float(w))
        better = cost < best
        best[better] = cost[better]
        owner[better] = pos[arg[better]]
    return owner, best


def _bounds(
    members: Sequence[BackendId], weights: Sequence[int], size: int, eps: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Per-member (lower, upper) slot counts; the uppers sum to at least ``size``."""
    w = np.array(weights, dtype=np.float64)
    share = size * w / w.sum()
    dither = np.array([backend_dither(m) for m in members])
    lower = np.floor((1.0 - eps) * share + dither).astype(np.int64)
    upper = np.floor((1.0 + eps) * share + dither).astype(np.int64)
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
    exact quotas, ``math.inf`` plain weighted rendezvous.
    """
    scorer = Scorer(members, weights, size)
    owner, cost = _rendezvous(scorer, weights, size)
    if eps is None:
        eps = bound_eps(size, len(members))
    if len(members) > 1 and math.isfinite(eps):
        lower, upper = _bounds(members, weights, size, eps)
        _enforce_upper(scorer, owner, cost, upper)
        _enforce_lower(scorer, owner, cost, lower)
    return owner.astype(np.int32)
