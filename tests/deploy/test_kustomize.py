"""deploy/, its kind overlay and examples/ build with kustomize and hold what the issue asks.

Client-side only (``kubectl kustomize``); tests/deploy/test_apply.py sends the same
documents to the real API server.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import ROOT, Doc, build, container, find

DEPLOY = ROOT / "deploy"
KIND = DEPLOY / "overlays" / "kind"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def base() -> list[Doc]:
    return build(DEPLOY)


@pytest.fixture(scope="module")
def kind() -> list[Doc]:
    return build(KIND)


@pytest.fixture(scope="module")
def examples() -> list[Doc]:
    return build(EXAMPLES)


def test_base_holds_every_part_of_an_installation(base: list[Doc]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in base}
    assert {
        ("Namespace", "limpet-system"),
        ("CustomResourceDefinition", "stickyservices.limpet.dev"),
        ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
        ("CustomResourceDefinition", "kopfpeerings.kopf.dev"),
        ("ServiceAccount", "limpet-operator"),
        ("ClusterRole", "limpet-operator"),
        ("ClusterRoleBinding", "limpet-operator"),
        ("Deployment", "limpet-operator"),
        ("PodDisruptionBudget", "limpet-operator"),
        ("NetworkPolicy", "limpet-proxy-admin"),
    } <= kinds
    for doc in base:
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition") and not doc[
            "kind"
        ].startswith("Cluster"):
            assert doc["metadata"].get("namespace") == "limpet-system", doc["metadata"]


def test_the_binding_grants_the_role_to_the_deployments_service_account(base: list[Doc]) -> None:
    binding = find(base, "ClusterRoleBinding", "limpet-operator")
    deployment = find(base, "Deployment", "limpet-operator")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["roleRef"]["name"] == find(base, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa, "namespace": "limpet-system"}
    ]


def _assert_restricted(pod_spec: dict[str, Any]) -> None:
    pod_sc = pod_spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] != 0
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod_spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["resources"]["requests"]["cpu"]
        assert c["resources"]["limits"]["memory"]


def test_operator_deployment_is_hardened_and_highly_available(base: list[Doc]) -> None:
    deployment = find(base, "Deployment", "limpet-operator")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    _assert_restricted(pod)
    op = container(deployment, "operator")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert op[probe]["httpGet"]["port"] == "health"
    ports = {p["name"]: p["containerPort"] for p in op["ports"]}
    assert "health" in ports
    liveness = next(a for a in op["args"] if a.startswith("--liveness="))
    assert liveness.endswith(f":{ports['health']}/healthz")
    assert op["args"][0] == "operator"
    assert "--standalone" not in op["args"], "two replicas need kopf peering"
    # Writable scratch only where mounted.
    mounts = {m["mountPath"] for m in op["volumeMounts"]}
    assert mounts == {"/tmp"}


def test_pdb_covers_the_operator_pods(base: list[Doc]) -> None:
    pdb = find(base, "PodDisruptionBudget", "limpet-operator")
    labels = find(base, "Deployment", "limpet-operator")["spec"]["template"]["metadata"]["labels"]
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def test_network_policy_admits_only_the_operator_to_the_admin_port(base: list[Doc]) -> None:
    policy = find(base, "NetworkPolicy", "limpet-proxy-admin")
    operator_labels = find(base, "Deployment", "limpet-operator")["spec"]["template"]["metadata"][
        "labels"
    ]
    rules = policy["spec"]["ingress"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admin_rules = [r for r in rules if any(p["port"] == "admin" for p in r["ports"])]
    assert len(admin_rules) == 1
    (peer,) = admin_rules[0]["from"]
    assert peer["podSelector"]["matchLabels"].items() <= operator_labels.items()
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "limpet-system"
    }
    # Every other rule opens only the traffic port, to anyone.
    for rule in rules:
        if rule is not admin_rules[0]:
            assert "from" not in rule
            assert [p["port"] for p in rule["ports"]] == ["http"]


@pytest.mark.parametrize("overlay", ["base", "kind"])
def test_managed_proxies_use_the_operators_own_image(
    overlay: str, base: list[Doc], kind: list[Doc]
) -> None:
    docs = base if overlay == "base" else kind
    op = container(find(docs, "Deployment", "limpet-operator"), "operator")
    proxy_image = next(a for a in op["args"] if a.startswith("--proxy-image="))
    assert proxy_image == f"--proxy-image={op['image']}"


def test_kind_overlay_uses_the_side_loaded_image(kind: list[Doc]) -> None:
    op = container(find(kind, "Deployment", "limpet-operator"), "operator")
    assert op["image"] == "limpet:dev"
    assert op["imagePullPolicy"] == "Never"


def test_examples_app_service_sticky_service_and_ingress(examples: list[Doc]) -> None:
    ns = find(examples, "Namespace")["metadata"]["name"]
    for doc in examples:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == ns
    app = find(examples, "Deployment", "counter")
    _assert_restricted(app["spec"]["template"]["spec"])
    svc = find(examples, "Service", "counter")
    sticky = find(examples, "StickyService", "counter")
    assert sticky["spec"]["service"] == svc["metadata"]["name"]
    assert sticky["spec"]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert svc["spec"]["selector"].items() <= app["spec"]["template"]["metadata"]["labels"].items()
    ingress = find(examples, "Ingress", "counter")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] != svc["metadata"]["name"], "traffic goes through the proxies"
    find(examples, "NetworkPolicy", "limpet-proxy-admin")


def test_example_app_drains_within_its_grace_period(examples: list[Doc]) -> None:
    app = find(examples, "Deployment", "counter")
    pod = app["spec"]["template"]["spec"]
    sleep = container(app, "counter")["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = find(examples, "StickyService", "counter")["spec"]["drain"]["timeout"]
    assert drain.endswith("s")
    # Limpet's drain deadline falls while the pod still serves (preStop), which ends
    # before the kubelet's grace period.
    assert int(drain[:-1]) < sleep < pod["terminationGracePeriodSeconds"]
