"""Bounded loads for new sessions (Mirrokni, Thorup and Zadimoghaddam; HAProxy's
``hash-balance-factor``), with a deterministic per-key preference order.

A new session goes to its slot's owner unless that backend already holds at least its cap,
``ceil(load_factor x (total + 1) x w_b / W)`` sessions, where ``total`` counts the sessions
on table members, ``w_b`` is the backend's (slow-start ramped) weight and ``W`` the sum
of those weights; with equal weights this is ``ceil(load_factor x mean)``, the mean
counting the new session. Otherwise it walks the key's preference order (the owner, then
every other member by rendezvous score for that slot) to the first backend under its cap.
Because the caps sum to at least ``total + 1``, some member is always under its cap.

Data flow: the proxy passes its own per-backend session counts. Pure functions; the
preference order is computed only when the owner is full (numpy over the members).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .hashing import mix64_array, slot_hash
from .ids import BackendId


def load_cap(load_factor: float, total: int, weight: float, total_weight: float) -> int:
    """A backend's cap: ``ceil(load_factor x (total + 1) x weight / total_weight)``."""
    return math.ceil(load_factor * (total + 1) * weight / total_weight)


class Preferences:
    """Per-slot preference orders over a fixed member list (rendezvous order by slot)."""

    __slots__ = ("_costs_scale", "_members", "_seeds", "_size")

    def __init__(
        self,
        members: Sequence[BackendId],
        seeds: npt.NDArray[np.uint64],
        weights: Sequence[int],
        size: int,
    ) -> None:
        self._members = tuple(members)
        self._seeds = seeds
        self._costs_scale = 1.0 / np.asarray(weights, dtype=np.float64)
        self._size = size

    def order(self, slot: int) -> list[BackendId]:
        """Every member, best first, for ``slot`` (weighted rendezvous: lowest -ln(u)/w)."""
        scores = self._seeds ^ np.uint64(slot_hash(slot))
        mix64_array(scores)
        u = ((scores >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))
        cost = -np.log(u) * self._costs_scale
        return [self._members[i] for i in np.argsort(cost, kind="stable")]


def first_under_cap(
    order: Sequence[BackendId],
    loads: Mapping[BackendId, int],
    caps: Mapping[BackendId, int],
) -> BackendId | None:
    """The first backend in ``order`` whose load is below its cap."""
    for backend in order:
        if loads.get(backend, 0) < caps[backend]:
            return backend
    return None
