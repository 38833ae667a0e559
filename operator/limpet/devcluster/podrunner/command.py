"""``python -m limpet.devcluster.podrunner``: run the pod runner in the foreground.

Data flow: arguments -> :class:`~.runner.RunnerSettings` -> :class:`~.runner.PodRunner`,
until SIGINT or SIGTERM. Prints one line per node once they are registered
(``limpet pod runner: ready: node limpet-node-0 podCIDR 10.201.7.0/24``) so a parent
process can wait for it. Needs root and iproute2 (network namespaces); says so and
exits 2 otherwise.

Single event loop; signal handlers only set an Event.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import signal
import sys
from pathlib import Path

from limpet.devcluster.netns import netns_unavailable_reason
from limpet.devcluster.podrunner.apirelay import API_PREFIX, SERVICE_PORT
from limpet.devcluster.podrunner.container import Backoff
from limpet.devcluster.podrunner.runner import PodRunner, RunnerSettings


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m limpet.devcluster.podrunner")
    p.add_argument(
        "--kubeconfig",
        type=Path,
        action="append",
        required=True,
        help="a Node's identity (system:node:<name>); once per Node, in order, or once for all",
    )
    p.add_argument(
        "--work-dir", type=Path, required=True, help="volumes, specs and logs of the pods"
    )
    p.add_argument("--nodes", type=int, default=1, help="how many Nodes to register (default 1)")
    p.add_argument(
        "--node-prefix", default="limpet-node", help="Node names: PREFIX-0, PREFIX-1 ..."
    )
    p.add_argument(
        "--backoff", type=float, default=10.0, help="first restart back-off, s (default 10)"
    )
    p.add_argument(
        "--backoff-cap", type=float, default=300.0, help="longest back-off, s (default 300)"
    )
    p.add_argument("--lease-renew", type=float, default=10.0, help="Lease renewal period, s")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop (as on SIGTERM) when the parent process dies, even by SIGKILL",
    )
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = PodRunner(
        RunnerSettings(
            kubeconfigs=tuple(args.kubeconfig),
            work_dir=args.work_dir,
            nodes=args.nodes,
            node_prefix=args.node_prefix,
            backoff=Backoff(initial=args.backoff, cap=args.backoff_cap),
            lease_renew=args.lease_renew,
        )
    )
    task = asyncio.create_task(runner.run(stop))
    ready = asyncio.create_task(runner.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if runner.ready.is_set():
        for n in runner.node_specs:
            print(f"limpet pod runner: ready: node {n.name} podCIDR {n.pod_cidr}", flush=True)
        if runner.relay is not None:
            print(f"{API_PREFIX}{runner.relay.listen}:{SERVICE_PORT}", flush=True)
    await task
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.exit_with_parent:
        # PR_SET_PDEATHSIG: the kernel sends SIGTERM when the parent dies, so an orphaned
        # runner never keeps pods of a dead dev cluster running.
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    reason = netns_unavailable_reason()
    if reason is not None:
        print(f"limpet pod runner: error: it needs network namespaces ({reason})", file=sys.stderr)
        return 2
    return asyncio.run(_main(args))
