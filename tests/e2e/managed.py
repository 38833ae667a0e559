"""A StickyService in managed mode, run for real: the operator as a process under deploy/'s
RBAC, and everything else as a cluster runs it.

The app is a Deployment of the sample counter app and a Service with a selector. The
operator applies the proxies' Deployment, Service and Secret; kube-controller-manager's
deployment and replicaset controllers make the Pods, kube-scheduler binds them to the
pod runner's Node, the pod runner runs them (the proxies mount their Secret), the
EndpointSlice controller publishes them, and the operator finds the proxies in those
slices and pushes plans to them. Nothing here writes a Pod status or an EndpointSlice.

Requests go only to pod IPs that the pod runner reported, inside its network namespaces.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from limpet.devcluster.client import request, server_side_apply
from tests.controller.harness import FAST, OperatorIdentity, OperatorProcess

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


def app_manifests(namespace: str, *, replicas: int = 3, name: str = "shop") -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": name}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                    "containers": [
                        {
                            "name": "app",
                            "image": "ghcr.io/limpet-dev/limpet:0.1.0",
                            "command": ["python", "-m", "limpet.demo.backend"],
                            "args": ["--port=8080"],
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 1,
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def sticky_manifest(namespace: str, *, name: str = "shop", replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": name,
            "port": "http",
            **FAST,
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


def pods(api: k8s.ApiClient, namespace: str, selector: Mapping[str, str]) -> list[dict[str, Any]]:
    query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
    items: list[dict[str, Any]] = request(
        api, "GET", f"/api/v1/namespaces/{namespace}/pods", query=query
    )["items"]
    return items


def ready_pods(
    api: k8s.ApiClient, namespace: str, selector: Mapping[str, str]
) -> list[dict[str, Any]]:
    def ready(p: dict[str, Any]) -> bool:
        conditions = (p.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    return [
        p
        for p in pods(api, namespace, selector)
        if ready(p) and not p["metadata"].get("deletionTimestamp")
    ]


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
    """One user: keeps its cookies (Limpet's and the app's) and reports which pod answered."""

    cookies: dict[str, str] = field(default_factory=dict)

    def get(self, ip: str, port: int = 8080, path: str = "/") -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            headers = {"Accept": "application/json"}
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            for value in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = value.split(";", 1)[0].partition("=")
                self.cookies[name.strip()] = rest
            return resp.status, json.loads(body) if body.startswith(b"{") else {}
        finally:
            conn.close()


def start_operator(identity: OperatorIdentity, namespace: str, log: Path) -> OperatorProcess:
    args = [
        "--standalone",
        "--namespace",
        namespace,
        "--stats-interval",
        "0.5",
        "--gone-after",
        "2",
    ]
    return OperatorProcess(identity.kubeconfig, log, args).start()
