"""Fixtures for the operator tests: the CRDs installed once, an async admin client, the
operator under test (``start_operator``) and ready-made scenes (``scenes``, ``scene``).

Operator, proxy and scene helpers live in ``tests/controller/harness.py`` and are
bound here; the session-wide control plane, namespaces and fake pods come from
``tests/conftest.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client as k8s

from limpet.controller.kube.client import KubeClient
from limpet.controller.kube.config import ClusterConfig, load_cluster_config
from limpet.devcluster.client import install_crds, wait_crds
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.fakepods import FakePodsFactory
from tests.controller.harness import (
    OperatorIdentity,
    OperatorProcess,
    Scene,
    Scenes,
    StartOperator,
)
from tests.controller.harness import operator_identity as make_identity

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


@pytest.fixture(scope="session")
def crds(admin_api: k8s.ApiClient) -> list[str]:
    """Every CRD in crds/, applied with server-side apply and waited for (Established)."""
    names = install_crds(admin_api, CRD_DIR, field_manager="limpet-tests")
    wait_crds(admin_api, names)
    return names


@pytest.fixture(scope="session")
def admin_config(devcluster: DevCluster) -> ClusterConfig:
    return load_cluster_config(str(devcluster.kubeconfig))


@pytest.fixture
async def kube(admin_config: ClusterConfig, crds: list[str]) -> AsyncIterator[KubeClient]:
    async with KubeClient(admin_config) as client:
        yield client


@pytest.fixture(scope="session")
def operator_identity(
    admin_api: k8s.ApiClient, devcluster: DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> OperatorIdentity:
    """A ServiceAccount bound to exactly deploy/rbac/operator-rbac.yaml, as a kubeconfig."""
    return make_identity(admin_api, devcluster, tmp_path_factory.mktemp("operator-identity"))


@pytest.fixture
def start_operator(
    operator_identity: OperatorIdentity,
    namespace: str,
    crds: list[str],
    tmp_path: Path,
) -> Iterator[StartOperator]:
    """Start ``limpet operator`` under the test ServiceAccount, serving the test namespace.

    Extra arguments replace the defaults (``--standalone``, fast stats and Gone timing).
    """
    procs: list[OperatorProcess] = []

    def start(*args: str, log_name: str | None = None) -> OperatorProcess:
        argv = list(args) or ["--standalone"]
        argv += ["--namespace", namespace, "--stats-interval", "0.5", "--gone-after", "2"]
        log = tmp_path / (log_name or f"operator-{len(procs)}.log")
        proc = OperatorProcess(operator_identity.kubeconfig, log, argv).start()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.stop()
        for proc in procs:
            print(f"---- {proc.proc.log_path.name} (last lines) ----\n{proc.tail(60)}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def scenes(
    kube: KubeClient,
    http: aiohttp.ClientSession,
    namespace: str,
    start_operator: StartOperator,
    fake_pods: FakePodsFactory,
    tmp_path: Path,
) -> Scenes:
    """``await scenes.open(pods=..., spec=..., ...)``: a Ready, converged "shop" scene in
    this test's namespace."""
    return Scenes(kube, http, namespace, start_operator, fake_pods, tmp_path)


@pytest.fixture
async def scene(scenes: Scenes) -> Scene:
    """The default scene: FAST timing, 2 managed proxies, 3 backends, Ready, converged."""
    return await scenes.open()
