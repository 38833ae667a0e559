"""The rollout scene: ``kubectl rollout restart`` of the app under session traffic.

The app (3 counter pods, maxSurge 1, maxUnavailable 0, a 6 s preStop sleep so a
terminating pod keeps serving) sits behind a managed StickyService (drain minIdle 1 s).
Twelve users, each with its own session, make one request every ~1.2 s through a proxy
picked at random. During the restart, every old pod is drained: no new session goes to
it, and each of its sessions moves to a new pod once idle, announced by
``Limpet-Session-Moved``. The counter app is the oracle: it answers ``broken`` to a
session that arrives at a pod that does not hold it, unannounced.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.podrunner.process import PodRunnerProcess
from tests.controller.harness import OperatorIdentity, OperatorProcess
from tests.e2e.managed import (
    APP_LABELS,
    Client,
    app_manifests,
    apply,
    condition,
    judge,
    kubectl,
    pods,
    proxy_labels,
    start_operator,
    sticky_manifest,
    sticky_status,
    wait_for,
    wait_ready_pods,
)
from tests.e2e.test_managed import identity

__all__ = ["identity"]  # the module fixture, shared with test_managed
pytestmark = pytest.mark.timeout(300)
USERS = 12
PAUSE = 1.2  # longer than the drain's minIdle (1 s): every session is idle between requests


@pytest.fixture
def operator(
    identity: OperatorIdentity, namespace: str, tmp_path: Path, pod_runner: PodRunnerProcess
) -> Iterator[OperatorProcess]:
    proc = start_operator(identity, namespace, tmp_path / "operator.log")
    try:
        yield proc
    finally:
        proc.stop()
        print(f"---- operator log (last lines) ----\n{proc.tail(40)}")


def test_rollout_restart_moves_every_session_announced_and_breaks_none(
    api: k8s.ApiClient, devcluster: DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    for manifest in app_manifests(namespace, pre_stop=6, grace=30):
        apply(api, manifest)
    apply(api, sticky_manifest(namespace))
    old = {p["metadata"]["name"] for p in wait_ready_pods(api, namespace, APP_LABELS, 3)}
    proxies = wait_ready_pods(api, namespace, proxy_labels("shop"), 2)

    def synced() -> bool:
        status = sticky_status(api, namespace, "shop")
        px = status.get("proxies") or {}
        return condition(status, "Ready") == "True" and px.get("synced") == 2

    wait_for("the StickyService Ready and in sync", synced)
    ips = [p["status"]["podIP"] for p in proxies]
    rng = random.Random(11)
    users = [Client(session=f"user-{i}") for i in range(USERS)]
    seen: dict[str, list[dict[str, Any]]] = {u.session: [] for u in users}

    def round_() -> None:
        for user in users:
            code, body = user.get(rng.choice(ips))
            assert code == 200, body
            seen[user.session].append(body)
        time.sleep(PAUSE)

    round_()
    assert {b[0]["pod"] for b in seen.values()} <= old
    kubectl(devcluster, namespace, "rollout", "restart", "deployment/shop")
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        round_()
        current = {p["metadata"]["name"] for p in pods(api, namespace, APP_LABELS)}
        if not current & old and len(current) == 3:
            break
    else:
        pytest.fail("the rollout did not finish (old pods still there) within 150 s")
    round_()  # every session once more, on the new pods only

    moved = judge(seen)
    for session, bodies in seen.items():
        assert bodies[-1]["pod"] not in old, (session, bodies[-1])
    requests = sum(map(len, seen.values()))
    print(f"rollout: {USERS} sessions, {requests} requests, {moved} announced moves")
    assert moved >= USERS  # each session left its old pod at least once, announced
