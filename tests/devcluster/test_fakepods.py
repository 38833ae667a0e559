"""Fake pods: real backends behind real EndpointSlices, on addresses this run owns."""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from limpet.devcluster import hostnet
from limpet.devcluster.client import request
from limpet.devcluster.endpointslices import MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL
from limpet.devcluster.errors import FakePodError
from limpet.devcluster.fakepods import (
    FakePod,
    FakePods,
    FakePodsFactory,
)
from limpet.devcluster.loopback import LoopbackPodNetwork
from limpet.devcluster.netns import NetnsPodNetwork, netns_unavailable_reason
from limpet.devcluster.podnet import PodNetwork
from limpet.devcluster.podslot import PodSlot

pytestmark = pytest.mark.apiserver


def _slices(api: k8s.ApiClient, namespace: str, service: str) -> list[dict[str, Any]]:
    found = request(
        api,
        "GET",
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        query={"labelSelector": f"{SERVICE_NAME_LABEL}={service}"},
    )
    return list(found["items"])


def _endpoints(api: k8s.ApiClient, namespace: str, service: str) -> dict[str, dict[str, Any]]:
    """Pod name -> endpoint, across all the Service's slices."""
    return {
        e["targetRef"]["name"]: e
        for s in _slices(api, namespace, service)
        for e in s.get("endpoints") or []
    }


def _answers(pod: FakePod, timeout: float = 1.0) -> bool:
    try:
        return pod.fetch("/", timeout=timeout)[0] == 200
    except OSError:  # refused, unreachable or timed out: all mean "no answer"
        return False


