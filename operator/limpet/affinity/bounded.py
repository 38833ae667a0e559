"""Bounded loads (Mirrokni, Thorup and Zadimoghaddam; HAProxy's ``hash-balance-factor``)
for every destination, with a deterministic per-key preference order.

A session that is placed, new or moved, goes to its slot's owner unless that backend
already holds at least its cap, ``ceil(load_factor x (total + 1) x w_b / W)`` sessions.
The *eligible* members are the table's members (Warming and Active) minus any the caller
excludes (a proxy's locally-down backends); ``total`` counts the sessions on eligible
members, ``w_b`` is the backend's (slow-start ramped) weight and ``W`` the sum of the
eligible members' weights. With equal weights this is ``ceil(load_factor x mean)``, the
mean counting the session being placed. A full owner sends the session down the key's
preference order (the owner, then every other member by the slot's rendezvous cost, the
same cost the table uses) to the first eligible backend under its cap. The eligible caps
sum to at least ``total + 1``, so some eligible member is always under its cap.

Data flow: the proxy passes its own per-backend session counts (local to that replica).
Pure functions; the preference order is computed only when the owner is full or
excluded (numpy over the members).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .ids import BackendId
from .rendezvous import Scorer


def load_cap(load_factor: float, total: int, weight: float, total_weight: float) -> int:
    """A backend's cap: ``ceil(load_factor x (total + 1) x weight / total_weight)``."""
    return math.ceil(load_factor * (total + 1) * weight / total_weight)


class Preferences:
    """Per-slot preference orders over a table's members (cheapest rendezvous cost first)."""

    __slots__ = ("_members", "_scorer")

    def __init__(self, members: Sequence[BackendId], weights: Sequence[int], size: int) -> None:
        self._members = tuple(members)
        self._scorer = Scorer(self._members, weights, size)

    def order(self, slot: int) -> list[BackendId]:
        """Every member for ``slot``, cheapest first (ties by id)."""
        members = self._members
        return [members[i] for i in np.argsort(self._scorer.slot(slot), kind="stable")]
