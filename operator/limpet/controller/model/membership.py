"""EndpointSlices to members: who the backends are, where they listen, what state they are in.

Data flow: the slice watch stores each EndpointSlice as a compact :class:`SliceView`
(:func:`parse_slice`, so memory holds only what planning needs, not whole objects).
:func:`build_membership` folds the views of one Service into a :class:`Membership`:
backend id -> :class:`Member` (address, target port, pod name, and the lifecycle
:class:`~limpet.affinity.lifecycle.Observation` of its conditions).

Ids are stable and opaque: an HMAC-SHA256, under the StickyService's own id key (kept
in its Secret), of the endpoint's targetRef (pod UID when present). The IP never enters
the id, so a cookie names a backend without revealing its address, and a pod keeps its
id when its endpoint moves between slices. Endpoints without a targetRef (hand-made
slices) fall back to a hash of their hostname or address, still keyed and opaque.

Pure functions over immutable values.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from limpet.affinity.ids import BackendId
from limpet.affinity.lifecycle import Observation, observe

_RANK = {
    Observation.READY: 3,
    Observation.SERVING_TERMINATING: 2,
    Observation.NOT_SERVING: 1,
    Observation.ABSENT: 0,
}


@dataclass(frozen=True, slots=True)
class EndpointView:
    address: str
    ready: bool | None
    serving: bool | None
    terminating: bool | None
    ref: str
    """Identity source: ``uid:<pod uid>``, ``ref:<kind>/<name>``, or ``addr:<address>``."""
    pod: str | None
    node: str | None


@dataclass(frozen=True, slots=True)
class SliceView:
    name: str
    address_type: str
    ports: tuple[tuple[str, int], ...]
    """(port name, target port number) as published on the slice."""
    endpoints: tuple[EndpointView, ...]


@dataclass(frozen=True, slots=True)
class Member:
    id: BackendId
    address: str
    port: int
    pod: str | None
    observation: Observation


Membership = Mapping[BackendId, Member]


def parse_slice(obj: Mapping[str, Any]) -> SliceView:
    """The parts of a discovery.k8s.io/v1 EndpointSlice that membership needs."""
    ports = tuple(
        (str(p.get("name") or ""), int(p["port"]))
        for p in obj.get("ports") or ()
        if p.get("port") is not None and (p.get("protocol") or "TCP") == "TCP"
    )
    endpoints: list[EndpointView] = []
    for ep in obj.get("endpoints") or ():
        addresses = ep.get("addresses") or ()
        if not addresses:
            continue
        cond = ep.get("conditions") or {}
        target = ep.get("targetRef") or {}
        if target.get("uid"):
            ref = f"uid:{target['uid']}"
        elif target.get("name"):
            ref = f"ref:{target.get('kind', '')}/{target.get('namespace', '')}/{target['name']}"
        elif ep.get("hostname"):
            ref = f"host:{ep['hostname']}"
        else:
            ref = f"addr:{addresses[0]}"
        endpoints.append(
            EndpointView(
                address=str(addresses[0]),
                ready=cond.get("ready"),
                serving=cond.get("serving"),
                terminating=cond.get("terminating"),
                ref=ref,
                pod=target.get("name") if target.get("kind", "Pod") == "Pod" else None,
                node=ep.get("nodeName"),
            )
        )
    meta = obj.get("metadata") or {}
    return SliceView(
        name=str(meta.get("name", "")),
        address_type=str(obj.get("addressType", "IPv4")),
        ports=ports,
        endpoints=tuple(endpoints),
    )


def backend_id(id_key: bytes, ref: str) -> BackendId:
    """Opaque, stable id: 20 base32 characters of HMAC-SHA256(id_key, ref)."""
    digest = hmac.new(id_key, ref.encode(), hashlib.sha256).digest()
    return BackendId("b" + base64.b32encode(digest[:15]).decode("ascii").lower())


def build_membership(
    slices: Iterable[SliceView], *, port_name: str, id_key: bytes
) -> dict[BackendId, Member]:
    """Members of one Service from its slices, for the Service port named ``port_name``.

    IPv4 slices are used when any exist, else IPv6 (one family, so a dual-stack pod is
    one backend). A pod listed twice (an endpoint moving between slices) keeps its most
    available condition. Slices without the port contribute nothing.
    """
    views = [v for v in slices if v.address_type in ("IPv4", "IPv6")]
    family = "IPv4" if any(v.address_type == "IPv4" for v in views) else "IPv6"
    members: dict[BackendId, Member] = {}
    for view in views:
        if view.address_type != family:
            continue
        port = next((n for name, n in view.ports if name == port_name), None)
        if port is None:
            continue
        for ep in view.endpoints:
            member = Member(
                id=backend_id(id_key, ep.ref),
                address=ep.address,
                port=port,
                pod=ep.pod,
                observation=observe(ready=ep.ready, serving=ep.serving, terminating=ep.terminating),
            )
            old = members.get(member.id)
            if old is None or _RANK[member.observation] > _RANK[old.observation]:
                members[member.id] = member
    return members


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """One proxy pod as discovered from the proxies' EndpointSlices."""

    key: str
    """Stable identity of the proxy pod (its targetRef, else its address)."""
    address: str
    pod: str | None
    terminating: bool


def proxy_endpoints(slices: Iterable[SliceView]) -> dict[str, ProxyEndpoint]:
    """Every proxy pod listed, ready or not (a proxy is not ready until it has a plan)."""
    out: dict[str, ProxyEndpoint] = {}
    for view in slices:
        if view.address_type not in ("IPv4", "IPv6"):
            continue
        for ep in view.endpoints:
            if ep.ref in out and view.address_type == "IPv6":
                continue
            out[ep.ref] = ProxyEndpoint(
                key=ep.ref, address=ep.address, pod=ep.pod, terminating=bool(ep.terminating)
            )
    return out
