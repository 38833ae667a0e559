"""Helpers for the pod runner's tests: make pods, wait for what their status says.

Everything goes through the real API server; pod IPs are only contacted after the runner
reported them, and they live in the runner's (checked) network namespaces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch

from limpet.devcluster.client import request

Pod = dict[str, Any]


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def ensure_service_account(api: k8s.ApiClient, namespace: str, name: str = "default") -> None:
    """The ServiceAccount admission plugin refuses pods whose account does not exist; the
    serviceaccount controller makes "default" where kube-controller-manager runs."""
    try:
        request(
            api,
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            body={"metadata": {"name": name}},
        )
    except k8s.ApiException as e:
        if e.status != 409:
            raise


def create_pod(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    containers: list[Mapping[str, Any]],
    *,
    node: str,
    **spec: Any,
) -> Pod:
    ensure_service_account(api, namespace)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "containers": containers,
            **spec,
        },
    }
    created: Pod = request(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body=body)
    return created


def get_pod(api: k8s.ApiClient, namespace: str, name: str) -> Pod | None:
    try:
        pod: Pod = request(api, "GET", pod_path(namespace, name))
        return pod
    except k8s.ApiException as e:
        if e.status == 404:
            return None
        raise


def wait_pod(
    api: k8s.ApiClient,
    namespace: str,
    name: str,
    what: str,
    check: Callable[[Pod], bool],
    *,
    timeout: float = 30.0,
) -> Pod:
    deadline = time.monotonic() + timeout
    last: Pod | None = None
    while time.monotonic() < deadline:
        last = get_pod(api, namespace, name)
        if last is not None and check(last):
            return last
        time.sleep(0.1)
    status = None if last is None else last.get("status")
    raise AssertionError(
        f"pod {namespace}/{name}: not {what} within {timeout:.0f} s; status: {status}"
    )


def condition(pod: Pod, kind: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None


def is_ready(pod: Pod) -> bool:
    return condition(pod, "Ready") == "True"


def container_status(pod: Pod, name: str) -> dict[str, Any]:
    for s in (pod.get("status") or {}).get("containerStatuses") or []:
        if s["name"] == name:
            return dict(s)
    return {}


def waiting_reason(pod: Pod, name: str) -> str | None:
    waiting = container_status(pod, name).get("state", {}).get("waiting")
    return None if waiting is None else str(waiting.get("reason"))


def delete_and_watch(
    api: k8s.ApiClient, namespace: str, name: str, *, timeout: int = 30
) -> tuple[list[Pod], float | None]:
    """Delete the pod and watch it go: every version seen, and the seconds until it went."""
    w = k8s_watch.Watch()  # type: ignore[no-untyped-call]
    seen: list[Pod] = []
    started = time.monotonic()
    request(api, "DELETE", pod_path(namespace, name))
    for event in w.stream(  # type: ignore[no-untyped-call]
        k8s.CoreV1Api(api).list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        timeout_seconds=timeout,
    ):
        if event["type"] == "DELETED":
            w.stop()  # type: ignore[no-untyped-call]
            return seen, time.monotonic() - started
        seen.append(event["raw_object"])
    return seen, None
