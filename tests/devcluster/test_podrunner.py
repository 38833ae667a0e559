"""The pod runner against the real API server: pods bound to its node run for real.

Each test binds its Pod to the runner's node itself (``spec.nodeName``), so no scheduler
is involved, and reads what the runner wrote in the Pod's status. The processes are the
project's own (the ``limpet`` image = this virtualenv) or the host's shell (``busybox``);
what they see is written to a hostPath folder the test owns, or served over HTTP at the
pod IP that the runner reported.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import itertools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from limpet.devcluster.client import request
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.podrunner.process import PodRunnerOptions, PodRunnerProcess
from tests.devcluster.podrunner_helpers import (
    condition,
    container_status,
    create_pod,
    delete_and_watch,
    get_pod,
    is_ready,
    wait_pod,
    waiting_reason,
)


def _node(runner: PodRunnerProcess) -> str:
    return runner.nodes[0]


def _http_get(ip: str, port: int, path: str = "/") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(ip, port, timeout=3)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # written by a non-root container user
    return out


def _wait_file(path: Path, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            time.sleep(0.1)  # the writer may still be appending
            return path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout:.0f} s")


COUNTER = {
    "name": "counter",
    "image": "ghcr.io/limpet-dev/limpet:0.1.0",
    "command": ["python", "-m", "limpet.demo.backend"],
    "args": ["--port=8080"],
    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    },
}


def test_node_is_registered_ready_with_a_fresh_lease(
    api: k8s.ApiClient, pod_runner: PodRunnerProcess
) -> None:
    node = request(api, "GET", f"/api/v1/nodes/{_node(pod_runner)}")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["spec"]["podCIDR"].startswith("10.")
    lease = request(
        api,
        "GET",
        f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{_node(pod_runner)}",
    )
    assert lease["spec"]["holderIdentity"] == _node(pod_runner)
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]


def test_a_bound_pod_runs_becomes_ready_and_serves_on_its_ip(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    create_pod(
        api,
        namespace,
        "counter-a",
        [COUNTER],
        node=_node(pod_runner),
        securityContext={"runAsUser": 65532, "runAsGroup": 65532},
    )
    pod = wait_pod(api, namespace, "counter-a", "Ready", is_ready)
    status = pod["status"]
    assert status["phase"] == "Running"
    assert condition(pod, "ContainersReady") == "True"
    assert condition(pod, "Initialized") == "True"
    node = request(api, "GET", f"/api/v1/nodes/{_node(pod_runner)}")

    assert ipaddress.ip_address(status["podIP"]) in ipaddress.ip_network(node["spec"]["podCIDR"])
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == node["status"]["addresses"][0]["address"]
    cs = container_status(pod, "counter")
    assert cs["ready"] is True
    assert cs["restartCount"] == 0
    assert "running" in cs["state"]
    code, body = _http_get(status["podIP"], 8080, "/")
    assert code == 200
    assert "counter-a" in body.decode()


def test_env_downward_api_secret_volume_user_and_read_only_root(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess, tmp_path: Path
) -> None:
    out = _out_dir(tmp_path)
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/secrets",
        body={
            "metadata": {"name": "creds"},
            "data": {"token": base64.b64encode(b"s3cret-value").decode()},
        },
    )
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        body={"metadata": {"name": "settings"}, "data": {"mode": "fast"}},
    )
    script = (
        'echo "$POD_NAME|$POD_NAMESPACE|$POD_IP|$MODE|$GREETING" > /out/env; '
        "cat /etc/creds/token > /out/secret; cat /etc/settings/mode > /out/config; "
        "id -u > /out/uid; id -G > /out/groups; "
        "(touch /usr/rootfs-write-test && echo writable || echo read-only) > /out/rootfs; "
        "(touch /etc/creds/x && echo writable || echo read-only) > /out/secretfs; "
        "(touch /scratch/x && echo writable || echo read-only) > /out/emptydir; "
        "sleep 3600"
    )
    create_pod(
        api,
        namespace,
        "envy",
        [
            {
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {
                        "name": "POD_NAMESPACE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    },
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {
                        "name": "MODE",
                        "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}},
                    },
                    {"name": "GREETING", "value": "hello $(POD_NAME)"},
                ],
                "securityContext": {"runAsUser": 1234, "readOnlyRootFilesystem": True},
                "volumeMounts": [
                    {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
                    {"name": "settings", "mountPath": "/etc/settings"},
                    {"name": "out", "mountPath": "/out"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }
        ],
        node=_node(pod_runner),
        securityContext={"fsGroup": 2000},
        volumes=[
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "out", "hostPath": {"path": str(out)}},
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    pod = wait_pod(api, namespace, "envy", "Ready", is_ready)
    ip = pod["status"]["podIP"]
    assert _wait_file(out / "emptydir").strip() == "writable"
    assert (out / "env").read_text().strip() == f"envy|{namespace}|{ip}|fast|hello envy"
    assert (out / "secret").read_text() == "s3cret-value"
    assert (out / "config").read_text() == "fast"
    assert (out / "uid").read_text().strip() == "1234"
    assert "2000" in (out / "groups").read_text().split()
    assert (out / "rootfs").read_text().strip() == "read-only"
    assert (out / "secretfs").read_text().strip() == "read-only"
    # The mount points live in the pod's own mount namespace, never on the host.
    assert not Path("/etc/creds").exists()
    assert not Path("/scratch").exists()


def test_an_unknown_image_gets_err_image_pull_and_never_runs(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    create_pod(
        api,
        namespace,
        "nope",
        [{"name": "main", "image": "registry.example/nope:1.0", "command": ["true"]}],
        node=_node(pod_runner),
    )
    pod = wait_pod(
        api,
        namespace,
        "nope",
        "in ErrImagePull",
        lambda p: waiting_reason(p, "main") in ("ErrImagePull", "ImagePullBackOff"),
    )
    waiting = container_status(pod, "main")["state"]["waiting"]
    assert "registry.example/nope:1.0" in waiting["message"]
    assert "image table" in waiting["message"]
    assert pod["status"]["phase"] == "Pending"
    assert not is_ready(pod)
    pod = wait_pod(
        api,
        namespace,
        "nope",
        "in ImagePullBackOff",
        lambda p: waiting_reason(p, "main") == "ImagePullBackOff",
    )
    assert pod["status"]["phase"] == "Pending"


def test_run_as_non_root_with_a_root_image_user_is_refused(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    create_pod(
        api,
        namespace,
        "rooty",
        [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        node=_node(pod_runner),
        securityContext={"runAsNonRoot": True},
    )
    pod = wait_pod(
        api,
        namespace,
        "rooty",
        "refused",
        lambda p: waiting_reason(p, "main") == "CreateContainerConfigError",
    )
    message = container_status(pod, "main")["state"]["waiting"]["message"]
    assert "runAsNonRoot and image will run as root" in message
    assert pod["status"]["phase"] == "Pending"


def test_a_failing_liveness_probe_restarts_with_growing_back_off(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    create_pod(
        api,
        namespace,
        "flaky",
        [
            {
                "name": "main",
                "image": "busybox",
                "command": ["sleep", "3600"],
                "livenessProbe": {
                    "exec": {"command": ["test", "-e", "/nonexistent"]},
                    "initialDelaySeconds": 1,
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
            }
        ],
        node=_node(pod_runner),
        terminationGracePeriodSeconds=1,
    )
    starts: dict[int, float] = {}  # restartCount -> when it was first seen running
    seen_backoff = False
    deadline = time.monotonic() + 40
    while len(starts) < 4 and time.monotonic() < deadline:
        pod = get_pod(api, namespace, "flaky")
        assert pod is not None
        cs = container_status(pod, "main")
        seen_backoff |= waiting_reason(pod, "main") == "CrashLoopBackOff"
        if "running" in cs.get("state", {}):
            starts.setdefault(cs["restartCount"], time.monotonic())
        time.sleep(0.05)
    assert sorted(starts) == [0, 1, 2, 3], f"starts seen: {starts}; last status: {cs}"
    assert seen_backoff
    assert cs["lastState"]["terminated"]["exitCode"] in (137, 143)
    gaps = [b - a for a, b in itertools.pairwise(starts[i] for i in range(4))]
    # Back-off 1 s, 2 s, 4 s on top of the same probe-and-kill time: the gaps grow.
    assert gaps[2] > gaps[0] + 2.0, gaps
    # As a kubelet, the runner records what happened as Events on the Pod.
    events = request(
        api,
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        query={"fieldSelector": "involvedObject.name=flaky"},
    )["items"]
    reasons = {e["reason"] for e in events}
    assert {"Started", "Unhealthy", "Killing", "BackOff"} <= reasons, reasons
    unhealthy = next(e for e in events if e["reason"] == "Unhealthy")
    assert unhealthy["type"] == "Warning"
    assert "Liveness probe failed" in unhealthy["message"]
    assert unhealthy["involvedObject"]["fieldPath"] == "spec.containers{main}"


def test_pre_stop_then_sigterm_then_sigkill_after_the_grace_period(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess, tmp_path: Path
) -> None:
    out = _out_dir(tmp_path)
    polite = (
        "trap 'echo TERM >> /out/polite; exit 0' TERM; echo start >> /out/polite; "
        "while true; do sleep 0.1; done"
    )
    stubborn = "trap '' TERM; echo start >> /out/stubborn; while true; do sleep 0.1; done"
    mount = [{"name": "out", "mountPath": "/out"}]
    create_pod(
        api,
        namespace,
        "slow",
        [
            {
                "name": "polite",
                "image": "busybox",
                "command": ["sh", "-c", polite],
                "volumeMounts": mount,
                "lifecycle": {
                    "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /out/polite"]}}
                },
            },
            {
                "name": "stubborn",
                "image": "busybox",
                "command": ["sh", "-c", stubborn],
                "volumeMounts": mount,
                "lifecycle": {"preStop": {"sleep": {"seconds": 1}}},
            },
        ],
        node=_node(pod_runner),
        terminationGracePeriodSeconds=3,
        volumes=[{"name": "out", "hostPath": {"path": str(out)}}],
    )
    wait_pod(api, namespace, "slow", "Ready", is_ready)
    _wait_file(out / "stubborn")
    finals, gone_after = delete_and_watch(api, namespace, "slow")
    assert gone_after is not None, "the pod was not deleted"
    assert 3.0 <= gone_after < 10.0, gone_after
    assert (out / "polite").read_text().split() == ["start", "prestop", "TERM"]
    last = finals[-1]
    assert last["status"]["phase"] in ("Failed", "Succeeded")
    polite_state = container_status(last, "polite")["state"]["terminated"]
    stubborn_state = container_status(last, "stubborn")["state"]["terminated"]
    assert polite_state["exitCode"] == 0
    assert stubborn_state["exitCode"] == 137
    assert stubborn_state["signal"] == 9


def _phase_is(phase: str) -> Callable[[dict[str, Any]], bool]:
    def check(pod: dict[str, Any]) -> bool:
        return bool((pod.get("status") or {}).get("phase") == phase)

    return check


def test_restart_policy_never_ends_succeeded_or_failed(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    for name, command, phase, code in (
        ("ok", "true", "Succeeded", 0),
        ("bad", "exit 3", "Failed", 3),
    ):
        create_pod(
            api,
            namespace,
            name,
            [{"name": "main", "image": "busybox", "command": ["sh", "-c", command]}],
            node=_node(pod_runner),
            restartPolicy="Never",
        )
        pod = wait_pod(api, namespace, name, phase, _phase_is(phase))
        term = container_status(pod, "main")["state"]["terminated"]
        assert term["exitCode"] == code
        assert container_status(pod, "main")["restartCount"] == 0


def _processes_holding(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(int(proc.name))
    return found


def _container_pid(marker: str, timeout: float = 10.0) -> int:
    """The PID of the one process whose command line holds ``marker`` (unique per test).

    Waits: a container counts as running from its launcher's start, a moment before the
    launcher ``exec``s the command."""
    deadline = time.monotonic() + timeout
    found = _processes_holding(marker)
    while len(found) != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
        found = _processes_holding(marker)
    assert len(found) == 1, f"processes holding {marker!r}: {found}"
    return found[0]


def test_a_container_killed_with_sigkill_is_restarted_and_reported(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    marker = f"{time.time_ns() % 10**9}"
    create_pod(
        api,
        namespace,
        "victim",
        [{"name": "main", "image": "busybox", "command": ["sleep", f"{marker}"]}],
        node=_node(pod_runner),
    )
    wait_pod(api, namespace, "victim", "Ready", is_ready)
    pid = _container_pid(marker)
    os.kill(pid, signal.SIGKILL)
    pod = wait_pod(
        api,
        namespace,
        "victim",
        "restarted",
        lambda p: (
            container_status(p, "main").get("restartCount") == 1
            and "running" in container_status(p, "main")["state"]
        ),
    )
    last = container_status(pod, "main")["lastState"]["terminated"]
    assert last["exitCode"] == 137
    assert last["signal"] == 9
    assert last["reason"] == "Error"
    assert _container_pid(marker) != pid


def test_an_http_pre_stop_hook_reaches_the_app_before_sigterm(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    app = {
        **COUNTER,
        "args": ["--port=8080", "--verbose"],
        "lifecycle": {"preStop": {"httpGet": {"path": "/pre-stop-hook", "port": "http"}}},
    }
    pod = create_pod(
        api,
        namespace,
        "hooked",
        [app],
        node=_node(pod_runner),
        securityContext={"runAsUser": 65532},
        terminationGracePeriodSeconds=5,
    )
    wait_pod(api, namespace, "hooked", "Ready", is_ready)
    _, gone_after = delete_and_watch(api, namespace, "hooked")
    assert gone_after is not None
    assert gone_after < 5.0  # the app exits on SIGTERM: no need to wait out the grace
    log_dir = pod_runner.work_dir / "pods" / "logs" / f"{namespace}_hooked_{pod['metadata']['uid']}"
    log = (log_dir / "counter.log").read_text()
    assert "GET /pre-stop-hook" in log


def test_one_runner_can_register_several_nodes_each_with_its_share_of_the_pod_subnet(
    api: k8s.ApiClient,
    devcluster: DevCluster,
    namespace: str,
    pod_runner: PodRunnerProcess,
    tmp_path: Path,
) -> None:
    extra = PodRunnerProcess(
        devcluster, tmp_path / "extra", PodRunnerOptions(nodes=2, node_prefix="extra-node")
    )
    extra.start()
    try:
        assert extra.nodes == ["extra-node-0", "extra-node-1"]
        cidrs = [
            ipaddress.ip_network(request(api, "GET", f"/api/v1/nodes/{n}")["spec"]["podCIDR"])
            for n in extra.nodes
        ]
        assert cidrs[0].prefixlen == cidrs[1].prefixlen == 25
        assert not cidrs[0].overlaps(cidrs[1])
        create_pod(
            api,
            namespace,
            "second",
            [COUNTER],
            node="extra-node-1",
            securityContext={"runAsUser": 65532},
        )
        pod = wait_pod(api, namespace, "second", "Ready", is_ready)
        ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(ip) in cidrs[1]
        assert _http_get(ip, 8080)[0] == 200
    finally:
        extra.stop()
        # The scheduler must not pick these Nodes for later tests' pods.
        for n in ["extra-node-0", "extra-node-1"]:
            with contextlib.suppress(k8s.ApiException):
                request(api, "DELETE", f"/api/v1/nodes/{n}")


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_pod_waits_for_its_last_container_without_spinning(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    assert pod_runner.proc is not None
    assert pod_runner.proc.pid is not None
    create_pod(
        api,
        namespace,
        "staggered",
        [
            {"name": "quick", "image": "busybox", "command": ["true"]},
            {"name": "slow", "image": "busybox", "command": ["sleep", "3"]},
        ],
        node=_node(pod_runner),
        restartPolicy="Never",
    )
    wait_pod(
        api,
        namespace,
        "staggered",
        "with its quick container done",
        lambda p: "terminated" in container_status(p, "quick").get("state", {}),
    )
    before = _cpu_seconds(pod_runner.proc.pid)
    pod = wait_pod(api, namespace, "staggered", "Succeeded", _phase_is("Succeeded"))
    used = _cpu_seconds(pod_runner.proc.pid) - before
    assert used < 1.0, f"the runner used {used:.2f} s of CPU while one container slept"
    assert container_status(pod, "slow")["state"]["terminated"]["exitCode"] == 0


def test_init_containers_run_first_and_a_failed_one_fails_the_pod(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess, tmp_path: Path
) -> None:
    out = _out_dir(tmp_path)
    work = {"name": "work", "mountPath": "/work"}
    main = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", "cat /work/x > /out/seen; sleep 3600"],
        "volumeMounts": [work, {"name": "out", "mountPath": "/out"}],
    }
    prepare = {
        "name": "prepare",
        "image": "busybox",
        "command": ["sh", "-c", "echo prepared > /work/x"],
        "volumeMounts": [work],
    }
    create_pod(
        api,
        namespace,
        "inited",
        [main],
        node=_node(pod_runner),
        initContainers=[prepare],
        volumes=[{"name": "work", "emptyDir": {}}, {"name": "out", "hostPath": {"path": str(out)}}],
    )
    pod = wait_pod(api, namespace, "inited", "Ready", is_ready)
    assert condition(pod, "Initialized") == "True"
    [init] = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0
    assert _wait_file(out / "seen").strip() == "prepared"
    create_pod(
        api,
        namespace,
        "uninited",
        [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        node=_node(pod_runner),
        restartPolicy="Never",
        initContainers=[{"name": "prepare", "image": "busybox", "command": ["false"]}],
    )
    pod = wait_pod(api, namespace, "uninited", "Failed", _phase_is("Failed"))
    assert condition(pod, "Initialized") == "False"
    assert "waiting" in container_status(pod, "main")["state"]  # never started


def test_a_startup_probe_holds_readiness_until_it_passes(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    create_pod(
        api,
        namespace,
        "slowstart",
        [
            {
                "name": "main",
                "image": "busybox",
                "command": ["sh", "-c", "sleep 2; touch /tmp/started; sleep 3600"],
                "startupProbe": {
                    "exec": {"command": ["test", "-e", "/tmp/started"]},
                    "periodSeconds": 1,
                    "failureThreshold": 30,
                },
                "readinessProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 1},
            },
            {
                "name": "web",
                "image": "limpet",
                "command": ["python", "-m", "limpet.demo.backend", "--port=8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            },
        ],
        node=_node(pod_runner),
    )
    pod = wait_pod(
        api,
        namespace,
        "slowstart",
        "running, not yet started",
        lambda p: "running" in container_status(p, "main").get("state", {}),
    )
    assert container_status(pod, "main")["started"] is False
    pod = wait_pod(
        api, namespace, "slowstart", "started", lambda p: container_status(p, "main")["started"]
    )
    # Started, but its readiness probe (nothing listens on port 1) keeps it, and the pod,
    # not ready, while the other container, probed over TCP, is ready.
    pod = wait_pod(
        api, namespace, "slowstart", "web ready", lambda p: container_status(p, "web")["ready"]
    )
    assert container_status(pod, "main")["ready"] is False
    assert not is_ready(pod)
    assert condition(pod, "ContainersReady") == "False"
    # The exec probe ran inside the container's own root: the host has no such file.
    assert not Path("/tmp/started").exists()


def test_the_termination_message_and_a_private_dev(
    api: k8s.ApiClient, namespace: str, pod_runner: PodRunnerProcess
) -> None:
    script = (
        "ls /dev > /dev/termination-log; "
        "test -e /dev/kmsg && echo HOSTDEV >> /dev/termination-log; "
        "echo bye >> /dev/termination-log; exit 4"
    )
    create_pod(
        api,
        namespace,
        "farewell",
        [
            {"name": "main", "image": "busybox", "command": ["sh", "-c", script]},
            {
                "name": "logs",
                "image": "busybox",
                "command": ["sh", "-c", "echo from-the-log; exit 2"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            },
        ],
        node=_node(pod_runner),
        restartPolicy="Never",
    )
    pod = wait_pod(api, namespace, "farewell", "Failed", _phase_is("Failed"))
    main = container_status(pod, "main")["state"]["terminated"]
    assert main["exitCode"] == 4
    lines = main["message"].split()
    assert lines[-1] == "bye"
    assert {"null", "urandom", "shm", "termination-log"} <= set(lines)
    assert "HOSTDEV" not in lines  # the host's block devices are not in the container's /dev
    assert "from-the-log" in container_status(pod, "logs")["state"]["terminated"]["message"]
    assert not Path("/dev/termination-log").exists()
