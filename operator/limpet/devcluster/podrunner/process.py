"""The pod runner as a child process of a dev cluster (tests, ``limpet devcluster``, demo).

Data flow: :meth:`PodRunnerProcess.start` issues each Node an identity, a client
certificate from the cluster CA for user ``system:node:<node>`` in group
``system:nodes``: the dev cluster's Node authorizer and NodeRestriction give it exactly
a kubelet's rights (its own Node and Lease, the Pods bound to it and what they mount),
and no RBAC binding is needed. It then starts ``python -m limpet.devcluster.podrunner``
with its output in ``podrunner.log`` and waits for its "ready" lines (the Nodes are
registered and Ready) and the address of its relay to the API server, which it adds to
the API server's serving certificate (``DevCluster.serve_at``). A runner that exits
during start-up is reported with its log tail. :meth:`stop` sends SIGTERM (the runner
stops its pods and deletes its network namespaces) and SIGKILL after a timeout.

Synchronous; one owner thread.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.podrunner.apirelay import API_PREFIX
from limpet.devcluster.process import ManagedProcess

NODE_GROUP = "system:nodes"
READY_PREFIX = "limpet pod runner: ready: node "


class PodRunnerError(DevClusterError):
    """The pod runner did not start; the message ends with its log tail."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRunnerOptions:
    nodes: int = 1
    node_prefix: str = "limpet-node"
    backoff: float = 10.0
    backoff_cap: float = 300.0
    lease_renew: float = 10.0
    ready_timeout: float = 30.0


class PodRunnerProcess:
    def __init__(
        self, cluster: DevCluster, work_dir: Path, options: PodRunnerOptions | None = None
    ) -> None:
        self.cluster = cluster
        self.work_dir = work_dir
        self.options = options or PodRunnerOptions()
        self.nodes: list[str] = []
        self.api_address = ""
        """``host:443``, where pods reach the API server (the runner's relay)."""
        self.ready_seconds = 0.0
        self.proc: ManagedProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.work_dir / "podrunner.log"

    def start(self) -> PodRunnerProcess:
        o = self.options
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        identities: list[str] = []
        for i in range(o.nodes):
            node = f"{o.node_prefix}-{i}"
            path = self.cluster.write_user_kubeconfig(
                self.work_dir / f"{node}.kubeconfig",
                user=f"system:node:{node}",
                groups=(NODE_GROUP,),
            )
            identities += ["--kubeconfig", str(path)]
        self.proc = ManagedProcess(
            "pod runner",
            [
                sys.executable, "-m", "limpet.devcluster.podrunner",
                *identities,
                "--work-dir", str(self.work_dir / "pods"),
                "--nodes", str(o.nodes),
                "--node-prefix", o.node_prefix,
                "--backoff", str(o.backoff),
                "--backoff-cap", str(o.backoff_cap),
                "--lease-renew", str(o.lease_renew),
                "--exit-with-parent",
            ],
            log_path=self.log_path,
        )  # fmt: skip
        self.proc.start()
        deadline = started + o.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise PodRunnerError(self.proc.describe_exit())
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            ready = [line for line in text.splitlines() if line.startswith(READY_PREFIX)]
            api = [line for line in text.splitlines() if line.startswith(API_PREFIX)]
            if len(ready) >= o.nodes and api:
                self.nodes = [line.removeprefix(READY_PREFIX).split()[0] for line in ready]
                self.api_address = api[0].removeprefix(API_PREFIX).strip()
                # Pods verify the API server as https://<bridge address>:443.
                self.cluster.serve_at(self.api_address.rsplit(":", 1)[0])
                self.ready_seconds = time.monotonic() - started
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise PodRunnerError(
                    f"the pod runner was not ready within {o.ready_timeout:.0f} s; last lines "
                    f"of its log:\n{self.proc.tail()}"
                )
            time.sleep(0.05)

    def failure(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return self.proc.describe_exit()
        return None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20.0)
            self.proc = None