def _slice_manifest(address: str) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "by-hand", "labels": {SERVICE_NAME_LABEL: "by-hand"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.53"])
def test_an_endpoint_slice_with_a_loopback_address_is_rejected(
    api: k8s.ApiClient, namespace: str, address: str
) -> None:
    with pytest.raises(k8s.ApiException) as info:
        request(
            api,
            "POST",
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            body=_slice_manifest(address),
        )
    assert info.value.status == 422
    assert "loopback" in str(info.value.body)


def test_published_pods_are_accepted_and_their_backends_answer(
    fake_pods: FakePodsFactory, api: k8s.ApiClient, namespace: str, pod_network: PodNetwork
) -> None:
    shop = fake_pods("shop")
    pods = shop.scale_up(3)

    slices = _slices(api, namespace, "shop")
    assert len(slices) == 1
    labels = slices[0]["metadata"]["labels"]
    assert labels == {SERVICE_NAME_LABEL: "shop", MANAGED_BY_LABEL: MANAGED_BY}
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    endpoints = _endpoints(api, namespace, "shop")
    assert sorted(endpoints) == ["shop-0", "shop-1", "shop-2"]
    for pod in pods:
        ep = endpoints[pod.name]
        assert ep["addresses"] == [pod.address]
        assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
        assert ep["targetRef"] == {"kind": "Pod", "namespace": namespace, "name": pod.name}
        assert not ipaddress.ip_address(pod.address).is_loopback
        status, body = pod.fetch("/hello")
        assert status == 200
        assert json.loads(body)["pod"] == pod.name
        assert json.loads(body)["path"] == "/hello"
    # The selector-less Service the slices belong to exists too.
    svc = k8s.CoreV1Api(api).read_namespaced_service("shop", namespace)
    assert svc.spec is not None
    assert svc.spec.selector is None
    assert svc.spec.ports is not None
    assert svc.spec.ports[0].port == 8080
    assert len({p.address for p in pods}) == 3
    if pod_network.mode == "loopback":
        assert shop.overrides() == {(p.address, p.port): p.connect for p in pods}
    else:
        assert shop.overrides() == {}


def test_conditions_are_settable_and_removal_drops_the_endpoint(
    fake_pods: FakePodsFactory, api: k8s.ApiClient, namespace: str
) -> None:
    web = fake_pods("web")
    a, b, c = web.scale_up(3)
    web.terminate(a.name)
    web.set_conditions(b.name, ready=False, serving=False)
    endpoints = _endpoints(api, namespace, "web")
    assert endpoints[a.name]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert endpoints[b.name]["conditions"] == {
        "ready": False,
        "serving": False,
        "terminating": False,
    }
    assert endpoints[c.name]["conditions"]["ready"] is True

    web.remove(a.name)
    assert sorted(_endpoints(api, namespace, "web")) == [b.name, c.name]
    assert not _answers(a)


def test_pods_can_be_spread_over_several_slices(
    fake_pods: FakePodsFactory, api: k8s.ApiClient, namespace: str
) -> None:
    svc = fake_pods("split")
    svc.add(slice_name="split-a")
    svc.add(slice_name="split-b")
    svc.add(slice_name="split-b")
    sizes = {s["metadata"]["name"]: len(s["endpoints"]) for s in _slices(api, namespace, "split")}
    assert sizes == {"split-a": 1, "split-b": 2}


def test_a_crashed_backend_keeps_its_endpoint_and_can_restart(
    fake_pods: FakePodsFactory,
) -> None:
    svc = fake_pods("crashy")
    pod = svc.add()
    svc.stop_backend(pod.name)
    with pytest.raises(ConnectionRefusedError):
        pod.fetch("/", timeout=1.0)
    assert pod.name in svc.pods
    svc.start_backend(pod.name)
    assert pod.fetch("/")[0] == 200


def test_a_backend_that_cannot_start_is_a_clear_error(fake_pods: FakePodsFactory) -> None:
    svc = fake_pods("broken", backend=lambda spec: ["sh", "-c", "echo cannot bind >&2; exit 3"])
    with pytest.raises(FakePodError, match=r"(?s)exited with code 3.*cannot bind"):
        svc.add()
    assert svc.pods == {}


# -- network namespaces ---------------------------------------------------------------------


@pytest.fixture
def netns_network() -> Iterator[NetnsPodNetwork]:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    network = NetnsPodNetwork.create()
    try:
        yield network
    finally:
        network.close()


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.netns
def test_every_pod_address_lives_in_a_namespace_of_this_run(
    api: k8s.ApiClient, namespace: str, netns_network: NetnsPodNetwork
) -> None:
    with FakePods(api, netns_network, namespace=namespace, service="ns") as svc:
        pods = svc.scale_up(2)
        for pod in pods:
            assert pod.netns is not None
            assert pod.netns.startswith(f"limpet-{netns_network.run_id}-")
            assert f"inet {pod.address}/24" in _ip("netns", "exec", pod.netns, "ip", "-o", "addr")
            assert ipaddress.ip_address(pod.address) in netns_network.subnet
            # The backend sees the bridge address as its client: traffic came from the root ns.
            assert json.loads(pod.fetch("/")[1])["client"] == netns_network.gateway
        svc.verify()
        names = {p.netns for p in pods}
    listed = _ip("netns", "list")
    assert not any(n in listed for n in names if n)


@pytest.mark.netns
def test_verify_refuses_an_address_that_is_not_ours(netns_network: NetnsPodNetwork) -> None:
    slot = netns_network.attach("mine", 8080)
    netns_network.verify(slot)
    forged = PodSlot(
        pod="mine",
        address="10.0.0.7",
        port=8080,
        bind=("10.0.0.7", 8080),
        connect=("10.0.0.7", 8080),
        netns=slot.netns,
        host_link=slot.host_link,
    )
    with pytest.raises(FakePodError):
        netns_network.verify(forged)
    stranger = PodSlot(
        pod="x",
        address=slot.address,
        port=8080,
        bind=slot.bind,
        connect=slot.connect,
        netns="limpet-000000-0",
    )
    with pytest.raises(FakePodError, match="not created by this run"):
        netns_network.verify(stranger)
    netns_network.detach(slot)
    with pytest.raises(FakePodError):
        netns_network.verify(slot)


@pytest.mark.netns
def test_pod_subnet_is_routed_straight_to_our_bridge(
    netns_network: NetnsPodNetwork,
) -> None:
    route = json.loads(_ip("-j", "route", "get", str(netns_network.subnet[9])))[0]
    assert route["dev"] == netns_network.bridge
    assert "gateway" not in route


@pytest.mark.netns
def test_link_down_and_blackhole_break_the_path_until_undone(
    api: k8s.ApiClient, namespace: str, netns_network: NetnsPodNetwork
) -> None:
    with FakePods(api, netns_network, namespace=namespace, service="flaky") as svc:
        pod = svc.add()
        assert pod.fetch("/")[0] == 200

        netns_network.set_blackhole(pod.slot, on=True)
        with pytest.raises(socket.timeout):  # dropped silently: the connect hangs
            pod.fetch("/", timeout=1.0)
        netns_network.set_blackhole(pod.slot, on=False)
        assert pod.fetch("/")[0] == 200

        netns_network.set_link(pod.slot, up=False)
        assert not _answers(pod)
        netns_network.set_link(pod.slot, up=True)
        assert pod.fetch("/", timeout=5.0)[0] == 200


# -- loopback fallback ----------------------------------------------------------------------


def test_loopback_fallback_publishes_placeholders_and_an_explicit_override(
    api: k8s.ApiClient, namespace: str
) -> None:
    network = LoopbackPodNetwork.create()
    try:
        with FakePods(api, network, namespace=namespace, service="lo") as svc:
            pods = svc.scale_up(2)
            overrides = svc.overrides()
            endpoints = _endpoints(api, namespace, "lo")
            for pod in pods:
                address = ipaddress.ip_address(pod.address)
                assert address in network.placeholder_subnet
                assert address.is_private  # documentation range, never routed here
                assert endpoints[pod.name]["addresses"] == [pod.address]
                host, port = overrides[(pod.address, 8080)]
                assert ipaddress.ip_address(host).is_loopback
                assert (host, port) == pod.connect
                assert json.loads(pod.fetch("/")[1])["pod"] == pod.name
            assert set(overrides) == {(p.address, 8080) for p in pods}
    finally:
        network.close()


def test_loopback_placeholders_avoid_networks_this_host_routes() -> None:
    network = LoopbackPodNetwork.create()
    routed = json.loads(_ip("-j", "-4", "route", "show", "table", "all"))
    for route in routed:
        if route.get("dst", "default") != "default":
            dst = ipaddress.ip_network(route["dst"], strict=False)
            assert not dst.overlaps(network.placeholder_subnet)


def test_subnet_choice_skips_routed_and_taken_networks() -> None:
    loopback = ipaddress.IPv4Network("127.0.0.0/24")  # inside the host's 127.0.0.0/8
    taken = ipaddress.IPv4Network("10.255.1.0/24")
    free = ipaddress.IPv4Network("10.255.2.0/24")
    assert hostnet.first_unrouted([loopback, taken, free], taken=[taken]) == free
    assert hostnet.first_unrouted([loopback, taken], taken=[taken]) is None


@pytest.mark.netns
def test_a_reused_pod_address_answers_at_once(
    api: k8s.ApiClient, namespace: str, netns_network: NetnsPodNetwork
) -> None:
    """The root namespace must not keep sending to the MAC of the address's previous pod."""
    with FakePods(api, netns_network, namespace=namespace, service="reuse") as svc:
        keeper = svc.add()  # keeps the bridge's carrier up: losing it flushes the cache
        old = svc.add()
        assert old.fetch("/")[0] == 200  # the root namespace now caches old's MAC
        address = old.address
        svc.remove(old.name)
        # Addresses are reused last-freed-last; force this one to be next.
        netns_network._free.remove(address)
        netns_network._free.appendleft(address)
        new = svc.add()
        assert new.address == address
        assert json.loads(new.fetch("/", timeout=1.0)[1])["pod"] == new.name
        assert keeper.fetch("/")[0] == 200
