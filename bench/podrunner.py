"""Pod runner benchmark: memory per pod, and time from a new Pod to its first answer.

Everything runs here: a dev cluster (etcd + kube-apiserver) and the pod runner on one
Node, whose pods are processes in this run's network namespaces.

1. **Start.** ``--pods`` Pods of the sample app (the ``limpet`` image running
   ``python -m limpet.demo.backend``, readiness probe on ``/healthz`` every second) are
   bound to the node one after another. For each: the time from the create request
   until the runner reports it Ready, and until the app first answers ``GET /`` at the
   pod IP (polled every 5 ms from the root namespace). Printed: p50 and max.
2. **Memory.** The runner's RSS before the pods and with all of them running, and the
   difference per pod; the RSS of each pod's own processes (the app), from
   ``ip netns pids``. Printed: runner KiB per pod, app MiB per pod.

3. **Scale.** ``kubectl apply --server-side -k examples/`` (the counter app, readiness
   probe every 1 s, and its StickyService with two managed proxies) with ``limpet
   operator`` running (admin credentials, ``--standalone``). Once the StickyService is
   Ready, ``--rounds`` times: ``kubectl scale deployment/counter --replicas=N+1``, then
   new sessions (no cookie) go through a proxy every 10 ms until one is answered by the
   new pod. Printed per round: the time from launching ``kubectl scale`` until the new
   pod is Ready (API), and until it serves its first new session through Limpet.

Run: ``python -m bench podrunner`` or ``python -m bench.podrunner [--pods N]
[--rounds N] [--skip-scale]``. Needs root (network namespaces). Prints tables; asserts
nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client import ApiException

from limpet.devcluster import hostnet
from limpet.devcluster.binaries import KUBECTL, find_binary
from limpet.devcluster.client import admin_client, install_crds, request, wait_crds
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace
from limpet.devcluster.netns import NETNS_PREFIX, list_netns
from limpet.devcluster.podrunner.node import RUNNER_LABEL
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.process import ManagedProcess

REPO = Path(__file__).resolve().parents[1]
LIMPET = str(Path(sys.executable).parent / "limpet")
DEMO_NS = "limpet-demo"

APP = {
    "name": "app",
    "image": "limpet",
    "command": ["python", "-m", "limpet.demo.backend"],
    "args": ["--port=8080"],
    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1},
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _answers(ip: str) -> bool:
    conn = http.client.HTTPConnection(ip, 8080, timeout=0.5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def start_one(api: Any, namespace: str, name: str, node: str) -> tuple[float, float, str]:
    """(seconds to Ready, seconds to the first answer, pod IP)."""
    body = {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "automountServiceAccountToken": False, "containers": [APP]},
    }
    t0 = time.monotonic()
    request(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body=body)
    ip, answered, ready_at = "", 0.0, 0.0
    while not (answered and ready_at):
        pod = request(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
        ip = (pod.get("status") or {}).get("podIP", "")
        if not ready_at and _ready(pod):
            ready_at = time.monotonic() - t0
        if ip and not answered and _answers(ip):
            answered = time.monotonic() - t0
        if time.monotonic() - t0 > 60:
            raise RuntimeError(f"pod {name} did not become Ready and answer within 60 s")
        time.sleep(0.005)
    return ready_at, answered, ip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench podrunner")
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="limpet-bench-podrunner-") as tmp,
        DevCluster() as c,
        admin_client(c) as api,
    ):
        runner = PodRunnerProcess(c, Path(tmp) / "runner").start()
        try:
            assert runner.proc is not None
            assert runner.proc.pid is not None
            pid = runner.proc.pid
            node = runner.nodes[0]
            ns = create_namespace(api, "bench-podrunner")
            try:
                request(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                        body={"metadata": {"name": "default"}})  # fmt: skip
            except ApiException as e:
                if e.status != 409:  # the serviceaccount controller was first: fine
                    raise
            time.sleep(1.0)
            idle = rss_kib(pid)
            samples = [start_one(api, ns, f"app-{i}", node) for i in range(args.pods)]
            time.sleep(2.0)  # probes and status writes settle
            busy = rss_kib(pid)
            # This run's namespaces only (the Node's label names the runner's run).
            labels = request(api, "GET", f"/api/v1/nodes/{node}")["metadata"]["labels"]
            prefix = f"{NETNS_PREFIX}{labels[RUNNER_LABEL]}-"
            app_kib = [
                sum(rss_kib(int(p)) for p in hostnet.ip("netns", "pids", n).split())
                for n in list_netns()
                if n.startswith(prefix)
            ]
            scale = [] if args.skip_scale else scale_rounds(c, api, Path(tmp), args.rounds)
        finally:
            runner.stop()
    ready = [s[0] for s in samples]
    first = [s[1] for s in samples]
    print(f"pods: {args.pods} (sample app, limpet image, readiness probe every 1 s)")
    print(f"create -> Ready:          p50 {statistics.median(ready):.2f} s, max {max(ready):.2f} s")
    print(f"create -> first answer:   p50 {statistics.median(first):.2f} s, max {max(first):.2f} s")
    print(f"runner RSS: idle {idle / 1024:.1f} MiB, with {args.pods} pods {busy / 1024:.1f} MiB, "
          f"{(busy - idle) / args.pods:.0f} KiB per pod")  # fmt: skip
    apps = [k for k in app_kib if k]
    if apps:
        print(f"app processes per pod:    {statistics.median(apps) / 1024:.1f} MiB RSS (median)")
    for i, (to_ready, to_session) in enumerate(scale, 1):
        print(
            f"kubectl scale round {i}: new pod Ready after {to_ready:.2f} s, "
            f"serving its first new session through Limpet after {to_session:.2f} s"
        )
    return 0


def _counter_pods(api: Any) -> dict[str, dict[str, Any]]:
    query = {"labelSelector": "app.kubernetes.io/name=counter"}
    items = request(api, "GET", f"/api/v1/namespaces/{DEMO_NS}/pods", query=query)["items"]
    return {p["metadata"]["name"]: p for p in items if not p["metadata"].get("deletionTimestamp")}


def _new_session_pod(ip: str) -> str:
    conn = http.client.HTTPConnection(ip, 8080, timeout=2)
    try:
        conn.request("GET", "/", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        return str(json.loads(body).get("pod", "")) if resp.status == 200 else ""
    except (OSError, ValueError):
        return ""
    finally:
        conn.close()


def _until(what: str, probe: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.01)
    raise RuntimeError(f"timed out waiting for {what}")


def _scale_once(api: Any, kubectl: list[str], proxy_ip: str) -> tuple[float, float]:
    """(s to the new pod Ready, s to its first new session through Limpet)."""
    before = set(_counter_pods(api))
    t0 = time.monotonic()
    replicas = f"--replicas={len(before) + 1}"
    subprocess.run(
        [*kubectl, "-n", DEMO_NS, "scale", "deployment/counter", replicas],
        check=True,
        capture_output=True,
    )

    def new_ready() -> str:
        for name, pod in _counter_pods(api).items():
            if name not in before and _ready(pod):
                return name
        return ""

    name = _until("the new pod to be Ready", new_ready)
    to_ready = time.monotonic() - t0
    _until("a new session on the new pod", lambda: _new_session_pod(proxy_ip) == name)
    return to_ready, time.monotonic() - t0


def scale_rounds(
    cluster: DevCluster, api: Any, work: Path, rounds: int
) -> list[tuple[float, float]]:
    kubectl = [str(find_binary(KUBECTL)), "--kubeconfig", str(cluster.kubeconfig)]
    wait_crds(api, install_crds(api, REPO / "crds", field_manager="bench"))
    subprocess.run([*kubectl, "apply", "--server-side", "-k", str(REPO / "examples")],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    operator = ManagedProcess(
        "limpet operator",
        [LIMPET, "operator", "--kubeconfig", str(cluster.kubeconfig), "--standalone",
         "--namespace", DEMO_NS],
        log_path=work / "operator.log",
    )  # fmt: skip
    operator.start()
    try:
        sticky = f"/apis/limpet.dev/v1alpha1/namespaces/{DEMO_NS}/stickyservices/counter"

        def synced() -> bool:
            status = request(api, "GET", sticky).get("status") or {}
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
            )
            return ready and (status.get("proxies") or {}).get("synced") == 2

        _until("the StickyService to be Ready", synced)
        query = {"labelSelector": "app.kubernetes.io/name=limpet-proxy"}
        proxies = request(api, "GET", f"/api/v1/namespaces/{DEMO_NS}/pods", query=query)["items"]
        proxy_ip = proxies[0]["status"]["podIP"]
        _until("a proxy to answer", lambda: _new_session_pod(proxy_ip))
        return [_scale_once(api, kubectl, proxy_ip) for _ in range(rounds)]
    finally:
        operator.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
