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

import base64
import contextlib
import http.client
import itertools
import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.controller.model.names import secret_name
from limpet.demo.app import app_pids
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.proxypod import ADMIN_PORT
from limpet.devcluster.workloads import is_terminating, node_pod_ip
from tests.controller.harness import FAST, OperatorIdentity, OperatorProcess
from tests.e2e.managed import (
    APP_LABELS,
    Client,
    app_manifests,
    apply,
    get,
    judge,
    kubectl,
    pods,
    proxy_labels,
    ready_pods,
    start_operator,
    sticky_manifest,
    sticky_status,
    wait_for,
    wait_ready_pods,
)

pytestmark = pytest.mark.timeout(240)
SPEC = {
    **FAST,
    "rebalance": {"window": "10s", "minIdle": "1s", "maxMovesPerSecond": 1000},
    "drain": {"timeout": "60s", "minIdle": "1s"},
}
ARGS = ("--forget-after", "3")  # Gone backends leave the plan 3 s later
# A session idle this long may move: minIdle (1 s), plus the one last-seen step (1 s) by
# which the proxy may see idleness late, plus a margin.
IDLE = 2.3


# -- the scene ----------------------------------------------------------------------------------


@dataclass
class Shop:
    """The module's scene; ``operator`` changes when a test restarts it."""

    api: k8s.ApiClient
    cluster: DevCluster
    namespace: str
    identity: OperatorIdentity
    work: Path
    operator: OperatorProcess
    proxies: list[str] = field(default_factory=list)
    token: str = ""
    restarts: int = 0

    def kubectl(self, *args: str) -> str:
        return kubectl(self.cluster, self.namespace, *args)

    def status(self) -> dict[str, Any]:
        return sticky_status(self.api, self.namespace, "shop")

    def backends(self) -> dict[str, dict[str, Any]]:
        return {b["pod"]: b for b in self.status().get("backends") or []}

    def state(self, pod: str) -> str | None:
        entry = self.backends().get(pod)
        return None if entry is None else str(entry["state"])

    def serving(self) -> set[str]:
        return {p["metadata"]["name"] for p in ready_pods(self.api, self.namespace, APP_LABELS)}

    def restart_operator(self) -> None:
        """SIGKILL the operator (no chance to write anything on the way out), start anew."""
        self.operator.kill()
        self.restarts += 1
        log = self.work / f"operator-{self.restarts}.log"
        self.operator = start_operator(self.identity, self.namespace, log, *ARGS)

    def proxy_versions(self) -> list[int | None]:
        out: list[int | None] = []
        for ip in self.proxies:
            conn = http.client.HTTPConnection(ip, ADMIN_PORT, timeout=3)
            try:
                conn.request("GET", "/v1/stats", headers={"Authorization": f"Bearer {self.token}"})
                out.append(json.loads(conn.getresponse().read()).get("planVersion"))
            except (OSError, ValueError):
                out.append(None)
            finally:
                conn.close()
        return out

    def converged(self) -> int:
        """Every proxy runs the plan version in status; returns it."""

        def probe() -> int | None:
            version = self.status().get("planVersion")
            if not isinstance(version, int):
                return None
            return version if all(v == version for v in self.proxy_versions()) else None

        return wait_for("every proxy on the status plan version", probe, timeout=30)

    def settle(self) -> set[str]:
        """Wait until as many app pods serve as the Deployment wants, none terminates, each
        is an Active backend, and nothing is in progress; returns their names."""
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments/shop"

        def probe() -> set[str] | None:
            wanted = (get(self.api, path) or {})["spec"]["replicas"]
            found = pods(self.api, self.namespace, APP_LABELS)
            serving = self.serving()
            status = self.status()
            active = {b["pod"] for b in status.get("backends") or [] if b["state"] == "Active"}
            live = {b["pod"] for b in status.get("backends") or [] if b["state"] != "Gone"}
            calm = _condition(status, "Progressing") == ("False", "Stable")
            steady = len(serving) == wanted and not any(is_terminating(p) for p in found)
            return serving if steady and calm and active == live == serving else None

        names = wait_for("the scene to settle", probe, timeout=90)
        self.converged()
        return names


def _condition(status: dict[str, Any], kind: str) -> tuple[str | None, str | None]:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status"), c.get("reason")
    return None, None


def _phase(shop: Shop) -> str | None:
    return (shop.status().get("rebalance") or {}).get("phase")


