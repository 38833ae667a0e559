"""The engine's per-backend figures as Prometheus metric families, at scrape time.

Data flow: the stats dict's ``engine.backends`` (from
:func:`limpet.proxy.engine.backend_stats.backends_dict`, merged across workers by
:func:`~limpet.proxy.engine.backend_stats.merge_backends`) becomes three families:
answers by status class, upstream errors by kind, and the request-duration histogram
(left out with ``--no-latency-histogram``). Pure rendering; nothing here runs per
request.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from limpet.proxy.engine.backend_stats import cumulative

REQUEST_DURATION = "limpet_proxy_request_duration_seconds"


def backend_families(engine: Mapping[str, Any]) -> Iterator[Metric]:
    backends: Mapping[str, Mapping[str, Any]] = engine.get("backends") or {}
    responses = CounterMetricFamily(
        "limpet_proxy_backend_responses",
        "Answers to requests routed to a backend, by status class (code); the 502, 503 "
        "and 504 the proxy sends when the backend fails count here too.",
        labels=["backend", "code"],
    )
    errors = CounterMetricFamily(
        "limpet_proxy_backend_errors",
        "Upstream failures by kind: connect (refused or timed out), reset (closed before "
        "or during the answer), timeout (no answer in time), invalid_response.",
        labels=["backend", "kind"],
    )
    duration = HistogramMetricFamily(
        REQUEST_DURATION,
        "Time from the end of a routed request's head to the last byte of its answer "
        "(to the 101 for an upgrade), by backend.",
        labels=["backend"],
    )
    timed = False
    for bid, b in sorted(backends.items()):
        for code, n in sorted(b.get("responses", {}).items()):
            responses.add_metric([bid, code], n)
        for kind, n in sorted(b.get("errors", {}).items()):
            errors.add_metric([bid, kind], n)
        d = b.get("duration")
        if d is not None:
            timed = True
            duration.add_metric([bid], cumulative(d["buckets"]), sum_value=d["sum"])
    yield responses
    yield errors
    if timed:
        yield duration
