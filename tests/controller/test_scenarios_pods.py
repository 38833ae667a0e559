"""The operator's scenarios on real pods: scale out, delete a pod, SIGKILL an app process,
SIGKILL the operator mid-rebalance and mid-drain.

One scene for the module (its set-up costs the most): the counter app of
``examples/app`` as a Deployment (3 replicas, a long preStop sleep that ``kubectl delete
pod --grace-period`` cuts to what each test wants), a managed StickyService "shop" with 2
proxies, and the operator under deploy/'s RBAC. kube-controller-manager and
kube-scheduler make and bind the Pods, the pod runner (``pod_runner``) runs them, the
EndpointSlice controller publishes their conditions, and the operator's own proxy
Deployment runs as real proxy pods. Nothing here writes a Pod status or an EndpointSlice:
each test acts as a user would (``kubectl scale``, ``kubectl delete pod``, SIGKILL) and
first waits for the scene to settle, so the tests do not depend on their order.

The oracle is the counter app, not Limpet: each user names its session and its count of
completed requests, and the pod that answers judges it ``continued``, ``reloaded``
(moved, announced by ``Limpet-Session-Moved``) or ``broken`` (moved unannounced). Every
request must answer 200.

Requests go only to proxy pod IPs checked to lie in the pod runner's pod CIDR.
The fake-pod scenarios (``test_scenarios.py``, ``test_restarts.py``) remain for the exact
conditions a real kubelet does not give on demand; see ``harness.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.demo.app import app_pids
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.podrunner.process import PodRunnerProcess
from tests.controller.harness import FAST, OperatorIdentity
from tests.controller.pods_scene import (
    Sessions,
    Shop,
    condition_of,
    event_counts,
    new_events,
    open_shop,
    phase,
    sigkill,
)
from tests.e2e.managed import APP_LABELS, pods, wait_for

pytestmark = pytest.mark.timeout(240)
SPEC = {
    **FAST,
    "rebalance": {"window": "10s", "minIdle": "1s", "maxMovesPerSecond": 1000},
    "drain": {"timeout": "60s", "minIdle": "1s"},
}
ARGS = ("--forget-after", "3")  # Gone backends leave the plan 3 s later
MIN_IDLE = 1.0  # the spec's minIdle, rebalance and drain
# A session idle this long may move: minIdle (1 s), plus the one last-seen step (1 s) by
# which the proxy may see idleness late, plus a margin.
IDLE = 2.3


# -- the scene ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop(
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    operator_identity: OperatorIdentity,
    crds: list[str],
    pod_runner: PodRunnerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Shop]:
    namespace = create_namespace(admin_api, "t-scenarios-pods")
    work = tmp_path_factory.mktemp("scenarios-pods")
    try:
        with open_shop(
            admin_api,
            devcluster,
            operator_identity,
            pod_runner,
            work,
            namespace,
            spec=SPEC,
            operator_args=ARGS,
        ) as shop:
            yield shop
    finally:
        purge_namespace(admin_api, namespace)


# -- the scenarios ------------------------------------------------------------------------------


def test_kubectl_scale_out_moves_only_idle_sessions_announced(shop: Shop) -> None:
    old = shop.settle()
    events = event_counts(shop)
    sessions = Sessions(shop, "scale", 36)
    busy, idle = sessions.users[:6], sessions.users[6:]
    sessions.round(busy, fixed=True)
    sessions.round(idle)
    # Busy sessions never move while the window runs: they are never idle for minIdle.
    with sessions.kept_busy(busy, min_idle=MIN_IDLE):
        new = shop.scale_out(old, by=2)
        status = shop.status()
        assert condition_of(status, "Progressing") == ("True", "Rebalancing")
        # New sessions take the new table at once.
        fresh = Sessions(shop, "fresh", 24, seed=3)
        fresh.round()
        assert {fresh.pod(u) for u in fresh.users} & new, "new sessions avoid the new pods"
        wait_for("the rebalance to finish", lambda: phase(shop) == "Complete", timeout=60)
    time.sleep(IDLE)
    sessions.round(idle)
    moved = [u for u in idle if sessions.moves(u)]
    assert moved, "no idle session moved to the new pods"
    # A busy session moves only after a gap of minIdle (kept_busy checked that), which
    # a stalled machine can make: then it is a rebalance like the idle ones'.
    busy_moved = [u for u in busy if sessions.moves(u)]
    for user in moved + busy_moved:
        [(before, after)] = sessions.moves(user)
        assert before["pod"] in old, (before, after)
        assert after["pod"] in new, (before, after)
        assert after["moved"] == "rebalance", after
    print(f"scale out: {len(moved)} of {len(idle)} idle sessions moved, announced")
    assert sessions.check() == len(moved) + len(busy_moved)
    fresh.check()
    # The EndpointSlice controller lists a new pod before it is Ready: start-up, not a
    # failure (the operator once tracked it as Failed and posted BackendRecovered).
    reasons = new_events(shop, events)
    for reason in ("ScaleOut", "RebalanceStarted", "RebalanceFinished"):
        assert reasons[reason] >= 1, reasons
    assert not reasons["BackendRecovered"], reasons


def test_kubectl_delete_pod_drains_it_moves_its_idle_sessions_and_removes_it(
    shop: Shop,
) -> None:
    shop.settle()
    events = event_counts(shop)
    sessions = Sessions(shop, "drain", 30, seed=11)
    sessions.round()
    victim = sessions.busiest()
    on_victim = sessions.on(victim)
    # Terminating (and serving) for 30 s, so that the steps below (seconds each on a
    # loaded machine) end while it still serves; the ReplicaSet makes a replacement.
    shop.kubectl("delete", "pod", victim, "--grace-period=30", "--wait=false")
    wait_for("the pod Draining", lambda: shop.state(victim) == "Draining", timeout=10)
    entry = shop.backends()[victim]
    assert entry["weight"] == 0, "a draining pod takes no new sessions"
    assert "drainDeadline" in entry
    shop.converged()
    fresh = Sessions(shop, "fresh-drain", 20, seed=5)
    fresh.round()
    assert victim not in {fresh.pod(u) for u in fresh.users}
    # Its sessions, idle for minIdle, leave at their next request while it still serves.
    time.sleep(IDLE)
    sessions.round(on_victim)
    assert shop.state(victim) == "Draining", "the drain was over before the sessions moved"
    for user in on_victim:
        [(_, after)] = sessions.moves(user)
        assert after["pod"] != victim
        assert after["moved"] == "drain", after
    # The pod goes: the drain is finished, the backend Gone, then out of the plan.
    wait_for("DrainFinished", lambda: new_events(shop, events)["DrainFinished"], timeout=50)
    wait_for("the pod out of the plan", lambda: victim not in shop.backends(), timeout=30)
    assert new_events(shop, events)["DrainStarted"] == 1
    shop.converged()
    sessions.round()
    print(f"delete pod: {len(on_victim)} sessions drained off {victim}, announced")
    assert sessions.check() >= len(on_victim)
    fresh.check()


def test_sigkilled_app_process_fails_its_sessions_over_announced(shop: Shop) -> None:
    shop.settle()
    events = event_counts(shop)
    sessions = Sessions(shop, "kill", 30, seed=13)
    sessions.round()
    victim = sessions.busiest()
    on_victim = sessions.on(victim)
    others = [u for u in sessions.users if u not in on_victim]
    # Once the process is dead (its sockets closed; a request in flight during the kill
    # is reset and answered 502, as docs/proxy.md states), and before any new plan: the
    # proxies find the pod refusing connections and fail over.
    sigkill(app_pids(victim), f"pod {victim}", timeout=5)
    sessions.round(on_victim)
    for user in on_victim:
        [(_, after)] = sessions.moves(user)
        assert after["moved"] == "failover", after
    sessions.round(others)
    assert not any(sessions.moves(u) for u in others), "sessions on healthy pods moved"
    wait_for("a Failover Event", lambda: new_events(shop, events)["Failover"], timeout=20)

    def restarted() -> bool:
        [pod] = [
            p for p in pods(shop.api, shop.namespace, APP_LABELS) if p["metadata"]["name"] == victim
        ]
        [status] = pod["status"].get("containerStatuses") or [{}]
        return bool(status.get("restartCount", 0) >= 1 and status.get("ready"))

    # The pod runner restarts the container after its back-off, as a kubelet would.
    wait_for("the killed container restarted and Ready", restarted, timeout=30)
    shop.settle()
    sessions.round()
    print(f"SIGKILL: {len(on_victim)} sessions failed over off {victim}, announced")
    assert sessions.check() >= len(on_victim)


def test_operator_sigkilled_mid_rebalance_and_mid_drain_resumes(shop: Shop) -> None:
    old = shop.settle()
    events = event_counts(shop)
    sessions = Sessions(shop, "restart", 24, seed=17)
    sessions.round()
    victim = sorted(old)[0]
    shop.kubectl("scale", "deployment/shop", f"--replicas={len(old) + 1}")
    # Terminating (and serving) for 45 s: long enough to restart the operator meanwhile
    # and replan, with two pods starting, on a loaded machine (under its 60 s deadline).
    shop.kubectl("delete", "pod", victim, "--grace-period=45", "--wait=false")

    def midway() -> dict[str, Any] | None:
        status = shop.status()
        states = {b["pod"]: b for b in status.get("backends") or []}
        active = sum(1 for b in states.values() if b["state"] == "Active")
        draining = states.get(victim, {}).get("state") == "Draining"
        in_progress = (status.get("rebalance") or {}).get("phase") == "InProgress"
        return status if draining and in_progress and active == len(old) + 1 else None

    wait_for("the drain and the rebalance under way", midway, timeout=40)
    shop.converged()
    before = shop.status()
    deadline = shop.backends()[victim]["drainDeadline"]
    shop.restart_operator()

    def replanned() -> dict[str, Any] | None:
        status = shop.status()
        return status if status["planVersion"] > before["planVersion"] else None

    wait_for("a plan from the restarted operator", replanned, timeout=40)
    shop.converged()
    after = shop.status()
    # The schedule and the drain deadline were recovered, not restarted.
    for key in ("startedAt", "endsAt", "fromBackends"):
        assert after["rebalance"][key] == before["rebalance"][key], key
    assert after["rebalance"]["phase"] in ("InProgress", "Complete")
    assert shop.backends()[victim]["drainDeadline"] == deadline
    assert shop.state(victim) == "Draining"
    time.sleep(IDLE)
    sessions.round()  # every session idle for minIdle: none stays on the draining pod
    assert victim not in {sessions.pod(u) for u in sessions.users}
    sessions.check()
    # The pod goes at the end of its grace period; the drain ends there, well before its
    # 60 s deadline.
    wait_for("DrainFinished", lambda: new_events(shop, events)["DrainFinished"], timeout=70)
    wait_for("the pod out of the plan", lambda: victim not in shop.backends(), timeout=20)
