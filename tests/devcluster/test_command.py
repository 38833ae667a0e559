"""``limpet devcluster`` as a person runs it, and the errors it gives when it cannot."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client as k8s

from limpet.devcluster.binaries import find_binary
from limpet.devcluster.client import client_from_kubeconfig
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.errors import (
    BinaryNotFoundError,
    PortInUseError,
    ProcessExitedError,
    ReadyTimeoutError,
)

pytestmark = pytest.mark.apiserver

LIMPET = [sys.executable, "-m", "limpet.cli"]


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LIMPET, "devcluster", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that someone else is already listening on."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


def test_missing_binary_fails_with_how_to_build_it(tmp_path: Path) -> None:
    proc = _run("--kubeconfig", str(tmp_path / "kc"), "--bin-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "not found" in proc.stderr
    assert str(tmp_path) in proc.stderr
    assert "make controlplane" in proc.stderr
    assert not (tmp_path / "kc").exists()


def test_taken_apiserver_port_fails_clearly(tmp_path: Path, listener: int) -> None:
    proc = _run("--kubeconfig", str(tmp_path / "kc"), "--apiserver-port", str(listener))
    assert proc.returncode == 1
    assert f"port {listener}" in proc.stderr
    assert "already in use" in proc.stderr
    assert "--apiserver-port" in proc.stderr


def test_taken_etcd_port_fails_clearly(tmp_path: Path, listener: int) -> None:
    with pytest.raises(PortInUseError, match=f"port {listener} .*etcd"):
        DevCluster(DevClusterSettings(etcd_port=listener, work_root=tmp_path)).start()
    assert list(tmp_path.iterdir()) == []


def test_apiserver_that_exits_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    cluster = DevCluster(
        DevClusterSettings(extra_apiserver_args=("--no-such-flag=1",), work_root=tmp_path)
    )
    with pytest.raises(ProcessExitedError) as info:
        cluster.start()
    message = str(info.value)
    assert message.startswith("kube-apiserver exited with code")
    assert "unknown flag: --no-such-flag" in message
    assert list(tmp_path.iterdir()) == []  # the work dir went with it


@pytest.mark.parametrize("component", ["kube-controller-manager", "kube-scheduler"])
def test_a_component_that_exits_is_reported_with_its_log_tail(
    tmp_path: Path, component: str
) -> None:
    bad = ("--no-such-flag=1",)
    if component == "kube-scheduler":
        settings = DevClusterSettings(work_root=tmp_path, extra_scheduler_args=bad)
    else:
        settings = DevClusterSettings(work_root=tmp_path, extra_controller_manager_args=bad)
    with pytest.raises(ProcessExitedError) as info:
        DevCluster(settings).start()
    message = str(info.value)
    assert message.startswith(f"{component} exited with code")
    assert f"last lines of {component}.log" in message
    assert "unknown flag: --no-such-flag" in message
    assert list(tmp_path.iterdir()) == []


def test_a_component_that_dies_later_is_reported_by_failure(tmp_path: Path) -> None:
    with DevCluster(DevClusterSettings(work_root=tmp_path, controllers=())) as cluster:
        [scheduler] = cluster.components
        assert scheduler.process is not None
        assert scheduler.process.pid is not None
        assert cluster.failure() is None
        os.kill(scheduler.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while cluster.failure() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        failure = cluster.failure()
        assert failure is not None
        assert failure.startswith("kube-scheduler was killed by signal SIGKILL")
        assert "last lines of kube-scheduler.log" in failure


def test_a_controller_that_never_starts_times_out_naming_it(tmp_path: Path) -> None:
    # Without --allocate-node-cidrs, kube-controller-manager skips node IPAM: its check
    # never appears, and the time-out must say which one is missing.
    settings = DevClusterSettings(
        work_root=tmp_path,
        controllers=("deployment-controller", "node-ipam-controller"),
        scheduler=False,
        ready_timeout=20,
    )
    with pytest.raises(ReadyTimeoutError) as info:
        DevCluster(settings).start()
    message = str(info.value)
    assert "kube-controller-manager: still missing: node-ipam-controller;" in message
    assert "[+]deployment-controller ok" in message
    assert "last lines of kube-controller-manager.log" in message
    assert list(tmp_path.iterdir()) == []


def test_controllers_are_optional_and_need_their_binaries_only_when_on(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("etcd", "kube-apiserver"):
        (bin_dir / name).symlink_to(find_binary(name))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BinaryNotFoundError, match="kube-controller-manager not found"):
        DevCluster(DevClusterSettings(bin_dir=bin_dir, work_root=work)).start()
    with pytest.raises(BinaryNotFoundError, match="kube-scheduler not found"):
        DevCluster(DevClusterSettings(bin_dir=bin_dir, work_root=work, controllers=())).start()
    assert list(work.iterdir()) == []
    bare = DevClusterSettings(bin_dir=bin_dir, work_root=work, controllers=(), scheduler=False)
    with DevCluster(bare) as cluster:
        assert cluster.components == []
        assert [r.name for r in cluster.readiness()] == ["kube-apiserver"]
        assert cluster.get("/readyz") == (200, b"ok")


def test_ready_timeout_names_what_it_waited_for(tmp_path: Path) -> None:
    cluster = DevCluster(DevClusterSettings(ready_timeout=0.2, work_root=tmp_path))
    with pytest.raises(ReadyTimeoutError, match=r"not ready within 0 s"):
        cluster.start()
    assert list(tmp_path.iterdir()) == []


def test_missing_binary_is_raised_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(BinaryNotFoundError, match="etcd not found"):
        DevCluster(DevClusterSettings(bin_dir=tmp_path / "none", work_root=tmp_path)).start()
    assert list(tmp_path.iterdir()) == []


class _Output:
    """Collects a child's stdout lines on a thread, so reads never block the test."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self._proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} in {self.lines}")

    def join(self) -> None:
        self._thread.join(timeout=10)