def _events(shop: Shop) -> Counter[str]:
    """How many Events of each reason the StickyService has had (repeats counted)."""
    found = get(shop.api, f"/api/v1/namespaces/{shop.namespace}/events") or {}
    counts: Counter[str] = Counter()
    for e in found.get("items") or []:
        if (e.get("involvedObject") or {}).get("name") == "shop":
            counts[e.get("reason", "")] += int(e.get("count") or 1)
    return counts


def _new_events(shop: Shop, since: Counter[str]) -> Counter[str]:
    return _events(shop) - since


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
    shop: Shop | None = None
    try:
        # preStop 60 s: a deleted pod serves (Terminating) for its --grace-period.
        for manifest in app_manifests(namespace, pre_stop=60, grace=60):
            apply(admin_api, manifest)
        apply(admin_api, sticky_manifest(namespace, spec=SPEC))
        operator = start_operator(operator_identity, namespace, work / "operator-0.log", *ARGS)
        shop = Shop(admin_api, devcluster, namespace, operator_identity, work, operator)
        proxies = wait_ready_pods(admin_api, namespace, proxy_labels("shop"), 2)
        shop.proxies = [node_pod_ip(admin_api, p, pod_runner.nodes) for p in proxies]
        secret = get(admin_api, f"/api/v1/namespaces/{namespace}/secrets/{secret_name('shop')}")
        assert secret is not None
        shop.token = base64.b64decode(secret["data"]["admin-token"]).decode()
        yield shop
    finally:
        if shop is not None:
            shop.operator.stop()
            print(f"---- operator log (last lines) ----\n{shop.operator.tail(60)}")
        purge_namespace(admin_api, namespace)


# -- the users ----------------------------------------------------------------------------------


class Sessions:
    """Users with their own sessions, each request through a proxy picked at random (or a
    fixed one), and every answer kept for the oracle's checks."""

    def __init__(self, shop: Shop, prefix: str, count: int, *, seed: int = 7) -> None:
        self.shop = shop
        self.rng = random.Random(seed)
        self.users = [Client(session=f"{prefix}-{i}") for i in range(count)]
        self.answers: dict[str, list[dict[str, Any]]] = {u.session: [] for u in self.users}

    def ask(self, user: Client, *, proxy: str | None = None) -> dict[str, Any]:
        code, body = user.get(proxy or self.rng.choice(self.shop.proxies))
        assert code == 200, (user.session, code, body)  # never an error page
        self.answers[user.session].append(body)
        return body

    def round(self, users: list[Client] | None = None, *, fixed: bool = False) -> None:
        """One request each; with ``fixed``, each user always through the same proxy."""
        for i, user in enumerate(self.users if users is None else users):
            proxy = self.shop.proxies[i % len(self.shop.proxies)] if fixed else None
            self.ask(user, proxy=proxy)

    def pod(self, user: Client) -> str:
        return str(self.answers[user.session][-1]["pod"])

    def on(self, pod: str) -> list[Client]:
        return [u for u in self.users if self.pod(u) == pod]

    def busiest(self) -> str:
        return max({self.pod(u) for u in self.users}, key=lambda p: len(self.on(p)))

    def moves(self, user: Client) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        bodies = self.answers[user.session]
        return [(a, b) for a, b in itertools.pairwise(bodies) if a["pod"] != b["pod"]]

    def check(self) -> int:
        """The app's verdicts (:func:`judge`); returns the moves."""
        return judge(self.answers)

    def busy_until(self, users: list[Client], done: Callable[[], bool], what: str) -> None:
        """``users`` keep requesting (each through its own proxy, every ~0.2 s, so never
        idle for minIdle) until ``done``."""
        deadline = time.monotonic() + 60
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            self.round(users, fixed=True)
            time.sleep(0.2)


def _exited(pid: int) -> bool:
    """Reaped (by the pod runner). Not merely a zombie: the leader of a threaded process
    shows as one while its other threads still exit and its listening socket still
    takes connections (which the kernel then resets)."""
    return not Path(f"/proc/{pid}").exists()


# -- the scenarios ------------------------------------------------------------------------------


