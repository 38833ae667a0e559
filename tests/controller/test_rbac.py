"""The operator's RBAC: least privilege on paper, and a missing rule fails for real.

Every scenario test already runs the operator under a ServiceAccount bound to exactly
deploy/rbac/operator-rbac.yaml (see harness.operator_identity). Here: the file's rules
are what the operator needs and no more, and dropping one rule breaks the operator.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from kubernetes import client as k8s

from limpet.controller.kube.client import STICKYSERVICES, KubeClient
from limpet.devcluster.client import request, server_side_apply
from limpet.devcluster.cluster import DevCluster
from tests.controller.harness import (
    RBAC_FILE,
    OperatorProcess,
    eventually,
    operator_identity,
    sticky_manifest,
)


def _rules() -> list[dict[str, list[str]]]:
    docs = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    assert [d["kind"] for d in docs] == ["ClusterRole", "ClusterRoleBinding"]
    return list(docs[0]["rules"])


def test_rules_are_explicit_and_minimal() -> None:
    rules = _rules()
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
    grants = {
        (group, res, verb)
        for r in rules
        for group in r["apiGroups"]
        for res in r["resources"]
        for verb in r["verbs"]
    }
    # Secrets are read by name only: never listed or watched cluster-wide.
    assert ("", "secrets", "list") not in grants
    assert ("", "secrets", "watch") not in grants
    # No access to pods, nodes, or anything the operator does not touch.
    assert {res for _, res, _ in grants} == {
        "stickyservices",
        "stickyservices/status",
        "endpointslices",
        "services",
        "secrets",
        "deployments",
        "events",
        "clusterkopfpeerings",
        "kopfpeerings",
    }
    assert not any(
        verb in ("update", "deletecollection", "escalate", "bind", "impersonate")
        for _, _, verb in grants
    )


async def test_missing_rule_breaks_the_operator(
    kube: KubeClient,
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    namespace: str,
    tmp_path: Path,
) -> None:
    identity = operator_identity(admin_api, devcluster, tmp_path)
    role = request(
        admin_api,
        "GET",
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{identity.cluster_role}",
    )
    role["rules"] = [r for r in role["rules"] if "secrets" not in r["resources"]]
    role["metadata"] = {"name": identity.cluster_role}
    server_side_apply(
        admin_api,
        f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{identity.cluster_role}",
        role,
        field_manager="tests",
    )
    proc = OperatorProcess(
        identity.kubeconfig, tmp_path / "operator.log", ["--standalone", "--namespace", namespace]
    ).start()
    try:
        await kube.create(STICKYSERVICES.path(namespace), sticky_manifest("shop", "shop"))

        async def forbidden_logged() -> bool:
            return "403" in proc.log() or "forbidden" in proc.log().lower()

        await eventually(forbidden_logged, what="a 403 in the operator's log")
        await asyncio.sleep(2)
        obj = await kube.get(STICKYSERVICES.path(namespace, "shop"))
        assert obj is not None
        assert "planVersion" not in (obj.get("status") or {}), "worked without the rule?"
        assert await kube.get(f"/api/v1/namespaces/{namespace}/secrets/shop-limpet") is None
    finally:
        proc.stop()
        print(proc.tail(30))
