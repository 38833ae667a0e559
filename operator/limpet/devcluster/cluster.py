"""A real control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler.

Data flow: :class:`DevClusterSettings` in. :meth:`DevCluster.start` finds the
binaries, makes a private work directory (on tmpfs when there is one), writes a
fresh PKI into it, starts etcd and kube-apiserver on free loopback ports, polls
``/readyz`` with the admin certificate, writes the admin kubeconfig, then starts
kube-controller-manager and kube-scheduler (``components``) with their own
certificates and kubeconfigs and polls each one's health endpoint until it reports
every controller running. :meth:`DevCluster.stop` stops the processes (controllers,
then the API server, then etcd) and removes the work directory. Start-up fails with
a :class:`DevClusterError` that names the problem: a missing binary (and how to
build it), a taken port, or a process that exited (with the tail of its log).

Speed: etcd runs with ``--unsafe-no-fsync`` on tmpfs, etcd and the API server start
at once (the API server retries etcd), the two control-loop components start
together, without leader election, and the API server skips work nobody here
needs (API priority and fairness, the ``kubernetes`` Endpoints reconciler,
profiling).

Leftovers: the work directory holds an owner record (see ``workdirs``) with the
PIDs of its children; each start sweeps directories whose owner died, killing
their orphaned children first.

Concurrency: one thread owns a DevCluster (start, poll, stop). ``start`` takes
an optional ``threading.Event`` that a signal handler may set to cancel it.
Several DevClusters, in one process or many, can run side by side.
"""

from __future__ import annotations

import atexit
import http.client
import ipaddress
import json
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from limpet.devcluster import binaries
from limpet.devcluster.certs import (
    ADMIN_USER,
    CertKeyPair,
    ClusterPKI,
    PKIPaths,
)
from limpet.devcluster.components import (
    DEFAULT_CONTROLLERS,
    ClusterAccess,
    Component,
    control_loops,
)
from limpet.devcluster.errors import (
    DevClusterError,
    PortInUseError,
    ProcessExitedError,
    ReadyTimeoutError,
    StartCancelledError,
)
from limpet.devcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from limpet.devcluster.ports import check_port_free, free_port, log_says_port_taken
from limpet.devcluster.process import ManagedProcess, stop_together
from limpet.devcluster.serving import reissue
from limpet.devcluster.workdirs import (
    default_work_root,
    make_work_dir,
    record_children,
    sweep_stale_work_dirs,
)

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PORT_RETRIES = 3
_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class DevClusterSettings:
    bin_dir: Path | None = None
    """Folder with the control-plane binaries; None searches as ``binaries`` says."""
    apiserver_port: int = 0
    """Secure port of the API server on 127.0.0.1; 0 picks a free one."""
    etcd_port: int = 0
    """etcd client port on 127.0.0.1; 0 picks a free one."""
    work_root: Path | None = None
    """Where the temporary work directory goes; None prefers /dev/shm."""
    service_cluster_ip_range: str = "10.96.0.0/12"
    extra_apiserver_args: tuple[str, ...] = ()
    controllers: tuple[str, ...] = DEFAULT_CONTROLLERS
    """kube-controller-manager's controllers, by canonical name; empty runs none."""
    scheduler: bool = True
    """Run kube-scheduler."""
    extra_controller_manager_args: tuple[str, ...] = ()
    extra_scheduler_args: tuple[str, ...] = ()
    ready_timeout: float = 60.0
    kubeconfig: Path | None = None
    """Also write the admin kubeconfig here (it is always in the work directory)."""
    environ: dict[str, str] | None = field(default=None, compare=False)
    """Environment for binary look-up; None means os.environ."""
    before_controllers: Callable[[DevCluster], None] | None = field(default=None, compare=False)
    """Called once the API server is ready, before the controllers start: install
    CustomResourceDefinitions here so that the garbage collector knows them from the
    start (it rediscovers resource types only every 30 s)."""


@dataclass(frozen=True, slots=True)
class Readiness:
    name: str
    seconds: float
    """From the start of :meth:`DevCluster.start`."""
    url: str
    """The health endpoint that said so."""
    checks: tuple[str, ...] = ()
    """The named checks it had to list as ok (one per controller)."""