def test_kubectl_scale_out_moves_only_idle_sessions_announced(shop: Shop) -> None:
    old = shop.settle()
    events = _events(shop)
    sessions = Sessions(shop, "scale", 36)
    busy, idle = sessions.users[:6], sessions.users[6:]
    sessions.round(busy, fixed=True)
    sessions.round(idle)
    shop.kubectl("scale", "deployment/shop", f"--replicas={len(old) + 2}")
    sessions.busy_until(busy, lambda: _phase(shop) == "InProgress", "the rebalance to start")
    new = shop.serving() - old
    assert len(new) == 2, new
    status = shop.status()
    assert _condition(status, "Progressing") == ("True", "Rebalancing")
    # New sessions take the new table at once.
    fresh = Sessions(shop, "fresh", 24, seed=3)
    fresh.round()
    assert {fresh.pod(u) for u in fresh.users} & new, "new sessions avoid the new pods"
    # Busy sessions never move while the window runs: they are never idle for minIdle.
    sessions.busy_until(busy, lambda: _phase(shop) == "Complete", "the rebalance to finish")
    assert not any(sessions.moves(u) for u in busy), [sessions.answers[u.session] for u in busy]
    time.sleep(IDLE)
    sessions.round(idle)
    moved = [u for u in idle if sessions.moves(u)]
    assert moved, "no idle session moved to the new pods"
    for user in moved:
        [(before, after)] = sessions.moves(user)
        assert before["pod"] in old, (before, after)
        assert after["pod"] in new, (before, after)
        assert after["moved"] == "rebalance", after
    print(f"scale out: {len(moved)} of {len(idle)} idle sessions moved, announced")
    assert sessions.check() == len(moved)
    fresh.check()
    # The EndpointSlice controller lists a new pod before it is Ready: start-up, not a
    # failure (the operator once tracked it as Failed and posted BackendRecovered).
    reasons = _new_events(shop, events)
    for reason in ("ScaleOut", "RebalanceStarted", "RebalanceFinished"):
        assert reasons[reason] >= 1, reasons
    assert not reasons["BackendRecovered"], reasons


def test_kubectl_delete_pod_drains_it_moves_its_idle_sessions_and_removes_it(
    shop: Shop,
) -> None:
    shop.settle()
    events = _events(shop)
    sessions = Sessions(shop, "drain", 30, seed=11)
    sessions.round()
    victim = sessions.busiest()
    on_victim = sessions.on(victim)
    # Terminating (and serving) for 10 s; the ReplicaSet makes a replacement meanwhile.
    shop.kubectl("delete", "pod", victim, "--grace-period=10", "--wait=false")
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
    wait_for("DrainFinished", lambda: _new_events(shop, events)["DrainFinished"], timeout=30)
    wait_for("the pod out of the plan", lambda: victim not in shop.backends(), timeout=30)
    assert _new_events(shop, events)["DrainStarted"] == 1
    shop.converged()
    sessions.round()
    print(f"delete pod: {len(on_victim)} sessions drained off {victim}, announced")
    assert sessions.check() >= len(on_victim)
    fresh.check()


def test_sigkilled_app_process_fails_its_sessions_over_announced(shop: Shop) -> None:
    shop.settle()
    events = _events(shop)
    sessions = Sessions(shop, "kill", 30, seed=13)
    sessions.round()
    victim = sessions.busiest()
    on_victim = sessions.on(victim)
    others = [u for u in sessions.users if u not in on_victim]
    pids = app_pids(victim)
    assert pids, f"no process of pod {victim}"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Once the process is dead (its sockets closed; a request in flight during the kill
    # is reset and answered 502, as docs/proxy.md states), and before any new plan: the
    # proxies find the pod refusing connections and fail over.
    wait_for("the killed process to exit", lambda: all(_exited(pid) for pid in pids), timeout=5)
    sessions.round(on_victim)
    for user in on_victim:
        [(_, after)] = sessions.moves(user)
        assert after["moved"] == "failover", after
    sessions.round(others)
    assert not any(sessions.moves(u) for u in others), "sessions on healthy pods moved"
    wait_for("a Failover Event", lambda: _new_events(shop, events)["Failover"], timeout=20)

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
    events = _events(shop)
    sessions = Sessions(shop, "restart", 24, seed=17)
    sessions.round()
    victim = sorted(old)[0]
    shop.kubectl("scale", "deployment/shop", f"--replicas={len(old) + 1}")
    # Terminating (and serving) for 20 s: long enough to restart the operator meanwhile.
    shop.kubectl("delete", "pod", victim, "--grace-period=20", "--wait=false")

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
    wait_for("DrainFinished", lambda: _new_events(shop, events)["DrainFinished"], timeout=40)
    wait_for("the pod out of the plan", lambda: victim not in shop.backends(), timeout=20)
