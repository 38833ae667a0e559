"""kube-controller-manager and kube-scheduler in the dev cluster, doing their real jobs.

They start with the cluster, are ready with every controller, act as their bootstrap
users (and each controller as its own ServiceAccount), guard their secure ports like
the API server does, and then do what a real cluster's control loops do: roll out a
Deployment into a ReplicaSet and Pods (Pending: there is no node), publish a selector
Service's EndpointSlice with each pod's ready/serving/terminating conditions, collect
garbage by ownerReference, finalize a deleted namespace, issue service-account tokens,
compute a PodDisruptionBudget and taint nodes. No test writes what a controller should.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.devcluster import components
from limpet.devcluster.binaries import KUBE_SCHEDULER, find_binary
from limpet.devcluster.client import (
    admin_client,
    client_from_kubeconfig,
    gone,
    install_crds,
    request,
    service_account_token,
    wait_crds,
)
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.components import (
    CONTROLLER_MANAGER,
    DEFAULT_CONTROLLERS,
    SCHEDULER,
    Component,
    ComponentFiles,
    scheduler,
)
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.ports import free_port
from tests.devcluster.polling import eventually

pytestmark = pytest.mark.apiserver

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_SLICES = "endpointslice-controller.k8s.io"
MERGE = "application/merge-patch+json"


# -- helpers ------------------------------------------------------------------------------


def _component(cluster: DevCluster, name: str) -> Component:
    [component] = [c for c in cluster.components if c.name == name]
    return component


def _context(cluster: DevCluster, *, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    """Verifies the component against the cluster CA; presents ``cert`` if given."""
    ctx = ssl.create_default_context(cafile=str(cluster.paths.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def _get(component: Component, path: str, ctx: ssl.SSLContext) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("127.0.0.1", component.port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _whoami(api: k8s.ApiClient) -> dict[str, Any]:
    review = request(
        api,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    user: dict[str, Any] = review["status"]["userInfo"]
    return user


def _token_client(cluster: DevCluster, token: str) -> k8s.ApiClient:
    conf = k8s.Configuration()
    conf.host = cluster.server
    conf.ssl_ca_cert = str(cluster.paths.ca_cert)
    conf.api_key = {"authorization": f"Bearer {token}"}
    return k8s.ApiClient(conf)


def _default_service_account(api: k8s.ApiClient, namespace: str) -> dict[str, Any]:
    """The namespace's "default" ServiceAccount, made by the serviceaccount controller;
    Pods cannot be created before it exists (ServiceAccount admission)."""
    return eventually(
        lambda: request(api, "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default"),
        what=f"ServiceAccount {namespace}/default",
    )


def _owner_ref(obj: dict[str, Any], **extra: bool) -> dict[str, Any]:
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        **extra,
    }


def _config_map(
    api: k8s.ApiClient, namespace: str, name: str, *, owners: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "ownerReferences": list(owners)},
        "data": {"k": "v"},
    }
    cm: dict[str, Any] = request(
        api, "POST", f"/api/v1/namespaces/{namespace}/configmaps", body=body
    )
    cm.setdefault("apiVersion", "v1")
    cm.setdefault("kind", "ConfigMap")
    return cm


def _pod_template(app: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            # No node carries this label, so the scheduler can place these pods nowhere,
            # whatever Nodes other tests of the session register.
            "nodeSelector": {"limpet.dev/test-node": "none"},
            "containers": [{"name": "app", "image": "registry.invalid/app:1"}],
        },
    }


def _deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": _pod_template(name),
        },
    }


def _items(api: k8s.ApiClient, path: str, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = request(api, "GET", path, query=query)["items"]
    return items


def _count(api: k8s.ApiClient, path: str, n: int, **query: str) -> list[dict[str, Any]] | None:
    """The objects at ``path`` once there are exactly ``n`` of them."""
    items = _items(api, path, **query)
    return items if len(items) == n else None


def _status(api: k8s.ApiClient, path: str, **wanted: object) -> dict[str, Any] | None:
    """The object's status once each field named in ``wanted`` has its value."""
    status: dict[str, Any] = request(api, "GET", path).get("status", {})
    return status if all(status.get(k) == v for k, v in wanted.items()) else None


@pytest.fixture
def node(api: k8s.ApiClient) -> Iterator[str]:
    """A Node no pod can be scheduled to (unschedulable); pods name it in ``nodeName``."""
    name = f"limpet-t-{secrets.token_hex(4)}"
    request(
        api,
        "POST",
        "/api/v1/nodes",
        body={"metadata": {"name": name}, "spec": {"unschedulable": True}},
    )
    try:
        yield name
    finally:
        request(api, "DELETE", f"/api/v1/nodes/{name}")


