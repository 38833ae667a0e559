"""The chart's and the kustomize base's operator pods, run for real by the pod runner.

- ``helm install`` of deploy/helm/limpet (defaults: two replicas, kopf peering,
  cluster-wide RBAC): the scheduler binds the operator pods to the pod runner's Node,
  which runs them from the ``ghcr.io/limpet-dev/limpet`` image (this virtualenv). They
  reach the API server through ``KUBERNETES_SERVICE_HOST``/``_PORT`` with their projected
  service-account token (the operator's in-cluster configuration), answer their
  startup, liveness and readiness probes, and elect one active replica through their
  ClusterKopfPeering. A StickyService in managed mode then works end to end, all on the
  pod runner: the counter app's pods, the proxy pods the operator made, and a user whose
  requests through either proxy pod stick to one app pod.
- ``helm upgrade`` with a changed value rolls the operator: new pods Ready, the old ones
  gone, and the StickyService keeps working under the new replicas.
- ``helm uninstall`` leaves no operator pod and nothing of the chart but the CRDs.
- ``kubectl apply -k`` of an overlay of deploy/ that only overrides the image gives
  Running, Ready operator pods too.

Requests go only to pod IPs the pod runner reported (its own network namespaces).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.devcluster.client import request
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.podrunner.process import PodRunnerProcess
from tests.deploy.helmchart import CHART, RELEASE, helm
from tests.deploy.manifests import ROOT, kubectl
from tests.e2e.managed import (
    APP_LABELS,
    Client,
    app_manifests,
    apply,
    condition,
    pods,
    proxy_labels,
    ready_pods,
    sticky_manifest,
    sticky_status,
    wait_for,
    wait_ready_pods,
)

pytestmark = [pytest.mark.apiserver, pytest.mark.timeout(240)]

OPERATOR = {"app.kubernetes.io/name": "limpet", "app.kubernetes.io/component": "operator"}
CLUSTER_SCOPED = ("clusterrole/limpet-operator", "clusterrolebinding/limpet-operator")
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
PEERING = "/apis/kopf.dev/v1/clusterkopfpeerings/limpet"


@pytest.fixture
def kubeconfig(devcluster: DevCluster, pod_runner: PodRunnerProcess) -> Iterator[Path]:
    """The cluster with the pod runner, without the cluster-scoped objects of another
    installation (Helm refuses to adopt them), before and after. Afterwards also without
    the ClusterKopfPeering: an operator pod that stops after its ClusterRole went cannot
    remove itself from it, and its entry would pause the next test's operator for a
    minute (the operator makes the object again when it starts)."""
    for obj in CLUSTER_SCOPED:
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)
    yield devcluster.kubeconfig
    for obj in (*CLUSTER_SCOPED, "clusterkopfpeering/limpet"):
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)


def ok(done: Any) -> str:
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def uids(found: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["uid"] for p in found}


def container_log(runner: PodRunnerProcess, pod: Mapping[str, Any], container: str) -> str:
    m = pod["metadata"]
    path = runner.work_dir / "pods" / "logs" / f"{m['namespace']}_{m['name']}_{m['uid']}"
    log = path / f"{container}.log"
    return log.read_text(errors="replace") if log.exists() else ""


def assert_one_active(
    api: k8s.ApiClient, runner: PodRunnerProcess, operators: list[dict[str, Any]]
) -> None:
    """Both replicas announce themselves in the peering object (by pod name), and only
    the one with the higher priority there is active.

    kopf starts a replica paused and logs each change: active means a "Resuming
    operations" line after the last "Pausing operations" (a replica that started below a
    live higher one never resumes, so it logs neither)."""
    names = {p["metadata"]["name"] for p in operators}

    def priorities() -> dict[str, int] | None:
        status = request(api, "GET", PEERING).get("status") or {}
        found = {peer.split("/")[0]: int(info["priority"]) for peer, info in status.items()}
        return found if names <= set(found) else None

    prio = wait_for("both operator pods in the ClusterKopfPeering", priorities, timeout=60)
    highest = max(names, key=lambda n: prio[n])

    def active() -> list[str] | None:
        who = []
        for pod in operators:
            log = container_log(runner, pod, "operator")
            if log.rfind("Resuming operations") > log.rfind("Pausing operations"):
                who.append(pod["metadata"]["name"])
        return who if who == [highest] else None

    wait_for(f"{highest} (highest priority) as the only active replica", active, timeout=60)


def assert_sticky_through_proxies(api: k8s.ApiClient, namespace: str, *, app_pods: int = 2) -> None:
    def synced() -> dict[str, Any] | None:
        status = sticky_status(api, namespace, "shop")
        px = status.get("proxies") or {}
        good = condition(status, "Ready") == "True" and px.get("synced") == px.get("discovered")
        return status if good and px.get("synced") == 2 else None

    wait_for("the StickyService Ready with its 2 proxies in sync", synced, timeout=90)
    app = {p["metadata"]["name"] for p in wait_ready_pods(api, namespace, APP_LABELS, app_pods)}
    proxies = wait_ready_pods(api, namespace, proxy_labels("shop"), 2)
    user = Client()
    code, first = user.get(proxies[0]["status"]["podIP"])
    assert code == 200, first
    assert first["pod"] in app
    for proxy in proxies * 2:
        code, again = user.get(proxy["status"]["podIP"])
        assert code == 200, again
        assert again["pod"] == first["pod"], (first, again)


def test_helm_install_runs_the_operator_pods_upgrade_rolls_them_uninstall_leaves_the_crds(
    admin_api: k8s.ApiClient,
    kubeconfig: Path,
    pod_runner: PodRunnerProcess,
    namespace: str,
) -> None:
    ns = create_namespace(admin_api, "t-helm-pods", labels=RESTRICTED)
    try:
        started = time.monotonic()
        ok(helm("install", RELEASE, str(CHART), "-n", ns, kubeconfig=kubeconfig))
        operators = wait_ready_pods(admin_api, ns, OPERATOR, 2)
        print(f"helm install -> 2 operator pods Ready: {time.monotonic() - started:.1f} s")
        for pod in operators:
            assert pod["spec"]["nodeName"] in pod_runner.nodes
            [status] = pod["status"]["containerStatuses"]
            assert status["ready"] is True
            assert status["restartCount"] == 0, status
            mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
            assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
        assert_one_active(admin_api, pod_runner, operators)

        for manifest in app_manifests(namespace, replicas=2):
            apply(admin_api, manifest)
        apply(admin_api, sticky_manifest(namespace))
        assert_sticky_through_proxies(admin_api, namespace)

        # A changed value changes the pod template: the operator rolls.
        started = time.monotonic()
        ok(helm("upgrade", RELEASE, str(CHART), "-n", ns, "--set", "logLevel=DEBUG",
                kubeconfig=kubeconfig))  # fmt: skip

        def rolled() -> list[dict[str, Any]] | None:
            now = pods(admin_api, ns, OPERATOR)
            ready = ready_pods(admin_api, ns, OPERATOR)
            fresh = [p for p in ready if "--log-level=DEBUG" in p["spec"]["containers"][0]["args"]]
            return fresh if len(fresh) == 2 and not uids(now) & uids(operators) else None

        renewed = wait_for("2 new operator pods Ready and the old ones gone", rolled, timeout=120)
        print(f"helm upgrade -> operator rolled: {time.monotonic() - started:.1f} s")
        assert_one_active(admin_api, pod_runner, renewed)
        # Only an active operator can see the app grow: one of the new replicas took over.
        for manifest in app_manifests(namespace, replicas=3):
            apply(admin_api, manifest)
        wait_for(
            "the StickyService to count 3 backends",
            lambda: sticky_status(admin_api, namespace, "shop").get("backendCount") == 3,
            timeout=60,
        )
        assert_sticky_through_proxies(admin_api, namespace, app_pods=3)

        ok(helm("uninstall", RELEASE, "-n", ns, "--wait", kubeconfig=kubeconfig))
        wait_for("no operator pod left", lambda: not pods(admin_api, ns, OPERATOR), timeout=60)
        left = ok(kubectl("-n", ns, "get", "deployments,replicasets,poddisruptionbudgets,"
                          "networkpolicies,roles,rolebindings", "-o", "name",
                          kubeconfig=kubeconfig)).split()  # fmt: skip
        assert left == []
        for obj in CLUSTER_SCOPED:
            assert "NotFound" in kubectl("get", obj, kubeconfig=kubeconfig).stderr
        for crd in ("stickyservices.limpet.dev", "clusterkopfpeerings.kopf.dev"):
            ok(kubectl("get", "crd", crd, kubeconfig=kubeconfig))
    finally:
        helm("uninstall", RELEASE, "-n", ns, kubeconfig=kubeconfig)
        purge_namespace(admin_api, ns)


def test_kubectl_apply_k_deploy_with_an_image_override_runs_the_operator_pods(
    admin_api: k8s.ApiClient, kubeconfig: Path, pod_runner: PodRunnerProcess, tmp_path: Path
) -> None:
    ns = "limpet-system"  # the kustomize base's
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "deploy", overlay)],
                "images": [
                    {"name": "ghcr.io/limpet-dev/limpet", "newName": "limpet", "newTag": "dev"}
                ],
            }
        )
    )
    purge_namespace(admin_api, ns)
    try:
        ok(kubectl("apply", "--server-side", "-k", str(overlay), kubeconfig=kubeconfig))
        operators = wait_ready_pods(admin_api, ns, OPERATOR, 2)
        for pod in operators:
            assert pod["spec"]["containers"][0]["image"] == "limpet:dev"
            [status] = pod["status"]["containerStatuses"]
            assert status["ready"] is True
            assert status["state"].get("running"), status
        assert_one_active(admin_api, pod_runner, operators)
    finally:
        kubectl("delete", "--ignore-not-found", "--wait=false", "-n", ns,
                "deployment/limpet-operator", kubeconfig=kubeconfig)  # fmt: skip
        wait_for("no operator pod left", lambda: not pods(admin_api, ns, OPERATOR), timeout=60)
        purge_namespace(admin_api, ns)
