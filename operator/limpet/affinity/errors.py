"""Errors raised by the affinity core.

Every bad input (an empty backend set, a zero or huge weight, a duplicate id, a malformed
plan) raises a subclass of :class:`AffinityError`, which is a :class:`ValueError`, with a
message that names the offending field. Nothing here is stateful or thread-sensitive.
"""

from __future__ import annotations


class AffinityError(ValueError):
    """Invalid input to an affinity algorithm (backends, weights, sizes, keys)."""


class PlanError(AffinityError):
    """A plan that cannot be accepted: unknown schema version, malformed or inconsistent field.

    The message starts with the JSON path of the offending field, e.g.
    ``backends[2].port: must be an integer in 1..65535, got 0``.
    """
