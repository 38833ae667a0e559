"""Nothing outlives a run: not after a normal exit, not after the run is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from limpet.devcluster.netns import STATE_DIR, NetnsPodNetwork, netns_unavailable_reason
from limpet.devcluster.ownership import current_owner
from limpet.devcluster.workdirs import sweep_stale_work_dirs

Spawn = Callable[[str], subprocess.Popen[str]]


@pytest.fixture
def needs_netns() -> None:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Run Python code in a child; whatever happens, the child is reaped and its pipes closed."""
    children: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(proc)
        return proc

    yield start
    for proc in children:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _report(proc: subprocess.Popen[str]) -> dict[str, object]:
    """The JSON line the child prints once it has made what it makes."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"child printed nothing: {proc.stderr.read()}")
    return dict(json.loads(line))


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status  # an unreaped zombie is dead too


def _dies(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` is dead: a SIGKILLed process still shows as running until the
    kernel has torn it down, which on a loaded machine is not at once."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _traces(run_id: str) -> list[str]:
    """Whatever of fake-pod run ``run_id`` still exists on this machine."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in netns.splitlines() if f"limpet-{run_id}-" in line]
    found += [line.split()[1] for line in links.splitlines() if f"lp{run_id}" in line]
    if (STATE_DIR / f"{run_id}.json").exists():
        found.append("state record")
    return found


# A child that makes a pod network with one pod running `sleep` inside, reports, and then
# either returns (leaving the clean-up to atexit) or waits to be killed. It reports only
# once `ip netns exec` has become `sleep`: before that, `ip` may hold the namespace open
# without having entered it yet, and what is not in a namespace is not its clean-up's to
# kill (on a loaded CI machine the sleeper outlived the run that way, twice).
_NETNS_CHILD = """
    import json, subprocess, time
    from limpet.devcluster.netns import NetnsPodNetwork
    net = NetnsPodNetwork.create()
    slot = net.attach("p", 8080)
    sleeper = subprocess.Popen(net.wrap(slot, ["sleep", "300"]), start_new_session=True)
    deadline = time.monotonic() + 20
    while open(f"/proc/{sleeper.pid}/comm").read().strip() != "sleep":
        assert time.monotonic() < deadline, "ip netns exec never became sleep"
        time.sleep(0.01)
    print(json.dumps({"run_id": net.run_id, "sleeper": sleeper.pid}), flush=True)
    if WAIT:
        time.sleep(300)
"""


@pytest.mark.netns
@pytest.mark.usefixtures("needs_netns")
def test_a_run_that_exits_without_closing_cleans_up_at_exit(spawn: Spawn) -> None:
    proc = spawn(_NETNS_CHILD.replace("WAIT", "False"))
    report = _report(proc)
    assert proc.wait(timeout=30) == 0
    assert _traces(str(report["run_id"])) == []
    assert _dies(int(str(report["sleeper"])))


@pytest.mark.netns
@pytest.mark.usefixtures("needs_netns")
def test_the_next_run_sweeps_what_a_killed_run_left(spawn: Spawn) -> None:
    proc = spawn(_NETNS_CHILD.replace("WAIT", "True"))
    report = _report(proc)
    run_id = str(report["run_id"])
    proc.kill()  # no atexit, no finally: everything is left behind
    proc.wait(timeout=30)
    left = _traces(run_id)
    assert f"limpet-{run_id}-0" in left
    assert f"lp{run_id}br:" in left
    assert "state record" in left
    assert _alive(int(str(report["sleeper"])))

    live = NetnsPodNetwork.create()  # sweeps dead runs, and only those
    try:
        survivor = live.attach("survivor", 8080)
        assert _traces(run_id) == []
        assert _dies(int(str(report["sleeper"])))
        NetnsPodNetwork.create().close()  # another run's sweep...
        live.verify(survivor)  # ...leaves a live run's pods alone
    finally:
        live.close()
    assert _traces(live.run_id) == []


_CLUSTER_CHILD = """
    import json, time
    from pathlib import Path
    from limpet.devcluster.cluster import DevCluster, DevClusterSettings
    c = DevCluster(DevClusterSettings(work_root=Path(WORK_ROOT)))
    c.start()
    owner = json.loads((c.work_dir / "owner.json").read_text())
    print(json.dumps({"work_dir": str(c.work_dir), "children": owner["children"]}), flush=True)
    time.sleep(300)
"""


@pytest.mark.apiserver
def test_a_killed_dev_cluster_is_swept_with_its_processes(spawn: Spawn, tmp_path: Path) -> None:
    proc = spawn(_CLUSTER_CHILD.replace("WORK_ROOT", repr(str(tmp_path))))
    report = _report(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    children = report["children"]
    assert isinstance(children, list)
    assert len(children) == 4  # etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    work_dir = Path(str(report["work_dir"]))
    assert work_dir.exists()
    assert all(_alive(p) for p in children)  # orphaned, still running

    assert sweep_stale_work_dirs(tmp_path) == [work_dir]
    assert not work_dir.exists()
    assert all(_dies(p) for p in children)


def test_the_sweep_leaves_a_live_cluster_alone(tmp_path: Path) -> None:
    live = tmp_path / "limpet-devcluster-live"
    live.mkdir()
    (live / "owner.json").write_text(json.dumps({"owner": current_owner().to_json()}))
    assert sweep_stale_work_dirs(tmp_path) == []
    assert live.exists()
