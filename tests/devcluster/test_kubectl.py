"""kubectl built by tools/controlplane talks to the dev cluster."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from limpet.devcluster import binaries
from limpet.devcluster.cluster import DevCluster

pytestmark = pytest.mark.apiserver


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return binaries.find_binary(binaries.KUBECTL)


def _kubectl(kubectl: Path, cluster: DevCluster, *args: str) -> str:
    proc = subprocess.run(
        [str(kubectl), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kubectl_comes_from_the_repository_build(kubectl: Path) -> None:
    if os.environ.get(binaries.ENV_BIN_DIR):
        pytest.skip(f"${binaries.ENV_BIN_DIR} points elsewhere on purpose")
    assert binaries.repo_bin_dir() is not None
    assert kubectl.parent == binaries.repo_bin_dir()


def test_kubectl_version_reports_v1_37_2_on_both_sides(
    kubectl: Path, devcluster: DevCluster
) -> None:
    version = json.loads(_kubectl(kubectl, devcluster, "version", "--output=json"))
    assert version["clientVersion"]["gitVersion"] == "v1.37.2"
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"


def test_kubectl_lists_namespaces_and_sees_ours(
    kubectl: Path, devcluster: DevCluster, namespace: str
) -> None:
    names = _kubectl(kubectl, devcluster, "get", "namespaces", "-o", "name").split()
    assert f"namespace/{namespace}" in names
    assert "namespace/kube-system" in names


def test_kubectl_can_i_reflects_rbac(kubectl: Path, devcluster: DevCluster, tmp_path: Path) -> None:
    assert _kubectl(kubectl, devcluster, "auth", "can-i", "*", "*").strip() == "yes"
    bob = devcluster.write_user_kubeconfig(tmp_path / "bob", user="bob")
    proc = subprocess.run(
        [str(kubectl), "--kubeconfig", str(bob), "auth", "can-i", "list", "pods"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip() == "no"
