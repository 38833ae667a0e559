"""Test harness for the operator: the operator under its own ServiceAccount, real proxies,
simulated users.

- :func:`operator_identity` creates a ServiceAccount, binds it to the ClusterRole read
  from ``deploy/rbac/operator-rbac.yaml`` (rules taken verbatim; only the object names
  and the binding's subject are changed, so other tests' copies never interfere), and
  writes a kubeconfig holding a token for it from the TokenRequest API. The operator's
  permissions therefore come only from that file: a missing rule fails the tests.
- :class:`OperatorProcess` runs ``limpet operator`` as a real subprocess (so "restart
  the operator" is a real kill and start).
- :class:`ProxyFleet` runs real ``limpet proxy`` processes as fake pods of the managed
  proxy Service, so the operator discovers them from their EndpointSlice exactly as in a
  cluster and pushes to ``<pod IP>:<adminPort>``.
- :class:`User` is a client with its own LB cookie, reporting which pod answered.
- :class:`Scenes` opens a :class:`Scene`: StickyService "shop" with the operator, its
  proxies and backends, Ready and converged (the ``scenes`` and ``scene`` fixtures).

Everything talks only to loopback or to pod IPs inside this run's network namespaces.

These scenes are fake pods: the test publishes their EndpointSlices and picks each
condition's instant. The operator's scenarios on real pods (Deployments, the pod runner,
the EndpointSlice controller, ``kubectl``) are ``test_scenarios_pods.py``; the
docstrings of ``test_scenarios.py`` and ``test_restarts.py`` name the fake-pod tests that
remain and the exact condition each needs. Other modules use these scenes where the
backends are only a membership source for status, Events, metrics or RBAC checks.
``test_burst_and_peering.py`` writes a slice by hand (:func:`shop_slice`): a rollout's
burst of 50 updates, as fast as the API server takes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s

from limpet.controller.kube.client import SERVICES, STICKYSERVICES, KubeClient
from limpet.controller.model.names import proxy_service_name, secret_name
from limpet.devcluster.client import request, server_side_apply, service_account_kubeconfig
from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.fakepods import FakePod, FakePods, FakePodsFactory
from limpet.devcluster.process import ManagedProcess
from limpet.devcluster.proxypod import ADMIN_PORT, ProxyPodCommand

REPO = Path(__file__).resolve().parents[2]
RBAC_FILE = REPO / "deploy" / "rbac" / "operator-rbac.yaml"
LIMPET = str(Path(sys.executable).parent / "limpet")
PROXY_PORT = 8080

T = TypeVar("T")


# -- identity -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorIdentity:
    kubeconfig: Path
    namespace: str
    service_account: str
    cluster_role: str


def operator_identity(api: k8s.ApiClient, cluster: DevCluster, out_dir: Path) -> OperatorIdentity:
    suffix = secrets.token_hex(3)
    ns = f"limpet-system-{suffix}"
    sa = "limpet-operator"
    request(api, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    request(
        api,
        "POST",
        f"/api/v1/namespaces/{ns}/serviceaccounts",
        body={"metadata": {"name": sa}},
    )
    docs = [d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    binding = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    role_name = f"{role['metadata']['name']}-{suffix}"
    role["metadata"]["name"] = role_name
    binding["metadata"]["name"] = role_name
    binding["roleRef"]["name"] = role_name
    assert binding["roleRef"]["kind"] == "ClusterRole"
    binding["subjects"] = [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]
    base = "/apis/rbac.authorization.k8s.io/v1"
    server_side_apply(api, f"{base}/clusterroles/{role_name}", role, field_manager="tests")
    server_side_apply(
        api, f"{base}/clusterrolebindings/{role_name}", binding, field_manager="tests"
    )
    path = service_account_kubeconfig(
        api, cluster, out_dir / f"operator-{suffix}.kubeconfig", namespace=ns, name=sa
    )
    return OperatorIdentity(
        kubeconfig=path, namespace=ns, service_account=sa, cluster_role=role_name
    )


# -- operator -----------------------------------------------------------------------------------


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, args: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.args = args
        self.proc = ManagedProcess(
            "limpet operator",
            [LIMPET, "operator", "--kubeconfig", str(kubeconfig), *args],
            log_path=log_path,
        )

    def start(self) -> OperatorProcess:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.proc.stop(timeout=15)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        pid = self.proc.pid
        if pid is not None and self.proc.poll() is None:
            import os
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self.proc.stop(timeout=5)

    def alive(self) -> bool:
        return self.proc.pid is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return self.proc.tail(lines)


StartOperator = Callable[..., OperatorProcess]
"""The ``start_operator`` fixture: ``start_operator(*args, log_name=None)``."""


# -- proxies ------------------------------------------------------------------------------------


class ProxyFleet:
    """Real ``limpet proxy`` processes, published as the managed proxy Service's pods."""

    def __init__(
        self,
        fake_pods: FakePodsFactory,
        sticky: str,
        token: str,
        work: Path,
        *,
        external_service: str | None = None,
    ) -> None:
        """Managed mode by default (the operator creates the Service); with
        ``external_service``, the proxies are the pods of that (test-made) Service."""
        self.work = work
        self.token_file = work / "admin-token"
        self.token_file.write_text(token)
        self.group: FakePods = fake_pods(
            external_service or proxy_service_name(sticky),
            port=PROXY_PORT,
            port_name="http",
            backend=ProxyPodCommand(token_file=self.token_file, state_root=work),
            create_service=external_service is not None,
        )
        if self.group.network.mode != "netns":
            pytest.fail(
                "the operator scenario tests run real proxies as fake pods with their own pod "
                "IPs and need network namespaces (root and iproute2); "
                f"this run's fake pods are in {self.group.network.mode!r} mode",
                pytrace=False,
            )

    def add(self, count: int) -> list[FakePod]:
        return [self.group.add() for _ in range(count)]

    @property
    def pods(self) -> list[FakePod]:
        return sorted(self.group.pods.values(), key=lambda p: p.name)

    def urls(self) -> list[str]:
        return [p.url for p in self.pods]

    def admin_url(self, pod: FakePod) -> str:
        host, _ = pod.connect
        return f"http://{host}:{ADMIN_PORT}"

    async def stats(self, http: aiohttp.ClientSession, pod: FakePod) -> dict[str, Any]:
        async with http.get(
            self.admin_url(pod) + "/v1/stats",
            headers={"Authorization": f"Bearer {self.token_file.read_text()}"},
            timeout=aiohttp.ClientTimeout(total=3),
        ) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def versions(self, http: aiohttp.ClientSession) -> list[int | None]:
        out: list[int | None] = []
        for pod in self.pods:
            try:
                out.append((await self.stats(http, pod)).get("planVersion"))
            except (aiohttp.ClientError, TimeoutError):
                out.append(None)
        return out


