"""A Node as a kubelet keeps it: registration, its Lease and its Ready condition.

Data flow: :func:`register` creates the Node (``spec.podCIDR``, capacity and
allocatable from this machine, ``InternalIP`` = the node's address on the pod bridge,
the Ready condition) and its Lease in ``kube-node-lease`` (owned by the Node, so the
garbage collector removes it with the Node). A Node of the same name left by an earlier
run with another pod CIDR is replaced (``podCIDR`` is immutable). :func:`heartbeat`
renews the Lease every ``lease_renew`` seconds (node lifecycle controllers judge a node
by it) and rewrites the Ready condition every ``status_every`` seconds. :func:`mark_stopped`
sets Ready=False when the runner stops, so nothing waits for pods that no longer run.

Asyncio, over :class:`~.kubeapi.KubeApi`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import platform
from dataclasses import dataclass

from limpet.devcluster.podrunner.kubeapi import ApiError, JsonObj, KubeApi
from limpet.devcluster.podrunner.status import now_rfc3339

log = logging.getLogger("limpet.podrunner")
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
RUNNER_LABEL = "node.limpet.dev/pod-runner"
VERSION = "v1.37.2-limpet-podrunner"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    pod_cidr: str
    host_ip: str
    run_id: str
    max_pods: int = 110


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def conditions(*, ready: bool, message: str) -> list[JsonObj]:
    now = now_rfc3339()

    def cond(kind: str, status: str, reason: str, text: str) -> JsonObj:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": text,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return [
        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
        cond("PIDPressure", "False", "KubeletHasSufficientPID", "enough PIDs"),
        cond(
            "Ready",
            "True" if ready else "False",
            "KubeletReady" if ready else "KubeletNotReady",
            message,
        ),
    ]


def node_manifest(node: NodeSpec) -> JsonObj:
    resources = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_bytes() // 1024}Ki",
        "pods": str(node.max_pods),
        "ephemeral-storage": "10Gi",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64"
                if platform.machine() == "x86_64"
                else platform.machine(),
                RUNNER_LABEL: node.run_id,
            },
        },
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
        "status": _status(node, resources, ready=True, message="limpet pod runner is ready"),
    }


def _status(node: NodeSpec, resources: dict[str, str], *, ready: bool, message: str) -> JsonObj:
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions(ready=ready, message=message),
        "addresses": [
            {"type": "InternalIP", "address": node.host_ip},
            {"type": "Hostname", "address": node.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
            "kernelVersion": platform.release(),
            "osImage": "limpet pod runner (processes in network namespaces)",
            "containerRuntimeVersion": "limpet://podrunner",
            "kubeletVersion": VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64" if platform.machine() == "x86_64" else platform.machine(),
        },
    }


async def register(api: KubeApi, node: NodeSpec) -> JsonObj:
    manifest = node_manifest(node)
    path = f"/api/v1/nodes/{node.name}"
    existing = await api.get(path)
    if existing is not None and existing.get("spec", {}).get("podCIDR") != node.pod_cidr:
        log.info("replacing node %s left by an earlier run", node.name)
        await api.delete(path, {"gracePeriodSeconds": 0})
        for _ in range(100):
            if await api.get(path) is None:
                break
            await asyncio.sleep(0.1)
        existing = None
    if existing is None:
        created = await api.create("/api/v1/nodes", manifest)
    else:
        created = existing
    # A create ignores status: write it through the subresource.
    await api.merge_patch(path + "/status", {"status": manifest["status"]})
    await _renew_lease(api, node, created["metadata"]["uid"])
    return created


async def _renew_lease(api: KubeApi, node: NodeSpec, node_uid: str) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases/{node.name}"
    spec = {
        "holderIdentity": node.name,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": _micro_now(),
    }
    try:
        await api.merge_patch(path, {"spec": spec})
    except ApiError as e:
        if e.status != 404:
            raise
        await api.create(
            f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases",
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": node.name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": node_uid}
                    ],
                },
                "spec": spec,
            },
        )


async def heartbeat(
    api: KubeApi,
    node: NodeSpec,
    node_uid: str,
    *,
    lease_renew: float = 10.0,
    status_every: float = 60.0,
) -> None:
    """Renew the Lease and refresh the Ready condition until cancelled."""
    since_status = 0.0
    while True:
        await asyncio.sleep(lease_renew)
        since_status += lease_renew
        try:
            await _renew_lease(api, node, node_uid)
            if since_status >= status_every:
                since_status = 0.0
                await set_ready(api, node, ready=True, message="limpet pod runner is ready")
        except Exception as e:
            log.warning("node %s: heartbeat failed: %s", node.name, e)


async def set_ready(api: KubeApi, node: NodeSpec, *, ready: bool, message: str) -> None:
    await api.merge_patch(
        f"/api/v1/nodes/{node.name}/status",
        {"status": {"conditions": conditions(ready=ready, message=message)}},
    )