class DevCluster:
    """One control plane. Use as a context manager, or call start() and stop()."""

    def __init__(self, settings: DevClusterSettings | None = None) -> None:
        self.settings = settings or DevClusterSettings()
        self.work_dir: Path | None = None
        self.pki: ClusterPKI | None = None
        self.pki_paths: PKIPaths | None = None
        self.apiserver_port = 0
        self.etcd_port = 0
        self.version = ""
        self.ready_seconds = 0.0
        self.apiserver_ready_seconds = 0.0
        self.components: list[Component] = []
        """kube-controller-manager and kube-scheduler, once started."""
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._ssl: ssl.SSLContext | None = None
        self._kubeconfig: Path | None = None
        self.serving_ips: list[str] = []
        """The addresses in the API server's serving certificate."""

    # -- public surface -------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        if self._kubeconfig is None:
            raise DevClusterError("the dev cluster is not started")
        return self._kubeconfig

    @property
    def paths(self) -> PKIPaths:
        if self.pki_paths is None:
            raise DevClusterError("the dev cluster is not started")
        return self.pki_paths

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, *, cancel: threading.Event | None = None) -> None:
        s = self.settings
        started = time.monotonic()
        etcd_bin = binaries.find_binary(binaries.ETCD, bin_dir=s.bin_dir, environ=s.environ)
        apiserver_bin = binaries.find_binary(
            binaries.KUBE_APISERVER, bin_dir=s.bin_dir, environ=s.environ
        )
        component_bins = self._component_binaries()
        if s.apiserver_port:
            check_port_free(s.apiserver_port, "API server (--apiserver-port)")
        if s.etcd_port:
            check_port_free(s.etcd_port, "etcd client port (--etcd-port)")
        root = s.work_root or default_work_root()
        sweep_stale_work_dirs(root)
        atexit.register(self.stop)
        try:
            self.work_dir = make_work_dir(root)
            service_ip = str(next(ipaddress.ip_network(s.service_cluster_ip_range).hosts()))
            self.pki = ClusterPKI.generate(service_ip=service_ip)
            self.serving_ips = ["127.0.0.1", "::1", service_ip]
            self.pki_paths = self.pki.write(self.work_dir / "pki")
            self._ssl = self._client_ssl(self.pki_paths)
            for attempt in range(1, _PORT_RETRIES + 1):
                try:
                    self._launch(etcd_bin, apiserver_bin)
                    self._wait_ready(started, cancel)
                    break
                except PortInUseError:
                    # A free port we picked was grabbed by someone else before our server
                    # bound it: pick again. A port the user asked for is their call.
                    if attempt == _PORT_RETRIES or (s.apiserver_port and s.etcd_port):
                        raise
                    self._stop_processes()
            self.apiserver_ready_seconds = time.monotonic() - started
            self._kubeconfig = self.write_user_kubeconfig(
                self.work_dir / "kubeconfig", user=ADMIN_USER, client=self.pki.admin
            )
            if s.before_controllers is not None:
                s.before_controllers(self)
            self._start_components(component_bins)
            self._wait_components_ready(started, cancel)
            if s.kubeconfig is not None:
                self._kubeconfig = self.write_user_kubeconfig(
                    s.kubeconfig, user=ADMIN_USER, client=self.pki.admin
                )
            self.ready_seconds = time.monotonic() - started
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes and remove the work directory; idempotent."""
        atexit.unregister(self.stop)
        self._stop_processes()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def failure(self) -> str | None:
        """If a control-plane process has exited on its own, why (with its log tail)."""
        for proc in self._processes():
            if proc.poll() is not None:
                return proc.describe_exit()
        return None

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in self._processes()}

    def readiness(self) -> list[Readiness]:
        """When each component became ready, and where it was probed."""
        ready = [Readiness("kube-apiserver", self.apiserver_ready_seconds, f"{self.server}/readyz")]
        ready += [
            Readiness(c.name, c.ready_seconds, c.url, checks=c.required_checks)
            for c in self.components
            if c.ready_seconds is not None
        ]
        return ready

    def write_user_kubeconfig(
        self,
        path: Path,
        *,
        user: str,
        client: CertKeyPair | None = None,
        groups: tuple[str, ...] = (),
        namespace: str = "default",
    ) -> Path:
        """A kubeconfig for ``user`` (in ``groups``), by a client cert from the cluster CA.

        With ``client`` given, that certificate is used instead of a new one.
        """
        if self.pki is None:
            raise DevClusterError("the dev cluster is not started")
        cert = client or self.pki.ca.issue_client(common_name=user, groups=groups)
        config = build_kubeconfig(
            server=self.server,
            ca_pem=self.pki.ca.cert_pem,
            client=cert,
            user=user,
            namespace=namespace,
        )
        return write_kubeconfig(path, config)

    def serve_at(self, address: str) -> None:
        """Add ``address`` to the API server's serving certificate (it still listens on
        loopback only; the pod runner relays its pod network's address to it)."""
        if self.pki is None or self._ssl is None:
            raise DevClusterError("the dev cluster is not started")
        if address in self.serving_ips:
            return
        ips = [*self.serving_ips, address]
        reissue(
            self.pki.ca,
            cert_path=self.paths.serving_cert,
            key_path=self.paths.serving_key,
            ip_addresses=ips,
            port=self.apiserver_port,
            ctx=self._ssl,
        )
        self.serving_ips = ips

    def get(self, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET ``path`` from the API server as the admin user: (status, body)."""
        if self._ssl is None:
            raise DevClusterError("the dev cluster is not started")
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.apiserver_port, context=self._ssl, timeout=timeout
        )
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _client_ssl(paths: PKIPaths) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
        ctx.load_cert_chain(str(paths.admin_cert), str(paths.admin_key))
        return ctx

    def _processes(self) -> list[ManagedProcess]:
        """Every started process, those that depend on the others first."""
        procs = [c.process for c in self.components if c.process is not None]
        return procs + [p for p in (self._apiserver, self._etcd) if p is not None]

    def _record_children(self) -> None:
        assert self.work_dir is not None
        pids = [p.pid for p in self._processes() if p.pid is not None]
        record_children(self.work_dir, pids)

    def _component_binaries(self) -> dict[str, Path]:
        s = self.settings
        wanted = [binaries.KUBE_CONTROLLER_MANAGER] if s.controllers else []
        wanted += [binaries.KUBE_SCHEDULER] if s.scheduler else []
        return {
            name: binaries.find_binary(name, bin_dir=s.bin_dir, environ=s.environ)
            for name in wanted
        }

    def _start_components(self, bins: dict[str, Path]) -> None:
        s = self.settings
        assert self.work_dir is not None
        assert self.pki is not None
        assert self.pki_paths is not None
        access = ClusterAccess(
            server=self.server, pki=self.pki, paths=self.pki_paths, work_dir=self.work_dir
        )
        self.components = control_loops(
            access,
            bins,
            controllers=s.controllers,
            extra_controller_manager_args=s.extra_controller_manager_args,
            extra_scheduler_args=s.extra_scheduler_args,
        )
        for component in self.components:
            component.start()
        self._record_children()

    def _wait_components_ready(self, started: float, cancel: threading.Event | None) -> None:
        assert self._ssl is not None
        deadline = started + self.settings.ready_timeout
        pending = list(self.components)
        while pending:
            if cancel is not None and cancel.is_set():
                raise StartCancelledError("start-up cancelled before the controllers were ready")
            for proc in (self._apiserver, self._etcd):
                if proc is not None and proc.poll() is not None:
                    raise ProcessExitedError(proc.describe_exit())
            for component in list(pending):
                pid = component.process.pid if component.process is not None else None
                if component.check(self._ssl):
                    component.ready_seconds = time.monotonic() - started
                    pending.remove(component)
                elif component.process is not None and component.process.pid != pid:
                    self._record_children()  # restarted on another port
            if not pending:
                return
            if time.monotonic() > deadline:
                states = "\n".join(c.describe() for c in pending)
                raise ReadyTimeoutError(
                    f"not ready within {self.settings.ready_timeout:.0f} s:\n{states}"
                )
            time.sleep(_POLL_INTERVAL)

    def _launch(self, etcd_bin: Path, apiserver_bin: Path) -> None:
        s = self.settings
        assert self.work_dir is not None
        assert self.pki_paths is not None
        self.etcd_port = s.etcd_port or free_port()
        peer_port = free_port()
        self.apiserver_port = s.apiserver_port or free_port()
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = self.work_dir / "etcd"
        shutil.rmtree(data_dir, ignore_errors=True)
        self._etcd = ManagedProcess(
            "etcd",
            [
                str(etcd_bin),
                "--name=limpet",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=limpet={peer_url}",
                "--initial-cluster-state=new",
                # Throwaway data on tmpfs: durability buys nothing and fsync costs start-up time.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            log_path=self.work_dir / "etcd.log",
            cwd=self.work_dir,
        )
        p = self.pki_paths
        self._apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(apiserver_bin),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={p.serving_cert}",
                f"--tls-private-key-file={p.serving_key}",
                f"--client-ca-file={p.ca_cert}",
                # As kubeadm: the Node authorizer grants a node agent (user
                # system:node:<name>, group system:nodes) what a kubelet needs, scoped to
                # its own pods and what they reference; NodeRestriction (below) keeps it
                # off every other Node and its Lease.
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={p.sa_public_key}",
                f"--service-account-signing-key-file={p.sa_private_key}",
                f"--service-cluster-ip-range={s.service_cluster_ip_range}",
                "--allow-privileged=true",
                # OwnerReferencesPermissionEnforcement, as on OpenShift: setting
                # ownerReferences needs delete on the child, and blockOwnerDeletion needs
                # update on the owner's finalizers, so a test catches an operator that
                # asks for more than deploy/'s RBAC grants.
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                # Work a one-node, no-kubelet test cluster never needs:
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                *s.extra_apiserver_args,
            ],
            log_path=self.work_dir / "kube-apiserver.log",
            cwd=self.work_dir,
        )
        self._etcd.start()
        self._apiserver.start()
        self._record_children()

    def _wait_ready(self, started: float, cancel: threading.Event | None) -> None:
        assert self._etcd is not None
        assert self._apiserver is not None
        deadline = started + self.settings.ready_timeout
        last_error = "no answer yet"
        while True:
            if cancel is not None and cancel.is_set():
                raise StartCancelledError("start-up cancelled before the API server was ready")
            for proc in (self._etcd, self._apiserver):
                if proc.poll() is not None:
                    tail = proc.tail(60)
                    if log_says_port_taken(tail):
                        raise PortInUseError(
                            f"{proc.name} could not bind its port (address already in use); "
                            f"last lines of its log:\n{tail}"
                        )
                    raise ProcessExitedError(proc.describe_exit())
            try:
                status, body = self.get("/readyz", timeout=2.0)
                if status == 200:
                    _, version = self.get("/version")
                    self.version = str(json.loads(version).get("gitVersion", ""))
                    return
                last_error = f"/readyz answered {status}: {body[-400:].decode(errors='replace')}"
            except (OSError, http.client.HTTPException) as e:
                last_error = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise ReadyTimeoutError(
                    f"the API server was not ready within {self.settings.ready_timeout:.0f} s "
                    f"(last: {last_error}); last lines of kube-apiserver.log:\n"
                    f"{self._apiserver.tail(40)}\nlast lines of etcd.log:\n{self._etcd.tail(10)}"
                )
            time.sleep(_POLL_INTERVAL)

    def _stop_processes(self) -> None:
        # Controllers first, so that none acts on a half-stopped cluster; then the API
        # server: it would otherwise spend its shutdown retrying a dead etcd.
        stop_together([c.process for c in self.components if c.process is not None], timeout=5.0)
        self.components = []
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop(timeout=5.0)
        self._apiserver = None
        self._etcd = None
