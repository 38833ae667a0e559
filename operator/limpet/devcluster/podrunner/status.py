"""A pod's status as a kubelet writes it, computed from the runner's view of its containers.

Data flow: the pod's spec and one :class:`ContainerView` per container (state, restart
count, readiness, from :mod:`.container`) in; :func:`pod_status` returns the ``status``
object to merge-patch: ``phase``, ``podIP``/``podIPs``, ``hostIP``/``hostIPs``,
``startTime``, the conditions ``PodScheduled``, ``Initialized``, ``ContainersReady`` and
``Ready`` (with readiness gates), and ``containerStatuses``. A condition keeps its
``lastTransitionTime`` while its status does not change.

Pure functions; no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

JsonObj = dict[str, Any]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    kind: Literal["waiting", "running", "terminated"]
    reason: str = ""
    message: str = ""
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    signal: int = 0

    def to_json(self) -> JsonObj:
        if self.kind == "running":
            return {"running": {"startedAt": self.started_at}}
        if self.kind == "waiting":
            body = {"reason": self.reason}
            if self.message:
                body["message"] = self.message
            return {"waiting": body}
        term: JsonObj = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at,
        }
        if self.signal:
            term["signal"] = self.signal
        if self.message:
            term["message"] = self.message
        return {"terminated": term}


WAITING_TO_START = State(kind="waiting", reason="ContainerCreating")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerView:
    name: str
    image: str
    state: State = WAITING_TO_START
    last_state: State | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    done: bool = False
    """Terminated and will not be restarted (restartPolicy)."""

    def to_json(self) -> JsonObj:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "containerID": "",
            "state": self.state.to_json(),
            "lastState": {} if self.last_state is None else self.last_state.to_json(),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }


def _condition(
    kind: str, ok: bool, previous: Mapping[str, JsonObj], *, reason: str = ""
) -> JsonObj:
    status = "True" if ok else "False"
    old = previous.get(kind)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    out: JsonObj = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or now_rfc3339(),
    }
    if reason and not ok:
        out["reason"] = reason
    return out


def phase(views: Sequence[ContainerView], *, restart_policy: str) -> str:
    if not views:
        return "Pending"
    if all(v.done for v in views):
        return "Succeeded" if all(v.state.exit_code == 0 for v in views) else "Failed"
    ever_started = all(v.state.kind != "waiting" or v.restart_count > 0 for v in views)
    if not ever_started:
        return "Pending"
    return "Running"


def pod_status(
    pod: Mapping[str, Any],
    views: Sequence[ContainerView],
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    initialized: bool = True,
    terminal: bool = False,
) -> JsonObj:
    """The whole ``status``; ``terminal`` forces ``Succeeded``/``Failed`` (pod deleted)."""
    spec = pod.get("spec", {})
    old_status = pod.get("status") or {}
    previous = {c["type"]: c for c in old_status.get("conditions") or [] if "type" in c}
    containers_ready = bool(views) and all(v.ready for v in views)
    gates = [g["conditionType"] for g in spec.get("readinessGates", [])]
    gates_ok = all(previous.get(g, {}).get("status") == "True" for g in gates)
    p = phase(views, restart_policy=spec.get("restartPolicy", "Always"))
    if terminal and p not in ("Succeeded", "Failed"):
        p = "Succeeded" if all(v.state.exit_code == 0 for v in views) else "Failed"
    ready = containers_ready and gates_ok and p == "Running"
    not_ready = "PodCompleted" if p in ("Succeeded", "Failed") else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", bool(pod_ip), previous),
        _condition("Initialized", initialized, previous, reason="ContainersNotInitialized"),
        _condition("Ready", ready, previous, reason=not_ready),
        _condition("ContainersReady", containers_ready, previous, reason=not_ready),
        _condition("PodScheduled", True, previous),
    ]
    conditions += [previous[g] for g in gates if g in previous]
    status: JsonObj = {
        "phase": p,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": [v.to_json() for v in views],
        "qosClass": old_status.get("qosClass", "BestEffort"),
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
