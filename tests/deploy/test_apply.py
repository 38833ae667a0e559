"""crds/, deploy/ (and its kind overlay) and examples/ against the real API server.

Each applies with server-side apply, then again with ``--dry-run=server``, with no
warning from the API server: Pod Security admission ("restricted", enforced on both
namespaces) would warn about any pod template that breaks the profile, and schema or
CEL validation would reject a bad StickyService.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from limpet.controller.effects import proxies
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.model.spec import parse_spec
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import purge_namespace
from tests.deploy.manifests import ROOT, kubectl

pytestmark = pytest.mark.apiserver

NAMESPACES = ("limpet-system", "limpet-demo")


@pytest.fixture(scope="module")
def kubeconfig(devcluster: DevCluster, admin_api: k8s.ApiClient) -> Iterator[Path]:
    yield devcluster.kubeconfig
    for ns in NAMESPACES:
        purge_namespace(admin_api, ns)


def apply(kubeconfig: Path, *args: str) -> str:
    done = kubectl("apply", "--server-side", *args, kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    return done.stdout


def wait_established(kubeconfig: Path) -> None:
    done = kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/stickyservices.limpet.dev",
        "crd/clusterkopfpeerings.kopf.dev",
        "crd/kopfpeerings.kopf.dev",
        kubeconfig=kubeconfig,
    )
    assert done.returncode == 0, done.stderr
    # Discovery of a new group can lag Established by a moment.
    deadline = time.monotonic() + 30
    while kubectl("get", "stickyservices", "-A", kubeconfig=kubeconfig).returncode != 0:
        assert time.monotonic() < deadline, "limpet.dev never served"
        time.sleep(0.2)


def test_crds_apply_on_their_own(kubeconfig: Path) -> None:
    out = apply(kubeconfig, "-k", str(ROOT / "crds"))
    assert "stickyservices.limpet.dev serverside-applied" in out
    wait_established(kubeconfig)
    apply(kubeconfig, "--dry-run=server", "-k", str(ROOT / "crds"))


def test_deploy_applies_in_one_go_then_dry_runs(kubeconfig: Path) -> None:
    out = apply(kubeconfig, "-k", str(ROOT / "deploy"))
    for obj in (
        "namespace/limpet-system",
        "serviceaccount/limpet-operator",
        "clusterrole.rbac.authorization.k8s.io/limpet-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/limpet-operator",
        "deployment.apps/limpet-operator",
        "poddisruptionbudget.policy/limpet-operator",
        "networkpolicy.networking.k8s.io/limpet-proxy-admin",
    ):
        assert f"{obj} serverside-applied" in out
    wait_established(kubeconfig)
    out = apply(kubeconfig, "--dry-run=server", "-k", str(ROOT / "deploy"))
    assert "(server dry run)" in out
    apply(kubeconfig, "--dry-run=server", "-k", str(ROOT / "deploy" / "overlays" / "kind"))


def test_examples_apply_after_deploy_then_dry_run(kubeconfig: Path) -> None:
    apply(kubeconfig, "-k", str(ROOT / "deploy"))
    wait_established(kubeconfig)
    out = apply(kubeconfig, "-k", str(ROOT / "examples"))
    assert "stickyservice.limpet.dev/counter serverside-applied" in out
    assert "ingress.networking.k8s.io/counter serverside-applied" in out
    apply(kubeconfig, "--dry-run=server", "-k", str(ROOT / "examples"))
    got = kubectl(
        "-n",
        "limpet-demo",
        "get",
        "stickyservice",
        "counter",
        "-o",
        "jsonpath={.spec.rebalance.mode}/{.spec.affinity.cookie.sameSite}",
        kubeconfig=kubeconfig,
    )
    assert got.stdout == "Gradual/Lax", "the API server applied the CRD's defaults"


def test_pod_security_warnings_would_be_seen(kubeconfig: Path, tmp_path: Path) -> None:
    """The no-warning checks above can fail: a privileged-ish pod template warns."""
    apply(kubeconfig, "-k", str(ROOT / "deploy"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apps/v1\nkind: Deployment\n"
        "metadata: {name: not-restricted, namespace: limpet-system}\n"
        "spec:\n  selector: {matchLabels: {a: b}}\n  template:\n"
        "    metadata: {labels: {a: b}}\n"
        "    spec: {containers: [{name: c, image: x}]}\n"
    )
    done = kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", str(bad), kubeconfig=kubeconfig
    )
    assert done.returncode == 0, done.stderr
    assert 'would violate PodSecurity "restricted' in done.stderr


def test_managed_proxies_meet_the_restricted_profile(kubeconfig: Path, tmp_path: Path) -> None:
    """The proxy Deployment and Service the operator builds, for the example StickyService
    as the API server stored it, pass Pod Security "restricted" in limpet-demo (a server
    dry run: no kubelet here would run them)."""
    apply(kubeconfig, "-k", str(ROOT / "deploy"))
    wait_established(kubeconfig)
    apply(kubeconfig, "-k", str(ROOT / "examples"))
    got = kubectl(
        "-n", "limpet-demo", "get", "stickyservice", "counter", "-o", "json", kubeconfig=kubeconfig
    )
    assert got.returncode == 0, got.stderr
    owner = json.loads(got.stdout)
    spec = parse_spec(owner["spec"])
    children = tmp_path / "children.json"
    children.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    proxies.service_manifest(owner, spec),
                    proxies.deployment_manifest(owner, spec, OperatorSettings()),
                ],
            }
        )
    )
    out = apply(kubeconfig, "--dry-run=server", "-f", str(children))
    assert "deployment.apps/counter-proxy serverside-applied (server dry run)" in out
    assert "service/counter-proxy serverside-applied (server dry run)" in out
