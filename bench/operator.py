"""Operator benchmark: plan convergence latency, and scale (memory, restart convergence).

Everything runs here, on loopback and in this run's network namespaces: a dev cluster
(etcd + kube-apiserver), ``limpet operator`` as a subprocess (admin credentials,
``--standalone``), and for the convergence part three real ``limpet proxy`` processes
as fake pods of the managed proxy Service.

1. **Convergence.** One StickyService, three proxies. Each of ``--changes`` changes
   rewrites the Service's EndpointSlice (a pod added, removed, set terminating or ready
   again, in turn; addresses from TEST-NET-1, published but never contacted). The time
   from just before the API request until all three proxies report the new plan version
   (each proxy's ``/v1/stats`` polled every ~2 ms) is one sample. Changes are spaced by
   ``--gap`` seconds, so each is a lone change for the debouncer (bursts are the
   debouncer's test, not this one). Printed: p50, p90, p99 and max.
2. **Scale.** ``--services`` StickyServices with ``--pods`` endpoints each (addresses
   from 198.18.0.0/15, the benchmarking range; no proxies run, so plans are made but
   pushed nowhere). Printed: time until every one has its backends in status after a
   cold start, the operator's RSS, the RSS after 1000 unrelated EndpointSlices of 20
   endpoints appear in another namespace (they must not reach the operator: its
   watches are label-filtered on the server), and, after a SIGKILL and restart, the time
   until every StickyService has been re-planned by the new process.

Run: ``python -m bench operator`` or ``python -m bench.operator [--changes N]
[--services N] [--pods N] [--skip-scale] [--skip-convergence]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from limpet.controller.kube.client import ENDPOINTSLICES, SERVICES, STICKYSERVICES, KubeClient
from limpet.controller.kube.config import load_cluster_config
from limpet.devcluster.client import admin_client, install_crds, wait_crds
from limpet.devcluster.cluster import DevCluster, DevClusterSettings
from limpet.devcluster.fakepods import FakePods
from limpet.devcluster.podnet import open_pod_network
from limpet.devcluster.process import ManagedProcess
from limpet.devcluster.proxypod import ADMIN_PORT, ProxyPodCommand

REPO = Path(__file__).resolve().parents[1]
LIMPET = str(Path(sys.executable).parent / "limpet")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.contextmanager
def _cluster(work: Path) -> Iterator[DevCluster]:
    cluster = DevCluster(DevClusterSettings(kubeconfig=work / "kubeconfig"))
    cluster.start()
    try:
        with admin_client(cluster) as api:
            wait_crds(api, install_crds(api, REPO / "crds", field_manager="bench"))
        yield cluster
    finally:
        cluster.stop()


def _operator(work: Path, cluster: DevCluster, name: str, *args: str) -> ManagedProcess:
    proc = ManagedProcess(
        "limpet operator",
        [LIMPET, "operator", "--kubeconfig", str(cluster.kubeconfig), "--standalone", *args],
        log_path=work / f"{name}.log",
    )
    proc.start()
    return proc


def _slice(
    name: str, service: str, addresses: list[tuple[str, str, dict[str, bool]]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [addr], "conditions": cond, "targetRef": {"kind": "Pod", "name": pod}}
            for pod, addr, cond in addresses
        ],
    }


def _service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


async def _namespace(kube: KubeClient, name: str) -> None:
    await kube.create(
        "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    )


# -- convergence -----------------------------------------------------------------------------


async def _versions(http: aiohttp.ClientSession, urls: list[str], token: str) -> list[int]:
    async def one(url: str) -> int:
        try:
            async with http.get(
                url + "/v1/stats",
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=1),
            ) as resp:
                data = await resp.json()
                return int(data.get("planVersion") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0

    return list(await asyncio.gather(*(one(u) for u in urls)))


async def convergence(cluster: DevCluster, work: Path, changes: int, gap: float) -> list[str]:
    ns = "bench-convergence"
    config = load_cluster_config(str(cluster.kubeconfig))
    async with KubeClient(config) as kube, aiohttp.ClientSession() as http:
        await _namespace(kube, ns)
        await kube.create(SERVICES.path(ns), _service("shop"))
        pods = [(f"shop-{i}", f"192.0.2.{i + 1}", {"ready": True}) for i in range(5)]
        slice_path = ENDPOINTSLICES.path(ns, "shop-a")
        await kube.apply(slice_path, _slice("shop-a", "shop", pods))
        await kube.create(
            STICKYSERVICES.path(ns),
            {
                "apiVersion": "limpet.dev/v1alpha1",
                "kind": "StickyService",
                "metadata": {"name": "shop"},
                "spec": {
                    "service": "shop",
                    "port": "http",
                    "slowStart": "0s",
                    "proxy": {"replicas": 3},
                },
            },
        )
        operator = _operator(work, cluster, "operator-convergence", "--namespace", ns)
        network = open_pod_network()
        group: FakePods | None = None
        try:
            secret = None
            while secret is None:
                secret = await kube.get(f"/api/v1/namespaces/{ns}/secrets/shop-limpet")
                await asyncio.sleep(0.1)
            token = base64.b64decode(secret["data"]["admin-token"]).decode()
            token_file = work / "admin-token"
            token_file.write_text(token)

            with admin_client(cluster) as api:
                group = FakePods(
                    api,
                    network,
                    namespace=ns,
                    service="shop-proxy",
                    port=8080,
                    port_name="http",
                    backend=ProxyPodCommand(token_file=token_file, state_root=work),
                    create_service=False,
                )
                for _ in range(3):
                    group.add()
            if network.mode == "netns":
                urls = [f"http://{p.connect[0]}:{ADMIN_PORT}" for p in group.pods.values()]
            else:
                return ["(convergence needs network namespaces for three proxy pods; skipped)"]
            # Wait for the first plan everywhere.
            current = 0
            while True:
                versions = await _versions(http, urls, token)
                if min(versions) > 0 and len(set(versions)) == 1:
                    current = versions[0]
                    break
                await asyncio.sleep(0.05)
            samples: list[float] = []
            next_index = len(pods)
            for i in range(changes):
                await asyncio.sleep(gap)
                step = i % 4
                if step == 0:  # a pod joins
                    addr = f"192.0.2.{next_index % 250 + 1}"
                    pods.append((f"shop-{next_index}", addr, {"ready": True}))
                    next_index += 1
                elif step == 1:  # it starts terminating
                    pod, addr, _ = pods[-1]
                    pods[-1] = (pod, addr, {"ready": False, "serving": True, "terminating": True})
                elif step == 2:  # it is gone
                    pods.pop()
                else:  # the first pod stops serving, or serves again
                    pod, addr, cond = pods[0]
                    pods[0] = (pod, addr, {"ready": not cond["ready"]})
                t0 = time.perf_counter()
                await kube.apply(slice_path, _slice("shop-a", "shop", pods))
                while True:
                    versions = await _versions(http, urls, token)
                    if min(versions) > current:
                        samples.append(time.perf_counter() - t0)
                        current = max(versions)
                        break
                    if time.perf_counter() - t0 > 10:
                        raise RuntimeError(f"no convergence after change {i}: {versions}")
                    await asyncio.sleep(0.002)
            ms = [s * 1000 for s in samples]
            return [
                "convergence: EndpointSlice change -> all 3 proxies on the new plan "
                f"({len(ms)} changes)",
                f"  p50 {_percentile(ms, 0.5):7.1f} ms   p90 {_percentile(ms, 0.9):7.1f} ms   "
                f"p99 {_percentile(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms   "
                f"mean {statistics.mean(ms):6.1f} ms",
                "  (includes the API write, the watch event, planning, the status write before a",
                "   lifecycle change, three pushes, and a ~2 ms polling resolution)",
            ]
        finally:
            operator.stop(timeout=10)
            if group is not None:
                group.close()
            network.close()


# -- scale -----------------------------------------------------------------------------------


async def _replanned(
    kube: KubeClient, ns: str, count: int, pods: int, above: dict[str, int]
) -> int:
    items, _ = await kube.list(STICKYSERVICES.path(ns))
    done = 0
    for obj in items:
        status = obj.get("status") or {}
        name = obj["metadata"]["name"]
        if status.get("backendCount") == pods and int(status.get("planVersion") or 0) > above.get(
            name, 0
        ):
            done += 1
    return done


async def _until_replanned(
    kube: KubeClient, ns: str, count: int, pods: int, above: dict[str, int]
) -> None:
    while True:
        if await _replanned(kube, ns, count, pods, above) >= count:
            return
        await asyncio.sleep(0.2)


async def scale(cluster: DevCluster, work: Path, services: int, pods: int) -> list[str]:
    ns = "bench-scale"
    config = load_cluster_config(str(cluster.kubeconfig))
    lines = []
    async with KubeClient(config) as kube:
        await _namespace(kube, ns)
        await _namespace(kube, "bench-unrelated")
        sem = asyncio.Semaphore(16)

        async def make(i: int) -> None:
            async with sem:
                name = f"app-{i}"
                await kube.create(SERVICES.path(ns), _service(name))
                base = i * pods
                eps = [
                    (
                        f"{name}-{j}",
                        f"198.18.{(base + j) // 250}.{(base + j) % 250 + 1}",
                        {"ready": True},
                    )
                    for j in range(pods)
                ]
                await kube.apply(
                    ENDPOINTSLICES.path(ns, f"{name}-a"), _slice(f"{name}-a", name, eps)
                )
                await kube.create(
                    STICKYSERVICES.path(ns),
                    {
                        "apiVersion": "limpet.dev/v1alpha1",
                        "kind": "StickyService",
                        "metadata": {"name": name},
                        "spec": {"service": name, "port": "http", "slowStart": "0s"},
                    },
                )

        idle = _operator(work, cluster, "operator-idle", "--namespace", "bench-unrelated")
        await asyncio.sleep(4)
        assert idle.pid is not None
        idle_rss = _rss_mib(idle.pid)
        idle.stop(timeout=10)
        await asyncio.gather(*(make(i) for i in range(services)))
        t0 = time.perf_counter()
        operator = _operator(
            work, cluster, "operator-scale", "--namespace", ns, "--log-level", "WARNING"
        )
        try:
            await _until_replanned(kube, ns, services, pods, {})
            cold = time.perf_counter() - t0
            await asyncio.sleep(3)
            assert operator.pid is not None
            rss = _rss_mib(operator.pid)
            lines.append(f"scale: {services} StickyServices x {pods} pods, one operator process")
            lines.append(f"  operator RSS, nothing to do    {idle_rss:7.1f} MiB")
            lines.append(f"  cold start -> all planned      {cold:7.2f} s")
            lines.append(f"  operator RSS                   {rss:7.1f} MiB")

            async def unrelated(i: int) -> None:
                async with sem:
                    eps = [
                        (f"x{i}-{j}", f"198.19.{i % 250}.{j + 1}", {"ready": True})
                        for j in range(20)
                    ]
                    await kube.apply(
                        ENDPOINTSLICES.path("bench-unrelated", f"other-{i}"),
                        _slice(f"other-{i}", f"other-{i}", eps),
                    )

            await asyncio.gather(*(unrelated(i) for i in range(1000)))
            await asyncio.sleep(3)
            lines.append(
                f"  RSS after 1000 unrelated slices {_rss_mib(operator.pid):6.1f} MiB "
                "(server-side label selectors keep them out)"
            )
            items, _ = await kube.list(STICKYSERVICES.path(ns))
            before = {o["metadata"]["name"]: int(o["status"]["planVersion"]) for o in items}
            operator.stop(timeout=0.1)  # SIGTERM then SIGKILL almost at once
            t1 = time.perf_counter()
            operator = _operator(
                work,
                cluster,
                "operator-scale-restarted",
                "--namespace",
                ns,
                "--log-level",
                "WARNING",
            )
            await _until_replanned(kube, ns, services, pods, before)
            restart = time.perf_counter() - t1
            await asyncio.sleep(3)
            lines.append(f"  restart -> all re-planned      {restart:7.2f} s (versions only go up)")
            lines.append(f"  operator RSS after restart     {_rss_mib(operator.pid or 0):7.1f} MiB")
        finally:
            operator.stop(timeout=10)
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.operator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--changes", type=int, default=120)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between changes")
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--skip-convergence", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="limpet-bench-operator-") as tmp:
        work = Path(tmp)
        with _cluster(work) as cluster:
            lines: list[str] = []
            if not args.skip_convergence:
                lines += asyncio.run(convergence(cluster, work, args.changes, args.gap))
            if not args.skip_scale:
                lines += asyncio.run(scale(cluster, work, args.services, args.pods))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