# -- users --------------------------------------------------------------------------------------


@dataclass
class User:
    """One browser-like client: its own LB cookie, and which pods answered it."""

    name: str
    cookie_name: str = "LIMPET"
    cookie: str | None = None
    pods: list[str] = field(default_factory=list)
    # When each answered request was sent and answered (monotonic clock), beside ``pods``.
    sent: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)

    async def get(self, http: aiohttp.ClientSession, base: str, path: str = "/") -> str:
        started = time.monotonic()
        headers = {}
        if self.cookie is not None:
            headers["Cookie"] = f"{self.cookie_name}={self.cookie}"
        async with http.get(
            base + path, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise AssertionError(f"{self.name}: HTTP {resp.status} {body[:200]!r}")
            for value in resp.headers.getall("Set-Cookie", []):
                name, _, rest = value.partition("=")
                if name.strip() == self.cookie_name:
                    self.cookie = rest.split(";", 1)[0]
            pod = json.loads(body)["pod"]
        self.pods.append(pod)
        self.sent.append(started)
        self.answered.append(time.monotonic())
        return str(pod)

    @property
    def pod(self) -> str:
        return self.pods[-1]

    def moves(self) -> int:
        return sum(1 for a, b in zip(self.pods, self.pods[1:], strict=False) if a != b)

    def track(self) -> list[Visit]:
        """Each answered request as (pod, sent at, answered at)."""
        return list(zip(self.pods, self.sent, self.answered, strict=True))


async def keep_busy(
    http: aiohttp.ClientSession,
    users: Sequence[User],
    proxies: Sequence[str],
    done: Callable[[], bool],
    *,
    every: float = 0.2,
    rng: random.Random | None = None,
) -> None:
    """Until ``done()``, each of ``users`` sends a request every ``every`` seconds, user i
    through ``proxies[i % len(proxies)]``, or with ``rng`` each request through a proxy
    it picks. Each user on its own task: in one sequential loop, a few slow answers on a
    loaded machine left the last users idle for over a second (minIdle in the
    scenarios), and the proxy rightly moved them."""

    async def one(i: int, user: User) -> None:
        while not done():
            proxy = proxies[i % len(proxies)] if rng is None else rng.choice(proxies)
            await user.get(http, proxy)
            await asyncio.sleep(every)

    await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))


