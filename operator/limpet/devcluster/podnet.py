"""What a fake pod's network looks like to the rest of the code.

Data flow: a :class:`PodNetwork` gives each pod a :class:`PodSlot`: the address
and port to publish in the EndpointSlice, where the backend must bind, where
the root namespace (the proxy, the tests) reaches it, and how to wrap a
command so that it runs "inside" the pod. Two implementations exist:
``netns.NetnsPodNetwork`` (real namespaces, real pod IPs) and
``loopback.LoopbackPodNetwork`` (backends on loopback, placeholder addresses
in the slice, plus an explicit address override); both hand out the value types
of ``podslot``. :func:`open_pod_network` picks one: ``LIMPET_FAKEPODS=netns|loopback``
forces it, otherwise namespaces when they work here (root and ``ip netns``), else
loopback.

Implementations are used from one thread at a time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol

from limpet.devcluster.errors import FakePodError, NetnsUnavailableError
from limpet.devcluster.loopback import LoopbackPodNetwork
from limpet.devcluster.netns import NetnsPodNetwork, netns_unavailable_reason
from limpet.devcluster.podslot import Endpoint, Mode, PodSlot

ENV_MODE = "LIMPET_FAKEPODS"


class PodNetwork(Protocol):
    @property
    def mode(self) -> Mode: ...

    def attach(self, pod: str, port: int) -> PodSlot: ...

    def detach(self, slot: PodSlot) -> None: ...

    def wrap(self, slot: PodSlot, argv: Sequence[str]) -> list[str]:
        """``argv`` made to run inside the pod."""
        ...

    def verify(self, slot: PodSlot) -> None:
        """Raise :class:`FakePodError` unless the slot's address is one we made and own."""
        ...

    def overrides(self) -> dict[Endpoint, Endpoint]: ...

    def close(self) -> None: ...


def requested_mode(environ: Mapping[str, str] | None = None) -> Mode | None:
    value = (os.environ if environ is None else environ).get(ENV_MODE, "").strip().lower()
    if not value:
        return None
    if value in ("netns", "loopback"):
        return value  # type: ignore[return-value]
    raise FakePodError(f"{ENV_MODE}={value!r}: expected 'netns' or 'loopback'")


def open_pod_network(
    *, mode: Mode | None = None, environ: Mapping[str, str] | None = None
) -> PodNetwork:
    """A ready pod network of the forced or the best available kind."""
    chosen = mode or requested_mode(environ)
    if chosen is None:
        chosen = "netns" if netns_unavailable_reason() is None else "loopback"
    if chosen == "netns":
        reason = netns_unavailable_reason()
        if reason is not None:
            raise NetnsUnavailableError(
                f"network namespaces are unavailable here ({reason}); "
                f"use {ENV_MODE}=loopback or run as root with iproute2"
            )
        return NetnsPodNetwork.create()
    return LoopbackPodNetwork.create()
