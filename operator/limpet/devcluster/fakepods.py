"""Fake pods: real backend processes, published through a real EndpointSlice.

Data flow: :meth:`FakePods.add` takes a slot from a :class:`PodNetwork` (a
network namespace with its own pod IP, or a loopback port behind a placeholder
address), checks that the address is one the network made and owns, starts
the backend command inside the pod, waits until it accepts TCP connections
from the root namespace, and then server-side-applies the EndpointSlice(s) of
the group's Service with every pod's address and ``ready``/``serving``/
``terminating`` conditions, exactly as the EndpointSlice controller would for
real pods. :meth:`set_conditions`, :meth:`remove`, :meth:`stop_backend` and
:meth:`start_backend` change one pod and republish; that is how the operator
tests simulate scaling, rolling updates, draining and crashes.

In loopback mode :meth:`overrides` gives the explicit address override
``(address, port) -> (127.0.0.1, port)`` for the proxy.

Clean-up: :meth:`close` (also at exit) stops the backends, deletes the
namespaces, the slices and the Service it made. The pod network itself is
owned by whoever opened it (one per test session in the fixtures).

Synchronous (the sync ``kubernetes`` client); one thread uses a group.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kubernetes import client as k8s

from limpet.devcluster.client import request, server_side_apply
from limpet.devcluster.endpointslices import (
    Conditions,
    EndpointEntry,
    endpoint_slice,
    selectorless_service,
)
from limpet.devcluster.errors import FakePodError
from limpet.devcluster.podnet import PodNetwork
from limpet.devcluster.podslot import Endpoint, PodSlot
from limpet.devcluster.process import ManagedProcess

FIELD_MANAGER = "limpet-fakepods"


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """What a backend command needs to know about its pod."""

    pod: str
    host: str
    """Address to bind, inside the pod."""
    port: int
    address: str
    """The pod's published address."""


BackendCommand = Callable[[BackendSpec], Sequence[str]]


def echo_backend(spec: BackendSpec) -> list[str]:
    """The built-in backend (``limpet.devcluster.backend``): answers with its pod name."""
    return [
        sys.executable,
        "-m",
        "limpet.devcluster.backend",
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--name",
        spec.pod,
    ]


