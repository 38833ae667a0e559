"""Deployments on the pod runner, driven with kubectl as a user would.

kube-controller-manager (deployment, replicaset, endpointslice controllers) and
kube-scheduler make and place the Pods; the pod runner runs them and writes their
status; the EndpointSlice controller publishes them. Nothing here writes a Pod status
or an EndpointSlice.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.devcluster.client import request
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.podrunner.process import PodRunnerProcess
from tests.e2e.managed import (
    APP_LABELS,
    Client,
    app_manifests,
    apply,
    kubectl,
    pods,
    wait_for,
    wait_ready_pods,
)

pytestmark = pytest.mark.timeout(240)


def slice_endpoints(api: k8s.ApiClient, namespace: str, service: str) -> dict[str, dict[str, Any]]:
    """Pod name -> endpoint, over every EndpointSlice of the Service."""
    query = {"labelSelector": f"kubernetes.io/service-name={service}"}
    slices = request(
        api, "GET", f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", query=query
    )["items"]
    return {
        ep["targetRef"]["name"]: ep
        for s in slices
        for ep in s.get("endpoints") or []
        if ep.get("targetRef")
    }


def test_scale_delete_pod_and_rollout_restart(
    api: k8s.ApiClient, devcluster: DevCluster, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    for manifest in app_manifests(namespace, replicas=1):
        apply(api, manifest)
    wait_ready_pods(api, namespace, APP_LABELS, 1)

    kubectl(devcluster, namespace, "scale", "deployment/shop", "--replicas=3")
    ready = wait_ready_pods(api, namespace, APP_LABELS, 3)
    by_name = {p["metadata"]["name"]: p for p in ready}

    def sliced() -> dict[str, dict[str, Any]] | None:
        eps = slice_endpoints(api, namespace, "shop")
        ok = set(eps) == set(by_name) and all(e["conditions"].get("ready") for e in eps.values())
        return eps if ok else None

    eps = wait_for("the EndpointSlice controller to publish the 3 Ready pods", sliced)
    for name, ep in eps.items():
        assert ep["addresses"] == [by_name[name]["status"]["podIP"]]
        assert ep["nodeName"] == pod_runner.nodes[0]
        code, body = Client().get(ep["addresses"][0])
        assert code == 200
        assert body["pod"] == name

    victim = sorted(by_name)[0]
    kubectl(devcluster, namespace, "delete", "pod", victim)
    after = wait_ready_pods(api, namespace, APP_LABELS, 3)
    names = {p["metadata"]["name"] for p in after}
    assert victim not in names
    assert len(names - set(by_name)) == 1  # one replacement

    before = names
    started = time.monotonic()
    kubectl(devcluster, namespace, "rollout", "restart", "deployment/shop")
    kubectl(devcluster, namespace, "rollout", "status", "deployment/shop", "--timeout=120s")

    def rolled() -> list[dict[str, Any]] | None:
        current = pods(api, namespace, APP_LABELS)
        fresh = [p for p in current if p["metadata"]["name"] not in before]
        return current if len(current) == 3 and len(fresh) == 3 else None

    rolled_pods = wait_for("every old pod to be replaced and gone", rolled)
    assert len({p["metadata"]["labels"]["pod-template-hash"] for p in rolled_pods}) == 1
    assert time.monotonic() - started < 120
