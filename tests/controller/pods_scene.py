"""The operator's scene on real pods, shared by the real-pod scenario modules
(``test_scenarios_pods.py``, ``test_scenarios_store.py``).

:func:`open_shop` applies the counter app of ``examples/app`` as Deployment "shop", a
managed StickyService "shop" over it, and starts the operator under deploy/'s RBAC; it
yields a :class:`Shop` once the proxy pods are Ready. kube-controller-manager and
kube-scheduler make and bind the Pods, the pod runner runs them, the EndpointSlice
controller publishes their conditions, and the operator's own proxy Deployment runs as
real proxy pods. :class:`Sessions` are users whose requests go through a proxy picked at
random (or a fixed one), judged by the counter app (:func:`tests.e2e.managed.judge`).

Requests go only to proxy pod IPs checked to lie in the pod runner's pod CIDR.
Synchronous; one test thread.
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
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from limpet.controller.model.names import secret_name
from limpet.devcluster import hostnet
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.netns import list_netns
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.proxypod import ADMIN_PORT
from limpet.devcluster.workloads import is_terminating, node_pod_ip
from tests.controller.harness import OperatorIdentity, OperatorProcess, Visit, assert_busy_stayed
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


@dataclass
class Shop:
    """The module's scene; ``operator`` changes when a test restarts it."""

    api: k8s.ApiClient
    cluster: DevCluster
    namespace: str
    identity: OperatorIdentity
    work: Path
    operator: OperatorProcess
    operator_args: tuple[str, ...] = ()
    proxies: list[str] = field(default_factory=list)
    """The proxy pods' IPs, which users pick from (an L4 load balancer's list)."""
    proxy_pods: dict[str, str] = field(default_factory=dict)
    """Proxy pod IP -> pod name."""
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
        self.operator = start_operator(self.identity, self.namespace, log, *self.operator_args)

    def proxy_stats(self, ip: str) -> dict[str, Any] | None:
        """``GET /v1/stats`` of the proxy at ``ip``; None if it does not answer."""
        conn = http.client.HTTPConnection(ip, ADMIN_PORT, timeout=3)
        try:
            conn.request("GET", "/v1/stats", headers={"Authorization": f"Bearer {self.token}"})
            found: dict[str, Any] = json.loads(conn.getresponse().read())
            return found
        except (OSError, ValueError):
            return None
        finally:
            conn.close()

    def proxy_versions(self) -> list[int | None]:
        return [(self.proxy_stats(ip) or {}).get("planVersion") for ip in self.proxies]

    def converged(self) -> int:
        """Every proxy runs the plan version in status; returns it."""

        def probe() -> int | None:
            version = self.status().get("planVersion")
            if not isinstance(version, int):
                return None
            return version if all(v == version for v in self.proxy_versions()) else None

        return wait_for("every proxy on the status plan version", probe, timeout=30)

    def scale_out(self, old: set[str], *, by: int) -> set[str]:
        """``kubectl scale`` the app from the pods ``old`` to ``by`` more; returns the new
        pods once they serve, the rebalance is InProgress and every proxy has its plan
        (status may say InProgress before the plan reaches a proxy, and each new pod
        starts a rebalance as it turns Ready)."""
        self.kubectl("scale", "deployment/shop", f"--replicas={len(old) + by}")
        wait_for(
            f"the rebalance to start with {by} new pods",
            lambda: phase(self) == "InProgress" and len(self.serving() - old) == by,
            timeout=60,
        )
        self.converged()
        return self.serving() - old

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
            calm = condition_of(status, "Progressing") == ("False", "Stable")
            steady = len(serving) == wanted and not any(is_terminating(p) for p in found)
            return serving if steady and calm and active == live == serving else None

        names = wait_for("the scene to settle", probe, timeout=90)
        self.converged()
        return names


def condition_of(status: Mapping[str, Any], kind: str) -> tuple[str | None, str | None]:
    """(status, reason) of condition ``kind``."""
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status"), c.get("reason")
    return None, None


def phase(shop: Shop) -> str | None:
    return (shop.status().get("rebalance") or {}).get("phase")


