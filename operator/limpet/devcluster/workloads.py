"""Workloads on a dev cluster that runs its Pods for real (controllers + the pod runner).

Shared by the demo and the end-to-end tests, which drive Deployments as a user would:
:func:`kubectl` runs the real ``kubectl`` against a kubeconfig; :func:`pods`,
:func:`ready_pods` and :func:`is_ready` read Pods as a kubelet (here the pod runner)
reported them; :func:`node_pod_ip` gives a Pod's IP only once it is proved to be one of
the pod runner's own (the Pod is bound to a Node of ``runner_nodes`` and its IP lies in
that Node's ``spec.podCIDR``), so that callers send traffic only to addresses the run
made and checked itself.

Synchronous (the kubernetes client and ``subprocess``); no state.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from limpet.devcluster.binaries import KUBECTL, find_binary
from limpet.devcluster.client import request
from limpet.devcluster.errors import DevClusterError

Pod = dict[str, Any]


class KubectlError(DevClusterError):
    """``kubectl`` failed; the message holds the command and its error output."""


def kubectl(
    kubeconfig: Path, *args: str, namespace: str | None = None, timeout: float = 120
) -> str:
    """Run ``kubectl --kubeconfig <kubeconfig> [-n <namespace>] <args>``; returns stdout."""
    scope = ["-n", namespace] if namespace else []
    argv = [str(find_binary(KUBECTL)), "--kubeconfig", str(kubeconfig), *scope, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise KubectlError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def pods(api: k8s.ApiClient, namespace: str, selector: Mapping[str, str]) -> list[Pod]:
    query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
    items: list[Pod] = request(api, "GET", f"/api/v1/namespaces/{namespace}/pods", query=query)[
        "items"
    ]
    return items


def is_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def ready_pods(api: k8s.ApiClient, namespace: str, selector: Mapping[str, str]) -> list[Pod]:
    """The Pods matching ``selector`` that are Ready and not terminating."""
    return [p for p in pods(api, namespace, selector) if is_ready(p) and not is_terminating(p)]


def node_pod_ip(api: k8s.ApiClient, pod: Mapping[str, Any], runner_nodes: Collection[str]) -> str:
    """The Pod's IP, once checked to be inside the pod CIDR of one of ``runner_nodes``."""
    name = pod["metadata"]["name"]
    node = (pod.get("spec") or {}).get("nodeName")
    ip = (pod.get("status") or {}).get("podIP")
    if node not in runner_nodes or not ip:
        raise DevClusterError(f"pod {name} is not running on this run's pod runner ({node})")
    cidr = request(api, "GET", f"/api/v1/nodes/{node}")["spec"].get("podCIDR", "")
    if not cidr or ipaddress.ip_address(ip) not in ipaddress.ip_network(cidr):
        raise DevClusterError(f"pod {name}'s IP {ip} is outside node {node}'s pod CIDR {cidr}")
    return str(ip)
