"""Everything the demo runs on, set up in order and torn down in reverse.

Data flow (:meth:`Stage.open`), on the local cluster: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (``limpet.devcluster``) -> ``kubectl apply
--server-side -k deploy/`` (CRDs, namespace, ServiceAccount, ClusterRole and binding,
the operator Deployment, which is scaled to 0: the demo runs the operator itself) -> a
fresh namespace -> the pod runner (``limpet.devcluster.podrunner``: a Node whose Pods
run as processes in network namespaces) -> the counter app as ``examples/app`` ships it
(:mod:`limpet.demo.app`), until its pods are Ready -> the session store
(:class:`~limpet.devcluster.redis.RedisPod`: Debian's ``redis-server`` with a password,
as a Pod, so the proxies' pods reach it at its checked pod IP) -> the operator's
identity (a TokenRequest token of deploy/'s ServiceAccount, so the operator works with
exactly the shipped permissions) -> the StickyServices in managed mode: ``counter``
(Cookie) and ``counter-header`` (Header, ``sessionStore`` naming the Redis pod and its
Secret) -> ``limpet operator`` as a child process -> their Secrets (the admin tokens;
``counter``'s is written to ``admin-token`` for whoever scrapes its proxies) -> each
service's proxy pods Ready. Everything between is Kubernetes': the
Deployment controller makes the app's Pods and, from the operator's proxy Deployment,
the proxies' Pods (which mount the operator's Secret); the scheduler binds them; the
pod runner runs them and reports their readiness probes; the EndpointSlice controller
publishes them; the operator finds the proxies in their Service's slices and pushes
plans to ``<pod IP>:9901``. The users reach the proxy pods at IPs checked to lie in
the pod runner's Node's pod CIDR.

On ``$KUBECONFIG``'s cluster (``LIMPET_USE_KUBECONFIG=1``) nothing here may run Pods:
only the CRDs are installed, the operator watches only the demo's namespace, and the
proxies (external, selected by label) and the app are fake pods (network namespaces
published in EndpointSlices by ``limpet.devcluster.fakepods``); the Header service and
its Redis pod are left out.

Tear-down (:meth:`Stage.close`, also on Ctrl-C): delete the StickyServices while the
operator still runs (it removes what it made), stop the operator, delete the Redis pod
and its Secret, stop the pod runner
(it stops every pod and deletes their network namespaces) or the fake pods, and stop
the local control plane (its etcd data goes with it) or, on your cluster, purge the
namespace. Every step is registered on one ExitStack
as soon as its resource exists, so a failure or an interrupt at any point undoes
exactly what was done.

The API objects it creates, and the waits on them, live in
:mod:`limpet.demo.objects`.

Synchronous (the kubernetes client, process start-up); the scenario calls the slow
methods through ``asyncio.to_thread``. Traffic goes only to pod IPs inside the network
namespaces this run created and checked (``limpet.devcluster``), and to loopback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s

from limpet.demo import objects
from limpet.demo.app import (
    AppPods,
    DeployedApp,
    FakeApp,
    apply_manifests,
    counter_app,
)
from limpet.demo.objects import (
    APP_SERVICE,
    EXTERNAL_PROXIES,
    FIELD_MANAGER,
    StageError,
    delete_stickies,
    exactly,
    wait,
    wait_token,
)
from limpet.devcluster.client import client_from_kubeconfig
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.errors import DevClusterError, FakePodError
from limpet.devcluster.fakepods import BackendSpec, FakePods
from limpet.devcluster.namespaces import create_namespace, purge_namespace
from limpet.devcluster.podnet import PodNetwork, open_pod_network
from limpet.devcluster.podrunner.process import PodRunnerProcess
from limpet.devcluster.process import ManagedProcess
from limpet.devcluster.proxypod import ProxyPodCommand
from limpet.devcluster.redis import RedisEndpoint, RedisPod
from limpet.devcluster.workloads import node_pod_ip, ready_pods

ENV_USE_KUBECONFIG = "LIMPET_USE_KUBECONFIG"
STICKY = "counter"
HEADER_STICKY = "counter-header"
"""The second StickyService: Header mode with the shared session store (local cluster)."""
APP_PORT = 8080
PROXY_PORT = 8080
ADMIN_PORT = 9901


@dataclass(frozen=True, slots=True, kw_only=True)
class StageSettings:
    proxies: int = 2
    pods: int = 3
    pre_stop: int = 20
    """Seconds a terminating app pod keeps serving (its preStop sleep), so Limpet can
    drain it; longer than the StickyService's drain timeout."""
    sticky_spec: dict[str, Any]
    """The StickyService spec (service and port are filled in)."""
    header_spec: dict[str, Any] | None = None
    """The second StickyService's spec, run beside the first on the local cluster with a
    Redis pod as its ``sessionStore`` (filled in); None: only the first."""
    work_dir: Path | None = None
    """Logs and state; a temporary folder (removed at the end) when None."""
    use_kubeconfig: bool = False
    apiserver_args: tuple[str, ...] = ()
    """Extra kube-apiserver flags for the local control plane (tests: audit logging)."""
    operator_metrics: str | None = None
    """HOST:PORT for the operator's ``--metrics-listen`` (off when None)."""
    say: Callable[[str], None] = print


