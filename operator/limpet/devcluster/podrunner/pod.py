"""One pod on a node: its network namespace, volumes, containers and status, start to end.

Data flow: the runner hands each Pod bound to its node to a :class:`PodWorker`
(:meth:`update` with every newer version of the object). :meth:`run` attaches the pod to
its node's network (a namespace holding the pod IP, checked by ``verify`` before any
traffic), fetches the Secrets, ConfigMaps and service-account token its env and volumes
need, writes the volumes (:mod:`.volumes`), runs the init containers one after another
to completion and then the containers (:mod:`.container`), and writes the pod's status
(:mod:`.status`) whenever it changes. A ``deletionTimestamp`` (or the pod vanishing)
stops every container gracefully within the grace period; the worker then frees the
namespace and folders, writes the final status and deletes the pod with grace period 0,
as a kubelet does. A pod whose containers all finished for good (``restartPolicy``)
releases its namespace and stays, ``Succeeded`` or ``Failed``.

Asyncio: one task per pod; network changes go through the node's lock (a
``NetnsPodNetwork`` is used from one thread at a time, and its calls block briefly, so
they run in a worker thread).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.podrunner.container import (
    MIN_KILL_GRACE,
    Backoff,
    Container,
    ContainerContext,
)
from limpet.devcluster.podrunner.images import ImageTable
from limpet.devcluster.podrunner.kubeapi import ApiError, JsonObj, KubeApi
from limpet.devcluster.podrunner.spec import (
    ConfigError,
    ContainerPlan,
    Sources,
    check_supported,
    container_plan,
    referenced_objects,
)
from limpet.devcluster.podrunner.status import ContainerView, State, now_rfc3339, pod_status
from limpet.devcluster.podrunner.volumes import materialize, token_request
from limpet.devcluster.podslot import PodSlot

log = logging.getLogger("limpet.podrunner")
STATUS_DEBOUNCE = 0.05


class NodeNetwork(Protocol):
    """A node's share of the pod network (see :mod:`.runner`)."""

    host_ip: str

    async def attach(self, pod: str) -> PodSlot: ...

    async def detach(self, slot: PodSlot) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEnv:
    """What every pod on a node shares."""

    api: KubeApi
    http: aiohttp.ClientSession
    network: NodeNetwork
    images: ImageTable
    work_dir: Path
    log_dir: Path
    ca_pem: bytes
    backoff: Backoff
    service_env: tuple[tuple[str, str], ...] = ()
    """``KUBERNETES_SERVICE_HOST`` and friends, for every container (:mod:`.apirelay`)."""


def pod_path(pod: Mapping[str, Any]) -> str:
    m = pod["metadata"]
    return f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}"


def _decode(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}


