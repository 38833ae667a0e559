"""The rendezvous kernels: the pruned path gives exactly the per-class path's answer."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.affinity import BackendId
from limpet.affinity.limits import DEFAULT_SIZE, MAX_WEIGHT
from limpet.affinity.rendezvous import Scorer, rendezvous, rendezvous_by_class, rendezvous_pruned


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=MAX_WEIGHT) | st.integers(1, 6), max_size=40),
    st.sampled_from([1, 7, 101, 1031]),
    st.booleans(),
)
def test_pruned_rendezvous_is_the_class_path(weights: list[int], size: int, twin: bool) -> None:
    weights = [3, *weights]
    members = tuple(BackendId(f"m{i:02d}") for i in range(len(weights)))
    scorer = Scorer(members, weights, size)
    if twin and len(weights) > 1:
        # Equal seeds and weights tie on every slot: both paths must pick the first member.
        scorer.seeds[1] = scorer.seeds[0]
        weights[1] = weights[0]
        scorer.weights[1] = scorer.weights[0]
    by_class = rendezvous_by_class(scorer, weights, size)
    pruned = rendezvous_pruned(scorer, weights, size)
    assert np.array_equal(by_class[0], pruned[0])
    assert np.array_equal(by_class[1], pruned[1])


def test_pruned_rendezvous_at_the_default_size() -> None:
    rng = np.random.default_rng(5)
    weights = [int(w) for w in rng.integers(1, MAX_WEIGHT, size=200)]
    members = tuple(BackendId(f"backend-{i}") for i in range(200))
    scorer = Scorer(sorted(members), weights, DEFAULT_SIZE)
    expected = rendezvous_by_class(scorer, weights, DEFAULT_SIZE)
    for got in (
        rendezvous(scorer, weights, DEFAULT_SIZE),
        rendezvous_pruned(scorer, weights, DEFAULT_SIZE),
    ):
        assert np.array_equal(expected[0], got[0])
        assert np.array_equal(expected[1], got[1])