def _python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Stage:
    def __init__(self, settings: StageSettings) -> None:
        self.settings = settings
        self._stack = contextlib.ExitStack()
        self.cluster: DevCluster | None = None
        self.kubeconfig: Path | None = None
        self.api: k8s.ApiClient | None = None
        self.namespace = ""
        self.operator: ManagedProcess | None = None
        self.runner: PodRunnerProcess | None = None
        self.app: AppPods | None = None
        self.redis: RedisEndpoint | None = None
        self.store_prefix = f"limpet-demo:{HEADER_STICKY}:"
        """The ``sessionStore.keyPrefix`` of the second StickyService."""
        self._proxy_urls: dict[str, list[str]] = {}
        self._admin_urls: dict[str, list[str]] = {}
        self.tokens: dict[str, str] = {}
        """Each StickyService's proxies' admin token."""
        self.work = Path()
        self.token_file = Path()
        self._sticky_paths: list[str] = []

    # -- set-up ------------------------------------------------------------------------------

    def open(self) -> Stage:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        s = self.settings
        if s.work_dir is None:
            self.work = Path(tempfile.mkdtemp(prefix="limpet-demo-"))
            self._stack.callback(_rmtree, self.work)
        else:
            self.work = s.work_dir
            self.work.mkdir(parents=True, exist_ok=True)
        network = self._pod_network() if s.use_kubeconfig else None
        self._cluster()
        api = self.api
        assert api is not None
        objects.install(api, kubeconfig=self.kubeconfig if self.cluster else None, say=s.say)
        self.namespace = create_namespace(api, "limpet-demo")
        if self.cluster is None:
            # Someone else's cluster keeps nothing of ours; the local one is deleted whole.
            self._stack.callback(purge_namespace, api, self.namespace)
        s.say(f"namespace {self.namespace}")
        if self.cluster is not None:
            self._start_pod_runner(self.cluster)
            # The app first, as a user would add Limpet to a running app: the operator's
            # first plan then holds every pod, and no rebalance runs when users arrive.
            self._deploy_app(api)
            if s.header_spec is not None:
                self._start_store(api)
        elif s.header_spec is not None:
            s.say(f"{HEADER_STICKY}: left out (its Redis pod cannot run on your cluster)")
        operator_kubeconfig = self._operator_identity(api)
        self._create_sticky(api, STICKY, s.sticky_spec)
        if self.redis is not None and s.header_spec is not None:
            # 1 s, not the 250 ms default: the demo shares a small machine with its
            # whole cluster, and a slower reply would be a (counted) store outage.
            store = self.redis.session_store(keyPrefix=self.store_prefix, timeout="1s")
            self._create_sticky(api, HEADER_STICKY, {**s.header_spec, "sessionStore": store})
        self._start_operator(operator_kubeconfig)
        for name in self.sticky_names():
            self.tokens[name] = wait_token(api, self.namespace, name, self.operator)
        # The proxies' admin token, for whoever scrapes their metrics (fake proxies: to run).
        self.token_file = self.work / "admin-token"
        self.token_file.write_text(self.tokens[STICKY])
        if network is None:
            for name in self.sticky_names():
                self._wait_proxy_pods(api, name)
        else:
            self._fake_pods(api, network)

    def _start_store(self, api: k8s.ApiClient) -> None:
        """A real redis-server with a password, as a Pod the proxies' pods can reach."""
        assert self.runner is not None
        store = RedisPod(api, self.namespace, runner_nodes=self.runner.nodes)
        # Registered first: a start that fails half-way is undone too.
        self._stack.callback(self._stop_store, store)
        try:
            self.redis = store.start()
        except DevClusterError as exc:
            raise StageError(f"the session store did not start: {exc}") from exc
        self.settings.say(
            f"session store: redis-server (Debian's) in pod {self.redis.pod} at "
            f"{self.redis.address}, password in Secret {self.redis.secret}"
        )

    def _stop_store(self, store: RedisPod) -> None:
        # The pod runner's stop, next, kills the server and deletes its namespace anyway;
        # a slow deletion must not hide how the run went.
        try:
            store.stop()
        except (DevClusterError, k8s.ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            self.settings.say(f"the session store's pod was not deleted cleanly: {exc}")

    def _start_pod_runner(self, cluster: DevCluster) -> None:
        """The local cluster's node agent: the demo's Pods run as processes here."""
        runner = PodRunnerProcess(cluster, self.work / "podrunner")
        try:
            runner.start()
        except DevClusterError as exc:
            raise StageError(
                f"the pod runner did not start: {exc}. It runs pods in network namespaces: "
                "run the demo as root on Linux with iproute2 (make run installs it)."
            ) from exc
        # Stopping it stops every pod and deletes their network namespaces.
        self._stack.callback(runner.stop)
        self.runner = runner
        self.settings.say(
            f"pod runner ready: node {', '.join(runner.nodes)} (log: podrunner/podrunner.log)"
        )

    def _deploy_app(self, api: k8s.ApiClient) -> None:
        """The app as examples/app ships it, until its pods are Ready."""
        s = self.settings
        assert self.kubeconfig is not None
        manifests = counter_app(
            self.namespace, replicas=s.pods, pre_stop=s.pre_stop, grace=s.pre_stop + 5
        )
        apply_manifests(api, manifests, manager=FIELD_MANAGER)
        app = DeployedApp(api, self.kubeconfig, self.namespace)
        self.app = app
        names = wait(lambda: exactly(app.serving(), s.pods), 90, f"{s.pods} Ready app pods")
        s.say(f"Deployment {APP_SERVICE}: {s.pods} Ready pods: " + ", ".join(names))

    def _wait_proxy_pods(self, api: k8s.ApiClient, name: str) -> None:
        """The operator's proxy Deployment, run: its Ready pods' checked IPs."""
        s = self.settings
        labels = {"app.kubernetes.io/name": "limpet-proxy", "limpet.dev/stickyservice": name}
        proxies = wait(
            lambda: exactly(ready_pods(api, self.namespace, labels), s.proxies),
            90,
            f"{s.proxies} Ready proxy pods of {name}",
        )
        assert self.runner is not None
        nodes = self.runner.nodes
        try:
            ips = sorted(node_pod_ip(api, p, nodes) for p in proxies)
        except DevClusterError as exc:
            raise StageError(str(exc)) from exc
        self._proxy_urls[name] = [f"http://{ip}:{PROXY_PORT}/" for ip in ips]
        self._admin_urls[name] = [f"http://{ip}:{ADMIN_PORT}" for ip in ips]
        label = "" if name == STICKY else f"{name}: "
        s.say(f"{label}{s.proxies} proxies at " + ", ".join(self._proxy_urls[name]))

    def _fake_pods(self, api: k8s.ApiClient, network: PodNetwork) -> None:
        """On someone else's cluster: the proxies and the app as fake pods."""
        s = self.settings
        for sub in ("proxies", "app"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        proxies = FakePods(
            api,
            network,
            namespace=self.namespace,
            service=EXTERNAL_PROXIES,
            port=PROXY_PORT,
            backend=ProxyPodCommand(token_file=self.token_file, state_root=self.work / "proxies"),
            log_dir=self.work / "proxies",
        )
        self._stack.callback(proxies.close)
        proxies.scale_up(s.proxies)
        self._proxy_urls[STICKY] = [
            p.url + "/" for p in sorted(proxies.pods.values(), key=lambda p: p.name)
        ]
        s.say(f"{s.proxies} proxies at " + ", ".join(self._proxy_urls[STICKY]))
        group = FakePods(
            api,
            network,
            namespace=self.namespace,
            service=APP_SERVICE,
            port=APP_PORT,
            backend=_app_command,
            log_dir=self.work / "app",
        )
        self._stack.callback(group.close)
        group.scale_up(s.pods)
        self.app = FakeApp(group)
        s.say(f"{s.pods} app pods: " + ", ".join(self.app.serving()))

    def _pod_network(self) -> PodNetwork:
        try:
            network = open_pod_network(mode="netns")
        except (DevClusterError, FakePodError) as exc:
            raise StageError(
                f"the demo runs its pods in network namespaces: {exc}. Run it as root on "
                "Linux with iproute2 (make run installs it)."
            ) from exc
        self._stack.callback(network.close)
        return network

    def _cluster(self) -> None:
        s = self.settings
        if s.use_kubeconfig:
            path = os.environ.get("KUBECONFIG") or str(Path("~/.kube/config").expanduser())
            self.kubeconfig = Path(path)
            if not self.kubeconfig.exists():
                raise StageError(f"{ENV_USE_KUBECONFIG}=1 but there is no kubeconfig at {path}")
            self.api = client_from_kubeconfig(self.kubeconfig)
            s.say(f"using the cluster of {self.kubeconfig}")
        else:
            s.say("starting a local control plane (etcd + kube-apiserver) ...")
            cluster = DevCluster(
                DevClusterSettings(
                    kubeconfig=self.work / "kubeconfig",
                    extra_apiserver_args=s.apiserver_args,
                )
            )
            try:
                cluster.start()
            except DevClusterError as exc:
                raise StageError(f"the local control plane did not start: {exc}") from exc
            self._stack.callback(cluster.stop)
            self.cluster = cluster
            self.kubeconfig = cluster.kubeconfig
            self.api = client_from_kubeconfig(self.kubeconfig)
            s.say(f"control plane ready at {cluster.server}")
        self._stack.callback(self.api.close)

    def _operator_identity(self, api: k8s.ApiClient) -> Path:
        """On the local cluster: a token of deploy/'s ServiceAccount; else the user's."""
        assert self.kubeconfig is not None
        if self.cluster is None:
            return self.kubeconfig
        return objects.operator_identity(api, self.cluster, self.work, self.settings.say)

    def _create_sticky(self, api: k8s.ApiClient, name: str, spec: dict[str, Any]) -> None:
        local = self.cluster is not None
        proxy = objects.proxy_spec(local=local, proxies=self.settings.proxies)
        self._sticky_paths.append(objects.create_sticky(api, self.namespace, name, spec, proxy))
        if not local:
            self.settings.say(f"proxies: external, the pods of Service {EXTERNAL_PROXIES}")

    def _start_operator(self, kubeconfig: Path) -> None:
        if self.cluster is not None:
            # Our own cluster: run as in production, cluster-wide with kopf peering.
            scope = ["--peering", "limpet"]
        else:
            # Someone's cluster: touch only the demo's namespace, never join a peering.
            scope = ["--namespace", self.namespace, "--standalone"]
        argv = _python_module(
            "limpet.cli",
            "operator",
            "--kubeconfig",
            str(kubeconfig),
            *scope,
            "--stats-interval",
            "1",
            "--gone-after",
            "5",
            "--log-level",
            "INFO",
        )
        if self.settings.operator_metrics is not None:
            argv.append(f"--metrics-listen={self.settings.operator_metrics}")
        proc = ManagedProcess("limpet operator", argv, log_path=self.work / "operator.log")
        proc.start()
        self.operator = proc
        self._stack.callback(proc.stop, timeout=15)
        api = self.api
        assert api is not None
        # Deleting the StickyServices first lets the operator remove what it created.
        self._stack.callback(self._delete_stickies, api)
        self.settings.say("operator started (log: operator.log)")

    def _delete_stickies(self, api: k8s.ApiClient) -> None:
        delete_stickies(api, list(self._sticky_paths), operator_alive=self.operator_alive())

    # -- during the run ------------------------------------------------------------------------

    def sticky_names(self) -> list[str]:
        """The StickyServices of the run: the Cookie one, then the Header one if any."""
        return [STICKY] + ([HEADER_STICKY] if self.redis is not None else [])

    def proxy_urls(self, name: str = STICKY) -> list[str]:
        return list(self._proxy_urls.get(name, ()))

    def admin_urls(self, name: str) -> list[str]:
        """``http://<pod IP>:<admin port>`` of the managed proxies of ``name``."""
        return list(self._admin_urls.get(name, ()))

    def app_pods(self) -> list[str]:
        """The app pods that take new sessions."""
        assert self.app is not None
        return self.app.serving()

    def operator_alive(self) -> bool:
        return self.operator is not None and self.operator.poll() is None

    # -- tear-down -------------------------------------------------------------------------------

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Stage:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _app_command(spec: BackendSpec) -> list[str]:
    return _python_module(
        "limpet.demo.backend", "--host", spec.host, "--port", str(spec.port), "--name", spec.pod
    )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
