"""Seeded fuzzing of the request and response paths with the h11 oracle attached.

- In memory: Hypothesis drives the grammar of :mod:`tests.proxy.fuzzing` (mostly valid
  messages plus smuggling tricks and byte mutations) through the real engine on
  in-memory transports; every outcome must satisfy the oracle's rule, and no callback
  may raise. ``derandomize`` makes the run the same every time.
- Over real sockets: a smaller seeded sample of the same grammar through a real
  ``limpet proxy`` process to the recording backend (the rig of this package).

The long run is ``python -m bench.http_fuzz`` (10^6 messages and more).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..fuzzing import Harness, request, response
from .conftest import Rig


@pytest.fixture(scope="module", params=[False, True], ids=["writes-at-once", "writes-per-turn"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    """Each write leaves when it is made, or (as under the event loop) once the turn's
    input is handled: the engine's write batch must not reorder, lose or add a byte."""
    h = Harness(held=request.param)
    yield h
    h.close()


FUZZ = settings(
    max_examples=2000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_fuzzed_requests_satisfy_the_oracle(harness: Harness, rnd: random.Random) -> None:
    data = request(rnd)
    outcome = harness.run_request(data)
    assert outcome.kind != "disagreement", (data, outcome.detail)


@settings(FUZZ, max_examples=1000)
@given(rnd=st.randoms(use_true_random=False))
def test_fuzzed_answers_satisfy_the_oracle(harness: Harness, rnd: random.Random) -> None:
    raw = response(rnd)
    outcome = harness.run_response(raw)
    assert outcome.kind != "disagreement", (raw, outcome.detail)


def test_fuzzed_requests_over_real_sockets(rig: Rig) -> None:
    """The same grammar through the real proxy process and the h11 recording backend:
    the rig checks the oracle's rule for each message (known RFC leniencies of llhttp
    that h11 refuses are skipped; the in-memory run checks those)."""
    rnd = random.Random(20261204)
    harness = Harness()
    try:
        sent = 0
        while sent < 100:
            data = request(rnd)
            if harness.run_request(data).kind == "lenient":
                continue
            method = b"HEAD" if data.startswith(b"HEAD ") else b"GET"
            rig.exchange(data, method=method, settle=0.05)
            sent += 1
    finally:
        harness.close()
    assert rig.backend.errors == []
