"""kube-controller-manager and kube-scheduler, the dev cluster's control loops.

Data flow: once kube-apiserver is ready, :class:`~limpet.devcluster.cluster.DevCluster`
asks :func:`control_loops` for a :class:`Component` for each of them (built by
:func:`controller_manager` and :func:`scheduler`). Each gets a kubeconfig holding its
own client certificate (CN ``system:kube-controller-manager`` or ``system:kube-scheduler``, the
users the API server's bootstrap RBAC binds), the flags kubeadm gives it (less what a
test cluster without cloud, storage or leader election needs), and a serving
certificate from the cluster CA for its secure port on loopback.
:meth:`Component.start` launches it on a free port. :meth:`Component.check` GETs its
health endpoint with ``?verbose`` as the admin user, verifying the server against the
cluster CA, and reports it ready once the answer is 200 and lists every check that
must be there as ok: one per controller (kube-controller-manager registers a check for
each controller only once it has built it), or the scheduler's event-handler sync.
A component that exits raises :class:`ProcessExitedError` with its log tail; one whose
picked port was taken in the meantime is started again on another.

Not thread-safe: the DevCluster's thread owns its components.
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from limpet.devcluster.certs import (
    CONTROLLER_MANAGER_USER,
    SCHEDULER_USER,
    ClusterPKI,
    ComponentCredentials,
    ComponentPaths,
    PKIPaths,
)
from limpet.devcluster.errors import PortInUseError, ProcessExitedError
from limpet.devcluster.kubeconfig import build_kubeconfig, write_kubeconfig
from limpet.devcluster.ports import free_port, log_says_port_taken
from limpet.devcluster.process import ManagedProcess

CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"

DEFAULT_CONTROLLERS: tuple[str, ...] = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "node-lifecycle-controller",
    # The eviction half of node lifecycle, a controller of its own since v1.29.
    "taint-eviction-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
)
"""Canonical controller names (``--controllers`` also takes the old short aliases, such
as ``deployment``, but ``/healthz`` lists checks under these names)."""

_PORT_RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentFiles:
    """What a component reads from the work directory."""

    kubeconfig: Path
    """Its own kubeconfig (client certificate of its user)."""
    pki: PKIPaths
    own: ComponentPaths


def _secure_serving(files: ComponentFiles, port: int) -> list[str]:
    """Flags both components share: serving, and delegated authn/authz as in kubeadm."""
    kubeconfig = str(files.kubeconfig)
    return [
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={files.own.serving_cert}",
        f"--tls-private-key-file={files.own.serving_key}",
        f"--client-ca-file={files.pki.ca_cert}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        # The client CA is given above, and nothing here fronts the components with an
        # authenticating proxy: do not poll the extension-apiserver-authentication
        # ConfigMap for a request-header CA the API server never publishes.
        "--authentication-skip-lookup=true",
    ]


def controller_manager_argv(
    binary: Path,
    files: ComponentFiles,
    port: int,
    *,
    controllers: Sequence[str],
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={files.kubeconfig}",
        *_secure_serving(files, port),
        f"--controllers={','.join(controllers)}",
        # Each controller acts as its own ServiceAccount in kube-system, bound to its
        # system:controller:* bootstrap role, as in a real control plane.
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={files.pki.sa_private_key}",
        f"--root-ca-file={files.pki.ca_cert}",
        # One instance: leader election would only add a Lease round trip to start-up.
        "--leader-elect=false",
        "--profiling=false",
        *extra,
    ]


def scheduler_config(kubeconfig: Path) -> dict[str, object]:
    """A KubeSchedulerConfiguration (the flags for these fields are deprecated)."""
    return {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "enableProfiling": False,
    }


def scheduler_argv(
    binary: Path, files: ComponentFiles, port: int, *, config: Path, extra: Sequence[str] = ()
) -> list[str]:
    return [str(binary), f"--config={config}", *_secure_serving(files, port), *extra]


class Component:
    """One component with a secure port: its process and its readiness probe.

    ``argv`` builds the command line for a port, so that a restart on another port
    runs the same command."""

    def __init__(
        self,
        name: str,
        argv: Callable[[int], list[str]],
        *,
        work_dir: Path,
        probe_path: str,
        required_checks: Sequence[str],
    ) -> None:
        self.name = name
        self.port = 0
        self.probe_path = probe_path
        self.required_checks = tuple(required_checks)
        self.ready_seconds: float | None = None
        """Seconds from the cluster's start to this component's readiness."""
        self.last_answer = "no answer yet"
        self.missing: tuple[str, ...] = self.required_checks
        """Required checks its last answer did not list as ok."""
        self._argv = argv
        self._work_dir = work_dir
        self._tries = 0
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.probe_path}"

    def start(self) -> None:
        self._tries += 1
        self.port = free_port()
        # A restart's log starts afresh: the old one only says the port was taken.
        (self._work_dir / f"{self.name}.log").unlink(missing_ok=True)
        self.process = ManagedProcess(
            self.name,
            self._argv(self.port),
            log_path=self._work_dir / f"{self.name}.log",
            cwd=self._work_dir,
        )
        self.process.start()

    def check(self, context: ssl.SSLContext) -> bool:
        """Whether it is ready; raises if it exited (after restarting it on a new port
        when the port it was given was taken in the meantime)."""
        proc = self.process
        assert proc is not None
        if proc.poll() is not None:
            if log_says_port_taken(proc.tail(60)):
                if self._tries < _PORT_RETRIES:
                    self.start()
                    return False
                raise PortInUseError(proc.describe_exit())
            raise ProcessExitedError(proc.describe_exit())
        status, body = self._get(context)
        text = body.decode(errors="replace")
        lines = text.splitlines()
        self.missing = tuple(c for c in self.required_checks if f"[+]{c} ok" not in lines)
        self.last_answer = f"{self.probe_path} answered {status}: {text[-600:]}"
        return status == 200 and not self.missing

    def _get(self, context: ssl.SSLContext) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=2.0)
        try:
            conn.request("GET", f"{self.probe_path}?verbose")
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            return 0, f"{type(e).__name__}: {e}".encode()
        finally:
            conn.close()

    def describe(self) -> str:
        """For a start-up timeout: what it last answered, and its log tail."""
        tail = self.process.tail(30) if self.process is not None else "(not started)"
        missing = f"still missing: {', '.join(self.missing)}; " if self.missing else ""
        return f"{self.name}: {missing}{self.last_answer}; last lines of {self.name}.log:\n{tail}"


def controller_manager(
    binary: Path,
    files: ComponentFiles,
    *,
    work_dir: Path,
    controllers: Sequence[str],
    extra: Sequence[str] = (),
) -> Component:
    return Component(
        CONTROLLER_MANAGER,
        lambda port: controller_manager_argv(
            binary, files, port, controllers=controllers, extra=extra
        ),
        work_dir=work_dir,
        probe_path="/healthz",
        required_checks=controllers,
    )


def scheduler(
    binary: Path, files: ComponentFiles, *, work_dir: Path, config: Path, extra: Sequence[str] = ()
) -> Component:
    return Component(
        SCHEDULER,
        lambda port: scheduler_argv(binary, files, port, config=config, extra=extra),
        work_dir=work_dir,
        probe_path="/readyz",
        required_checks=("sched-handler-sync",),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterAccess:
    """Where the components find the API server, and the credentials they get."""

    server: str
    pki: ClusterPKI
    paths: PKIPaths
    work_dir: Path


def _files(
    access: ClusterAccess, name: str, *, user: str, creds: ComponentCredentials, own: ComponentPaths
) -> ComponentFiles:
    """Write component ``name``'s kubeconfig: its own client certificate, as ``user``."""
    config = build_kubeconfig(
        server=access.server, ca_pem=access.pki.ca.cert_pem, client=creds.client, user=user
    )
    return ComponentFiles(
        kubeconfig=write_kubeconfig(access.work_dir / f"{name}.kubeconfig", config),
        pki=access.paths,
        own=own,
    )