# -- the components -----------------------------------------------------------------------


def test_every_component_is_ready_with_every_controller(devcluster: DevCluster) -> None:
    ready = devcluster.readiness()
    assert [r.name for r in ready] == ["kube-apiserver", CONTROLLER_MANAGER, SCHEDULER]
    apiserver = ready[0].seconds
    assert all(r.seconds >= apiserver for r in ready[1:])
    admin = _context(devcluster, cert=(devcluster.paths.admin_cert, devcluster.paths.admin_key))

    status, body = _get(_component(devcluster, CONTROLLER_MANAGER), "/healthz?verbose", admin)
    assert status == 200
    listed = {line[3:-3] for line in body.splitlines() if line.startswith("[+]")}
    assert listed == set(DEFAULT_CONTROLLERS)

    status, body = _get(_component(devcluster, SCHEDULER), "/readyz?verbose", admin)
    assert status == 200
    assert "[+]sched-handler-sync ok" in body.splitlines()


def test_secure_ports_authenticate_and_authorize_through_the_api_server(
    devcluster: DevCluster, tmp_path: Path
) -> None:
    paths = devcluster.paths
    admin = _context(devcluster, cert=(paths.admin_cert, paths.admin_key))
    anonymous = _context(devcluster, cert=None)
    assert devcluster.pki is not None
    devcluster.pki.ca.issue_client(common_name="alice").write(
        tmp_path / "alice.crt", tmp_path / "alice.key"
    )
    alice = _context(devcluster, cert=(tmp_path / "alice.crt", tmp_path / "alice.key"))
    for name in (CONTROLLER_MANAGER, SCHEDULER):
        component = _component(devcluster, name)
        # Health is open to all, as the default --authorization-always-allow-paths say.
        assert _get(component, "/healthz", anonymous) == (200, "ok")
        # Anything else needs a SubjectAccessReview that the API server's RBAC grants.
        assert _get(component, "/metrics", anonymous)[0] == 403
        assert _get(component, "/metrics", alice)[0] == 403
        status, body = _get(component, "/metrics", admin)
        assert status == 200
        assert "# TYPE" in body


def test_components_act_as_their_bootstrap_users(
    devcluster: DevCluster, api: k8s.ApiClient
) -> None:
    assert devcluster.work_dir is not None
    for kubeconfig, user in (
        ("controller-manager.kubeconfig", "system:kube-controller-manager"),
        ("scheduler.kubeconfig", "system:kube-scheduler"),
    ):
        with client_from_kubeconfig(devcluster.work_dir / kubeconfig) as component_api:
            who = _whoami(component_api)
        assert who["username"] == user
        assert "system:masters" not in who.get("groups", [])
    # --use-service-account-credentials: each controller runs as its own ServiceAccount.
    accounts = {
        sa["metadata"]["name"]
        for sa in _items(api, "/api/v1/namespaces/kube-system/serviceaccounts")
    }
    assert {
        "deployment-controller",
        "replicaset-controller",
        "endpointslice-controller",
        "generic-garbage-collector",
        "namespace-controller",
    } <= accounts


# -- what the controllers do --------------------------------------------------------------


