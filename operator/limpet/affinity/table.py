"""The slot table: which backend owns each hash slot (weighted rendezvous hashing).

Data flow: ``{backend id: weight}, size -> SlotTable`` (build once per plan, numpy,
chunked), then ``table.owners[slot]`` per request (a tuple index, no allocation).
A built table is immutable and can be shared by any number of readers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import AffinityError
from .hashing import DEFAULT_SIZE, backend_seed, check_size, mix64_array, slot_hashes
from .ids import BackendId

MAX_WEIGHT = 1_000_000
"""The largest accepted weight (also the plan's limit)."""

_CHUNK_ELEMENTS = 1 << 20

Weights = Mapping[str, int] | Mapping[BackendId, int] | Iterable[tuple[str, int]]
"""Backend id to weight: a mapping, or (id, weight) pairs (checked for duplicates)."""


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
    def build(
        cls,
        backends: Weights,
        size: int = DEFAULT_SIZE,
    ) -> SlotTable:
        """Build the table for these weights; raises :class:`AffinityError` on bad input."""
        weights = check_weights(backends)
        check_size(size)
        members = tuple(sorted(weights))
        w = tuple(weights[m] for m in members)
        index = _rendezvous(members, w, size)
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


def _rendezvous(
    members: Sequence[BackendId], weights: Sequence[int], size: int
) -> npt.NDArray[np.int32]:
    """Weighted rendezvous: each slot goes to the member with the lowest -ln(u)/w.

    Members of equal weight are compared on the raw 64-bit score (no logarithm); one
    logarithm per weight class and slot then compares the classes.
    """
    seeds = np.array([backend_seed(m) for m in members], dtype=np.uint64)
    hashes = slot_hashes(size)
    classes: dict[int, list[int]] = {}
    for i, w in enumerate(weights):
        classes.setdefault(w, []).append(i)
    best_index = np.zeros(size, dtype=np.int32)
    best_cost = np.full(size, math.inf)
    for w, positions in sorted(classes.items()):
        pos = np.array(positions, dtype=np.int32)
        cls_seeds = seeds[pos]
        chunk = max(1, _CHUNK_ELEMENTS // len(pos))
        top = np.empty(size, dtype=np.uint64)
        arg = np.empty(size, dtype=np.int32)
        for lo in range(0, size, chunk):
            hi = min(size, lo + chunk)
            scores = hashes[lo:hi, None] ^ cls_seeds[None, :]
            mix64_array(scores)
            a = np.argmax(scores, axis=1)
            arg[lo:hi] = pos[a]
            top[lo:hi] = scores[np.arange(hi - lo), a]
        u = ((top >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
        cost = -np.log(u) / w
        better = cost < best_cost
        best_cost[better] = cost[better]
        best_index[better] = arg[better]
    return best_index


def table(backends: Mapping[str, int], size: int = DEFAULT_SIZE) -> Sequence[str]:
    """The owner of each slot, given backend id to weight (see :class:`SlotTable`)."""
    return SlotTable.build(backends, size).owners
