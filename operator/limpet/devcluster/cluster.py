"""A real etcd + kube-apiserver on loopback, envtest-style.

Data flow: :class:`DevClusterSettings` in. :meth:`DevCluster.start` finds the
binaries, makes a private work directory (on tmpfs when there is one), writes a
fresh PKI into it, starts etcd and kube-apiserver on free loopback ports, polls
``/readyz`` with the admin certificate, and writes the admin kubeconfig.
:meth:`DevCluster.stop` stops both processes (API server first) and removes the
work directory. Start-up fails with a :class:`DevClusterError` that names the
problem: a missing binary (and how to build it), a taken port, or a process
that exited (with the tail of its log).

Speed: etcd runs with ``--unsafe-no-fsync`` on tmpfs, both processes start at
once (the API server retries etcd), and the API server skips work nobody here
needs (API priority and fairness, the ``kubernetes`` Endpoints reconciler,
profiling).

Leftovers: the work directory holds an owner record (see ``ownership``) with
the PIDs of its children; each start sweeps directories whose owner died,
killing their orphaned children first.

Concurrency: one thread owns a DevCluster (start, poll, stop). ``start`` takes
an optional ``threading.Event`` that a signal handler may set to cancel it.
Several DevClusters, in one process or many, can run side by side.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import http.client
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from limpet.devcluster import binaries
from limpet.devcluster.certs import ADMIN_USER, CertKeyPair, ClusterPKI, PKIPaths
from limpet.devcluster.errors import (
    DevClusterError,
    PortInUseError,
    ProcessExitedError,
    ReadyTimeoutError,
    StartCancelledError,
)
from limpet.devcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from limpet.devcluster.ownership import (
    current_owner,
    is_alive,
    read_record,
    wait_gone,
    write_record,
)
from limpet.devcluster.process import ManagedProcess

WORK_DIR_PREFIX = "limpet-devcluster-"
OWNER_FILE = "owner.json"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PORT_RETRIES = 3
_POLL_INTERVAL = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class DevClusterSettings:
    bin_dir: Path | None = None
    """Folder with etcd and kube-apiserver; None searches as ``binaries`` says."""
    apiserver_port: int = 0
    """Secure port of the API server on 127.0.0.1; 0 picks a free one."""
    etcd_port: int = 0
    """etcd client port on 127.0.0.1; 0 picks a free one."""
    work_root: Path | None = None
    """Where the temporary work directory goes; None prefers /dev/shm."""
    service_cluster_ip_range: str = "10.96.0.0/12"
    extra_apiserver_args: tuple[str, ...] = ()
    ready_timeout: float = 60.0
    kubeconfig: Path | None = None
    """Also write the admin kubeconfig here (it is always in the work directory)."""
    environ: dict[str, str] | None = field(default=None, compare=False)
    """Environment for binary look-up; None means os.environ."""


def default_work_root() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return Path(tempfile.gettempdir())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_port_free(port: int, what: str) -> None:
    """Raise :class:`PortInUseError` if something already listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the Go servers: a port held only by TIME_WAIT connections is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on 127.0.0.1 (asked for the {what}) is already in use by "
                    "another process; choose another port, or 0 to pick a free one"
                ) from None
            raise


def _log_says_port_taken(text: str) -> bool:
    return "address already in use" in text.lower()


def sweep_stale_work_dirs(root: Path) -> list[Path]:
    """Remove work directories of dead owners, killing their orphaned children first."""
    swept: list[Path] = []
    for work_dir in root.glob(WORK_DIR_PREFIX + "*"):
        record = read_record(work_dir / OWNER_FILE)
        if record is None:
            # Either being set up right now, or the owner died before writing the record:
            # only sweep the latter, judged by age.
            with contextlib.suppress(OSError):
                if time.time() - work_dir.stat().st_mtime > 600:
                    shutil.rmtree(work_dir, ignore_errors=True)
                    swept.append(work_dir)
            continue
        owner, extra = record
        if is_alive(owner):
            continue
        children = extra.get("children", [])
        killed = [
            int(pid)
            for pid in (children if isinstance(children, list) else [])
            if _kill_if_ours(int(pid), work_dir)
        ]
        # SIGKILL is asynchronous: a large Go process takes a moment to go. Wait, so the
        # caller never sees a swept cluster's processes alive, nor have them write into
        # the directory being removed.
        wait_gone(killed, timeout=10.0)
        shutil.rmtree(work_dir, ignore_errors=True)
        swept.append(work_dir)
    return swept


def _kill_if_ours(pid: int, work_dir: Path) -> bool:
    """SIGKILL ``pid``'s process group if it is one of ours; whether a signal was sent."""
    # Guard against PID reuse: only a process whose command line names our work dir.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if str(work_dir).encode() not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
        self._etcd: ManagedProcess | None = None
        self._apiserver: ManagedProcess | None = None
        self._ssl: ssl.SSLContext | None = None
        self._kubeconfig: Path | None = None

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
        if s.apiserver_port:
            check_port_free(s.apiserver_port, "API server (--apiserver-port)")
        if s.etcd_port:
            check_port_free(s.etcd_port, "etcd client port (--etcd-port)")
        root = s.work_root or default_work_root()
        sweep_stale_work_dirs(root)
        atexit.register(self.stop)
        try:
            self.work_dir = Path(tempfile.mkdtemp(prefix=WORK_DIR_PREFIX, dir=root))
            write_record(self.work_dir / OWNER_FILE, current_owner())
            service_ip = str(next(ipaddress.ip_network(s.service_cluster_ip_range).hosts()))
            self.pki = ClusterPKI.generate(service_ip=service_ip)
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
            self._kubeconfig = self.write_user_kubeconfig(
                self.work_dir / "kubeconfig", user=ADMIN_USER, client=self.pki.admin
            )
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
        for proc in (self._apiserver, self._etcd):
            if proc is not None and proc.poll() is not None:
                return proc.describe_exit()
        return None

    def logs(self) -> dict[str, Path]:
        return {p.name: p.log_path for p in (self._etcd, self._apiserver) if p is not None}

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
                "--authorization-mode=RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={p.sa_public_key}",
                f"--service-account-signing-key-file={p.sa_private_key}",
                f"--service-cluster-ip-range={s.service_cluster_ip_range}",
                "--allow-privileged=true",
                # As on OpenShift: setting ownerReferences needs delete on the child, and
                # blockOwnerDeletion needs update on the owner's finalizers, so a test
                # catches an operator that asks for more than deploy/'s RBAC grants.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
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
        write_record(
            self.work_dir / OWNER_FILE,
            current_owner(),
            children=[self._etcd.pid, self._apiserver.pid],
        )

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
                    if _log_says_port_taken(tail):
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
        # API server first: it would otherwise spend its shutdown retrying a dead etcd.
        for proc in (self._apiserver, self._etcd):
            if proc is not None:
                proc.stop(timeout=5.0)
        self._apiserver = None
        self._etcd = None
