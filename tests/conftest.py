"""Session-wide fixtures: one real control plane per test session, fresh namespaces, fake pods.

- ``devcluster`` (session): etcd + kube-apiserver from <repo>/.cache/bin (or
  $LIMPET_BIN_DIR). Missing binaries FAIL the tests that need it, with the
  command that builds them: CI must run these tests, never skip them.
- ``admin_api`` (session) and ``api`` (per test): ``kubernetes.client.ApiClient``
  as ``limpet-admin`` (group system:masters).
- ``namespace`` (per test): a fresh namespace, purged with all its objects after.
- ``pod_network`` (session): network namespaces as root, else loopback plus
  address override (``LIMPET_FAKEPODS=netns|loopback`` forces one).
- ``fake_pods`` (per test): ``fake_pods("shop")`` makes a
  :class:`limpet.devcluster.fakepods.FakePods` in the test's namespace; all are
  closed after the test.
- ``pod_runner`` (module): the pod runner (a kubelet-like node agent) on one Node,
  started on first use in a module and stopped after it; Pods bound to its node run as
  processes in network namespaces; a module's ``POD_RESTART_BACKOFF`` sets the first
  restart's back-off (1 s by default). Only per module: most operator tests run their managed
  proxies as fake pods and count them, so the Pods of the operator's own proxy
  Deployment must not run then (with no runner they stay Pending, as before); the
  modules that use it (``tests/controller/test_scenarios_pods.py``, the e2e tests) get
  real proxy Pods.

The logic lives in ``limpet.devcluster`` so the demo reuses it; this file only
binds it to pytest's lifetimes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from limpet.devcluster import client as kube
from limpet.devcluster.client import admin_client
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.fakepods import (
    BackendCommand,
    FakePods,
    FakePodsFactory,
    echo_backend,
)
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.podnet import PodNetwork, open_pod_network
from limpet.devcluster.podrunner.process import PodRunnerOptions, PodRunnerProcess


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    kubeconfig = tmp_path_factory.mktemp("devcluster") / "kubeconfig"
    cluster = DevCluster(DevClusterSettings(kubeconfig=kubeconfig))
    try:
        cluster.start()
    except DevClusterError as e:
        pytest.fail(f"the dev cluster (etcd + kube-apiserver) did not start: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def admin_api(devcluster: DevCluster) -> Iterator[k8s.ApiClient]:
    with admin_client(devcluster) as api:
        yield api


@pytest.fixture
def api(devcluster: DevCluster) -> Iterator[k8s.ApiClient]:
    with admin_client(devcluster) as api:
        yield api


def _namespace_prefix(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")
    return ("t-" + slug)[:40].rstrip("-")


@pytest.fixture
def namespace(admin_api: k8s.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    name = create_namespace(admin_api, _namespace_prefix(request.node.name))
    try:
        yield name
    finally:
        purge_namespace(admin_api, name)


@pytest.fixture(scope="session")
def pod_network() -> Iterator[PodNetwork]:
    try:
        network = open_pod_network()
    except DevClusterError as e:
        pytest.fail(f"no network for fake pods: {e}", pytrace=False)
    try:
        yield network
    finally:
        network.close()


@pytest.fixture
def fake_pods(
    api: k8s.ApiClient, namespace: str, pod_network: PodNetwork
) -> Iterator[FakePodsFactory]:
    groups: list[FakePods] = []

    def make(
        service: str,
        *,
        port: int = 8080,
        port_name: str = "http",
        backend: BackendCommand | None = echo_backend,
        create_service: bool = True,
    ) -> FakePods:
        group = FakePods(
            api,
            pod_network,
            namespace=namespace,
            service=service,
            port=port,
            port_name=port_name,
            backend=backend,
            create_service=create_service,
        )
        groups.append(group)
        return group

    try:
        yield make
    finally:
        for group in reversed(groups):
            group.close()


@pytest.fixture(scope="module")
def pod_runner(
    devcluster: DevCluster,
    admin_api: k8s.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[PodRunnerProcess]:
    # A short back-off so restart tests take seconds; the doubling is what they check. A
    # module that needs a container to stay down a while sets POD_RESTART_BACKOFF.
    backoff = float(getattr(request.module, "POD_RESTART_BACKOFF", 1.0))
    runner = PodRunnerProcess(
        devcluster, tmp_path_factory.mktemp("podrunner"), PodRunnerOptions(backoff=backoff)
    )
    try:
        runner.start()
    except DevClusterError as e:
        pytest.fail(f"the pod runner did not start: {e}", pytrace=False)
    try:
        yield runner
    finally:
        runner.stop()
        # As an admin retires a machine: its Node goes (a node may not delete its own
        # Node), so the next module's runner registers it afresh with its new pod CIDR.
        for node in runner.nodes:
            with contextlib.suppress(k8s.ApiException):
                kube.request(admin_api, "DELETE", f"/api/v1/nodes/{node}")