def event_counts(shop: Shop) -> Counter[str]:
    """How many Events of each reason the StickyService has had (repeats counted)."""
    found = get(shop.api, f"/api/v1/namespaces/{shop.namespace}/events") or {}
    counts: Counter[str] = Counter()
    for e in found.get("items") or []:
        if (e.get("involvedObject") or {}).get("name") == "shop":
            counts[e.get("reason", "")] += int(e.get("count") or 1)
    return counts


def new_events(shop: Shop, since: Counter[str]) -> Counter[str]:
    return event_counts(shop) - since


@contextlib.contextmanager
def open_shop(
    api: k8s.ApiClient,
    cluster: DevCluster,
    identity: OperatorIdentity,
    runner: PodRunnerProcess,
    work: Path,
    namespace: str,
    *,
    spec: Mapping[str, Any],
    operator_args: tuple[str, ...],
    proxies: int = 2,
    pre_stop: int = 60,
) -> Iterator[Shop]:
    """The counter app (3 replicas; ``pre_stop`` seconds of preStop sleep, which
    ``kubectl delete pod --grace-period`` cuts to what each test wants), StickyService
    "shop" with ``spec`` and ``proxies`` managed proxies, and the operator with
    ``operator_args``; yields once the proxy pods are Ready. The operator is stopped
    after (its log tail printed); the namespace is the caller's to purge."""
    shop: Shop | None = None
    try:
        for manifest in app_manifests(namespace, pre_stop=pre_stop, grace=pre_stop):
            apply(api, manifest)
        apply(api, sticky_manifest(namespace, spec=spec, replicas=proxies))
        operator = start_operator(identity, namespace, work / "operator-0.log", *operator_args)
        shop = Shop(api, cluster, namespace, identity, work, operator, operator_args)
        for pod in wait_ready_pods(api, namespace, proxy_labels("shop"), proxies):
            ip = node_pod_ip(api, pod, runner.nodes)
            shop.proxies.append(ip)
            shop.proxy_pods[ip] = pod["metadata"]["name"]
        secret = get(api, f"/api/v1/namespaces/{namespace}/secrets/{secret_name('shop')}")
        assert secret is not None
        shop.token = base64.b64decode(secret["data"]["admin-token"]).decode()
        yield shop
    finally:
        if shop is not None:
            shop.operator.stop()
            print(f"---- operator log (last lines) ----\n{shop.operator.tail(60)}")


