"""``limpet devcluster``: run a local control plane in the foreground.

Data flow: arguments -> :class:`DevClusterSettings` -> :class:`DevCluster`.
Once every component is ready (kube-apiserver's ``/readyz``, every controller in
kube-controller-manager's ``/healthz``, kube-scheduler's ``/readyz``), it prints
when each became ready and how to use the cluster (the kubeconfig to export, the
kubectl to call) and waits. SIGINT or SIGTERM, at any point, including during
start-up, stops the control plane and removes the temporary work directory; the
written kubeconfig stays (it is the user's path). If a control-plane process dies
on its own, the command says so, with the tail of that process's log, and exits 1.

Concurrency: single-threaded. Signal handlers only set an Event that the main
thread polls, so no clean-up ever runs inside a signal handler.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from limpet.devcluster import binaries
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.components import CONTROLLER_MANAGER
from limpet.devcluster.errors import BinaryNotFoundError, DevClusterError, StartCancelledError
from limpet.devcluster.netns import netns_unavailable_reason
from limpet.devcluster.podrunner.process import PodRunnerOptions, PodRunnerProcess

_WATCH_INTERVAL = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        required=True,
        metavar="PATH",
        help="where to write the admin kubeconfig (user limpet-admin, group system:masters)",
    )
    parser.add_argument(
        "--bin-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "folder with etcd, kube-apiserver, kube-controller-manager, kube-scheduler and "
            "kubectl (default: $LIMPET_BIN_DIR, else <repo>/.cache/bin, else PATH)"
        ),
    )
    parser.add_argument(
        "--apiserver-port",
        type=int,
        default=0,
        metavar="PORT",
        help="secure port of kube-apiserver on 127.0.0.1 (default: a free port)",
    )
    parser.add_argument(
        "--etcd-port",
        type=int,
        default=0,
        metavar="PORT",
        help="etcd client port on 127.0.0.1 (default: a free port)",
    )
    parser.add_argument(
        "--work-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="parent of the temporary work directory (default: /dev/shm when writable)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help=(
            "Nodes run by the pod runner, which starts the Pods bound to them as processes "
            "in network namespaces (default: 1; 0: no pod runner; needs root)"
        ),
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up if the control plane is not ready within this time (default: 60)",
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(f"limpet devcluster: error: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    settings = DevClusterSettings(
        bin_dir=args.bin_dir,
        apiserver_port=args.apiserver_port,
        etcd_port=args.etcd_port,
        work_root=args.work_root,
        ready_timeout=args.ready_timeout,
        kubeconfig=args.kubeconfig,
    )
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = DevCluster(settings)
    runner: PodRunnerProcess | None = None
    try:
        try:
            cluster.start(cancel=stop)
            runner = _start_pod_runner(cluster, args.nodes)
        except StartCancelledError:
            _say(f"limpet devcluster: {received[-1]} during start-up; stopped and cleaned up")
            return 0
        except DevClusterError as e:
            _err(str(e))
            return 1
        _print_usage(cluster, settings, runner)
        while not stop.wait(_WATCH_INTERVAL):
            failure = cluster.failure() or (runner.failure() if runner is not None else None)
            if failure is not None:
                _err(f"the control plane stopped on its own: {failure}")
                return 1
        _say(f"limpet devcluster: {received[-1]}: stopping the control plane")
        return 0
    finally:
        if runner is not None:
            runner.stop()
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if cluster.work_dir is not None:
            _say(f"limpet devcluster: stopped; removed {cluster.work_dir}")


def _start_pod_runner(cluster: DevCluster, nodes: int) -> PodRunnerProcess | None:
    """The pod runner on ``nodes`` Nodes, or None (with the reason) when it cannot run."""
    if nodes <= 0:
        return None
    reason = netns_unavailable_reason()
    if reason is not None:
        _say(f"limpet devcluster: no pod runner: it needs network namespaces ({reason})")
        return None
    assert cluster.work_dir is not None
    runner = PodRunnerProcess(
        cluster, cluster.work_dir / "podrunner", PodRunnerOptions(nodes=nodes)
    )
    return runner.start()


def _print_usage(
    cluster: DevCluster, settings: DevClusterSettings, runner: PodRunnerProcess | None
) -> None:
    try:
        kubectl = str(binaries.find_binary(binaries.KUBECTL, bin_dir=settings.bin_dir))
    except BinaryNotFoundError:
        kubectl = "kubectl  # (not found: build it with `make controlplane`)"
    components = [
        f"  {r.name:<24} ready at {r.seconds:4.1f} s  {r.url}"
        + (f"  ({len(r.checks)} controllers)" if r.name == CONTROLLER_MANAGER else "")
        for r in cluster.readiness()
    ]
    _say(
        "\n".join(
            [
                f"limpet devcluster: ready in {cluster.ready_seconds:.1f} s "
                f"(Kubernetes {cluster.version})",
                *components,
                f"  kubeconfig: {cluster.kubeconfig}  (user limpet-admin, group system:masters)",
                f"  work dir:   {cluster.work_dir}  (removed on exit)",
                *(
                    []
                    if runner is None
                    else [
                        f"  pod runner: {', '.join(runner.nodes)} Ready "
                        f"{runner.ready_seconds:.1f} s later (log: {runner.log_path})",
                        f"  pods reach the API server at https://{runner.api_address} "
                        "(KUBERNETES_SERVICE_HOST/_PORT)",
                    ]
                ),
                "Use it from another shell:",
                f"  export KUBECONFIG={cluster.kubeconfig}",
                f"  {kubectl} get namespaces",
                "Stop with Ctrl-C or SIGTERM.",
            ]
        )
    )
