"""Finding etcd, kube-apiserver and kubectl: search order and the error a person sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from limpet.devcluster import binaries
from limpet.devcluster.errors import BinaryNotFoundError


def _exe(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_explicit_dir_wins_and_is_the_only_place_looked(tmp_path: Path) -> None:
    exe = _exe(tmp_path / "a", "kube-apiserver")
    env = {"LIMPET_BIN_DIR": str(tmp_path / "elsewhere"), "PATH": str(tmp_path / "a")}
    assert binaries.find_binary("kube-apiserver", bin_dir=tmp_path / "a", environ=env) == exe
    with pytest.raises(BinaryNotFoundError):
        binaries.find_binary("kube-apiserver", bin_dir=tmp_path / "empty", environ=env)


def test_env_dir_is_used_when_no_explicit_dir(tmp_path: Path) -> None:
    exe = _exe(tmp_path / "env", "etcd")
    assert binaries.find_binary("etcd", environ={"LIMPET_BIN_DIR": str(exe.parent)}) == exe


def test_path_is_the_last_resort(tmp_path: Path) -> None:
    # A name the repository's build folder does not have, so the search reaches PATH.
    exe = _exe(tmp_path / "path", "limpet-test-only-tool")
    assert binaries.find_binary("limpet-test-only-tool", environ={"PATH": str(exe.parent)}) == exe


def test_a_file_that_is_not_executable_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("not a program")
    with pytest.raises(BinaryNotFoundError):
        binaries.find_binary("etcd", bin_dir=tmp_path, environ={})


def test_missing_binary_error_says_where_it_looked_and_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError) as info:
        binaries.find_binary("kube-apiserver", bin_dir=tmp_path, environ={})
    message = str(info.value)
    assert message.startswith("kube-apiserver not found")
    assert str(tmp_path) in message
    assert "make controlplane" in message


def test_repo_build_folder_is_found_from_the_source_checkout() -> None:
    root = binaries.repo_root()
    assert root is not None
    assert (root / "pyproject.toml").is_file()
    assert binaries.repo_bin_dir() == root / ".cache" / "bin"
