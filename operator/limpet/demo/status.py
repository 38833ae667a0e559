"""A StickyService's status as the demo shows it, and the wait for it to be ready.

Data flow: :meth:`StickyStatus.refresh` (a worker thread, once a second) GETs the
StickyService and keeps its status, one line for the live view (plan version, proxies
in sync, readiness, the rebalance's progress) and each backend's state by pod; every
change of that line goes to ``status-<name>.log`` in the run's folder, with the time.
:func:`wait_ready` polls until the operator says Ready, every proxy runs its plan and
every serving app pod is an active backend.

The kubernetes client is blocking: callers run :meth:`refresh` through
``asyncio.to_thread``; one refresh at a time per object.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubernetes import client as k8s

from limpet.demo.stage import Stage
from limpet.devcluster.client import request


class StickyStatus:
    """One StickyService's status, read in a worker thread once a second."""

    def __init__(self, stage: Stage, name: str) -> None:
        self._stage = stage
        self.name = name
        self.line = "waiting for the operator ..."
        self.states: dict[str, str] = {}
        self.raw: dict[str, Any] = {}
        self._log = stage.work / f"status-{name}.log"
        self._logged = ""

    def sessions(self) -> dict[str, int]:
        """``status.backends[].sessions`` by pod: the operator's count of distinct live
        sessions (from the store when the proxies report one)."""
        return {
            str(b["pod"]): int(b.get("sessions") or 0)
            for b in self.raw.get("backends") or []
            if b.get("pod") and b.get("state") in ("Active", "Warming")
        }

    def conditions(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.raw.get("conditions") or []
        return found

    def refresh(self) -> None:
        api = self._stage.api
        assert api is not None
        path = (
            f"/apis/limpet.dev/v1alpha1/namespaces/{self._stage.namespace}/stickyservices/"
            f"{self.name}"
        )
        try:
            obj = request(api, "GET", path, timeout=3)
        except (k8s.ApiException, OSError) as exc:
            self.line = f"status unavailable: {exc}"[:100]
            return
        status: dict[str, Any] = obj.get("status") or {}
        self.raw = status
        ready = next((c for c in self.conditions() if c.get("type") == "Ready"), {})
        reb = status.get("rebalance") or {}
        proxies = status.get("proxies") or {}
        self.states = {
            b.get("pod", ""): str(b.get("state", "")).lower()
            for b in status.get("backends") or []
            if b.get("pod")
        }
        self.line = (
            f"Operator: plan v{status.get('planVersion', '-')}, proxies in sync "
            f"{proxies.get('synced', 0)}/{proxies.get('discovered', 0)}, "
            f"Ready={ready.get('status', '?')}"
            + (
                f", rebalance {reb.get('phase')} moved {reb.get('moved', 0)} "
                f"remaining {reb.get('remaining', 0)}"
                if reb.get("phase")
                else ""
            )
        )
        # Every change of what the operator reports, with the time, for after the run.
        entry = f"{self.line} | {sorted(self.states.items())}"
        if entry != self._logged:
            self._logged = entry
            with self._log.open("a") as log:
                log.write(f"{time.strftime('%H:%M:%S')} {entry}\n")


async def wait_ready(stage: Stage, status: StickyStatus, *, within: float = 60.0) -> None:
    """Until the operator says Ready and every proxy runs its plan."""
    want = len(stage.proxy_urls(status.name))
    deadline = time.monotonic() + within
    while True:
        await asyncio.to_thread(status.refresh)
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.conditions()
        )
        synced = (status.raw.get("proxies") or {}).get("synced", 0)
        backends = sum(1 for s in status.states.values() if s == "active")
        if ready and synced >= want and backends >= len(await asyncio.to_thread(stage.app_pods)):
            return
        if not stage.operator_alive():
            raise RuntimeError("the operator exited during start-up (see operator.log)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{status.name} did not become ready: {status.line}")
        await asyncio.sleep(0.2)
