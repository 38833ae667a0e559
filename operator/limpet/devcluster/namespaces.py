"""Test namespaces: create a fresh one, and really get rid of it afterwards.

Data flow: :func:`create_namespace` makes ``<prefix>-<random>`` and returns its
name. :func:`purge_namespace` deletes it *completely, now*. The dev cluster's
namespace controller would finalize a deleted namespace too, but only after
seconds (it rediscovers every resource type and backs off while objects remain),
and until then cluster-wide watchers (the operator under test) keep seeing its
objects. Purging therefore does the namespace controller's job at once: delete
the namespace (no new objects can be made in it from then on), find every
namespaced resource type through aggregated discovery, delete every object of
them (dropping finalizers, whose owners may be gone), then finalize the
namespace. Whatever the controller did meanwhile is a 404 here, and ignored.

Synchronous, a few dozen requests; safe to run from several threads on
different namespaces.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from kubernetes import client as k8s

from limpet.devcluster.client import request

_DISCOVERY_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)


def create_namespace(
    api: k8s.ApiClient, prefix: str = "test", *, labels: dict[str, str] | None = None
) -> str:
    name = f"{prefix}-{secrets.token_hex(4)}"
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": {"limpet.dev/test": "true", **(labels or {})}},
    }
    request(api, "POST", "/api/v1/namespaces", body=body)
    return name


def namespaced_resources(api: k8s.ApiClient) -> Iterator[str]:
    """Collection paths, with ``{ns}`` for the namespace, of every listable, deletable kind."""
    for root, prefix in (("/api", "/api"), ("/apis", "/apis")):
        doc: dict[str, Any] = request(api, "GET", root, accept=_DISCOVERY_ACCEPT)
        for group in doc.get("items", []):
            group_name = group.get("metadata", {}).get("name", "")
            versions = group.get("versions", [])
            if not versions:
                continue
            version = versions[0]  # the preferred version comes first
            base = (
                f"{prefix}/{group_name}/{version['version']}"
                if group_name
                else (f"{prefix}/{version['version']}")
            )
            for res in version.get("resources", []):
                verbs = set(res.get("verbs", []))
                if res.get("scope") == "Namespaced" and {"list", "delete"} <= verbs:
                    yield f"{base}/namespaces/{{ns}}/{res['resource']}"


def _ignore_missing(exc: k8s.ApiException) -> None:
    if exc.status not in (404, 405, 409):
        raise exc


def purge_namespace(api: k8s.ApiClient, name: str) -> None:
    """Delete namespace ``name`` and everything in it, now; idempotent."""
    ns_path = f"/api/v1/namespaces/{name}"
    try:
        request(api, "DELETE", ns_path)
    except k8s.ApiException as e:
        if e.status == 404:
            return
        raise
    for collection in namespaced_resources(api):
        path = collection.format(ns=name)
        try:
            items = request(api, "GET", path).get("items", [])
        except k8s.ApiException as e:
            _ignore_missing(e)
            continue
        for item in items:
            obj_path = f"{path}/{item['metadata']['name']}"
            try:
                if item["metadata"].get("finalizers"):
                    request(
                        api,
                        "PATCH",
                        obj_path,
                        body={"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json",
                    )
                request(api, "DELETE", obj_path, body={"gracePeriodSeconds": 0})
            except k8s.ApiException as e:
                _ignore_missing(e)
    try:
        ns = request(api, "GET", ns_path)
        ns.setdefault("spec", {})["finalizers"] = []
        request(api, "PUT", f"{ns_path}/finalize", body=ns)
    except k8s.ApiException as e:
        _ignore_missing(e)