@contextlib.asynccontextmanager
async def kept_busy(
    http: aiohttp.ClientSession,
    users: Sequence[User],
    proxies: Sequence[str],
    *,
    min_idle: float,
    rng: random.Random | None = None,
) -> AsyncIterator[None]:
    """While in the block, :func:`keep_busy` runs ``users``; on leaving it normally,
    checks that none moved while never idle for ``min_idle`` (:func:`assert_busy_stayed`).
    The pod scenes' twin is ``pods_scene.Sessions.kept_busy``."""
    stop = asyncio.Event()
    task = asyncio.create_task(keep_busy(http, users, proxies, stop.is_set, rng=rng))
    try:
        yield
    finally:
        stop.set()
        await task
    assert_busy_stayed({u.name: u.track() for u in users}, min_idle=min_idle)


# One answered request of a session: the pod that answered, when it was sent and when
# answered (monotonic clock).
Visit = tuple[str, float, float]


def assert_busy_stayed(tracks: Mapping[str, Sequence[Visit]], *, min_idle: float) -> None:
    """No session moved at a request that came less than ``min_idle`` after its previous
    one, measured from that one's sending to this one's answer: the longest the proxy
    can have seen the session idle, so no idle rule may have moved it. (On a stalled
    machine a gap may reach ``min_idle``, and a move after it is right.) The check must
    say something: at least 9 in 10 of the requests came that soon."""
    wrong: dict[str, list[tuple[str, str, float]]] = {}
    gaps: list[float] = []
    for name, track in tracks.items():
        for (pod, sent, _), (then, _, answered) in itertools.pairwise(track):
            gaps.append(answered - sent)
            if then != pod and answered - sent < min_idle:
                wrong.setdefault(name, []).append((pod, then, answered - sent))
    assert not wrong, f"sessions moved though never idle for {min_idle} s: {wrong}"
    short = sum(1 for g in gaps if g < min_idle)
    print(f"busy: {len(gaps)} gaps, {short} under {min_idle} s, the longest {max(gaps):.2f} s")
    assert short >= 0.9 * len(gaps), f"only {short} of {len(gaps)} gaps under {min_idle} s"


# -- helpers ------------------------------------------------------------------------------------


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = 30.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value (returned) or raise after ``within`` s."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            value = await probe()
            if value:
                return value
            last = value
        except (AssertionError, aiohttp.ClientError, TimeoutError, KeyError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}: {last!r}")
        await asyncio.sleep(interval)


def sticky_manifest(name: str, service: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"service": service, "port": "http"}
    body.update(spec)
    return {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "metadata": {"name": name},
        "spec": body,
    }


async def get_sticky(kube: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    obj = await kube.get(STICKYSERVICES.path(namespace, name))
    assert obj is not None, f"StickyService {namespace}/{name} is gone"
    return obj


def status_condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """Condition ``kind`` of a StickyService status, or {} if it has none."""
    for c in status.get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


async def condition(kube: KubeClient, namespace: str, name: str, kind: str) -> dict[str, Any]:
    obj = await get_sticky(kube, namespace, name)
    return status_condition(obj.get("status") or {}, kind)


async def read_token(kube: KubeClient, namespace: str, name: str) -> str:
    async def probe() -> str | None:
        obj = await kube.get(f"/api/v1/namespaces/{namespace}/secrets/{secret_name(name)}")
        if obj is None:
            return None
        return base64.b64decode(obj["data"]["admin-token"]).decode()

    return await eventually(probe, what="the operator's Secret")


async def events(kube: KubeClient, namespace: str, name: str) -> list[dict[str, Any]]:
    data = await kube.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/events",
        params={"fieldSelector": f"involvedObject.name={name}"},
    )
    return list(data.get("items") or [])


async def event_reasons(kube: KubeClient, namespace: str, name: str) -> list[str]:
    return [e.get("reason", "") for e in await events(kube, namespace, name)]


