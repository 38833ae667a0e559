"""``limpet demo`` (what ``make run`` runs): Limpet end to end, with a live view and a report.

Data flow: options -> :class:`~limpet.demo.stage.Stage` (control plane with its
controllers, the pod runner, CRDs, operator, the app's Deployment, a Redis pod, and the
proxies' Deployments of two StickyServices: Cookie, and Header with the session store)
-> :func:`~limpet.demo.scenario.run_scenario` (simulated users of each service through
steady, scale-out, drain, failover, rollout restart, steady) -> ``report.html`` (both
services side by side), ``sessions.png``, ``sessions-counter-header.png`` and
``summary.json`` in ``--report-dir``, with the logs of every process under ``logs/``.
The exit status is 0 when no session broke outside the failover phase in either
service, 1 when one did or something failed, 130 on Ctrl-C (or SIGTERM), which stops and removes
everything the demo started.

It runs its own local control plane unless ``LIMPET_USE_KUBECONFIG=1``, in which case it
uses ``$KUBECONFIG``'s cluster for the API objects (its CRDs stay installed there); the
operator, the proxies and the app pods still run on this machine, the pods as fake pods,
and the rollout phase is left out (nothing runs a Deployment's pods here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from limpet.demo.objects import StageError
from limpet.demo.report import write_report
from limpet.demo.results import ServiceResult, all_ok, summary_json
from limpet.demo.scenario import (
    ScenarioSettings,
    header_spec,
    pre_stop,
    run_scenario,
    sticky_spec,
)
from limpet.demo.stage import ENV_USE_KUBECONFIG, Stage, StageSettings
from limpet.demo.view import LiveView
from limpet.devcluster.errors import DevClusterError

DEFAULT_DURATION = 150.0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--duration",
        type=_positive,
        metavar="SECONDS",
        help=f"length of the scenario (default: {DEFAULT_DURATION:.0f})",
    )
    length.add_argument(
        "--speed",
        type=_positive,
        metavar="FACTOR",
        help="run the scenario FACTOR times faster than the default length",
    )
    parser.add_argument(
        "--users", type=int, default=80, help="simulated users of the Cookie service (default: 80)"
    )
    parser.add_argument(
        "--header-users",
        type=int,
        default=None,
        metavar="N",
        help="simulated users of the second StickyService, Header mode with the session "
        "store (default: half of --users; 0 leaves that service out)",
    )
    parser.add_argument("--proxies", type=int, default=2, help="proxy replicas (default: 2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for the users")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the report and logs go (default: reports/demo-<time>)",
    )
    parser.add_argument(
        "--apiserver-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra kube-apiserver flag for the local control plane (for tests, e.g. audit)",
    )
    parser.add_argument(
        "--operator-metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve the operator's Prometheus metrics there (the proxies serve theirs on "
        "<pod IP>:9901/metrics with the token in <report dir>/logs/admin-token)",
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _print_summary(result: ServiceResult, view: LiveView) -> None:
    summary = result.summary
    moves = ", ".join(f"{k} {v}" for k, v in sorted(summary.moves.items())) or "none"
    per_pod = ", ".join(f"{p} {n}" for p, n in summary.sessions_per_pod.items())
    view.say(
        f"\n{result.name} ({result.mode}): requests {summary.requests}, failed "
        f"{summary.errors}, sessions {summary.sessions}, broken {summary.broken} "
        f"({summary.broken_outside_failover} outside failover)\n"
        f"moves: {moves}\n"
        f"at the end: {per_pod}; imbalance max/mean {summary.imbalance_max:.2f}"
    )
    store = result.store
    if store is not None:
        view.say(
            f"store {store.address}: reachable from every proxy in {store.samples_up} of "
            f"{store.samples} samples, {store.fallbacks} fallbacks, ReplicasAgree "
            f"{store.replicas_agree}, {store.learned_keys} learned keys in it at the end"
        )


def run(args: argparse.Namespace) -> int:
    duration = args.duration or DEFAULT_DURATION / (args.speed or 1.0)
    header_users = args.users // 2 if args.header_users is None else args.header_users
    if args.users < 1 or args.proxies < 1 or header_users < 0:
        print(
            "limpet demo: --users and --proxies must be at least 1, --header-users at least 0",
            file=sys.stderr,
        )
        return 2
    report_dir: Path = args.report_dir or Path("reports") / time.strftime("demo-%Y%m%d-%H%M%S")
    report_dir.mkdir(parents=True, exist_ok=True)
    view = LiveView()
    use_kubeconfig = os.environ.get(ENV_USE_KUBECONFIG) == "1"
    scenario = ScenarioSettings(
        duration=duration,
        users=args.users,
        header_users=header_users,
        seed=args.seed,
        rollout=not use_kubeconfig,
    )
    stage = Stage(
        StageSettings(
            proxies=args.proxies,
            sticky_spec=sticky_spec(scenario),
            header_spec=header_spec(scenario) if header_users > 0 else None,
            pre_stop=pre_stop(scenario),
            work_dir=report_dir / "logs",
            use_kubeconfig=use_kubeconfig,
            apiserver_args=tuple(args.apiserver_arg),
            operator_metrics=args.operator_metrics,
            say=view.say,
        )
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    results: list[ServiceResult] = []
    try:
        view.say(f"limpet demo: {duration:.0f} s scenario; report and logs in {report_dir}")
        stage.open()
        results = asyncio.run(run_scenario(stage, scenario, view))
    except KeyboardInterrupt:
        view.say("\ninterrupted: stopping and removing everything the demo started ...")
        return 130
    except (StageError, DevClusterError, RuntimeError) as exc:
        view.say(f"limpet demo: {exc}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            stage.close()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous)
    page = write_report(results, report_dir)
    (report_dir / "summary.json").write_text(json.dumps(summary_json(results), indent=2) + "\n")
    for result in results:
        _print_summary(result, view)
    view.say(f"report: {page}")
    if not all_ok(results):
        view.say("FAILED: sessions broke outside the failover phase")
        return 1
    return 0
