"""EndpointSlice and Service manifests for fake pods, as the real controllers write them.

Data flow: pod addresses and conditions in, plain ``dict`` manifests out (ready
for server-side apply). Slices carry ``kubernetes.io/service-name`` and
``endpointslice.kubernetes.io/managed-by``, each endpoint a ``targetRef`` to
its pod, and explicit ``ready``/``serving``/``terminating`` conditions; the
Service is selector-less, so no EndpointSlice controller would ever touch our
slices even in a full cluster.

Pure functions; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "fakepods.limpet.dev"


@dataclass(frozen=True, slots=True, kw_only=True)
class Conditions:
    ready: bool = True
    serving: bool | None = None
    """None means "same as ready", as for a pod that is not terminating."""
    terminating: bool = False

    def to_json(self) -> dict[str, bool]:
        serving = self.ready if self.serving is None else self.serving
        return {"ready": self.ready, "serving": serving, "terminating": self.terminating}


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointEntry:
    pod: str
    address: str
    conditions: Conditions


def endpoint_slice(
    *,
    name: str,
    namespace: str,
    service: str,
    port: int,
    port_name: str,
    endpoints: Sequence[EndpointEntry],
    managed_by: str = MANAGED_BY,
) -> dict[str, object]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {SERVICE_NAME_LABEL: service, MANAGED_BY_LABEL: managed_by},
        },
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [e.address],
                "conditions": e.conditions.to_json(),
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": e.pod},
            }
            for e in endpoints
        ],
    }


def selectorless_service(
    *, name: str, namespace: str, port: int, port_name: str
) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "ports": [{"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}]
        },
    }
