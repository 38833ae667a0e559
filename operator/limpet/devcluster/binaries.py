"""Finding the control-plane binaries (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl).

Data flow: a name goes in, an executable path comes out, or a
:class:`BinaryNotFoundError` that lists where we looked and how to build them.
Search order: an explicit directory (``--bin-dir``) alone; otherwise the
``LIMPET_BIN_DIR`` environment variable alone; otherwise ``<repo>/.cache/bin``
(where ``make controlplane`` builds them), then ``PATH``.

Read-only file-system look-ups, no state: safe from any thread.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from limpet.devcluster.errors import BinaryNotFoundError

ETCD = "etcd"
KUBE_APISERVER = "kube-apiserver"
KUBE_CONTROLLER_MANAGER = "kube-controller-manager"
KUBE_SCHEDULER = "kube-scheduler"
KUBECTL = "kubectl"
ENV_BIN_DIR = "LIMPET_BIN_DIR"


def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "tools" / "controlplane").is_dir() else None


def repo_bin_dir() -> Path | None:
    root = repo_root()
    return None if root is None else root / ".cache" / "bin"


def search_path(
    *, bin_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> list[tuple[Path | None, str]]:
    """The places to look, in order, each with how it was chosen (``None`` means PATH)."""
    env = os.environ if environ is None else environ
    if bin_dir is not None:
        return [(bin_dir, "--bin-dir")]
    if env.get(ENV_BIN_DIR):
        return [(Path(env[ENV_BIN_DIR]), f"${ENV_BIN_DIR}")]
    places: list[tuple[Path | None, str]] = []
    repo_bin = repo_bin_dir()
    if repo_bin is not None:
        places.append((repo_bin, "the repository's build folder"))
    places.append((None, "PATH"))
    return places


def find_binary(
    name: str, *, bin_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    env = os.environ if environ is None else environ
    looked: list[str] = []
    for directory, why in search_path(bin_dir=bin_dir, environ=env):
        if directory is None:
            found = shutil.which(name, path=env.get("PATH", os.defpath))
            if found:
                return Path(found)
            looked.append("PATH")
            continue
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        looked.append(f"{directory} ({why})")
    raise BinaryNotFoundError(
        f"{name} not found; looked in: {', '.join(looked)}. "
        "Build the control plane with `make controlplane` (it writes etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler and kubectl to <repo>/.cache/bin), or point "
        f"--bin-dir / ${ENV_BIN_DIR} at a folder holding them."
    )
