"""The dev cluster is a real Kubernetes API server: kubeconfig, server-side apply, RBAC."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from limpet.devcluster.certs import CertificateAuthority
from limpet.devcluster.client import (
    CRDS,
    client_from_kubeconfig,
    install_crds,
    request,
    server_side_apply,
    service_account_kubeconfig,
    wait_crds,
)
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from tests.devcluster.polling import eventually

pytestmark = pytest.mark.apiserver


def test_ready_and_reports_the_built_version(devcluster: DevCluster) -> None:
    assert devcluster.version == "v1.37.2"
    assert devcluster.server.startswith("https://127.0.0.1:")
    assert devcluster.get("/readyz") == (200, b"ok")
    assert devcluster.failure() is None


def test_namespace_created_through_the_written_kubeconfig(devcluster: DevCluster) -> None:
    # The kubeconfig the fixture asked for is a real file a client can load on its own.
    kubeconfig = devcluster.settings.kubeconfig
    assert kubeconfig is not None
    assert kubeconfig == devcluster.kubeconfig
    assert kubeconfig.stat().st_mode & 0o077 == 0
    with client_from_kubeconfig(kubeconfig) as api:
        core = k8s.CoreV1Api(api)
        name = create_namespace(api, "kubeconfig")
        try:
            status = core.read_namespace(name).status
            assert status is not None
            assert status.phase == "Active"
        finally:
            purge_namespace(api, name)
        with pytest.raises(k8s.ApiException) as info:
            core.read_namespace(name)
        assert info.value.status == 404


def test_server_side_apply_round_trips(api: k8s.ApiClient, namespace: str) -> None:
    path = f"/api/v1/namespaces/{namespace}/configmaps/settings"

    def manifest(data: dict[str, str]) -> dict[str, object]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": data,
        }

    server_side_apply(api, path, manifest({"a": "1", "b": "2"}), field_manager="alpha")
    # Applying again without "b" removes it: alpha owns the field set it last applied.
    server_side_apply(api, path, manifest({"a": "3"}), field_manager="alpha")
    cm = k8s.CoreV1Api(api).read_namespaced_config_map("settings", namespace)
    assert cm.data == {"a": "3"}
    assert cm.metadata is not None
    managers = {f.manager: f.operation for f in cm.metadata.managed_fields or []}
    assert managers == {"alpha": "Apply"}

    # A second manager that touches alpha's field conflicts unless it forces.
    with pytest.raises(k8s.ApiException) as info:
        server_side_apply(api, path, manifest({"a": "4"}), field_manager="beta", force=False)
    assert info.value.status == 409
    server_side_apply(api, path, manifest({"a": "4"}), field_manager="beta", force=True)
    assert k8s.CoreV1Api(api).read_namespaced_config_map("settings", namespace).data == {"a": "4"}


def test_install_crds_applies_every_crd_of_a_folder_and_waits_until_served(
    api: k8s.ApiClient, tmp_path: Path
) -> None:
    group = f"t{time.monotonic_ns()}.limpet.test"
    names = [f"gadgets.{group}", f"widgets.{group}"]

    def crd(plural: str, kind: str) -> dict[str, object]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
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

    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "not-a-crd"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all([crd("widgets", "Widget"), other]))
    (tmp_path / "a.yaml").write_text("---\n" + yaml.safe_dump(crd("gadgets", "Gadget")))
    (tmp_path / "notes.txt").write_text(yaml.safe_dump(crd("things", "Thing")))
    try:
        assert install_crds(api, tmp_path, field_manager="crd-test") == names
        wait_crds(api, names)
        discovery = request(api, "GET", f"/apis/{group}/v1")
        assert sorted(r["name"] for r in discovery["resources"]) == ["gadgets", "widgets"]
        stored = request(api, "GET", f"{CRDS}/{names[0]}")
        assert {f["manager"] for f in stored["metadata"]["managedFields"]} >= {"crd-test"}
    finally:
        for name in names:
            with contextlib.suppress(k8s.ApiException):
                request(api, "DELETE", f"{CRDS}/{name}")


def _status_of(call: Callable[[], object]) -> int:
    try:
        call()
    except k8s.ApiException as e:
        return int(e.status)
    return 200


def test_rbac_denies_a_plain_user_until_a_role_binding_allows_it(
    devcluster: DevCluster, api: k8s.ApiClient, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = devcluster.write_user_kubeconfig(tmp_path / "alice", user="alice")
    with client_from_kubeconfig(kubeconfig) as alice_api:
        alice = k8s.CoreV1Api(alice_api)

        def list_configmaps() -> object:
            return alice.list_namespaced_config_map(namespace)

        assert _status_of(list_configmaps) == 403

        rbac = k8s.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role(
            namespace,
            k8s.V1Role(
                metadata=k8s.V1ObjectMeta(name="configmap-reader"),
                rules=[
                    k8s.V1PolicyRule(
                        api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            k8s.V1RoleBinding(
                metadata=k8s.V1ObjectMeta(name="alice-reads-configmaps"),
                role_ref=k8s.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
                ),
                subjects=[
                    k8s.RbacV1Subject(
                        api_group="rbac.authorization.k8s.io", kind="User", name="alice"
                    )
                ],
            ),
        )
        # The authorizer reads RBAC objects from an informer: allow it a moment.
        eventually(lambda: _status_of(list_configmaps) == 200, within=10, what="RBAC to apply")
        # Exactly what was granted: not secrets, and not configmaps elsewhere.
        assert _status_of(lambda: alice.list_namespaced_secret(namespace)) == 403
        assert _status_of(lambda: alice.list_namespaced_config_map("default")) == 403


def test_a_user_in_system_masters_is_allowed_everything(
    devcluster: DevCluster, tmp_path: Path
) -> None:
    kubeconfig = devcluster.write_user_kubeconfig(
        tmp_path / "root", user="root-ish", groups=("system:masters",)
    )
    with client_from_kubeconfig(kubeconfig) as api:
        assert request(api, "GET", "/api/v1/namespaces/kube-system/secrets")["items"] == []


def test_a_certificate_from_another_ca_is_not_authenticated(
    devcluster: DevCluster, tmp_path: Path
) -> None:
    rogue = CertificateAuthority.generate().issue_client(
        common_name="mallory", groups=("system:masters",)
    )
    assert devcluster.pki is not None
    path = write_kubeconfig(
        tmp_path / "mallory",
        build_kubeconfig(
            server=devcluster.server, ca_pem=devcluster.pki.ca.cert_pem, client=rogue, user="m"
        ),
    )
    with client_from_kubeconfig(path) as api:
        # An unverifiable client cert makes the request anonymous; anonymous may not list.
        assert _status_of(lambda: k8s.CoreV1Api(api).list_namespace()) in (401, 403)


def test_service_account_kubeconfig_acts_as_the_account(
    api: k8s.ApiClient, devcluster: DevCluster, namespace: str, tmp_path: Path
) -> None:
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        body={"metadata": {"name": "bot"}},
    )
    path = service_account_kubeconfig(
        api, devcluster, tmp_path / "bot.kubeconfig", namespace=namespace, name="bot"
    )
    assert path.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(path.read_text())
    assert "namespace" not in config["contexts"][0]["context"]
    with client_from_kubeconfig(path) as bot:
        review = request(
            bot,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        user = review["status"]["userInfo"]
        assert user["username"] == f"system:serviceaccount:{namespace}:bot"
        # No role is bound to it: it may not list namespaces.
        assert _status_of(lambda: k8s.CoreV1Api(bot).list_namespace()) == 403


def test_build_kubeconfig_takes_one_credential(devcluster: DevCluster) -> None:
    assert devcluster.pki is not None
    with pytest.raises(ValueError, match="exactly one"):
        build_kubeconfig(server=devcluster.server, ca_pem=devcluster.pki.ca.cert_pem, user="u")
    with pytest.raises(ValueError, match="exactly one"):
        build_kubeconfig(
            server=devcluster.server,
            ca_pem=devcluster.pki.ca.cert_pem,
            user="u",
            client=devcluster.pki.admin,
            token="t",
        )


def test_a_node_identity_may_register_itself_but_touch_no_other_node(
    devcluster: DevCluster, api: k8s.ApiClient, tmp_path: Path
) -> None:
    """Node authorizer plus NodeRestriction, as in kubeadm: what a node agent may do."""
    name = f"limpet-t-{secrets.token_hex(4)}"
    other = f"{name}-other"
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    strategic = "application/strategic-merge-patch+json"
    kubeconfig = devcluster.write_user_kubeconfig(
        tmp_path / "node", user=f"system:node:{name}", groups=("system:nodes",)
    )
    # Unschedulable, so that no pending pod of the session is bound to these nodes.
    request(
        api,
        "POST",
        "/api/v1/nodes",
        body={"metadata": {"name": other}, "spec": {"unschedulable": True}},
    )
    try:
        with client_from_kubeconfig(kubeconfig) as node_api:
            request(
                node_api,
                "POST",
                "/api/v1/nodes",
                body={"metadata": {"name": name}, "spec": {"unschedulable": True}},
            )
            ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
            request(
                node_api,
                "PATCH",
                f"/api/v1/nodes/{name}/status",
                body=ready,
                content_type=strategic,
            )
            lease = {
                "metadata": {"name": name},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
            }
            request(node_api, "POST", leases, body=lease)

            def patch_other() -> object:
                return request(
                    node_api,
                    "PATCH",
                    f"/api/v1/nodes/{other}/status",
                    body=ready,
                    content_type=strategic,
                )

            def other_lease() -> object:
                return request(
                    node_api, "POST", leases, body={**lease, "metadata": {"name": other}}
                )

            def secrets_list() -> object:
                return request(node_api, "GET", "/api/v1/namespaces/default/secrets")

            assert _status_of(patch_other) == 403
            assert _status_of(other_lease) == 403
            assert _status_of(secrets_list) == 403
        node = request(api, "GET", f"/api/v1/nodes/{name}")
        assert [c["status"] for c in node["status"]["conditions"] if c["type"] == "Ready"] == [
            "True"
        ]
    finally:
        for path in (f"/api/v1/nodes/{name}", f"/api/v1/nodes/{other}", f"{leases}/{name}"):
            with contextlib.suppress(k8s.ApiException):
                request(api, "DELETE", path)