def control_loops(
    access: ClusterAccess,
    binaries: Mapping[str, Path],
    *,
    controllers: Sequence[str],
    extra_controller_manager_args: Sequence[str] = (),
    extra_scheduler_args: Sequence[str] = (),
) -> list[Component]:
    """The components whose binary is in ``binaries`` (keyed by component name), with
    their kubeconfigs and the scheduler's configuration written; not started yet."""
    work = access.work_dir
    found: list[Component] = []
    if CONTROLLER_MANAGER in binaries:
        files = _files(
            access,
            "controller-manager",
            user=CONTROLLER_MANAGER_USER,
            creds=access.pki.controller_manager,
            own=access.paths.controller_manager,
        )
        found.append(
            controller_manager(
                binaries[CONTROLLER_MANAGER],
                files,
                work_dir=work,
                controllers=controllers,
                extra=extra_controller_manager_args,
            )
        )
    if SCHEDULER in binaries:
        files = _files(
            access,
            "scheduler",
            user=SCHEDULER_USER,
            creds=access.pki.scheduler,
            own=access.paths.scheduler,
        )
        config = work / "scheduler-config.json"
        config.write_text(json.dumps(scheduler_config(files.kubeconfig), indent=2))
        found.append(
            scheduler(
                binaries[SCHEDULER], files, work_dir=work, config=config, extra=extra_scheduler_args
            )
        )
    return found
