"""The proxies of one StickyService: what the operator creates, and how it finds them.

Managed mode (default): the operator server-side-applies a Deployment running ``limpet
proxy``, a traffic Service (traffic port only: the admin port is never exposed by it)
and, in both modes, a Secret with the admin token and keys (its content is
:mod:`.key_lifecycle`'s; the manifest is :func:`secret_manifest`). Each carries an
ownerReference to the StickyService (garbage collection in a real cluster) and the label
``limpet.dev/stickyservice``; the delete handler also removes them explicitly, which is
what happens where no garbage collector runs (the dev cluster).

External mode: the user runs the proxies (or sidecars) and names them with
``spec.proxy.selector``, a label selector on EndpointSlices (a Service's labels are
copied onto its slices). The operator only creates the Secret.

Discovery, both modes: the proxies' EndpointSlices (label-filtered server-side, see
:mod:`limpet.controller.kube.watches`) list the proxy pods; each pod's admin URL is its
address plus ``spec.proxy.adminPort``. Tests run proxies on loopback while slices must carry pod
IPs, so :func:`admin_url` honours ``OperatorSettings.admin_address_overrides``, a
documented test-only seam that is empty in production.

Pure manifest builders (names from :mod:`limpet.controller.model.names`) plus small
async helpers over :class:`~limpet.controller.kube.client.KubeClient`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from limpet.controller.effects.pusher import ProxyTarget
from limpet.controller.kube.client import DEPLOYMENTS, SECRETS, SERVICES, JsonObj, KubeClient
from limpet.controller.model.membership import ProxyEndpoint
from limpet.controller.model.names import proxy_service_name, secret_name
from limpet.controller.model.settings import OperatorSettings
from limpet.controller.model.spec import STORE_FILES, StickySpec

OWNER_LABEL = "limpet.dev/stickyservice"
COMPONENT_LABEL = "app.kubernetes.io/component"
TOKEN_MOUNT = "/etc/limpet/admin"
STATE_MOUNT = "/var/lib/limpet"


def store_volume(spec: StickySpec) -> JsonObj | None:
    """The projected volume with the store's password and CA files, if any is set: the
    kubelet reads the user's Secret/ConfigMap, so the password never travels in a plan
    or through the operator."""
    store = spec.session_store
    if store is None:
        return None
    sources: list[JsonObj] = []
    if store.password is not None:
        sources.append(
            {
                "secret": {
                    "name": store.password.name,
                    "items": [{"key": store.password.key, "path": "password", "mode": 0o440}],
                }
            }
        )
    tls = store.tls
    if tls.enabled and tls.ca_secret is not None:
        item = {"key": tls.ca_secret.key, "path": "ca.crt"}
        sources.append({"secret": {"name": tls.ca_secret.name, "items": [item]}})
    if tls.enabled and tls.ca_config_map is not None:
        item = {"key": tls.ca_config_map.key, "path": "ca.crt"}
        sources.append({"configMap": {"name": tls.ca_config_map.name, "items": [item]}})
    if not sources:
        return None
    return {"name": "session-store", "projected": {"sources": sources}}


def owner_reference(owner: Mapping[str, Any]) -> JsonObj:
    meta = owner["metadata"]
    return {
        "apiVersion": "limpet.dev/v1alpha1",
        "kind": "StickyService",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        # No blockOwnerDeletion: it would need update on stickyservices/finalizers where
        # OwnerReferencesPermissionEnforcement runs, and the operator's finalizer already
        # deletes its children before the StickyService goes.
    }


def _metadata(owner: Mapping[str, Any], name: str, component: str) -> JsonObj:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": {
            "app.kubernetes.io/name": "limpet",
            "app.kubernetes.io/managed-by": "limpet-operator",
            COMPONENT_LABEL: component,
            OWNER_LABEL: owner["metadata"]["name"],
        },
        "ownerReferences": [owner_reference(owner)],
    }


def pod_labels(owner: Mapping[str, Any]) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "limpet-proxy",
        OWNER_LABEL: owner["metadata"]["name"],
    }


def secret_manifest(owner: Mapping[str, Any], data: Mapping[str, str]) -> JsonObj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(owner, secret_name(owner["metadata"]["name"]), "keys"),
        "data": dict(data),
    }


def service_manifest(owner: Mapping[str, Any], spec: StickySpec) -> JsonObj:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, proxy_service_name(name), "proxy"),
        "spec": {
            "selector": pod_labels(owner),
            "ports": [
                {"name": "http", "port": 80, "targetPort": spec.proxy.port, "protocol": "TCP"}
            ],
        },
    }


def _proxy_container(spec: StickySpec, settings: OperatorSettings) -> JsonObj:
    """The proxy container: ``limpet proxy`` with the admin token mounted, non-root,
    read-only, probed on its admin port."""
    p = spec.proxy
    admin_probe = {"port": "admin", "scheme": "HTTP"}
    return {
        "name": "proxy",
        "image": p.image or settings.proxy_image,
        "args": [
            "proxy",
            "--listen",
            f"0.0.0.0:{p.port}",
            "--admin-listen",
            f"0.0.0.0:{p.admin_port}",
            "--token-file",
            f"{TOKEN_MOUNT}/admin-token",
            "--state-dir",
            STATE_MOUNT,
        ],
        "ports": [
            {"name": "http", "containerPort": p.port, "protocol": "TCP"},
            {"name": "admin", "containerPort": p.admin_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", **admin_probe},
            "periodSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", **admin_probe},
            "periodSeconds": 10,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "admin-token", "mountPath": TOKEN_MOUNT, "readOnly": True},
            {"name": "state", "mountPath": STATE_MOUNT},
        ]
        + (
            [{"name": "session-store", "mountPath": STORE_FILES, "readOnly": True}]
            if store_volume(spec) is not None
            else []
        ),
    }


def deployment_manifest(
    owner: Mapping[str, Any], spec: StickySpec, settings: OperatorSettings
) -> JsonObj:
    name = owner["metadata"]["name"]
    labels = pod_labels(owner)
    p = spec.proxy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, proxy_service_name(name), "proxy"),
        "spec": {
            "replicas": p.replicas if p.replicas is not None else settings.proxy_replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # Proxies need no API access at all.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [_proxy_container(spec, settings)],
                    "volumes": [
                        {
                            "name": "admin-token",
                            "secret": {
                                "secretName": secret_name(name),
                                "items": [{"key": "admin-token", "path": "admin-token"}],
                            },
                        },
                        {"name": "state", "emptyDir": {"sizeLimit": "64Mi"}},
                        *([] if (store := store_volume(spec)) is None else [store]),
                    ],
                },
            },
        },
    }


async def apply_managed(
    client: KubeClient, owner: Mapping[str, Any], spec: StickySpec, settings: OperatorSettings
) -> None:
    """Create or update the Deployment and the traffic Service (server-side apply)."""
    ns = owner["metadata"]["namespace"]
    name = proxy_service_name(owner["metadata"]["name"])
    await client.apply(SERVICES.path(ns, name), service_manifest(owner, spec))
    await client.apply(DEPLOYMENTS.path(ns, name), deployment_manifest(owner, spec, settings))


async def delete_owned(
    client: KubeClient, owner: Mapping[str, Any], *, keep_secret: bool = False
) -> list[str]:
    """Delete what the operator made for ``owner`` (only objects it owns); names deleted."""
    ns = owner["metadata"]["namespace"]
    uid = owner["metadata"].get("uid")
    name = owner["metadata"]["name"]
    targets = [(DEPLOYMENTS, proxy_service_name(name)), (SERVICES, proxy_service_name(name))]
    if not keep_secret:
        targets.append((SECRETS, secret_name(name)))
    deleted = []
    for resource, child in targets:
        obj = await client.get(resource.path(ns, child))
        if obj is None:
            continue
        refs = (obj.get("metadata") or {}).get("ownerReferences") or []
        if uid is not None and not any(r.get("uid") == uid for r in refs):
            continue
        if await client.delete(resource.path(ns, child)):
            deleted.append(f"{resource.plural}/{child}")
    return deleted


def _host(address: str) -> str:
    try:
        return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        return address


def admin_url(address: str, port: int, settings: OperatorSettings) -> str:
    override = settings.admin_address_overrides.get(address)
    if override is not None:
        return f"http://{override}"
    return f"http://{_host(address)}:{port}"


def proxy_targets(
    endpoints: Mapping[str, ProxyEndpoint], spec: StickySpec, settings: OperatorSettings
) -> dict[str, ProxyTarget]:
    return {
        key: ProxyTarget(
            key=key, url=admin_url(ep.address, spec.proxy.admin_port, settings), pod=ep.pod
        )
        for key, ep in endpoints.items()
    }
