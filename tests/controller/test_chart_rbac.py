"""The operator under the Helm chart's per-namespace RBAC (``watchNamespaces``).

The chart's Role and RoleBinding, rendered by ``helm template`` for one watched
namespace, are applied to the real API server; the operator runs as their ServiceAccount
with no cluster-wide permission at all, with kopf peering (a ``KopfPeering`` in the
watched namespace), and must bring a StickyService to Ready with every proxy on its
plan, without a single request refused by RBAC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client as k8s

from limpet.controller.kube import KubeClient
from limpet.devcluster.client import request, server_side_apply, service_account_kubeconfig
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.fakepods import FakePodsFactory
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from tests.controller.harness import OperatorProcess, Scenes
from tests.deploy.helmchart import CHART, RELEASE, helm

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