@pytest.fixture
def command(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], _Output, Path]]:
    work_root = tmp_path / "work"
    work_root.mkdir()
    proc = subprocess.Popen(
        [
            *LIMPET,
            "devcluster",
            "--kubeconfig",
            str(tmp_path / "kubeconfig"),
            "--work-root",
            str(work_root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = _Output(proc)
    try:
        yield proc, output, work_root
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output.join()
        assert proc.stderr is not None
        proc.stderr.close()
        assert proc.stdout is not None
        proc.stdout.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too; only the reaper's view differs.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_command_becomes_ready_and_cleans_up_on_sigterm(
    command: tuple[subprocess.Popen[str], _Output, Path], tmp_path: Path
) -> None:
    proc, output, work_root = command
    output.wait_for("Stop with Ctrl-C", timeout=90)  # the last line of the usage text
    assert output.lines[0].startswith("limpet devcluster: ready in ")
    components = [line.split()[0] for line in output.lines[1:4]]
    assert components == ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    assert all(" ready at " in line and "https://127.0.0.1:" in line for line in output.lines[1:4])
    assert "(12 controllers)" in output.lines[2]
    kubeconfig = tmp_path / "kubeconfig"
    assert f"export KUBECONFIG={kubeconfig}" in [line.strip() for line in output.lines]
    assert any("kubectl get namespaces" in line for line in output.lines)

    [work_dir] = list(work_root.iterdir())
    children = json.loads((work_dir / "owner.json").read_text())["children"]
    assert len(children) == 4  # etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    assert all(_pid_alive(pid) for pid in children)
    with client_from_kubeconfig(kubeconfig) as api:
        names = [
            ns.metadata.name for ns in k8s.CoreV1Api(api).list_namespace().items if ns.metadata
        ]
    assert "default" in names

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    output.join()
    assert any("SIGTERM" in line for line in output.lines)
    assert list(work_root.iterdir()) == []
    assert not any(_pid_alive(pid) for pid in children)


def test_command_interrupted_during_start_up_still_cleans_up(
    command: tuple[subprocess.Popen[str], _Output, Path],
) -> None:
    proc, output, work_root = command
    deadline = time.monotonic() + 30
    while not any(work_root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    output.join()
    assert any("SIGINT during start-up" in line for line in output.lines), output.lines
    assert list(work_root.iterdir()) == []
