"""deploy/helm/limpet with the helm 4 and helm 3 built by tools/helm, against the real
API server.

- ``helm lint --strict`` with the defaults and with every option switched on; the values
  schema refuses typos; ``helm package`` renders what the folder renders;
- ``helm template`` output applied with ``--dry-run=server`` (Pod Security "restricted"
  enforced on the namespace: any warning fails);
- ``helm install``, ``helm upgrade`` (a changed value changes the operator's pod
  template, which is what makes the Deployment roll; an unchanged upgrade does not),
  ``helm rollback``, and ``helm uninstall``, which leaves the CRDs and nothing else;
- adopting a ``kubectl apply -k deploy/`` installation without changing the pod template;
- per-namespace RBAC: the operator's ServiceAccount may do its work in the watched
  namespaces and nothing anywhere else (``kubectl auth can-i`` as that account).

Here the objects the API server stores are what is checked; test_helm_pods.py runs the
operator pods on the pod runner.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from tests.deploy.helmchart import CHART, HELMS, RELEASE, helm, render
from tests.deploy.manifests import ROOT, kubectl

pytestmark = pytest.mark.apiserver

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
CLUSTER_SCOPED = ("clusterrole/limpet-operator", "clusterrolebinding/limpet-operator")
# Every kind the chart can make outside crds/, for "what is left" queries.
KINDS = "deployments,serviceaccounts,roles,rolebindings,poddisruptionbudgets,networkpolicies"


@pytest.fixture
def kubeconfig(devcluster: DevCluster) -> Iterator[Path]:
    """The cluster without the kustomize base's cluster-scoped objects (test_apply.py makes
    them with the same names), before and after: Helm refuses to adopt foreign objects."""
    for obj in CLUSTER_SCOPED:
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)
    yield devcluster.kubeconfig
    for obj in CLUSTER_SCOPED:
        kubectl("delete", "--ignore-not-found", obj, kubeconfig=devcluster.kubeconfig)


@pytest.fixture
def release_ns(admin_api: k8s.ApiClient) -> Iterator[str]:
    name = create_namespace(admin_api, "t-helm", labels=RESTRICTED)
    yield name
    purge_namespace(admin_api, name)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def get_json(kubeconfig: Path, *args: str) -> dict[str, object]:
    got: dict[str, object] = json.loads(
        ok(kubectl("get", *args, "-o", "json", kubeconfig=kubeconfig))
    )
    return got


def operator_args(kubeconfig: Path, ns: str) -> list[str]:
    dep = get_json(kubeconfig, "-n", ns, "deployment", "limpet-operator")
    spec = dep["spec"]
    assert isinstance(spec, dict)
    args: list[str] = spec["template"]["spec"]["containers"][0]["args"]
    return args


def generation(kubeconfig: Path, ns: str) -> int:
    dep = get_json(kubeconfig, "-n", ns, "deployment", "limpet-operator")
    meta = dep["metadata"]
    assert isinstance(meta, dict)
    return int(meta["generation"])


ALL_ON = [
    "--set",
    "watchNamespaces={shop,cart}",
    "--set",
    "proxyAdminPolicy.namespaces={shop}",
    "--set",
    "proxy.replicas=3",
    "--set",
    "logLevel=DEBUG",
    "--set",
    "podAnnotations.example=yes",
    "--set",
    "extraArgs={--stats-interval=5}",
    "--set-json",
    'proxyAdminPolicy.extraFrom=[{"namespaceSelector": {"matchLabels": '
    '{"kubernetes.io/metadata.name": "monitoring"}}}]',
]


def test_options_reach_the_objects() -> None:
    docs = render(*ALL_ON)
    op = next(d for d in docs if d["kind"] == "Deployment")
    args = op["spec"]["template"]["spec"]["containers"][0]["args"]
    for arg in ("--namespace=shop", "--namespace=cart", "--proxy-replicas=3"):
        assert arg in args
    assert args[-1] == "--stats-interval=5"
    assert op["spec"]["template"]["metadata"]["annotations"] == {"example": "yes"}
    policies = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert set(policies) == {"limpet-system", "shop"}
    admin_rule = policies["shop"]["spec"]["ingress"][1]
    assert admin_rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "limpet-system"
    }
    assert admin_rule["from"][1] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    roles = sorted((d["kind"], d["metadata"]["namespace"]) for d in docs if "Role" in d["kind"])
    assert roles == [
        ("Role", "cart"),
        ("Role", "shop"),
        ("RoleBinding", "cart"),
        ("RoleBinding", "shop"),
    ]


@pytest.mark.parametrize("binary", HELMS)
@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "options"])
def test_lint_strict(values: list[str], binary: str) -> None:
    out = ok(helm("lint", "--strict", str(CHART), *values, binary=binary))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_lint_refuses_standalone_with_two_replicas() -> None:
    done = helm("template", RELEASE, str(CHART), "--set", "peering.enabled=false")
    assert done.returncode != 0
    assert "set replicas to 1" in done.stderr


@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "options"])
def test_template_passes_a_server_dry_run(
    values: list[str], kubeconfig: Path, release_ns: str, admin_api: k8s.ApiClient, tmp_path: Path
) -> None:
    extra = [create_namespace(admin_api, "t-helm-w", labels=RESTRICTED) for _ in range(2)]
    try:
        # The options' namespaces, renamed to ones that exist in this cluster.
        values = [v.replace("shop", extra[0]).replace("cart", extra[1]) for v in values]
        rendered = ok(
            helm("template", RELEASE, str(CHART), "-n", release_ns, "--include-crds", *values)
        )
        manifest = tmp_path / "chart.yaml"
        manifest.write_text(rendered)
        done = kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            str(manifest),
            kubeconfig=kubeconfig,
        )
        assert done.returncode == 0, done.stderr
        assert "Warning" not in done.stderr, done.stderr
        kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
        assert {"Deployment", "NetworkPolicy", "CustomResourceDefinition"} <= kinds
        assert done.stdout.count("(server dry run)") == len(
            [d for d in yaml.safe_load_all(rendered) if d]
        )
    finally:
        for ns in extra:
            purge_namespace(admin_api, ns)


@pytest.mark.parametrize("binary", HELMS)
def test_install_upgrade_uninstall(kubeconfig: Path, release_ns: str, binary: str) -> None:
    ns = release_ns
    # Install: every object of the chart is created, in this namespace.
    out = ok(helm("install", RELEASE, str(CHART), "-n", ns, kubeconfig=kubeconfig, binary=binary))
    assert "STATUS: deployed" in out
    assert "Warning" not in out
    made = ok(kubectl("-n", ns, "get", KINDS, "-o", "name", kubeconfig=kubeconfig)).split()
    assert sorted(made) == sorted(
        [
            "deployment.apps/limpet-operator",
            "serviceaccount/limpet-operator",
            "poddisruptionbudget.policy/limpet-operator",
            "networkpolicy.networking.k8s.io/limpet-proxy-admin",
        ]
        + [s for s in made if s.startswith("serviceaccount/default")]
    )
    binding = get_json(kubeconfig, "clusterrolebinding", "limpet-operator")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "limpet-operator", "namespace": ns}
    ]
    for crd in (
        "stickyservices.limpet.dev",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    ):
        ok(kubectl("get", "crd", crd, kubeconfig=kubeconfig))
    first = generation(kubeconfig, ns)
    assert "--log-level=INFO" in operator_args(kubeconfig, ns)

    # An upgrade with the same values leaves the pod template alone: nothing rolls.
    ok(helm("upgrade", RELEASE, str(CHART), "-n", ns, kubeconfig=kubeconfig, binary=binary))
    assert generation(kubeconfig, ns) == first

    # A changed value changes the pod template: the Deployment rolls.
    out = ok(
        helm(
            "upgrade",
            RELEASE,
            str(CHART),
            "-n",
            ns,
            "--set",
            "logLevel=DEBUG",
            kubeconfig=kubeconfig,
            binary=binary,
        )
    )
    assert "REVISION: 3" in out
    assert generation(kubeconfig, ns) == first + 1
    assert "--log-level=DEBUG" in operator_args(kubeconfig, ns)
    history = ok(
        helm("history", RELEASE, "-n", ns, "-o", "json", kubeconfig=kubeconfig, binary=binary)
    )
    assert [r["status"] for r in json.loads(history)] == ["superseded", "superseded", "deployed"]

    # A rollback is one more roll, back to the first pod template.
    ok(helm("rollback", RELEASE, "1", "-n", ns, kubeconfig=kubeconfig, binary=binary))
    assert generation(kubeconfig, ns) == first + 2
    assert "--log-level=INFO" in operator_args(kubeconfig, ns)

    # Uninstall: nothing is left but the CRDs (Helm never deletes crds/ content, which
    # would delete every StickyService with it).
    ok(helm("uninstall", RELEASE, "-n", ns, "--wait", kubeconfig=kubeconfig, binary=binary))
    left = ok(kubectl("-n", ns, "get", KINDS, "-o", "name", kubeconfig=kubeconfig)).split()
    assert [s for s in left if not s.startswith("serviceaccount/default")] == []
    for obj in CLUSTER_SCOPED:
        done = kubectl("get", obj, kubeconfig=kubeconfig)
        assert done.returncode != 0, obj
        assert "NotFound" in done.stderr, done.stderr
    assert ok(helm("list", "-n", ns, "-q", kubeconfig=kubeconfig, binary=binary)).strip() == ""
    ok(kubectl("get", "crd", "stickyservices.limpet.dev", kubeconfig=kubeconfig))


def test_namespaced_rbac_reaches_only_the_watched_namespaces(
    kubeconfig: Path, release_ns: str, admin_api: k8s.ApiClient
) -> None:
    watched = create_namespace(admin_api, "t-helm-w", labels=RESTRICTED)
    other = create_namespace(admin_api, "t-helm-o", labels=RESTRICTED)
    try:
        ok(
            helm(
                "install",
                RELEASE,
                str(CHART),
                "-n",
                release_ns,
                "--set",
                f"watchNamespaces={{{watched}}}",
                kubeconfig=kubeconfig,
            )
        )
        assert f"--namespace={watched}" in operator_args(kubeconfig, release_ns)
        who = f"system:serviceaccount:{release_ns}:limpet-operator"

        def can(*what: str) -> bool:
            done = kubectl("auth", "can-i", *what, "--as", who, kubeconfig=kubeconfig)
            return done.stdout.strip() == "yes"

        assert can("watch", "stickyservices.limpet.dev", "-n", watched)
        assert can("patch", "stickyservices.limpet.dev/status", "-n", watched)
        assert can("create", "deployments.apps", "-n", watched)
        assert can("create", "kopfpeerings.kopf.dev", "-n", watched)
        assert not can("list", "secrets", "-n", watched), "secrets are read by name only"
        assert not can("watch", "stickyservices.limpet.dev", "-n", other)
        assert not can("get", "secrets", "-n", other)
        assert not can("create", "clusterkopfpeerings.kopf.dev")
        for obj in CLUSTER_SCOPED:
            assert kubectl("get", obj, kubeconfig=kubeconfig).returncode != 0, obj
        ok(helm("uninstall", RELEASE, "-n", release_ns, "--wait", kubeconfig=kubeconfig))
        left = kubectl(
            "-n", watched, "get", "roles,rolebindings", "-o", "name", kubeconfig=kubeconfig
        )
        assert ok(left).strip() == ""
    finally:
        helm("uninstall", RELEASE, "-n", release_ns, kubeconfig=kubeconfig)
        for ns in (watched, other):
            purge_namespace(admin_api, ns)


def test_chart_rbac_rules_are_the_kustomize_rules() -> None:
    """The namespaced Role grants what the ClusterRole grants, minus cluster-scoped peering."""
    cluster_role = next(d for d in render() if d["kind"] == "ClusterRole")
    role = next(d for d in render("--set", "watchNamespaces={a}") if d["kind"] == "Role")
    base = yaml.safe_load_all((ROOT / "deploy" / "rbac" / "operator-rbac.yaml").read_text())
    assert cluster_role["rules"] == next(d for d in base if d["kind"] == "ClusterRole")["rules"]
    peering = {
        "apiGroups": ["kopf.dev"],
        "resources": ["kopfpeerings"],
        "verbs": ["list", "watch", "patch", "create"],
    }
    assert role["rules"] == [*cluster_role["rules"][:-1], peering]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replica=3", "additional properties 'replica' not allowed"),
        ("logLevel=LOUD", "value must be one of"),
        ("metrics.proxies[0].namespace=Bad_NS", "does not match pattern"),
        ("metrics.proxies[0].namespace=shop", "missing property 'stickyService'"),
        ("extraArgs={stats-interval=5}", "does not match pattern"),
    ],
)
def test_values_schema_refuses_typos_and_bad_values(value: str, message: str) -> None:
    done = helm("template", RELEASE, str(CHART), "--set", value)
    assert done.returncode != 0
    assert message in done.stderr


def test_probes_and_metrics_ports_are_where_the_operator_listens() -> None:
    import argparse

    from limpet.controller import command

    op = next(d for d in render() if d["kind"] == "Deployment")
    container = op["spec"]["template"]["spec"]["containers"][0]
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(container["args"][1:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_listen == ("0.0.0.0", ports["metrics"])
    assert args.liveness == f"http://0.0.0.0:{ports['health']}/healthz"
    off = next(d for d in render("--set", "metrics.enabled=false") if d["kind"] == "Deployment")
    off_container = off["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--metrics-listen") for a in off_container["args"])
    assert "metrics" not in {p["name"] for p in off_container["ports"]}


@pytest.mark.parametrize("binary", HELMS)
def test_packaged_chart_renders_what_the_folder_renders(binary: str, tmp_path: Path) -> None:
    """`helm package` keeps everything the templates read (files/, crds/, the schema)."""
    ok(helm("package", str(CHART), "-d", str(tmp_path), binary=binary))
    (package,) = tmp_path.glob("limpet-*.tgz")
    values = ["--include-crds", "--set", "metrics.dashboard.enabled=true"]
    values += ["--set", "metrics.prometheusRule.enabled=true"]
    packaged = ok(helm("template", RELEASE, str(package), *values, binary=binary))
    folder = ok(helm("template", RELEASE, str(CHART), *values, binary=binary))
    assert packaged == folder
    assert '"title": "Limpet"' in packaged, "the dashboard file is in the package"
    assert "alert: LimpetNoBackend" in packaged, "the rules file is in the package"
    bad = helm("template", RELEASE, str(package), "--set", "replica=3", binary=binary)
    assert bad.returncode != 0, "the schema travels with the package"


@pytest.mark.parametrize("binary", HELMS)
def test_a_kustomize_install_moves_to_helm_without_a_restart(
    kubeconfig: Path, admin_api: k8s.ApiClient, binary: str
) -> None:
    """`helm install --take-ownership` adopts what `kubectl apply -k deploy/` made (helm 4
    also needs --force-conflicts for the fields kubectl's server-side apply owns), and the
    operator's pod template does not change: switching tools restarts nothing."""
    ns = "limpet-system"
    purge_namespace(admin_api, ns)
    try:
        done = kubectl("apply", "--server-side", "-k", str(ROOT / "deploy"), kubeconfig=kubeconfig)
        assert done.returncode == 0, done.stderr
        before = get_json(kubeconfig, "-n", ns, "deployment", "limpet-operator")["spec"]
        adopt = ["--take-ownership"] + (["--force-conflicts"] if binary == "helm" else [])
        plain = helm("install", RELEASE, str(CHART), "-n", ns, kubeconfig=kubeconfig, binary=binary)
        assert plain.returncode != 0, "Helm must refuse foreign objects unless told to adopt"
        out = ok(
            helm(
                "install",
                RELEASE,
                str(CHART),
                "-n",
                ns,
                *adopt,
                kubeconfig=kubeconfig,
                binary=binary,
            )
        )
        assert "STATUS: deployed" in out
        after = get_json(kubeconfig, "-n", ns, "deployment", "limpet-operator")
        assert isinstance(before, dict)
        assert after["spec"]["template"] == before["template"]  # type: ignore[index]
        managed = kubectl(
            "get",
            f"{KINDS},clusterroles,clusterrolebindings",
            "-A",
            "-l",
            "app.kubernetes.io/managed-by=Helm",
            "-o",
            "name",
            kubeconfig=kubeconfig,
        )
        assert {
            "deployment.apps/limpet-operator",
            "clusterrole.rbac.authorization.k8s.io/limpet-operator",
            "networkpolicy.networking.k8s.io/limpet-proxy-admin",
        } <= set(ok(managed).split())
        # Helm 4 applies server-side, and kubectl still co-owns every field it applied
        # with the same value: changing one needs --force-conflicts (helm 3 patches
        # client-side, so never conflicts).
        upgrade = ["upgrade", RELEASE, str(CHART), "-n", ns, "--set", "logLevel=DEBUG"]
        if binary == "helm":
            refused = helm(*upgrade, kubeconfig=kubeconfig, binary=binary)
            assert refused.returncode != 0
            assert 'conflict with "kubectl"' in refused.stderr
            upgrade.append("--force-conflicts")
        ok(helm(*upgrade, kubeconfig=kubeconfig, binary=binary))
        assert "--log-level=DEBUG" in operator_args(kubeconfig, ns)
        ok(helm("uninstall", RELEASE, "-n", ns, "--wait", kubeconfig=kubeconfig, binary=binary))
    finally:
        helm("uninstall", RELEASE, "-n", ns, kubeconfig=kubeconfig, binary=binary)
        purge_namespace(admin_api, ns)


@pytest.mark.parametrize("binary", HELMS)
def test_chart_refuses_kubernetes_older_than_its_crd_needs(binary: str) -> None:
    old = helm("template", RELEASE, str(CHART), "--kube-version", "1.30.9", binary=binary)
    assert old.returncode != 0
    assert "kubeVersion" in old.stderr
    ok(helm("template", RELEASE, str(CHART), "--kube-version", "1.31.0", binary=binary))
