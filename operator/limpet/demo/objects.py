"""The Kubernetes objects the demo creates, and the waits on them.

Data flow: :func:`install` (deploy/ on the local cluster, only the CRDs on someone
else's) -> :func:`operator_identity` (a TokenRequest kubeconfig of deploy/'s
ServiceAccount) -> :func:`create_sticky` for each StickyService -> :func:`wait_token`
(the admin token in the Secret the operator writes) ... :func:`delete_stickies` at the
end, while the operator still runs, so that its finalizer removes what it made.

Synchronous (the kubernetes client); :class:`~limpet.demo.stage.Stage` calls these in
order and registers the undo steps. Every failure is a :class:`StageError` that says
what did not happen and why.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s

from limpet.controller.model.names import secret_name
from limpet.demo.app import APP_NAME
from limpet.devcluster.client import (
    gone,
    install_crds,
    request,
    service_account_kubeconfig,
    wait_until,
)
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.process import ManagedProcess
from limpet.devcluster.workloads import kubectl, pods

REPO = Path(__file__).resolve().parents[3]
CRD_DIR = REPO / "crds"
DEPLOY_DIR = REPO / "deploy"
OPERATOR_NAMESPACE = "limpet-system"
OPERATOR_SA = "limpet-operator"
APP_SERVICE = APP_NAME
EXTERNAL_PROXIES = "counter-demo-proxies"
"""The demo proxies' Service on ``$KUBECONFIG``'s cluster (external mode)."""
FIELD_MANAGER = "limpet-demo"
STICKY_API = "/apis/limpet.dev/v1alpha1"
T = TypeVar("T")


class StageError(RuntimeError):
    """The demo could not set something up; the message says what and why."""


def wait(probe: Callable[[], T | None], within: float, what: str) -> T:
    """``probe``'s first non-None answer within ``within`` seconds, else a StageError."""
    return wait_until(probe, within, what, error=StageError)


def exactly(items: list[T], count: int) -> list[T] | None:
    return items if len(items) == count else None


def install(api: k8s.ApiClient, *, kubeconfig: Path | None, say: Callable[[str], None]) -> None:
    """The local cluster (``kubeconfig`` given) gets deploy/ itself; someone else's
    cluster (None) only the CRDs. Returns once the limpet.dev API is served."""
    if kubeconfig is not None:
        _apply_deploy(api, kubeconfig)
        say(
            "applied deploy/ (CRDs, RBAC, operator objects); the operator Deployment "
            "scaled to 0: the demo runs the operator itself"
        )
    else:
        names = install_crds(api, CRD_DIR, field_manager=FIELD_MANAGER)
        if not names:
            raise StageError(f"no CRDs found in {CRD_DIR}")
        say(f"CRDs installed: {', '.join(names)}")
    wait(lambda: _served(api), 30, "the limpet.dev API to be served")


def _apply_deploy(api: k8s.ApiClient, kubeconfig: Path) -> None:
    # Exactly what users apply: CRDs, namespace, ServiceAccount, ClusterRole and
    # binding, the operator Deployment.
    try:
        kubectl(kubeconfig, "apply", "--server-side", "-k", str(DEPLOY_DIR))
        # The demo runs the operator as a local process under that ServiceAccount (its
        # log and its faster status interval at hand), so the Deployment's pods must
        # not run too: scaled to 0 before the pod runner's Node exists.
        kubectl(
            kubeconfig,
            "scale",
            "deployment/limpet-operator",
            "--replicas=0",
            namespace=OPERATOR_NAMESPACE,
        )
    except DevClusterError as exc:
        raise StageError(f"installing deploy/ failed: {exc}") from exc
    operator_labels = {"app.kubernetes.io/component": "operator"}
    wait(
        lambda: not pods(api, OPERATOR_NAMESPACE, operator_labels),
        30,
        "the operator Deployment to have no pods",
    )


def operator_identity(
    api: k8s.ApiClient, cluster: DevCluster, work: Path, say: Callable[[str], None]
) -> Path:
    """A kubeconfig with a token of deploy/'s ServiceAccount: exactly its RBAC."""
    say(
        f"operator identity: ServiceAccount {OPERATOR_NAMESPACE}/{OPERATOR_SA} "
        "with deploy/rbac/operator-rbac.yaml"
    )
    return service_account_kubeconfig(
        api,
        cluster,
        work / "operator.kubeconfig",
        namespace=OPERATOR_NAMESPACE,
        name=OPERATOR_SA,
        lifetime=6 * 3600,
    )


def proxy_spec(*, local: bool, proxies: int) -> dict[str, Any]:
    """Managed proxies on the local cluster; external ones on someone else's.

    On your cluster, managed proxies would be a real Deployment whose pods (and their
    EndpointSlice entries, at addresses this host cannot reach) the operator would
    also push plans to. External mode selects only the demo's own proxies, published
    in the EndpointSlice of a selector-less Service that no controller touches.
    """
    if local:
        return {"replicas": proxies}
    selector = {"kubernetes.io/service-name": EXTERNAL_PROXIES}
    return {"managed": False, "selector": {"matchLabels": selector}}


def create_sticky(
    api: k8s.ApiClient, namespace: str, name: str, spec: dict[str, Any], proxy: dict[str, Any]
) -> str:
    """Creates the StickyService; returns its API path (to delete it at the end)."""
    body = {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"service": APP_SERVICE, "port": "http", **spec, "proxy": proxy},
    }
    path = f"{STICKY_API}/namespaces/{namespace}/stickyservices"
    try:
        request(api, "POST", path, body=body)
    except k8s.ApiException as exc:
        raise StageError(f"the API server refused the StickyService: {exc.body}") from exc
    return f"{path}/{name}"


def delete_stickies(api: k8s.ApiClient, paths: list[str], *, operator_alive: bool) -> None:
    """Deletes the StickyServices; with the operator running, waits for its finalizer
    to finish its clean-up. Best effort: tear-down goes on whatever happens."""
    for path in paths:
        with contextlib.suppress(Exception):
            request(api, "DELETE", path, timeout=5)
    if operator_alive:
        with contextlib.suppress(Exception):
            wait(lambda: all(gone(api, p) for p in paths), 20, "the StickyServices to be deleted")


def wait_token(
    api: k8s.ApiClient, namespace: str, name: str, operator: ManagedProcess | None
) -> str:
    """The admin token from the Secret the operator writes for StickyService ``name``;
    fails at once, with the operator's log, if the operator exits first."""
    path = f"/api/v1/namespaces/{namespace}/secrets/{secret_name(name)}"

    def token() -> str | None:
        if operator is not None and operator.poll() is not None:
            raise StageError(f"the operator exited:\n{operator.tail(30)}")
        try:
            obj = request(api, "GET", path)
        except k8s.ApiException:
            return None
        return base64.b64decode(obj["data"]["admin-token"]).decode()

    return wait(token, 30, "the operator's Secret with the admin token")


def _served(api: k8s.ApiClient) -> bool:
    try:
        request(api, "GET", f"{STICKY_API}/stickyservices")
    except k8s.ApiException:
        return False
    return True