class Sessions:
    """Users with their own sessions, each request through a proxy picked at random (or a
    fixed one), and every answer kept for the oracle's checks."""

    def __init__(self, shop: Shop, prefix: str, count: int, *, seed: int = 7) -> None:
        self.shop = shop
        self.rng = random.Random(seed)
        self.users = [Client(session=f"{prefix}-{i}") for i in range(count)]
        self.answers: dict[str, list[dict[str, Any]]] = {u.session: [] for u in self.users}
        # When each answer's request was sent and answered (monotonic clock).
        self.times: dict[str, list[tuple[float, float]]] = {u.session: [] for u in self.users}
        # The proxy each answer came through.
        self.via: dict[str, list[str]] = {u.session: [] for u in self.users}

    def ask(self, user: Client, *, proxy: str | None = None) -> dict[str, Any]:
        sent = time.monotonic()
        via = proxy or self.rng.choice(self.shop.proxies)
        code, body = user.get(via)
        assert code == 200, (user.session, code, body)  # never an error page
        self.answers[user.session].append(body)
        self.times[user.session].append((sent, time.monotonic()))
        self.via[user.session].append(via)
        return body

    def history(self, session: str, since: int = 0) -> list[str]:
        """One line per answer from index ``since``: when, through which proxy, the pod
        and the app's verdict (for a failing test's message)."""
        return [
            f"{sent:.2f} via {via}: {b['pod']} #{b.get('count')} {b['verdict']}"
            + (f" moved={b['moved']}" if b.get("moved") else "")
            for (sent, _), via, b in zip(
                self.times[session][since:],
                self.via[session][since:],
                self.answers[session][since:],
                strict=True,
            )
        ]

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
        try:
            return judge(self.answers)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.explain()}") from None

    def still(self) -> str:
        """Check that no session moved; else the message: each moved session's requests
        and each proxy's moves by reason (a test that expects none asserts on it)."""
        if self.check() == 0:
            return ""
        lines = [
            f"{u.session}: " + "; ".join(self.history(u.session))
            for u in self.users
            if self.moves(u)
        ]
        for ip in self.shop.proxies:
            stats = self.shop.proxy_stats(ip) or {}
            lines.append(f"proxy {ip}: migrations {stats.get('migrations')}")
        return "\n".join(lines)

    def explain(self, since: Mapping[str, int] | None = None) -> str:
        """The requests of every session with a ``broken`` answer (from index
        ``since[session]``, and the one before it), and each proxy's store counters:
        enough to tell a store call that timed out from a routing fault."""
        start = since or {}
        lines = [
            f"{k}: " + "; ".join(self.history(k, max(0, start.get(k, 0) - 1)))
            for k, bodies in self.answers.items()
            if any(b["verdict"] == "broken" for b in bodies[start.get(k, 0) :])
        ]
        for ip in self.shop.proxies:
            stats = self.shop.proxy_stats(ip) or {}
            lines.append(f"proxy {ip}: sessionStore {stats.get('sessionStore')}")
        return "\n".join(lines)

    def track(self, user: Client) -> list[Visit]:
        """Each answer of ``user`` as (pod, sent at, answered at)."""
        times = self.times[user.session]
        return [
            (b["pod"], s, a) for b, (s, a) in zip(self.answers[user.session], times, strict=True)
        ]

    @contextlib.contextmanager
    def kept_busy(
        self, users: list[Client], *, min_idle: float, every: float = 0.2
    ) -> Iterator[None]:
        """While in the block, each of ``users`` requests every ``every`` seconds, each
        through its own proxy and on its own thread; on leaving, checks that none moved
        while never idle for ``min_idle`` (``harness.assert_busy_stayed``). The
        asyncio twin is ``harness.kept_busy``."""
        stop = threading.Event()
        proxies = self.shop.proxies

        def loop(i: int, user: Client) -> None:
            while not stop.is_set():
                self.ask(user, proxy=proxies[i % len(proxies)])
                stop.wait(every)

        with ThreadPoolExecutor(len(users)) as pool:
            running = [pool.submit(loop, i, u) for i, u in enumerate(users)]
            try:
                yield
            finally:
                stop.set()
        for done in running:
            done.result()
        assert_busy_stayed({u.session: self.track(u) for u in users}, min_idle=min_idle)


def exited(pid: int) -> bool:
    """Reaped (by the pod runner). Not merely a zombie: the leader of a threaded process
    shows as one while its other threads still exit and its listening socket still
    takes connections (which the kernel then resets)."""
    return not Path(f"/proc/{pid}").exists()


def pod_processes(ip: str) -> list[int]:
    """The processes of the pod whose network namespace holds ``ip`` (a pod IP checked
    to lie in this run's pod CIDR): its containers' processes."""
    for name in list_netns():
        for link in hostnet.ip_json("-n", name, "-4", "addr", "show"):
            if any(a.get("local") == ip for a in link.get("addr_info", [])):
                return [int(p) for p in hostnet.ip("netns", "pids", name).split()]
    raise AssertionError(f"no network namespace holds {ip}")


def sigkill(pids: list[int], what: str, *, timeout: float = 10) -> None:
    """SIGKILL ``pids`` (the processes of ``what``) and wait until they are reaped."""
    assert pids, f"no process of {what}"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(
        f"the processes of {what} to exit", lambda: all(exited(p) for p in pids), timeout=timeout
    )


def kill_pod(ip: str) -> list[int]:
    """SIGKILL every process of the pod at ``ip`` (its containers die at once, as in an
    OOM kill; the pod runner restarts them after its back-off) and wait until they are
    reaped; returns their PIDs."""
    pids = pod_processes(ip)
    sigkill(pids, f"the pod at {ip}")
    return pids


def restarted(shop: Shop, pod: str, *, times: int = 1) -> bool:
    """The pod's container has restarted ``times`` times and is Ready again."""
    found = get(shop.api, f"/api/v1/namespaces/{shop.namespace}/pods/{pod}") or {}
    statuses = (found.get("status") or {}).get("containerStatuses") or [{}]
    return all(s.get("restartCount", 0) >= times and s.get("ready") for s in statuses)
