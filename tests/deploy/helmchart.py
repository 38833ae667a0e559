"""Run the helm built by tools/helm (found like kubectl: <repo>/.cache/bin, $LIMPET_BIN_DIR,
then PATH) and render deploy/helm/limpet.

``helm(...)`` returns the finished process (``binary=HELM3`` runs helm 3 instead of 4);
``render(...)`` runs ``helm template`` and returns the documents. ``HELM_ONLY_LABELS`` are
the labels Helm charts carry and the kustomize base does not (release bookkeeping); the
drift test ignores exactly those.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from limpet.devcluster import binaries
from tests.deploy.manifests import ROOT, Doc

CHART = ROOT / "deploy" / "helm" / "limpet"
RELEASE = "limpet"
NAMESPACE = "limpet-system"
HELM_ONLY_LABELS = frozenset(
    {
        "helm.sh/chart",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
    }
)


HELM = "helm"
HELM3 = "helm3"
HELMS = (HELM, HELM3)


def helm(
    *args: str, kubeconfig: Path | None = None, timeout: float = 120.0, binary: str = HELM
) -> subprocess.CompletedProcess[str]:
    cmd = [str(binaries.find_binary(binary))]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def render(*args: str, crds: bool = False, binary: str = HELM) -> list[Doc]:
    """``helm template limpet deploy/helm/limpet -n limpet-system ARGS`` as documents."""
    extra = ["--include-crds"] if crds else []
    done = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *extra, *args, binary=binary)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]
