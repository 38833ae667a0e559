"""The pod runner: one process that plays the kubelet for one or more Nodes.

Data flow: :meth:`PodRunner.run` opens a pod network (``NetnsPodNetwork``: one bridge
and a /24 that nothing on the host routes; each node's ``podCIDR`` is an equal share of
it), registers the Nodes and keeps their Leases fresh (:mod:`.node`), and list-watches
the Pods bound to each node (``fieldSelector=spec.nodeName=<node>``). Each pod gets a
:class:`~.pod.PodWorker` task; newer versions of the object are handed to it; a pod that
vanishes is stopped. A pod that finished for good is kept in ``done`` so it is not
started again; its later deletion is completed with grace period 0.

On stop (SIGTERM to the command), every pod's containers get SIGTERM and
:data:`~.container.MIN_KILL_GRACE` seconds, the namespaces and the bridge are deleted,
and the Nodes are marked not Ready; Pod objects are left as they are (a kubelet that
stops does not delete pods either).

Asyncio, single event loop. Network calls (``ip``) block for milliseconds and run in a
worker thread under one lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from limpet.devcluster.netns import NetnsPodNetwork
from limpet.devcluster.podrunner import node as nodes
from limpet.devcluster.podrunner.apirelay import ApiRelay, loopback_target, service_env
from limpet.devcluster.podrunner.container import MIN_KILL_GRACE, Backoff
from limpet.devcluster.podrunner.images import ImageTable, default_table
from limpet.devcluster.podrunner.kubeapi import ApiError, JsonObj, KubeApi
from limpet.devcluster.podrunner.pod import PodEnv, PodWorker, pod_path
from limpet.devcluster.podslot import PodSlot

log = logging.getLogger("limpet.podrunner")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunnerSettings:
    kubeconfigs: tuple[Path, ...]
    """One identity per Node (``system:node:<name>``, as the Node authorizer and
    NodeRestriction want), in Node order; a single one serves every Node."""
    work_dir: Path
    nodes: int = 1
    node_prefix: str = "limpet-node"
    backoff: Backoff = field(default_factory=Backoff)
    images: ImageTable = field(default_factory=default_table)
    lease_renew: float = 10.0


class NodeShare:
    """A node's slice of the runner's pod network."""

    def __init__(
        self, network: NetnsPodNetwork, lock: asyncio.Lock, cidr: ipaddress.IPv4Network
    ) -> None:
        self._network = network
        self._lock = lock
        self.cidr = cidr
        self.host_ip = network.gateway

    async def attach(self, pod: str) -> PodSlot:
        async with self._lock:
            slot = await asyncio.to_thread(self._network.attach, pod, 0, within=self.cidr)
            # Traffic only to addresses this run made and checked: verify before use.
            await asyncio.to_thread(self._network.verify, slot)
            return slot

    async def detach(self, slot: PodSlot) -> None:
        async with self._lock:
            await asyncio.to_thread(self._network.detach, slot)


def node_cidrs(subnet: ipaddress.IPv4Network, count: int) -> list[ipaddress.IPv4Network]:
    """``count`` equal shares of ``subnet`` (the whole subnet for one node)."""
    bits = math.ceil(math.log2(count)) if count > 1 else 0
    if subnet.prefixlen + bits > 28:
        raise ValueError(f"{count} nodes do not fit in {subnet}")
    return list(subnet.subnets(prefixlen_diff=bits))[:count]


class PodRunner:
    def __init__(self, settings: RunnerSettings) -> None:
        self.settings = settings
        self.workers: dict[str, PodWorker] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.done: set[str] = set()
        self.node_specs: list[nodes.NodeSpec] = []
        self.ready = asyncio.Event()
        self._envs: dict[str, PodEnv] = {}
        self.relay: ApiRelay | None = None

    async def run(self, stop: asyncio.Event) -> None:
        s = self.settings
        s.work_dir.mkdir(parents=True, exist_ok=True)
        network = await asyncio.to_thread(NetnsPodNetwork.create)
        apis = [
            KubeApi(
                s.kubeconfigs[min(i, len(s.kubeconfigs) - 1)],
                secrets_dir=s.work_dir / f"identity-{i}",
            )
            for i in range(s.nodes)
        ]
        http = aiohttp.ClientSession()
        lock = asyncio.Lock()
        background: list[asyncio.Task[None]] = []
        self.relay = ApiRelay(listen=network.gateway, target=loopback_target(apis[0].server))
        try:
            await self.relay.start()
            ca_pem = (s.work_dir / "identity-0" / "ca.crt").read_bytes()
            for i, cidr in enumerate(node_cidrs(network.subnet, s.nodes)):
                api = apis[i]
                spec = nodes.NodeSpec(
                    name=f"{s.node_prefix}-{i}",
                    pod_cidr=str(cidr),
                    host_ip=network.gateway,
                    run_id=network.run_id,
                )
                created = await nodes.register(api, spec)
                self.node_specs.append(spec)
                self._envs[spec.name] = PodEnv(
                    api=api,
                    http=http,
                    network=NodeShare(network, lock, cidr),
                    images=s.images,
                    work_dir=s.work_dir,
                    log_dir=s.work_dir / "logs",
                    ca_pem=ca_pem,
                    backoff=s.backoff,
                    service_env=tuple(service_env(network.gateway).items()),
                )
                uid = created["metadata"]["uid"]
                background.append(
                    asyncio.create_task(nodes.heartbeat(api, spec, uid, lease_renew=s.lease_renew))
                )
                background.append(asyncio.create_task(self._watch(spec.name)))
            self.ready.set()
            await stop.wait()
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._stop_pods()
            for api, spec in zip(apis, self.node_specs, strict=False):
                with contextlib.suppress(Exception):
                    await nodes.set_ready(
                        api, spec, ready=False, message="limpet pod runner stopped"
                    )
            await self.relay.close()
            await http.close()
            for api in apis:
                await api.close()
            await asyncio.to_thread(network.close)

    async def _stop_pods(self) -> None:
        workers = list(self.workers.values())
        for w in workers:
            w.vanished()  # stop without deleting: the Pod objects stay
        await asyncio.gather(
            *(c.stop(MIN_KILL_GRACE) for w in workers for c in [*w.init_containers, *w.containers]),
            return_exceptions=True,
        )
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def _watch(self, node: str) -> None:
        api = self._envs[node].api
        async for kind, obj in api.list_watch(
            "/api/v1/pods", field_selector=f"spec.nodeName={node}"
        ):
            if kind == "SYNC":
                listed = {p["metadata"]["uid"]: p for p in obj.get("items", [])}
                for uid, w in list(self.workers.items()):
                    if w.pod["spec"].get("nodeName") == node and uid not in listed:
                        w.vanished()
                for pod in listed.values():
                    await self._handle(node, pod)
            elif kind == "DELETED":
                gone = self.workers.get(obj["metadata"]["uid"])
                if gone is not None:
                    gone.update(obj)
                    gone.vanished()
            else:
                await self._handle(node, obj)

    async def _handle(self, node: str, pod: JsonObj) -> None:
        # One pod's trouble (an API error while completing its deletion) must not end the
        # node's watch.
        try:
            await self._dispatch(node, pod)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            log.warning(
                "pod %s/%s: %s", pod["metadata"].get("namespace"), pod["metadata"]["name"], e
            )

    async def _dispatch(self, node: str, pod: JsonObj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        terminal = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if uid in self.done or terminal:
            if pod["metadata"].get("deletionTimestamp"):
                await self._envs[node].api.delete(
                    pod_path(pod), {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
                )
            return
        new = PodWorker(self._envs[node], pod)
        new.update(pod)
        self.workers[uid] = new
        self.tasks[uid] = asyncio.create_task(self._run_worker(new))

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        except Exception:
            log.exception("pod %s: the runner gave up on it", worker.key)
        finally:
            self.workers.pop(worker.uid, None)
            self.tasks.pop(worker.uid, None)
            self.done.add(worker.uid)