def test_a_deployment_makes_a_replicaset_and_pending_pods(
    api: k8s.ApiClient, namespace: str
) -> None:
    _default_service_account(api, namespace)
    apps = f"/apis/apps/v1/namespaces/{namespace}"
    deployment = request(api, "POST", f"{apps}/deployments", body=_deployment("web", 2))

    pods = f"/api/v1/namespaces/{namespace}/pods"

    [rs] = eventually(lambda: _items(api, f"{apps}/replicasets"), what="a ReplicaSet")
    [owner] = rs["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Deployment",
        deployment["metadata"]["uid"],
        True,
    )
    created = eventually(lambda: _count(api, pods, 2), what="2 pods")
    for pod in created:
        [pod_owner] = pod["metadata"]["ownerReferences"]
        assert (pod_owner["kind"], pod_owner["uid"]) == ("ReplicaSet", rs["metadata"]["uid"])

    def unschedulable(pod: dict[str, Any]) -> bool:
        conditions = pod.get("status", {}).get("conditions", [])
        return any(
            c["type"] == "PodScheduled"
            and c["status"] == "False"
            and c["reason"] == "Unschedulable"
            for c in conditions
        )

    # The scheduler looked at each pod and found no node for it.
    def all_unschedulable() -> list[dict[str, Any]] | None:
        found = _items(api, pods)
        return found if all(unschedulable(p) for p in found) else None

    pending = eventually(all_unschedulable, what="PodScheduled=False for every pod")
    assert all(p["status"]["phase"] == "Pending" and "nodeName" not in p["spec"] for p in pending)

    # Both at once: right after the ReplicaSet is made, the Deployment's status already
    # counts 2 unavailable while its ReplicaSet reports no replicas yet.
    status = eventually(
        lambda: _status(api, f"{apps}/deployments/web", unavailableReplicas=2, replicas=2),
        what="the Deployment's status",
    )
    assert status.get("availableReplicas", 0) == 0

    # A scale-up adds a pod to the same ReplicaSet; a restart rolls out a new one.
    request(
        api,
        "PATCH",
        f"{apps}/deployments/web",
        body={"spec": {"replicas": 3}},
        content_type=MERGE,
    )
    eventually(lambda: _count(api, pods, 3), what="3 pods")
    request(
        api,
        "PATCH",
        f"{apps}/deployments/web",
        body={
            "spec": {
                "template": {
                    "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}}
                }
            }
        },
        content_type=MERGE,
    )
    replica_sets = eventually(
        lambda: _count(api, f"{apps}/replicasets", 2), what="a second ReplicaSet"
    )
    new = next(r for r in replica_sets if r["metadata"]["uid"] != rs["metadata"]["uid"])
    # maxSurge 1, maxUnavailable 0 and no pod ever Ready: one surge pod, the rest stay.
    assert new["spec"]["replicas"] == 1
    old = request(api, "GET", f"{apps}/replicasets/{rs['metadata']['name']}")
    assert old["spec"]["replicas"] == 3


def _pod(name: str, node: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 300,
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ],
        },
    }


def _set_pod_status(api: k8s.ApiClient, namespace: str, name: str, ip: str, ready: bool) -> None:
    """What a kubelet would write: running, an IP, and the Ready condition."""
    flag = "True" if ready else "False"
    request(
        api,
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/{name}/status",
        body={
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [
                    {"type": "Ready", "status": flag},
                    {"type": "ContainersReady", "status": flag},
                ],
            }
        },
        content_type="application/strategic-merge-patch+json",
    )


