"""What one demo run yields per StickyService, and its ``summary.json`` form.

Data flow: the scenario builds one :class:`ServiceResult` per StickyService it ran
(the Cookie one first, then the Header one with the session store); the report renders
them side by side and :func:`summary_json` writes them as JSON: the first service's
figures at the top level (as before the second service existed) plus ``ok`` for the
whole run, ``mode``, and ``services``, every service's figures with its store's state.

Pure data; no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from limpet.demo.store import StoreState
from limpet.demo.timeline import Summary, Timeline


@dataclass(frozen=True, slots=True)
class ServiceResult:
    """One StickyService's run: its recording, its figures and, with a store, its state."""

    name: str
    mode: str
    timeline: Timeline
    summary: Summary
    store: StoreState | None = None
    operator_sessions: Mapping[str, int] = field(default_factory=dict)
    """``status.backends[].sessions`` of the serving pods at the end: the operator's
    count of distinct live sessions (users who left count until ``idleTimeout``)."""

    @property
    def ok(self) -> bool:
        return self.summary.ok


def all_ok(results: Sequence[ServiceResult]) -> bool:
    """No session broke outside the failover phase, in any service."""
    return bool(results) and all(r.ok for r in results)


def _service_json(result: ServiceResult) -> dict[str, Any]:
    out = dataclasses.asdict(result.summary)
    store = None if result.store is None else dataclasses.asdict(result.store)
    if store is not None and result.store is not None:
        store["up"] = result.store.up
    return {
        "name": result.name,
        "mode": result.mode,
        "ok": result.ok,
        **out,
        "operator_sessions": dict(result.operator_sessions),
        "store": store,
    }


def summary_json(results: Sequence[ServiceResult]) -> dict[str, Any]:
    first = results[0]
    return {
        **dataclasses.asdict(first.summary),
        "ok": all_ok(results),
        "mode": first.mode,
        "services": [_service_json(r) for r in results],
    }
