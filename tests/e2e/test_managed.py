"""Managed mode for real: proxy pods made by Kubernetes from the operator's Deployment.

Needs the whole cluster in a box: kube-controller-manager and kube-scheduler (started by
the dev cluster) and the pod runner (the ``pod_runner`` fixture). See ``managed.py``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.controller.model.names import proxy_service_name, secret_name
from limpet.devcluster.binaries import KUBECTL, find_binary
from limpet.devcluster.client import install_crds, request, wait_crds
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import purge_namespace
from limpet.devcluster.podrunner.process import PodRunnerProcess
from tests.controller.harness import OperatorIdentity, OperatorProcess, operator_identity
from tests.e2e.managed import (
    APP_LABELS,
    PATHS,
    Client,
    app_manifests,
    apply,
    condition,
    get,
    pods,
    proxy_labels,
    ready_pods,
    start_operator,
    sticky_manifest,
    sticky_status,
    wait_for,
    wait_ready_pods,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def identity(
    admin_api: k8s.ApiClient, devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> OperatorIdentity:
    wait_crds(admin_api, install_crds(admin_api, REPO / "crds", field_manager="limpet-tests"))
    return operator_identity(admin_api, devcluster, tmp_path_factory.mktemp("managed"))


@pytest.fixture
def operator(
    identity: OperatorIdentity, namespace: str, tmp_path: Path, pod_runner: PodRunnerProcess
) -> Iterator[OperatorProcess]:
    proc = start_operator(identity, namespace, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        proc.stop()
        print(f"---- operator log (last lines) ----\n{proc.tail(60)}")


def open_shop(
    api: k8s.ApiClient, namespace: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """App and StickyService applied; returns (ready app pods, ready proxy pods) once the
    StickyService is Ready with both proxies in sync."""
    for manifest in app_manifests(namespace):
        apply(api, manifest)
    apply(api, sticky_manifest(namespace))
    app = wait_ready_pods(api, namespace, APP_LABELS, 3)
    proxies = wait_ready_pods(api, namespace, proxy_labels("shop"), 2)

    def synced() -> dict[str, Any] | None:
        status = sticky_status(api, namespace, "shop")
        px = status.get("proxies") or {}
        ok = condition(status, "Ready") == "True" and px.get("synced") == px.get("discovered") == 2
        return status if ok else None

    wait_for("the StickyService Ready with 2 proxies in sync", synced)
    return app, proxies


def test_managed_proxies_run_as_pods_mount_their_secret_and_carry_sticky_traffic(
    api: k8s.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    app, proxies = open_shop(api, namespace)
    # The operator's Deployment made them: owned by a ReplicaSet of shop-proxy.
    path = PATHS["Deployment"].format(ns=namespace, name=proxy_service_name("shop"))

    def ready_deployment() -> dict[str, Any] | None:
        # The Deployment's status follows its ReplicaSet's, a moment after the pods.
        found = get(api, path)
        return found if found and found.get("status", {}).get("readyReplicas") == 2 else None

    wait_for("the proxies' Deployment with 2 ready replicas", ready_deployment)
    for pod in proxies:
        [owner] = pod["metadata"]["ownerReferences"]
        assert owner["kind"] == "ReplicaSet"
        assert owner["name"].startswith(proxy_service_name("shop") + "-")
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["admin-token"]["secret"]["secretName"] == secret_name("shop")
        [status] = pod["status"]["containerStatuses"]
        assert status["ready"] is True
        assert status["restartCount"] == 0
    # Ready means /readyz answered: the proxy loaded a plan, pushed with the token it read
    # from its mounted Secret. Now a user through each proxy reaches an app pod and stays.
    app_names = {p["metadata"]["name"] for p in app}
    user = Client()
    first_ip = proxies[0]["status"]["podIP"]
    code, body = user.get(first_ip)
    assert code == 200, body
    assert body["pod"] in app_names
    assert "LIMPET" in user.cookies  # the StickyService's cookie name (the default)
    for proxy in proxies * 3:
        code, again = user.get(proxy["status"]["podIP"])
        assert code == 200
        assert again["pod"] == body["pod"], (body, again)


def test_deleting_the_sticky_service_removes_what_it_owned_through_the_garbage_collector(
    api: k8s.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    open_shop(api, namespace)
    name = proxy_service_name("shop")
    owned = {
        "Deployment": PATHS["Deployment"].format(ns=namespace, name=name),
        "Service": PATHS["Service"].format(ns=namespace, name=name),
        "Secret": f"/api/v1/namespaces/{namespace}/secrets/{secret_name('shop')}",
    }
    assert all(get(api, path) is not None for path in owned.values())
    # The operator is gone (uninstalled, say) and its finalizer with it: what remains to
    # clean up is the garbage collector's job alone, by the ownerReferences.
    operator.stop()
    sticky = PATHS["StickyService"].format(ns=namespace, name="shop")
    request(
        api,
        "PATCH",
        sticky,
        body={"metadata": {"finalizers": None}},
        content_type="application/merge-patch+json",
    )
    request(api, "DELETE", sticky)
    wait_for("the StickyService to go", lambda: get(api, sticky) is None)
    wait_for(
        "the proxies' Deployment, Service and Secret to be collected",
        lambda: all(get(api, path) is None for path in owned.values()),
    )
    wait_for(
        "the proxy pods (owned by the Deployment's ReplicaSet) to be collected and stopped",
        lambda: not pods(api, namespace, proxy_labels("shop")),
    )
    # The app is the user's: untouched.
    assert len(ready_pods(api, namespace, APP_LABELS)) == 3
    with contextlib.suppress(Exception):
        operator.stop()


def test_kubectl_apply_k_examples_gives_ready_counter_pods_and_a_synced_sticky_service(
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    identity: OperatorIdentity,
    pod_runner: PodRunnerProcess,
    tmp_path: Path,
) -> None:
    kubectl = find_binary(KUBECTL)
    ns = "limpet-demo"  # examples/kustomization.yaml's
    proc: OperatorProcess | None = None
    try:
        done = subprocess.run(
            [str(kubectl), "--kubeconfig", str(devcluster.kubeconfig), "apply", "--server-side",
             "-k", str(REPO / "examples")],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        proc = start_operator(identity, ns, tmp_path / "operator.log")
        counter = {"app.kubernetes.io/name": "counter"}
        wait_ready_pods(admin_api, ns, counter, 3)

        def synced() -> bool:
            status = sticky_status(admin_api, ns, "counter")
            px = status.get("proxies") or {}
            return (
                condition(status, "Ready") == "True"
                and px.get("synced") == px.get("discovered") == 2
            )

        wait_for("StickyService counter Ready with its 2 managed proxies in sync", synced)
        proxies = wait_ready_pods(admin_api, ns, proxy_labels("counter"), 2)
        user = Client()
        answers = {user.get(p["status"]["podIP"])[1]["pod"] for p in proxies * 2}
        names = {p["metadata"]["name"] for p in ready_pods(admin_api, ns, counter)}
        assert len(answers) == 1
        assert answers <= names
    finally:
        if proc is not None:
            proc.stop()
            print(f"---- operator log (last lines) ----\n{proc.tail(40)}")
        purge_namespace(admin_api, ns)
