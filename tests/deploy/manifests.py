"""Build and apply the repository's manifests with the kubectl from tools/controlplane.

``build(path)`` runs ``kubectl kustomize`` and returns the documents; ``kubectl(...)``
runs any kubectl command against a kubeconfig and returns the finished process, so
tests can look at stdout and at stderr (where the API server's warnings land).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from limpet.devcluster import binaries

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]


def kubectl_binary() -> Path:
    return binaries.find_binary(binaries.KUBECTL)


def kubectl(
    *args: str, kubeconfig: Path | None = None, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    cmd = [str(kubectl_binary())]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run(
        [*cmd, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )


def build(path: Path) -> list[Doc]:
    done = kubectl("kustomize", str(path))
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def container(deployment: Doc, name: str) -> Doc:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)
