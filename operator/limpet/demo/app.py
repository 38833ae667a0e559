"""The counter app's pods, as the scenario changes them.

Two drivers behind one :class:`AppPods` protocol:

- :class:`DeployedApp` (the local cluster): the sample app exactly as ``examples/app``
  ships it (:func:`counter_app`: a Deployment and a Service with a selector, with the
  demo's replicas, preStop and grace period), run for real. kube-controller-manager's
  Deployment and ReplicaSet controllers make the Pods, kube-scheduler binds them, the
  pod runner runs them in network namespaces and reports their readiness probe, and the
  EndpointSlice controller publishes them. The scenario acts as a user would:
  ``kubectl scale``, ``kubectl delete pod``, ``kubectl rollout restart``, and SIGKILL
  to the app's process (found by the ``POD_NAME`` its Pod gives it), which the pod
  runner restarts after its back-off, as a kubelet would.
- :class:`FakeApp` (``$KUBECONFIG``'s cluster, where nothing here may run Pods): fake
  pods (``limpet.devcluster.fakepods``) that play those steps by publishing the
  EndpointSlice conditions themselves. It cannot roll out.

Synchronous; the scenario calls these from a worker thread, one call at a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any, Protocol

import yaml
from kubernetes import client as k8s

from limpet.devcluster.client import request, server_side_apply
from limpet.devcluster.fakepods import FakePods
from limpet.devcluster.workloads import is_ready, is_terminating, kubectl, pods

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_APP = REPO / "examples" / "app" / "counter.yaml"
APP_NAME = "counter"
FIELD_MANAGER = "limpet-demo"


class AppPods(Protocol):
    can_roll_out: bool

    def serving(self) -> list[str]:
        """Names of the pods that take new sessions (Ready, not terminating)."""
        ...

    def scale(self, replicas: int) -> None: ...

    def delete(self, pod: str) -> None:
        """Graceful termination: the pod drains, then goes."""
        ...

    def kill(self, pod: str) -> None:
        """The app's process dies (real pods: SIGKILL; fake pods: stopped)."""
        ...

    def after_kill(self, pod: str) -> None:
        """What the cluster does next (the fake pods publish it themselves)."""
        ...

    def finish(self, pod: str) -> None:
        """The deleted or killed pod goes for good, if the cluster needs telling."""
        ...

    def roll_out(self) -> None: ...

    def rolled_out(self) -> bool:
        """The rollout is done: every pod there was at its start is gone, and as many
        pods serve as the Deployment wants."""
        ...


def counter_app(
    namespace: str,
    *,
    name: str = APP_NAME,
    replicas: int = 3,
    pre_stop: int = 0,
    grace: int = 5,
) -> list[dict[str, Any]]:
    """``examples/app/counter.yaml`` (Deployment, Service) as ``name`` in ``namespace``,
    with ``pre_stop`` seconds of preStop sleep (none when 0) and ``grace`` seconds of
    termination grace."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE_APP.read_text()) if d]
    labels = {"app.kubernetes.io/name": name}
    for doc in docs:
        doc["metadata"].update(name=name, namespace=namespace, labels=dict(labels))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    spec = deployment["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": dict(labels)}
    template = spec["template"]
    template["metadata"]["labels"] = dict(labels)
    template["spec"]["terminationGracePeriodSeconds"] = grace
    for container in template["spec"]["containers"]:
        if pre_stop:
            container["lifecycle"] = {"preStop": {"sleep": {"seconds": pre_stop}}}
        else:
            container.pop("lifecycle", None)
    service["spec"]["selector"] = dict(labels)
    return [deployment, service]


_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "Service": "/api/v1/namespaces/{ns}/services/{name}",
}


def apply_manifests(api: k8s.ApiClient, manifests: list[dict[str, Any]], *, manager: str) -> None:
    for m in manifests:
        path = _PATHS[m["kind"]].format(ns=m["metadata"]["namespace"], name=m["metadata"]["name"])
        server_side_apply(api, path, m, field_manager=manager)


class DeployedApp:
    """The app as a Deployment on the local cluster, changed through ``kubectl``."""

    can_roll_out = True

    def __init__(self, api: k8s.ApiClient, kubeconfig: Path, namespace: str) -> None:
        self.api = api
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.labels = {"app.kubernetes.io/name": APP_NAME}
        self._old: set[str] = set()

    def _kubectl(self, *args: str) -> str:
        return kubectl(self.kubeconfig, *args, namespace=self.namespace)

    def pods(self) -> list[dict[str, Any]]:
        return pods(self.api, self.namespace, self.labels)

    def serving(self) -> list[str]:
        return sorted(
            p["metadata"]["name"] for p in self.pods() if is_ready(p) and not is_terminating(p)
        )

    def replicas(self) -> int:
        path = _PATHS["Deployment"].format(ns=self.namespace, name=APP_NAME)
        return int(request(self.api, "GET", path)["spec"]["replicas"])

    def scale(self, replicas: int) -> None:
        self._kubectl("scale", f"deployment/{APP_NAME}", f"--replicas={replicas}")

    def delete(self, pod: str) -> None:
        self._kubectl("delete", "pod", pod, "--wait=false")

    def kill(self, pod: str) -> None:
        pids = app_pids(pod)
        if not pids:
            raise RuntimeError(f"no process of pod {pod} to kill")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def after_kill(self, pod: str) -> None:
        """Nothing: the pod runner sees the exit, reports the pod not Ready and restarts
        the container after its back-off."""

    def finish(self, pod: str) -> None:
        """Nothing: a deleted pod goes after its preStop; a killed one is restarted."""

    def roll_out(self) -> None:
        self._old = {p["metadata"]["name"] for p in self.pods()}
        self._kubectl("rollout", "restart", f"deployment/{APP_NAME}")

    def rolled_out(self) -> bool:
        names = {p["metadata"]["name"] for p in self.pods()}
        return not names & self._old and len(self.serving()) == self.replicas()


def app_pids(pod: str) -> list[int]:
    """The processes of the counter app that runs as ``pod`` (its ``POD_NAME``)."""
    marker = f"POD_NAME={pod}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"limpet.demo.backend" in cmdline and marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


class FakeApp:
    """The app as fake pods: each step publishes the conditions a cluster would."""

    can_roll_out = False

    def __init__(self, group: FakePods) -> None:
        self.group = group

    def serving(self) -> list[str]:
        return sorted(
            name
            for name, pod in self.group.pods.items()
            if pod.conditions.ready and not pod.conditions.terminating
        )

    def scale(self, replicas: int) -> None:
        self.group.scale_up(replicas)

    def delete(self, pod: str) -> None:
        self.group.terminate(pod)

    def kill(self, pod: str) -> None:
        self.group.stop_backend(pod)

    def after_kill(self, pod: str) -> None:
        self.group.set_conditions(pod, ready=False, serving=False)

    def finish(self, pod: str) -> None:
        self.group.remove(pod)

    def roll_out(self) -> None:
        raise NotImplementedError("fake pods have no Deployment to roll out")

    def rolled_out(self) -> bool:
        return False
