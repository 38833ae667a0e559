"""Fake pods without namespaces: backends on loopback, placeholders in the slice.

Data flow: kube-apiserver rejects loopback addresses in EndpointSlices, so each
pod is published under a placeholder address from an RFC 5737 documentation
network (TEST-NET-3, -2 or -1: the first that this host does not route, since
some sandboxes use TEST-NET-1 for real links) and the declared port, while its
backend listens on 127.0.0.1 at a free port. :meth:`overrides` is the explicit
map ``(placeholder, port) -> ("127.0.0.1", real port)``; only tests and the
local demo hand it to the proxy. Placeholders are never contacted: without the
override, a connection to one would fail or leave the host, which is why the
proxy needs the override given explicitly and this mode exists only as a
fallback for machines without network namespaces.

One thread uses a network at a time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from limpet.devcluster import hostnet
from limpet.devcluster.errors import FakePodError
from limpet.devcluster.podslot import Endpoint, Mode, PodSlot
from limpet.devcluster.ports import free_port

PLACEHOLDER_NETWORKS = (
    ipaddress.IPv4Network("203.0.113.0/24"),  # TEST-NET-3
    ipaddress.IPv4Network("198.51.100.0/24"),  # TEST-NET-2
    ipaddress.IPv4Network("192.0.2.0/24"),  # TEST-NET-1
)
LOOPBACK_HOST = "127.0.0.1"


class LoopbackPodNetwork:
    def __init__(self, *, placeholder_subnet: ipaddress.IPv4Network) -> None:
        self.placeholder_subnet = placeholder_subnet
        self._free = [str(h) for h in placeholder_subnet.hosts()]
        self._slots: dict[str, PodSlot] = {}  # by placeholder address

    @property
    def mode(self) -> Mode:
        return "loopback"

    @classmethod
    def create(cls) -> LoopbackPodNetwork:
        subnet = hostnet.first_unrouted(PLACEHOLDER_NETWORKS)
        if subnet is None:
            raise FakePodError(
                "every documentation network (RFC 5737) is routed on this host; "
                "no safe placeholder addresses left"
            )
        return cls(placeholder_subnet=subnet)

    def attach(self, pod: str, port: int) -> PodSlot:
        if not self._free:
            raise FakePodError(f"placeholder subnet {self.placeholder_subnet} is full")
        address = self._free.pop(0)
        real = (LOOPBACK_HOST, free_port())
        slot = PodSlot(pod=pod, address=address, port=port, bind=real, connect=real)
        self._slots[address] = slot
        return slot

    def detach(self, slot: PodSlot) -> None:
        if self._slots.pop(slot.address, None) is not None:
            self._free.append(slot.address)
            self._free.sort(key=ipaddress.IPv4Address)

    def wrap(self, slot: PodSlot, argv: Sequence[str]) -> list[str]:
        return list(argv)

    def owns(self, address: str) -> bool:
        return address in self._slots

    def verify(self, slot: PodSlot) -> None:
        if self._slots.get(slot.address) != slot:
            raise FakePodError(f"{slot.pod}: {slot.address} was not handed out by this run")
        if ipaddress.IPv4Address(slot.address) not in self.placeholder_subnet:
            raise FakePodError(f"{slot.pod}: {slot.address} is not a placeholder address")
        if not ipaddress.ip_address(slot.connect[0]).is_loopback:
            raise FakePodError(f"{slot.pod}: backend {slot.connect} is not on loopback")

    def overrides(self) -> dict[Endpoint, Endpoint]:
        return {(s.address, s.port): s.connect for s in self._slots.values()}

    def close(self) -> None:
        for slot in list(self._slots.values()):
            self.detach(slot)
