"""Weighted rendezvous (HRW) kernels: each slot's cheapest backend, vectorised.

Slot ``s`` scores backend ``b`` as ``cost = -ln(u) / w_b`` with
``u = fmix32(slot_hash(s) ^ seed(b))``; the lowest cost wins, ties to the lighter backend,
then the first in id order. Two kernels give exactly the same answer:

- by weight class: backends of equal weight compare raw 32-bit scores, so the logarithm is
  taken once per class and slot (the common case: plans from the operator use one weight);
- pruned, for many classes: a cheap per-slot bound on the winning cost leaves only about
  two pairs per slot that need a logarithm.

Data flow: ``(members sorted by id, weights, size) -> Scorer -> rendezvous() ->
(owner position, cost) per slot``, which :mod:`.slottable` then bounds. :class:`Scorer`
also gives single costs to :mod:`.slottable` and :mod:`.bounded`. Pure numpy, no state
beyond the arrays a call allocates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .hashing import backend_seed, fmix32_array, slot_hashes
from .ids import BackendId

_BLOCK_ELEMENTS = 1 << 16
"""Score-matrix block: 256 KiB of uint32, small enough to stay in a CPU's L2 cache."""
_PRUNE_BLOCK_ELEMENTS = 1 << 17
"""The pruned path's block: it makes more numpy calls per block, so larger blocks pay."""
_PRUNE_CLASS_RATIO = 20
"""Use the pruned path when weight classes x this exceeds the member count."""
_PRUNE_MARGIN = 1e-9
"""Relative slack on the pruning bounds, far above the logarithm's rounding error."""
_INV_2_32 = 1.0 / 4294967296.0


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
        return pair_cost(x, self.weights[None, :])

    def slot(self, slot: int) -> npt.NDArray[np.float64]:
        """Every member's cost for one slot."""
        x = self.seeds ^ self.hashes[slot]
        fmix32_array(x, np.empty_like(x))
        return pair_cost(x, self.weights)

    def column(self, member: int) -> npt.NDArray[np.float64]:
        """One member's cost for every slot."""
        x = self.hashes ^ self.seeds[member]
        fmix32_array(x, np.empty_like(x))
        return pair_cost(x, self.weights[member])


def pair_cost(
    u32: npt.NDArray[np.uint32], weight: float | npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    u = (u32.astype(np.float64) + 0.5) * _INV_2_32
    result: npt.NDArray[np.float64] = -np.log(u) / weight
    return result


def rendezvous(
    scorer: Scorer, weights: Sequence[int], size: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Each slot's cheapest member and its cost (ties: the lighter, then the first member)."""
    classes = len(set(weights))
    # Measured crossover: a class pass costs about 20 pruned pairs per slot.
    if classes > 1 and classes * _PRUNE_CLASS_RATIO > len(weights):
        return rendezvous_pruned(scorer, weights, size)
    return rendezvous_by_class(scorer, weights, size)


def rendezvous_by_class(
    scorer: Scorer, weights: Sequence[int], size: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """:func:`rendezvous` with one logarithm per weight class and slot."""
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
        cost = pair_cost(top, float(w))
        better = cost < best
        best[better] = cost[better]
        owner[better] = pos[arg[better]]
    return owner, best


def rendezvous_pruned(
    scorer: Scorer, weights: Sequence[int], size: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """:func:`rendezvous` with a logarithm only for the few pairs that can win a slot.

    Members are grouped into bins of weights within a factor of 2. A bin's highest score
    gives an upper bound on the slot's winning cost, and that bound gives each bin a
    score threshold that every pair at or below the bound must reach. About 2 pairs per
    slot pass, and only they get the exact cost, computed as in the class path. The
    margins only widen the candidate set, so the result is exactly the class path's.
    """
    n = len(weights)
    w_int = np.array(weights, dtype=np.int64)
    # Columns in tie-break order (weight, then position), so the first minimum wins.
    rank = np.lexsort((np.arange(n), w_int))
    seeds = scorer.seeds[rank]
    w = w_int[rank].astype(np.float64)
    starts = [0]
    for i in range(1, n):
        if w[i] > 2.0 * w[starts[-1]]:
            starts.append(i)
    spans = list(zip(starts, [*starts[1:], n], strict=True))
    first = np.array(starts, dtype=np.intp)
    lightest = w[first][:, None]
    heaviest = np.array([w[hi - 1] for _, hi in spans])[:, None] * (1.0 + _PRUNE_MARGIN)
    owner = np.empty(size, dtype=np.intp)
    best = np.empty(size)
    cols = min(size, max(1, _PRUNE_BLOCK_ELEMENTS // n))
    block = np.empty((n, cols), dtype=np.uint32)
    scratch = np.empty_like(block)
    passed = np.empty(block.shape, dtype=bool)
    for lo in range(0, size, cols):
        hi = min(size, lo + cols)
        k = hi - lo
        x, t, m = block[:, :k], scratch[:, :k], passed[:, :k]
        np.bitwise_xor(seeds[:, None], scorer.hashes[None, lo:hi], out=x)
        fmix32_array(x, t)
        # The top scorer of a bin costs at most -ln(u) / (the bin's lightest weight).
        top = np.maximum.reduceat(x, first, axis=0)
        bound = pair_cost(top, lightest).min(axis=0) * (1.0 + _PRUNE_MARGIN)
        # cost <= bound needs u >= exp(-bound x w), and w is at most the bin's heaviest;
        # in score units that is x + 0.5 >= 2^32 u, less one unit for exp's rounding.
        floor_u = np.exp(-(heaviest * bound[None, :]))
        floor_x = np.maximum(np.floor(floor_u * 4294967296.0 - 0.5) - 1.0, 0.0)
        floor_x32 = floor_x.astype(np.uint32)
        for b, (a, z) in enumerate(spans):
            np.greater_equal(x[a:z], floor_x32[b], out=m[a:z])
        flat = np.flatnonzero(m)
        j, s = np.divmod(flat, k)
        cost = pair_cost(x[j, s], w[j])
        low = np.full(k, np.inf)
        np.minimum.at(low, s, cost)
        hit = cost == low[s]
        pick = np.full(k, n, dtype=np.intp)
        np.minimum.at(pick, s[hit], j[hit])
        owner[lo:hi] = rank[pick]
        best[lo:hi] = low
    return owner, best
