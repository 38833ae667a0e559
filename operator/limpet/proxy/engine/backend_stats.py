"""Per-backend figures of the data path: answers by status class, upstream errors by
kind, and a request-duration histogram with a fixed set of bucket bounds.

Data flow: the exchange (``exchange.py``) calls :meth:`BackendCounters.answered` once per
answered request that was routed to a backend, and :meth:`BackendCounters.error` for
each upstream failure; both only bump integers in preallocated lists (the bucket is
found by :func:`bucket_of`, a scan of the bounds). :func:`backends_dict` turns the counters into
plain JSON-able dicts at read time (``GET /v1/stats`` and ``/metrics``),
:func:`merge_backends` sums several workers' dicts, and the admin side renders them as
Prometheus families. The histogram is the Prometheus one: bucket ``le=b`` counts
durations ``<= b``; here the buckets are stored non-cumulative and summed on reading.

Concurrency: one event loop per process writes and reads them; nothing is shared.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

# Final: compiled, an imported function's name would be looked up in the module's dict
# at every call.
_perf_counter: Final = time.perf_counter

DURATION_BOUNDS: Final[tuple[float, ...]] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the duration buckets, +Inf implied: from half a millisecond
(a proxied request on loopback) to the default response timeout's neighbourhood, like
ingress-nginx's and Envoy's default sets, thinned to 16 series per backend."""

STATUS_CLASSES: Final = ("1xx", "2xx", "3xx", "4xx", "5xx")
"""Status classes always rendered (zero until seen), so rates exist from the start."""

ERROR_KINDS: Final = ("connect", "reset", "timeout", "invalid_response")
"""Upstream failures: a dial refused or timed out; the connection closed before or
during the answer; no answer within the response timeout; an answer that is not HTTP."""


def bucket_of(elapsed: float) -> int:
    """The index of the first bound at least ``elapsed`` (``len(DURATION_BOUNDS)``: +Inf),
    as ``bisect_left`` finds it. Compiled, a loop of float comparisons: ``bisect``
    compares boxed floats through generic calls, and most requests stop at the first or
    second bound. (The bounds are typed ``tuple[float, ...]`` so that mypyc keeps them
    one tuple object: as a fixed-length tuple it would box all 15 for every loop.)"""
    i = 0
    for bound in DURATION_BOUNDS:
        if elapsed <= bound:
            return i
        i += 1
    return i


class BackendCounters:
    """One backend's counters, preallocated; only integers and one float change."""

    __slots__ = ("buckets", "classes", "duration_sum", "errors")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_sum = 0.0
        # Index status // 100; 0 and 6..9 are statuses outside 1xx-5xx (relayed as they are).
        self.classes = [0] * 10
        self.errors = dict.fromkeys(ERROR_KINDS, 0)

    def answered(self, status: int, started: float) -> None:
        """An answer with ``status`` to a request that started at ``started`` (its
        ``perf_counter``; 0.0 when not timed)."""
        self.classes[status // 100 if 0 <= status < 1000 else 0] += 1
        if started:
            self.timed(_perf_counter() - started)

    def timed(self, elapsed: float) -> None:
        """One duration into its bucket: the first whose bound is at least ``elapsed``."""
        self.buckets[bucket_of(elapsed)] += 1
        self.duration_sum += elapsed

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def as_dict(self) -> dict[str, Any]:
        classes = {name: self.classes[i + 1] for i, name in enumerate(STATUS_CLASSES)}
        other = self.classes[0] + sum(self.classes[6:])
        if other:
            classes["other"] = other
        return {
            "responses": classes,
            "errors": dict(self.errors),
            "duration": {"buckets": list(self.buckets), "sum": self.duration_sum},
        }


def backends_dict(
    counters: Mapping[str, BackendCounters], *, timed: bool
) -> dict[str, dict[str, Any]]:
    """The JSON form, per backend id; without timing the duration part is left out."""
    out = {}
    for bid, c in sorted(counters.items()):
        d = c.as_dict()
        if not timed:
            del d["duration"]
        out[bid] = d
    return out


def prune(counters: dict[str, BackendCounters], keep: Collection[str]) -> None:
    """Forget backends not in ``keep`` (the plan's): pods come and go, and their series
    must not pile up for the life of the process."""
    for bid in [b for b in counters if b not in keep]:
        del counters[bid]


def _add(acc: dict[str, int], part: Mapping[str, int]) -> None:
    for k, n in part.items():
        acc[k] = acc.get(k, 0) + n


def merge_backends(parts: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sum several workers' :func:`backends_dict` results (bucket by bucket)."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for bid, d in part.items():
            acc = out.setdefault(bid, {"responses": {}, "errors": {}})
            _add(acc["responses"], d.get("responses", {}))
            _add(acc["errors"], d.get("errors", {}))
            duration = d.get("duration")
            if duration is None:
                continue
            if "duration" not in acc:
                acc["duration"] = {"buckets": [0] * len(duration["buckets"]), "sum": 0.0}
            acc_d = acc["duration"]
            acc_d["buckets"] = [
                a + b for a, b in zip(acc_d["buckets"], duration["buckets"], strict=True)
            ]
            acc_d["sum"] += duration["sum"]
    return out


def cumulative(buckets: Iterable[int]) -> list[tuple[str, int]]:
    """Non-cumulative bucket counts as Prometheus ``(le, count)`` pairs, +Inf last."""
    out = []
    total = 0
    for bound, n in zip((*(repr(b) for b in DURATION_BOUNDS), "+Inf"), buckets, strict=True):
        total += n
        out.append((bound, total))
    return out
