"""The operator as the Helm chart configures it, against the real API server.

- Installed with ``helm install`` (defaults: cluster-wide RBAC, peering, metrics): the
  operator runs with exactly the arguments of the Deployment the API server stored, as
  the chart's ServiceAccount (a TokenRequest token, as a pod would get), and brings a
  StickyService to Ready with every proxy on its plan; its metrics port answers. The test
  starts that process itself (on loopback ports instead of the pod's 0.0.0.0) so that it
  sees every request the operator makes; tests/deploy/test_helm_pods.py runs the
  Deployment's pods themselves on the pod runner.
- Per-namespace RBAC (``watchNamespaces``): the chart's Role and RoleBinding for one
  watched namespace; the operator, with no cluster-wide permission at all and kopf
  peering through a ``KopfPeering``, does the same.

Neither may see a single request refused by RBAC.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client as k8s

from limpet.controller.kube.client import KubeClient
from limpet.devcluster.client import request, server_side_apply, service_account_kubeconfig
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.fakepods import FakePodsFactory
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.ports import free_port
from tests.controller.harness import OperatorProcess, Scenes
from tests.deploy.helmchart import CHART, RELEASE, helm
from tests.deploy.manifests import kubectl

RBAC = "/apis/rbac.authorization.k8s.io/v1"


def chart_role(release_ns: str, watched: str) -> list[dict[str, Any]]:
    done = helm(
        "template",
        RELEASE,
        str(CHART),
        "-n",
        release_ns,
        "--set",
        f"watchNamespaces={{{watched}}}",
        "--show-only",
        "templates/rbac.yaml",
    )
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


async def test_operator_runs_under_the_charts_namespaced_role(
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    fake_pods: FakePodsFactory,
    tmp_path: Path,
) -> None:
    release_ns = create_namespace(admin_api, "t-chart-rbac")
    procs: list[OperatorProcess] = []
    try:
        request(
            admin_api,
            "POST",
            f"/api/v1/namespaces/{release_ns}/serviceaccounts",
            body={"metadata": {"name": "limpet-operator"}},
        )
        docs = chart_role(release_ns, namespace)
        assert sorted(d["kind"] for d in docs) == ["Role", "RoleBinding"]  # nothing cluster-wide
        for doc in docs:
            plural = "roles" if doc["kind"] == "Role" else "rolebindings"
            meta = doc["metadata"]
            server_side_apply(
                admin_api,
                f"{RBAC}/namespaces/{meta['namespace']}/{plural}/{meta['name']}",
                doc,
                field_manager="tests",
            )
        kubeconfig = service_account_kubeconfig(
            admin_api,
            devcluster,
            tmp_path / "chart-operator.kubeconfig",
            namespace=release_ns,
            name="limpet-operator",
        )

        def start(*_: str, log_name: str | None = None) -> OperatorProcess:
            args = ["--namespace", namespace, "--stats-interval", "0.5", "--gone-after", "2"]
            proc = OperatorProcess(kubeconfig, tmp_path / "operator.log", args).start()
            procs.append(proc)
            return proc

        scenes = Scenes(kube, http, namespace, start, fake_pods, tmp_path)
        scene = await scenes.open()
        status = (await scene.sticky())["status"]
        assert status["proxies"]["synced"] == 2
        peering = await kube.get(f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings/limpet")
        assert peering is not None, "namespaced peering object made by the operator"
        log = procs[0].log()
        assert "Forbidden" not in log
        assert " 403" not in log
    finally:
        for proc in procs:
            proc.stop()
            print(proc.tail(40))
        purge_namespace(admin_api, release_ns)


def _loopback(arg: str, ports: dict[str, int]) -> str:
    """The Deployment's 0.0.0.0 listeners moved to free loopback ports (no pod netns here)."""
    flag = arg.split("=", 1)[0].removeprefix("--")
    if flag in ports:
        moved = re.sub(r"0\.0\.0\.0:\d+", f"127.0.0.1:{ports[flag]}", arg)
        assert moved != arg, arg
        return moved
    return arg


async def test_the_operator_as_helm_installs_it_serves_a_stickyservice(
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    fake_pods: FakePodsFactory,
    tmp_path: Path,
) -> None:
    cluster_scoped = ("clusterrole/limpet-operator", "clusterrolebinding/limpet-operator")
    for obj in cluster_scoped:  # left by the kustomize tests, which use the same names
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)
    release_ns = create_namespace(admin_api, "t-chart-op")
    procs: list[OperatorProcess] = []
    try:
        done = helm(
            "install", RELEASE, str(CHART), "-n", release_ns, kubeconfig=devcluster.kubeconfig
        )
        assert done.returncode == 0, done.stderr
        deployment = await kube.get(
            f"/apis/apps/v1/namespaces/{release_ns}/deployments/limpet-operator"
        )
        assert deployment is not None
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        ports = {"liveness": free_port(), "metrics-listen": free_port()}
        args = [_loopback(a, ports) for a in container["args"]]
        assert args[0] == "operator"
        kubeconfig = service_account_kubeconfig(
            admin_api,
            devcluster,
            tmp_path / "chart-operator.kubeconfig",
            namespace=release_ns,
            name=pod["serviceAccountName"],
        )

        def start(*_: str, log_name: str | None = None) -> OperatorProcess:
            proc = OperatorProcess(kubeconfig, tmp_path / "operator.log", args[1:]).start()
            procs.append(proc)
            return proc

        scene = await Scenes(kube, http, namespace, start, fake_pods, tmp_path).open()
        assert (await scene.sticky())["status"]["proxies"]["synced"] == 2
        metrics_url = f"http://127.0.0.1:{ports['metrics-listen']}/metrics"
        async with http.get(metrics_url) as resp:
            assert resp.status == 200
            assert 'stickyservice="shop"' in await resp.text()
        async with http.get(f"http://127.0.0.1:{ports['liveness']}/healthz") as resp:
            assert resp.status == 200
        log = procs[0].log()
        assert "Forbidden" not in log
        assert " 403" not in log
    finally:
        for proc in procs:
            proc.stop()
            print(proc.tail(40))
        helm("uninstall", RELEASE, "-n", release_ns, kubeconfig=devcluster.kubeconfig)
        purge_namespace(admin_api, release_ns)
        for obj in cluster_scoped:
            kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)