def test_the_endpointslice_controller_publishes_each_pods_conditions(
    api: k8s.ApiClient, namespace: str, node: str
) -> None:
    _default_service_account(api, namespace)
    core = f"/api/v1/namespaces/{namespace}"
    discovery = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
    service = request(
        api,
        "POST",
        f"{core}/services",
        body={
            "metadata": {"name": "shop"},
            "spec": {
                "selector": {"app": "shop"},
                "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            },
        },
    )
    # A hand-made slice of the same Service, as the fake pods and the operator tests
    # publish them: the controller manages only its own slices and must leave it alone.
    hand_made = request(
        api,
        "POST",
        discovery,
        body={
            "metadata": {
                "name": "shop-fake",
                "labels": {
                    "kubernetes.io/service-name": "shop",
                    MANAGED_BY: "fakepods.limpet.dev",
                },
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["192.0.2.99"], "conditions": {"ready": True}}],
        },
    )
    # TEST-NET-1 addresses: published, never contacted.
    pods = {"ready": "192.0.2.11", "unready": "192.0.2.12", "leaving": "192.0.2.13"}
    for name, ip in pods.items():
        request(api, "POST", f"{core}/pods", body=_pod(name, node, "shop"))
        _set_pod_status(api, namespace, name, ip, ready=name != "unready")
    # Deleting a pod on a node only marks it terminating until its kubelet confirms;
    # there is none, so it stays terminating for the rest of the test.
    request(api, "DELETE", f"{core}/pods/leaving", body={"gracePeriodSeconds": 300})

    def endpoints() -> dict[str, dict[str, Any]] | None:
        slices = _items(api, discovery, labelSelector=f"{MANAGED_BY}={CONTROLLER_SLICES}")
        found = {
            e["targetRef"]["name"]: {"slice": s, **e} for s in slices for e in s["endpoints"] or []
        }
        terminating = found.get("leaving", {}).get("conditions", {}).get("terminating")
        return found if set(found) == set(pods) and terminating else None

    found = eventually(endpoints, what="the controller's EndpointSlice with all 3 pods")
    assert found["ready"]["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert found["unready"]["conditions"] == {
        "ready": False,
        "serving": False,
        "terminating": False,
    }
    assert found["leaving"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    for name, ip in pods.items():
        assert found[name]["addresses"] == [ip]
        assert found[name]["nodeName"] == node
        slice_ = found[name]["slice"]
        assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == "shop"
        assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
        [owner] = slice_["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("Service", service["metadata"]["uid"])

    still = request(api, "GET", f"{discovery}/shop-fake")
    assert still["metadata"]["resourceVersion"] == hand_made["metadata"]["resourceVersion"]


def test_the_garbage_collector_follows_owner_references(api: k8s.ApiClient, namespace: str) -> None:
    cms = f"/api/v1/namespaces/{namespace}/configmaps"
    # Background (the default): the owner goes at once, then its dependents.
    owner = _config_map(api, namespace, "owner")
    _config_map(api, namespace, "child", owners=[_owner_ref(owner)])
    grandchild_owner = request(api, "GET", f"{cms}/child")
    grandchild_owner.update(apiVersion="v1", kind="ConfigMap")
    _config_map(api, namespace, "grandchild", owners=[_owner_ref(grandchild_owner)])
    request(api, "DELETE", f"{cms}/owner")
    eventually(
        lambda: gone(api, f"{cms}/child") and gone(api, f"{cms}/grandchild"),
        what="background deletion of the dependents",
    )

    # Foreground: the owner waits, with a finalizer, until its blocking dependent is gone.
    owner = _config_map(api, namespace, "fg-owner")
    _config_map(api, namespace, "fg-child", owners=[_owner_ref(owner, blockOwnerDeletion=True)])
    request(api, "DELETE", f"{cms}/fg-owner", body={"propagationPolicy": "Foreground"})
    eventually(
        lambda: gone(api, f"{cms}/fg-owner") and gone(api, f"{cms}/fg-child"),
        what="foreground deletion",
    )

    # Orphan: the dependent stays, and the collector strips the dangling reference.
    owner = _config_map(api, namespace, "orphan-owner")
    _config_map(api, namespace, "orphan-child", owners=[_owner_ref(owner)])
    request(api, "DELETE", f"{cms}/orphan-owner", body={"propagationPolicy": "Orphan"})
    eventually(lambda: gone(api, f"{cms}/orphan-owner"), what="the orphaning owner to go")
    child = request(api, "GET", f"{cms}/orphan-child")
    assert not child["metadata"].get("ownerReferences")


def test_a_deleted_namespace_is_emptied_and_finalized(api: k8s.ApiClient) -> None:
    name = create_namespace(api, "t-ns-finalize")
    try:
        _default_service_account(api, name)
        _config_map(api, name, "settings")
        request(
            api, "POST", f"/apis/apps/v1/namespaces/{name}/deployments", body=_deployment("web", 1)
        )
        eventually(
            lambda: _items(api, f"/api/v1/namespaces/{name}/pods"), what="the Deployment's pod"
        )
        request(api, "DELETE", f"/api/v1/namespaces/{name}")
        ns = request(api, "GET", f"/api/v1/namespaces/{name}")
        assert ns["status"]["phase"] == "Terminating"
        assert ns["spec"]["finalizers"] == ["kubernetes"]
        eventually(
            lambda: gone(api, f"/api/v1/namespaces/{name}"),
            within=60,
            what="the namespace controller to finalize the namespace",
        )
    finally:
        purge_namespace(api, name)


def test_service_accounts_get_working_tokens(
    devcluster: DevCluster, api: k8s.ApiClient, namespace: str
) -> None:
    core = f"/api/v1/namespaces/{namespace}"
    _default_service_account(api, namespace)
    request(api, "POST", f"{core}/serviceaccounts", body={"metadata": {"name": "bot"}})
    expected = f"system:serviceaccount:{namespace}:bot"

    # A bound token from the TokenRequest API, signed with the cluster's key.
    token = service_account_token(api, namespace=namespace, name="bot", lifetime=600)
    with _token_client(devcluster, token) as bot:
        assert _whoami(bot)["username"] == expected

    # A legacy token Secret, filled in by the serviceaccount-token controller.
    request(
        api,
        "POST",
        f"{core}/secrets",
        body={
            "metadata": {
                "name": "bot-token",
                "annotations": {"kubernetes.io/service-account.name": "bot"},
            },
            "type": "kubernetes.io/service-account-token",
        },
    )
    data = eventually(
        lambda: request(api, "GET", f"{core}/secrets/bot-token").get("data"),
        what="the token controller to fill the Secret",
    )
    assert base64.b64decode(data["ca.crt"]) == devcluster.paths.ca_cert.read_bytes()
    assert base64.b64decode(data["namespace"]).decode() == namespace
    with _token_client(devcluster, base64.b64decode(data["token"]).decode()) as bot:
        assert _whoami(bot)["username"] == expected

    # Deleting the account deletes its token Secret too.
    request(api, "DELETE", f"{core}/serviceaccounts/bot")
    eventually(lambda: gone(api, f"{core}/secrets/bot-token"), what="the token Secret to go")


def test_a_pod_disruption_budget_gets_its_status(api: k8s.ApiClient, namespace: str) -> None:
    _default_service_account(api, namespace)
    request(
        api, "POST", f"/apis/apps/v1/namespaces/{namespace}/deployments", body=_deployment("db", 2)
    )
    pdbs = f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets"
    request(
        api,
        "POST",
        pdbs,
        body={
            "metadata": {"name": "db"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "db"}}},
        },
    )
    status = eventually(
        lambda: _status(api, f"{pdbs}/db", expectedPods=2),
        what="the disruption controller's status",
    )
    assert (status["currentHealthy"], status["desiredHealthy"]) == (0, 1)
    assert status["disruptionsAllowed"] == 0
    [allowed] = [c for c in status["conditions"] if c["type"] == "DisruptionAllowed"]
    assert allowed["status"] == "False"


