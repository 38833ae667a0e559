"""Cluster configuration for real: the in-cluster service account, as the shipped Deployment
runs, and kubectl's $KUBECONFIG and ~/.kube/config rules, each checked by asking the dev
API server who we are and what we may do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from limpet.controller.handlers import connection_info
from limpet.controller.kube.client import ApiError, KubeClient
from limpet.controller.kube.config import ClusterConfig, ConfigError, load_cluster_config
from limpet.devcluster.certs import ADMIN_USER
from limpet.devcluster.client import request, service_account_token
from limpet.devcluster.cluster import DevCluster
from tests.controller.harness import eventually

RBAC = "/apis/rbac.authorization.k8s.io/v1"


def _service_account(api: k8s.ApiClient, namespace: str, name: str) -> str:
    """ServiceAccount ``name``, allowed to read ConfigMaps in ``namespace`` only; a token."""
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts",
        body={"metadata": {"name": name}},
    )
    request(
        api,
        "POST",
        f"{RBAC}/namespaces/{namespace}/roles",
        body={
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    request(
        api,
        "POST",
        f"{RBAC}/namespaces/{namespace}/rolebindings",
        body={
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    return service_account_token(api, namespace=namespace, name=name, lifetime=600)


def _mount(folder: Path, *, token: str, ca: Path, namespace: str) -> Path:
    """The files the kubelet projects into /var/run/secrets/kubernetes.io/serviceaccount
    (the token without a trailing newline, as the kubelet writes it)."""
    folder.mkdir()
    (folder / "token").write_text(token)
    shutil.copyfile(ca, folder / "ca.crt")
    (folder / "namespace").write_text(namespace)
    return folder


async def _username(client: KubeClient) -> str:
    review = await client.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    return str(review["status"]["userInfo"]["username"])


@pytest.fixture
def no_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No $KUBECONFIG and an empty home, so nothing but what a test sets up is found."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    return home


def _in_cluster_env(monkeypatch: pytest.MonkeyPatch, cluster: DevCluster) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(cluster.apiserver_port))


async def test_in_cluster_service_account(
    admin_api: k8s.ApiClient,
    devcluster: DevCluster,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_kubeconfig: Path,
) -> None:
    token = _service_account(admin_api, namespace, "probe")
    other = _service_account(admin_api, namespace, "rotated")
    request(
        admin_api,
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        body={"metadata": {"name": "probe"}, "data": {"k": "v"}},
    )
    mount = _mount(
        tmp_path / "serviceaccount", token=token, ca=devcluster.paths.ca_cert, namespace=namespace
    )
    _in_cluster_env(monkeypatch, devcluster)

    config = load_cluster_config(service_account_dir=mount, token_reread=0.2)

    assert config.server == devcluster.server
    assert config.default_namespace == namespace
    assert config.cert_file is None  # the token alone authenticates
    # kopf logs in with the same account, and again after a while (the token rotates).
    login = connection_info(config)
    assert (login.server, login.token, login.ca_path) == (config.server, token, config.ca_file)
    assert login.default_namespace == namespace
    assert login.expiration is not None
    async with KubeClient(config) as client:
        assert await _username(client) == f"system:serviceaccount:{namespace}:probe"

        async def allowed() -> bool:
            # The RBAC authorizer learns of a new RoleBinding from its own watch.
            obj = await client.get(f"/api/v1/namespaces/{namespace}/configmaps/probe")
            return obj is not None and obj["data"] == {"k": "v"}

        await eventually(allowed, within=10, what="the RoleBinding's grant")
        with pytest.raises(ApiError) as denied:
            await client.list(f"/api/v1/namespaces/{namespace}/secrets")
        assert denied.value.status == 403

        # The kubelet rotates the projected token by swapping the file: the next
        # requests carry the new one, without a restart.
        replacement = mount / "token.new"
        replacement.write_text(other)
        replacement.replace(mount / "token")

        async def rotated() -> bool:
            return await _username(client) == f"system:serviceaccount:{namespace}:rotated"

        await eventually(rotated, within=5, what="the rotated token in use")


async def test_kubeconfig_env_wins_over_in_cluster(
    devcluster: DevCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_kubeconfig: Path,
) -> None:
    # An in-cluster account that would be found if $KUBECONFIG were ignored: a token that
    # the API server rejects, so using it fails loudly rather than passing by accident.
    mount = _mount(
        tmp_path / "serviceaccount", token="not-a-token", ca=devcluster.paths.ca_cert, namespace="x"
    )
    _in_cluster_env(monkeypatch, devcluster)
    monkeypatch.setenv("KUBECONFIG", str(devcluster.kubeconfig))

    config = load_cluster_config(service_account_dir=mount)

    await _check_admin(config, devcluster)


async def test_home_kubeconfig_when_kubeconfig_env_unset(
    devcluster: DevCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_kubeconfig: Path
) -> None:
    (no_kubeconfig / ".kube").mkdir()
    shutil.copyfile(devcluster.kubeconfig, no_kubeconfig / ".kube" / "config")
    # An empty $KUBECONFIG means unset, as for kubectl.
    monkeypatch.setenv("KUBECONFIG", "")

    config = load_cluster_config(service_account_dir=tmp_path / "absent")

    await _check_admin(config, devcluster)


async def _check_admin(config: ClusterConfig, cluster: DevCluster) -> None:
    assert config.server == cluster.server
    async with KubeClient(config) as client:
        assert await _username(client) == ADMIN_USER
        await client.list("/api/v1/secrets", limit=1)  # system:masters may read anything


def test_nothing_configured_is_an_error(tmp_path: Path, no_kubeconfig: Path) -> None:
    with pytest.raises(ConfigError, match="no cluster configuration"):
        load_cluster_config(service_account_dir=tmp_path / "absent")


def test_kubeconfig_context_namespace(tmp_path: Path, no_kubeconfig: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://192.0.2.1:6443"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "ns-a"}},
                    {"name": "b", "context": {"cluster": "c", "user": "u", "namespace": "ns-b"}},
                    {"name": "none", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": "a",
            }
        )
    )
    # The namespace of the context in use, as kubectl picks it: --context, else current.
    assert load_cluster_config(str(path)).default_namespace == "ns-a"
    assert load_cluster_config(str(path), "b").default_namespace == "ns-b"
    assert load_cluster_config(str(path), "none").default_namespace is None
    assert load_cluster_config(str(path)).authorization() == "Bearer t"
