"""A StickyService in managed mode, run for real: the operator as a process under deploy/'s
RBAC, and everything else as a cluster runs it.

The app is a Deployment of the sample counter app and a Service with a selector. The
operator applies the proxies' Deployment, Service and Secret; kube-controller-manager's
deployment and replicaset controllers make the Pods, kube-scheduler binds them to the
pod runner's Node, the pod runner runs them (the proxies mount their Secret), the
EndpointSlice controller publishes them, and the operator finds the proxies in those
slices and pushes plans to them. Nothing here writes a Pod status or an EndpointSlice.

The app's manifests (``examples/app``) and the Pod helpers live in the package
(``limpet.demo.app``, ``limpet.devcluster.workloads``), which the demo shares.

Requests go only to pod IPs that the pod runner reported, inside its network namespaces.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from limpet.demo.app import counter_app
from limpet.devcluster import workloads
from limpet.devcluster.client import request, server_side_apply
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.workloads import pods, ready_pods
from tests.controller.harness import FAST, OperatorIdentity, OperatorProcess

__all__ = ["pods", "ready_pods"]  # re-exported for the tests that drive Deployments
T = TypeVar("T")
APP_LABELS = {"app.kubernetes.io/name": "shop"}


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def get(api: k8s.ApiClient, path: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = request(api, "GET", path)
        return found
    except k8s.ApiException as e:
        if e.status == 404:
            return None
        raise


def app_manifests(
    namespace: str, *, replicas: int = 3, name: str = "shop", pre_stop: int = 0, grace: int = 5
) -> list[dict[str, Any]]:
    """The counter app of examples/app (Deployment, Service) as ``name``; ``pre_stop``
    seconds of preStop sleep keep a terminating pod serving (as examples/app does), so
    Limpet can drain it."""
    return counter_app(namespace, name=name, replicas=replicas, pre_stop=pre_stop, grace=grace)


def sticky_manifest(
    namespace: str,
    *,
    name: str = "shop",
    replicas: int = 2,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A managed StickyService over Service ``name``, with ``spec`` (FAST by default)."""
    return {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": name,
            "port": "http",
            **(spec or FAST),
            "proxy": {"managed": True, "replicas": replicas},
        },
    }


PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
    "StickyService": "/apis/limpet.dev/v1alpha1/namespaces/{ns}/stickyservices/{name}",
}


def apply(api: k8s.ApiClient, manifest: Mapping[str, Any]) -> None:
    meta = manifest["metadata"]
    path = PATHS[manifest["kind"]].format(ns=meta["namespace"], name=meta["name"])
    server_side_apply(api, path, dict(manifest), field_manager="limpet-e2e")


def wait_ready_pods(
    api: k8s.ApiClient, namespace: str, selector: Mapping[str, str], count: int
) -> list[dict[str, Any]]:
    """Exactly ``count`` Ready pods matching ``selector`` (not terminating)."""

    def probe() -> list[dict[str, Any]] | None:
        found = ready_pods(api, namespace, selector)
        return found if len(found) == count else None

    return wait_for(f"{count} Ready pods {dict(selector)}", probe)


def sticky_status(api: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = get(api, PATHS["StickyService"].format(ns=namespace, name=name)) or {}
    return dict(obj.get("status") or {})


def condition(status: Mapping[str, Any], kind: str) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


@dataclass
class Client:
    """One user: keeps its cookies (Limpet's and the app's) and reports which pod answered.

    With ``session``, it names its session and its completed requests to the counter app
    (``X-Demo-Session``, ``X-Demo-Count``), which then judges each answer: ``continued``,
    ``reloaded`` (moved, and Limpet announced it) or ``broken`` (moved unannounced).
    """

    cookies: dict[str, str] = field(default_factory=dict)
    session: str = ""
    count: int = 0

    def get(self, ip: str, port: int = 8080, path: str = "/") -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            headers = {"Accept": "application/json"}
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            if self.session:
                headers["X-Demo-Session"] = self.session
                headers["X-Demo-Count"] = str(self.count)
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            for value in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.split(";", 1)[0].partition("=")
                self.cookies[name.strip()] = rest
            answer = json.loads(body) if body.startswith(b"{") else {}
            if resp.status == 200:
                self.count += 1
            return resp.status, answer
        finally:
            conn.close()


def judge(answers: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
    """Check each session's answers (session -> the counter app's JSON answers, in order)
    by the app's verdicts: none ``broken``; a request that reached another pod than the
    one before is ``reloaded`` (the move was announced, with its reason), one that
    reached the same pod ``continued``. Returns the number of moves."""
    broken = {s: b for s, bodies in answers.items() for b in bodies if b["verdict"] == "broken"}
    assert not broken, broken
    moves = 0
    for session, bodies in answers.items():
        for before, after in itertools.pairwise(bodies):
            if after["pod"] != before["pod"]:
                assert after["verdict"] == "reloaded", (session, before, after)
                assert after["moved"], (session, before, after)
                moves += 1
            else:
                assert after["verdict"] == "continued", (session, before, after)
    return moves


def kubectl(cluster: DevCluster, namespace: str, *args: str) -> str:
    return workloads.kubectl(cluster.kubeconfig, *args, namespace=namespace)


def proxy_labels(sticky: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "limpet-proxy", "limpet.dev/stickyservice": sticky}


def start_operator(
    identity: OperatorIdentity, namespace: str, log: Path, *extra: str
) -> OperatorProcess:
    """``limpet operator --standalone`` for ``namespace``, fast stats and Gone timing, then
    ``extra`` arguments."""
    args = [
        "--standalone",
        "--namespace",
        namespace,
        "--stats-interval",
        "0.5",
        "--gone-after",
        "2",
        *extra,
    ]
    return OperatorProcess(identity.kubeconfig, log, args).start()