def test_node_lifecycle_taints_nodes_by_condition(api: k8s.ApiClient, node: str) -> None:
    def taints() -> set[tuple[str, str]]:
        spec = request(api, "GET", f"/api/v1/nodes/{node}")["spec"]
        return {(t["key"], t["effect"]) for t in spec.get("taints", [])}

    unschedulable = ("node.kubernetes.io/unschedulable", "NoSchedule")
    eventually(lambda: unschedulable in taints(), what="the unschedulable taint")
    request(
        api,
        "PATCH",
        f"/api/v1/nodes/{node}/status",
        body={"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    not_ready = ("node.kubernetes.io/not-ready", "NoSchedule")
    eventually(lambda: not_ready in taints(), what="the not-ready taint")


def test_a_component_whose_port_was_taken_starts_again_on_another(
    devcluster: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone grabs the port we picked before the component binds it.
    with socket.create_server(("127.0.0.1", 0)) as thief:
        taken = thief.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(components, "free_port", lambda: next(picks, None) or free_port())
        assert devcluster.work_dir is not None
        paths = devcluster.paths
        extra = scheduler(
            find_binary(KUBE_SCHEDULER),
            ComponentFiles(
                kubeconfig=devcluster.work_dir / "scheduler.kubeconfig",
                pki=paths,
                own=paths.scheduler,
            ),
            work_dir=tmp_path,
            config=devcluster.work_dir / "scheduler-config.json",
        )
        extra.start()
        assert extra.port == taken
        try:
            ctx = _context(devcluster, cert=(paths.admin_cert, paths.admin_key))
            eventually(lambda: extra.check(ctx), what="the restarted scheduler")
            assert extra.port != taken
            assert "address already in use" not in (tmp_path / "kube-scheduler.log").read_text()
        finally:
            assert extra.process is not None
            extra.process.stop()


def test_a_crd_installed_before_the_controllers_is_garbage_collected_at_once(
    tmp_path: Path,
) -> None:
    # The collector rediscovers resource types every 30 s; a CRD installed through the
    # before_controllers hook is known to it from the start.
    group = f"t{secrets.token_hex(3)}.limpet.test"
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "widget.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"widgets.{group}"},
                "spec": {
                    "group": group,
                    "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {"openAPIV3Schema": {"type": "object"}},
                        }
                    ],
                },
            }
        )
    )

    def install(cluster: DevCluster) -> None:
        with admin_client(cluster) as api:
            wait_crds(api, install_crds(api, crds, field_manager="test"))

    work = tmp_path / "work"
    work.mkdir()
    settings = DevClusterSettings(work_root=work, before_controllers=install, scheduler=False)
    with DevCluster(settings) as cluster, admin_client(cluster) as api:
        widget = request(
            api,
            "POST",
            f"/apis/{group}/v1/namespaces/default/widgets",
            body={"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}},
        )
        _config_map(api, "default", "part", owners=[_owner_ref(widget)])
        request(api, "DELETE", f"/apis/{group}/v1/namespaces/default/widgets/w")
        eventually(
            lambda: gone(api, "/api/v1/namespaces/default/configmaps/part"),
            within=10,
            what="the custom owner's dependent to be collected",
        )