async def event_posted(
    kube: KubeClient, namespace: str, name: str, reason: str, *, within: float = 10.0
) -> None:
    """Wait for an Event: the reporter posts Events after the status write they follow."""

    async def posted() -> bool:
        return reason in await event_reasons(kube, namespace, name)

    await eventually(posted, within=within, what=f"a {reason} Event")


# -- scenes ----------------------------------------------------------------------------------------


FAST = {
    "affinity": {"type": "Cookie", "cookie": {"secure": False}},
    "slowStart": "0s",
    "rebalance": {"window": "6s", "minIdle": "1s", "maxMovesPerSecond": 1000},
    "drain": {"timeout": "20s", "minIdle": "1s"},
}


class Scene:
    """A StickyService 'shop' with its operator, proxies and backends."""

    def __init__(
        self,
        kube: KubeClient,
        http: aiohttp.ClientSession,
        namespace: str,
        fleet: ProxyFleet,
        backends: FakePods,
    ) -> None:
        self.kube = kube
        self.http = http
        self.namespace = namespace
        self.fleet = fleet
        self.backends = backends
        self.operator: OperatorProcess | None = None

    async def sticky(self) -> dict[str, Any]:
        return await get_sticky(self.kube, self.namespace, "shop")

    async def converged(self) -> int:
        """Wait until every proxy runs the plan version in status; return it."""

        async def probe() -> int | None:
            status = (await self.sticky()).get("status") or {}
            version = status.get("planVersion")
            versions = await self.fleet.versions(self.http)
            return version if version and all(v == version for v in versions) else None

        return await eventually(probe, what="every proxy on the status plan version")

    async def backend_states(self) -> dict[str, str]:
        status = (await self.sticky()).get("status") or {}
        return {b.get("pod"): b["state"] for b in status.get("backends") or []}

    async def state_is(self, pod: str, state: str) -> bool:
        return (await self.backend_states()).get(pod) == state

    async def ready(self) -> None:
        async def probe() -> bool:
            c = await condition(self.kube, self.namespace, "shop", "Ready")
            return c.get("status") == "True"

        await eventually(probe, within=40, what="Ready=True")


@dataclass(frozen=True, slots=True)
class Scenes:
    """Opens scenes in one test's namespace (the ``scenes`` fixture)."""

    kube: KubeClient
    http: aiohttp.ClientSession
    namespace: str
    start_operator: StartOperator
    fake_pods: FakePodsFactory
    work: Path

    async def open(
        self,
        *,
        pods: int = 3,
        proxies: int = 2,
        spec: dict[str, Any] | None = None,
        operator_args: Sequence[str] = (),
        external_service: str | None = None,
    ) -> Scene:
        """StickyService "shop" (``spec``, FAST by default) over Service "shop" with
        ``pods`` backends and ``proxies`` real proxies (managed ones, or with
        ``external_service`` the pods of that Service, selected by its label), the operator
        started with ``operator_args``; returned once Ready and every proxy runs the
        status plan version."""
        if external_service is None:
            proxy: dict[str, Any] = {"replicas": proxies}
        else:
            selector = {"matchLabels": {"kubernetes.io/service-name": external_service}}
            proxy = {"managed": False, "selector": selector}
        await self.kube.create(
            STICKYSERVICES.path(self.namespace),
            sticky_manifest("shop", "shop", **(spec or FAST), proxy=proxy),
        )
        operator = self.start_operator(*operator_args)
        token = await read_token(self.kube, self.namespace, "shop")
        fleet = ProxyFleet(
            self.fake_pods, "shop", token, self.work, external_service=external_service
        )
        fleet.add(proxies)
        backends = self.fake_pods("shop")
        backends.scale_up(pods)
        scene = Scene(self.kube, self.http, self.namespace, fleet, backends)
        scene.operator = operator
        await scene.ready()
        await scene.converged()
        return scene


def shop_slice(namespace: str, count: int) -> dict[str, Any]:
    """An EndpointSlice of Service "shop" with ``count`` ready endpoints at TEST-NET-1
    addresses: published, never contacted (no proxy routes to them in these tests)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "shop-burst",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": "shop"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [f"192.0.2.{i + 1}"],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": f"shop-{i}"},
            }
            for i in range(count)
        ],
    }


async def create_service(kube: KubeClient, namespace: str) -> None:
    await kube.create(
        SERVICES.path(namespace),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "shop"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
    )