class PodWorker:
    def __init__(self, env: PodEnv, pod: JsonObj) -> None:
        self.env = env
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = env.work_dir / "pods" / self.uid
        self.logs = env.log_dir / f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.slot: PodSlot | None = None
        self.volumes: dict[str, Path] = {}
        self.init_containers: list[Container] = []
        self.containers: list[Container] = []
        self.start_time = (pod.get("status") or {}).get("startTime") or now_rfc3339()
        self.initialized = False
        self._gone = False
        self._terminate = asyncio.Event()
        self._dirty = asyncio.Event()
        self._written: JsonObj | None = None
        self._sources: Sources | None = None
        self._posting: set[asyncio.Task[None]] = set()
        self._restored = {
            s["name"]: int(s.get("restartCount", 0))
            for s in (pod.get("status") or {}).get("containerStatuses") or []
        }

    # -- inputs ---------------------------------------------------------------------------------

    def update(self, pod: JsonObj) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self._terminate.set()

    def vanished(self) -> None:
        """The pod was deleted outright (grace period 0): stop, and write nothing back."""
        self._gone = True
        self._terminate.set()

    @property
    def grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod.get("spec", {})
        seconds = meta.get("deletionGracePeriodSeconds")
        if seconds is None:
            seconds = spec.get("terminationGracePeriodSeconds", 30)
        return max(float(seconds), MIN_KILL_GRACE)

    # -- the lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._status_writer())
        try:
            await self._run()
        except Exception:
            log.exception("pod %s failed in the runner", self.key)
            raise
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await self._release()
        if self._gone:
            return
        deleted = self._terminate.is_set()
        await self._write_status(terminal=deleted)
        if deleted:
            await self.env.api.delete(
                pod_path(self.pod),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )

    async def _run(self) -> None:
        spec = self.pod.get("spec", {})
        self.init_containers = [
            self._container(c, init=True) for c in spec.get("initContainers", [])
        ]
        self.containers = [self._container(c) for c in spec.get("containers", [])]
        self.changed()
        if not await self._until_set_up():
            return
        for c in self.init_containers:
            if not await self._run_until_done(c):
                return
        self.initialized = True
        self.changed()
        tasks = [asyncio.create_task(c.run()) for c in self.containers]
        stop = asyncio.create_task(self._terminated())
        try:
            # Until deletion, or until every container is done for good (restartPolicy).
            pending: set[asyncio.Task[None]] = {stop, *tasks}
            while stop in pending and pending - {stop}:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if self._terminate.is_set():
                await asyncio.gather(*(c.stop(self.grace) for c in self.containers))
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stop.cancel()

    async def _run_until_done(self, c: Container) -> bool:
        task = asyncio.create_task(c.run())
        stop = asyncio.create_task(self._terminated())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            await c.stop(self.grace)
            await task
            return False
        return c.view.state.exit_code == 0

    async def _terminated(self) -> None:
        await self._terminate.wait()

    def _container(self, body: Mapping[str, Any], *, init: bool = False) -> Container:
        ctx = ContainerContext(
            pod_name=self.pod["metadata"]["name"],
            netns="",
            pod_ip="",
            pod_dir=self.dir,
            log_dir=self.logs,
            volumes=self.volumes,
            http=self.env.http,
            backoff=self.env.backoff,
            restart_policy=self.pod.get("spec", {}).get("restartPolicy", "Always"),
            grace_seconds=float(self.pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)),
            build_plan=self._plan,
            changed=self.changed,
            report=self.report,
        )
        c = Container(body["name"], str(body.get("image", "")), ctx, init=init)
        c.view = ContainerView(
            name=c.name, image=c.view.image, restart_count=self._restored.get(c.name, 0)
        )
        return c

    async def _until_set_up(self) -> bool:
        """Network and volumes; retried (shown as ContainerCreating) until they work."""
        delay = 0.5
        while not self._terminate.is_set():
            try:
                await self._set_up()
                return True
            except ConfigError as e:
                self._waiting(e.reason, e.message)
            except (ApiError, aiohttp.ClientError, OSError, DevClusterError) as e:
                # A full pod subnet, an API hiccup: shown, and retried.
                self._waiting("ContainerCreating", f"{type(e).__name__}: {e}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._terminate.wait(), delay)
            delay = min(delay * 2, 10.0)
        return False

    def _waiting(self, reason: str, message: str) -> None:
        for c in [*self.init_containers, *self.containers]:
            c.view = ContainerView(
                name=c.name,
                image=c.view.image,
                restart_count=c.view.restart_count,
                state=State(kind="waiting", reason=reason, message=message),
            )
        self.changed()

    async def _set_up(self) -> None:
        check_supported(self.pod)
        if self.slot is None:
            self.slot = await self.env.network.attach(self.key)
            for c in [*self.init_containers, *self.containers]:
                c.ctx.netns = self.slot.netns or ""
                c.ctx.pod_ip = self.slot.address
            self.changed()
        sources = await self._fetch_sources()
        token = await self._token()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        self.volumes.clear()
        self.volumes.update(
            materialize(
                self.pod,
                self.dir,
                sources,
                token=token,
                ca_pem=self.env.ca_pem,
                pod_ip=self.slot.address,
                host_ip=self.env.network.host_ip,
            )
        )

    async def _fetch_sources(self) -> Sources:
        secrets, config_maps = referenced_objects(self.pod)
        ns = self.pod["metadata"]["namespace"]
        got_s = {n: await self.env.api.get(f"/api/v1/namespaces/{ns}/secrets/{n}") for n in secrets}
        got_c = {
            n: await self.env.api.get(f"/api/v1/namespaces/{ns}/configmaps/{n}")
            for n in config_maps
        }
        self._sources = Sources(
            secrets={n: _decode(o.get("data")) for n, o in got_s.items() if o is not None},
            config_maps={
                n: {
                    **{k: v.encode() for k, v in (o.get("data") or {}).items()},
                    **_decode(o.get("binaryData")),
                }
                for n, o in got_c.items()
                if o is not None
            },
        )
        return self._sources

    async def _token(self) -> str | None:
        wanted = token_request(self.pod)
        if wanted is None:
            return None
        audience, expiration = wanted
        meta, spec = self.pod["metadata"], self.pod.get("spec", {})
        sa = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else None,
                "expirationSeconds": max(expiration, 600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": self.uid,
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token"
        answer = await self.env.api.create(path, body)
        return str(answer["status"]["token"])

    async def _plan(self, name: str) -> ContainerPlan:
        spec = self.pod.get("spec", {})
        body = next(
            c
            for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
            if c["name"] == name
        )
        assert self.slot is not None
        sources = await self._fetch_sources()
        return container_plan(
            self.pod,
            body,
            self.env.images,
            sources,
            pod_ip=self.slot.address,
            host_ip=self.env.network.host_ip,
            service_env=dict(self.env.service_env),
        )

    async def _release(self) -> None:
        if self.slot is not None:
            slot, self.slot = self.slot, None
            await self.env.network.detach(slot)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)

    # -- events ---------------------------------------------------------------------------------

    def report(self, container: str, kind: str, reason: str, message: str) -> None:
        """Record a Kubernetes Event on the Pod (``kubectl describe pod``), in the background."""
        task = asyncio.create_task(self._post_event(container, kind, reason, message))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _post_event(self, container: str, kind: str, reason: str, message: str) -> None:
        meta = self.pod["metadata"]
        node = self.pod.get("spec", {}).get("nodeName", "")
        now = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": self.uid,
                "fieldPath": f"spec.containers{{{container}}}",
            },
            "type": kind,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.env.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning("pod %s: event %s not recorded: %s", self.key, reason, e)

    # -- status ---------------------------------------------------------------------------------

    def changed(self) -> None:
        self._dirty.set()

    def views(self) -> list[ContainerView]:
        return [c.view for c in self.containers]

    def status(self, *, terminal: bool = False) -> JsonObj:
        status = pod_status(
            self.pod,
            self.views(),
            pod_ip=self._pod_ip(),
            host_ip=self.env.network.host_ip,
            start_time=self.start_time,
            initialized=self.initialized or not self.init_containers,
            terminal=terminal,
        )
        if self.init_containers:
            status["initContainerStatuses"] = [c.view.to_json() for c in self.init_containers]
            if any(c.view.done and c.view.state.exit_code != 0 for c in self.init_containers):
                status["phase"] = "Failed"  # an init container failed for good
        return status

    def _pod_ip(self) -> str:
        if self.slot is not None:
            return self.slot.address
        return str((self.pod.get("status") or {}).get("podIP", ""))

    async def _status_writer(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(STATUS_DEBOUNCE)
            self._dirty.clear()
            if self._gone:
                return
            await self._write_status()

    async def _write_status(self, *, terminal: bool = False) -> None:
        status = self.status(terminal=terminal)
        comparable = {
            **status,
            "conditions": [{**c, "lastTransitionTime": None} for c in status["conditions"]],
        }
        if comparable == self._written:
            return
        try:
            answer = await self.env.api.merge_patch(
                pod_path(self.pod) + "/status", {"status": status}
            )
        except (TimeoutError, ApiError, aiohttp.ClientError) as e:
            log.warning("pod %s: status not written: %s", self.key, e)
            self._dirty.set()  # try again with the next change or tick
            await asyncio.sleep(0.5)
            return
        self._written = comparable
        self.pod = {**self.pod, "status": answer.get("status", status)}
