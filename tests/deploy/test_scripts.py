"""tools/kind-e2e.sh cannot run here (no Docker engine), so its syntax is what is checked."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "kind-e2e.sh"


def test_kind_e2e_parses_with_bash() -> None:
    done = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr


def test_kind_e2e_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (tools/apt-deps.sh installs it)")
    done = subprocess.run(
        [shellcheck, "--severity=info", str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_make_target_runs_the_script() -> None:
    done = subprocess.run(
        ["make", "-n", "kind-e2e"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "tools/kind-e2e.sh" in done.stdout


def test_kind_e2e_stops_early_without_docker(tmp_path: Path) -> None:
    """With no docker on PATH it names what is missing and changes nothing."""
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None
        (tmp_path / tool).symlink_to(found)
    done = subprocess.run(
        [str(tmp_path / "bash"), str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "docker is not on PATH" in done.stderr