@dataclass(slots=True)
class FakePod:
    name: str
    slot: PodSlot
    conditions: Conditions
    slice_name: str
    command: BackendCommand | None
    process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return self.slot.address

    @property
    def port(self) -> int:
        return self.slot.port

    @property
    def connect(self) -> Endpoint:
        """Where the root namespace reaches this pod's backend."""
        return self.slot.connect

    @property
    def url(self) -> str:
        host, port = self.slot.connect
        return f"http://{host}:{port}"

    @property
    def netns(self) -> str | None:
        return self.slot.netns

    def fetch(self, path: str = "/", *, timeout: float = 3.0) -> tuple[int, bytes]:
        """GET ``path`` straight from this pod's backend, from the root namespace."""
        conn = http.client.HTTPConnection(*self.slot.connect, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


class FakePodsFactory(Protocol):
    """What the ``fake_pods`` pytest fixture hands out: a group maker bound to a namespace."""

    def __call__(
        self,
        service: str,
        *,
        port: int = 8080,
        port_name: str = "http",
        backend: BackendCommand | None = echo_backend,
        create_service: bool = True,
    ) -> FakePods: ...


class FakePods:
    """The pods behind one Service, in one namespace."""

    def __init__(
        self,
        api: k8s.ApiClient,
        network: PodNetwork,
        *,
        namespace: str,
        service: str,
        port: int = 8080,
        port_name: str = "http",
        backend: BackendCommand | None = echo_backend,
        create_service: bool = True,
        log_dir: Path | None = None,
        ready_timeout: float = 10.0,
    ) -> None:
        self.api = api
        self.network = network
        self.namespace = namespace
        self.service = service
        self.port = port
        self.port_name = port_name
        self.default_slice = f"{service}-fake"
        self._backend = backend
        self._ready_timeout = ready_timeout
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"limpet-fakepods-{service}-"))
        self._pods: dict[str, FakePod] = {}
        self._slices: set[str] = set()
        self._next = 0
        self._service_created = False
        self._closed = False
        atexit.register(self.close)
        if create_service:
            self._apply(
                f"/api/v1/namespaces/{namespace}/services/{service}",
                selectorless_service(
                    name=service, namespace=namespace, port=port, port_name=port_name
                ),
            )
            self._service_created = True

    # -- pods -------------------------------------------------------------------------------

    @property
    def pods(self) -> Mapping[str, FakePod]:
        return dict(self._pods)

    def add(
        self,
        name: str | None = None,
        *,
        ready: bool = True,
        serving: bool | None = None,
        terminating: bool = False,
        slice_name: str | None = None,
        backend: BackendCommand | bool | None = True,
        publish: bool = True,
    ) -> FakePod:
        """Create a pod, start its backend, and (by default) publish it.

        ``backend=True`` uses the group's backend command, ``False``/``None`` starts none.
        """
        if self._closed:
            raise FakePodError("this FakePods group is closed")
        if name is None:
            name = f"{self.service}-{self._next}"
            self._next += 1
        if name in self._pods:
            raise FakePodError(f"pod {name} already exists")
        command = self._backend if backend is True else (backend or None)
        slot = self.network.attach(name, self.port)
        pod = FakePod(
            name=name,
            slot=slot,
            conditions=Conditions(ready=ready, serving=serving, terminating=terminating),
            slice_name=slice_name or self.default_slice,
            command=command,
        )
        self._pods[name] = pod
        try:
            self.network.verify(slot)
            if command is not None:
                self._start(pod)
            self._slices.add(pod.slice_name)
            if publish:
                self.publish()
        except BaseException:
            self._drop(pod)
            raise
        return pod

    def scale_up(self, replicas: int, *, ready: bool = True) -> list[FakePod]:
        """Add pods until there are ``replicas``, publishing once; returns the new ones."""
        new = [self.add(ready=ready, publish=False) for _ in range(replicas - len(self._pods))]
        self.publish()
        return new

    def set_conditions(
        self,
        name: str,
        *,
        ready: bool | None = None,
        serving: bool | None = None,
        terminating: bool | None = None,
        publish: bool = True,
    ) -> FakePod:
        pod = self._get(name)
        c = pod.conditions
        pod.conditions = Conditions(
            ready=c.ready if ready is None else ready,
            serving=c.serving if serving is None else serving,
            terminating=c.terminating if terminating is None else terminating,
        )
        if publish:
            self.publish()
        return pod

    def terminate(self, name: str, *, publish: bool = True) -> FakePod:
        """What a pod in graceful termination looks like: not ready, serving, terminating."""
        return self.set_conditions(
            name, ready=False, serving=True, terminating=True, publish=publish
        )

    def remove(self, name: str, *, publish: bool = True) -> None:
        """Delete the pod: stop its backend, drop it from its slice, delete its namespace."""
        self._drop(self._get(name))
        if publish:
            self.publish()

    def stop_backend(self, name: str) -> None:
        """Stop the backend only (a crash, seen by the network); the slice is unchanged."""
        pod = self._get(name)
        if pod.process is not None:
            pod.process.stop(timeout=3.0)
            pod.process = None

    def start_backend(self, name: str) -> None:
        pod = self._get(name)
        if pod.process is None or pod.process.poll() is not None:
            self._start(pod)

    def overrides(self) -> dict[Endpoint, Endpoint]:
        """The address override for the proxy; empty when pods have real addresses."""
        ours = {(p.address, p.port) for p in self._pods.values()}
        return {k: v for k, v in self.network.overrides().items() if k in ours}

    def verify(self) -> None:
        for pod in self._pods.values():
            self.network.verify(pod.slot)

    # -- the API objects ----------------------------------------------------------------------

    def publish(self) -> None:
        """Apply every slice of this group with the pods' current addresses and conditions."""
        for slice_name in sorted(self._slices):
            entries = [
                EndpointEntry(pod=p.name, address=p.address, conditions=p.conditions)
                for p in sorted(self._pods.values(), key=lambda p: p.name)
                if p.slice_name == slice_name
            ]
            self._apply(
                f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices/{slice_name}",
                endpoint_slice(
                    name=slice_name,
                    namespace=self.namespace,
                    service=self.service,
                    port=self.port,
                    port_name=self.port_name,
                    endpoints=entries,
                ),
            )

    def _apply(self, path: str, manifest: dict[str, object]) -> None:
        server_side_apply(self.api, path, manifest, field_manager=FIELD_MANAGER)

    # -- clean-up -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop all backends, delete namespaces, slices and the Service; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for pod in list(self._pods.values()):
            self._drop(pod)
        # The API server may already be gone at interpreter exit: best effort.
        with contextlib.suppress(Exception):
            for slice_name in self._slices:
                self._delete(
                    f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices/{slice_name}"
                )
            if self._service_created:
                self._delete(f"/api/v1/namespaces/{self.namespace}/services/{self.service}")
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> FakePods:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _get(self, name: str) -> FakePod:
        try:
            return self._pods[name]
        except KeyError:
            raise FakePodError(f"no fake pod named {name}") from None

    def _delete(self, path: str) -> None:
        try:
            request(self.api, "DELETE", path, timeout=5.0)
        except k8s.ApiException as e:
            if e.status != 404:
                raise

    def _drop(self, pod: FakePod) -> None:
        if pod.process is not None:
            pod.process.stop(timeout=3.0)
            pod.process = None
        self.network.detach(pod.slot)
        self._pods.pop(pod.name, None)

    def _start(self, pod: FakePod) -> None:
        assert pod.command is not None
        host, port = pod.slot.bind
        argv = pod.command(BackendSpec(pod=pod.name, host=host, port=port, address=pod.address))
        proc = ManagedProcess(
            f"backend of {pod.name}",
            self.network.wrap(pod.slot, argv),
            log_path=self.log_dir / f"{pod.name}.log",
        )
        pod.process = proc
        proc.start()
        deadline = time.monotonic() + self._ready_timeout
        while True:
            if proc.poll() is not None:
                raise FakePodError(proc.describe_exit())
            try:
                with socket.create_connection(pod.slot.connect, timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise FakePodError(
                        f"backend of {pod.name} did not accept connections on "
                        f"{pod.slot.connect} within {self._ready_timeout:.0f} s; last lines of "
                        f"its log:\n{proc.tail()}"
                    ) from None
                time.sleep(0.02)
