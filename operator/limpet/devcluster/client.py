"""Kubernetes API clients for the dev cluster (the sync ``kubernetes`` package).

Data flow: a started :class:`DevCluster` (or any kubeconfig) in, a configured
``kubernetes.client.ApiClient`` out. :func:`request` sends one raw request for
what the typed APIs make awkward (discovery documents, finalize, server-side
apply of arbitrary kinds) and returns the decoded JSON; a non-2xx answer
raises ``kubernetes.client.ApiException`` like the typed calls do.
:func:`install_crds` server-side-applies every CustomResourceDefinition of a folder
(``crds/``) and :func:`wait_crds` blocks until they are Established and served.
:func:`service_account_kubeconfig` writes a kubeconfig that acts as a ServiceAccount
(a TokenRequest token), so a process runs with exactly that account's RBAC.

An ApiClient holds a urllib3 pool: close it (or use it as a context manager).
It may be shared between threads, as urllib3 pools are thread-safe.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from limpet.devcluster.cluster import DevCluster
from limpet.devcluster.errors import DevClusterError
from limpet.devcluster.kubeconfig import build_kubeconfig, write_kubeconfig

APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "limpet-devcluster"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def admin_configuration(cluster: DevCluster) -> k8s.Configuration:
    """A client configuration for the admin user, reading the PKI files in place."""
    paths = cluster.paths
    conf = k8s.Configuration()
    conf.host = cluster.server
    conf.ssl_ca_cert = str(paths.ca_cert)
    conf.cert_file = str(paths.admin_cert)
    conf.key_file = str(paths.admin_key)
    conf.verify_ssl = True
    return conf


def admin_client(cluster: DevCluster) -> k8s.ApiClient:
    return k8s.ApiClient(admin_configuration(cluster))


def client_from_kubeconfig(path: Path, *, context: str | None = None) -> k8s.ApiClient:
    api = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(path), context=context
    )
    return cast(k8s.ApiClient, api)


def request(
    api: k8s.ApiClient,
    method: str,
    path: str,
    *,
    body: object | None = None,
    query: Mapping[str, str] | None = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    timeout: float = 30.0,
) -> Any:
    """One raw API request; returns the decoded JSON body (None when empty)."""
    headers = {"Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    method_, url, header_params, body_, post_params = api.param_serialize(
        method=method,
        resource_path=path,
        query_params=list(query.items()) if query else None,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    resp = api.call_api(method_, url, header_params, body_, post_params, _request_timeout=timeout)
    data: bytes = resp.read()  # type: ignore[no-untyped-call]
    if not 200 <= resp.status <= 299:
        # from_response picks the status-specific subclass (NotFoundException, ...).
        raise k8s.ApiException.from_response(
            http_resp=resp, body=data.decode("utf-8", errors="replace"), data=None
        )
    return json.loads(data) if data else None


def server_side_apply(
    api: k8s.ApiClient,
    path: str,
    manifest: Mapping[str, object],
    *,
    field_manager: str = FIELD_MANAGER,
    force: bool = True,
) -> Any:
    """Server-side apply ``manifest`` at the object ``path`` (e.g. .../configmaps/NAME)."""
    query = {"fieldManager": field_manager}
    if force:
        query["force"] = "true"
    return request(api, "PATCH", path, body=dict(manifest), query=query, content_type=APPLY_PATCH)


def service_account_token(
    api: k8s.ApiClient, *, namespace: str, name: str, lifetime: int = 4 * 3600
) -> str:
    """A token of ServiceAccount ``namespace/name`` from the TokenRequest API, valid
    ``lifetime`` seconds."""
    token = request(
        api,
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={"spec": {"expirationSeconds": lifetime}},
    )["status"]["token"]
    return str(token)


def service_account_kubeconfig(
    api: k8s.ApiClient,
    cluster: DevCluster,
    path: Path,
    *,
    namespace: str,
    name: str,
    lifetime: int = 4 * 3600,
) -> Path:
    """Write a kubeconfig for ServiceAccount ``namespace/name`` of ``cluster``: a token
    from the TokenRequest API, valid ``lifetime`` seconds (no context namespace)."""
    token = service_account_token(api, namespace=namespace, name=name, lifetime=lifetime)
    config = build_kubeconfig(
        server=cluster.server,
        ca_pem=cluster.paths.ca_cert.read_bytes(),
        user=name,
        token=token,
        namespace=None,
    )
    return write_kubeconfig(path, config)


def install_crds(api: k8s.ApiClient, crd_dir: Path, *, field_manager: str) -> list[str]:
    """Server-side apply every CustomResourceDefinition in ``crd_dir/*.yaml`` (files in
    name order, other kinds skipped); returns the CRD names, in that order."""
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                name = doc["metadata"]["name"]
                server_side_apply(api, f"{CRDS}/{name}", doc, field_manager=field_manager)
                names.append(name)
    return names


T = TypeVar("T")


def gone(api: k8s.ApiClient, path: str) -> bool:
    """Whether the object at ``path`` no longer exists (a 404); other API errors raise."""
    try:
        request(api, "GET", path)
    except k8s.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def wait_until(
    probe: Callable[[], T | None],
    within: float,
    what: str,
    *,
    error: type[Exception] = DevClusterError,
    poll: float = 0.1,
) -> T:
    """Call ``probe`` every ``poll`` seconds until it returns something truthy, and return
    that; ``error`` naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(poll)


def wait_crds(api: k8s.ApiClient, names: Iterable[str], *, within: float = 30.0) -> None:
    """Block until every CRD in ``names`` is Established and each of its served group
    versions is in discovery (which lags Established by a moment); DevClusterError after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    versions: set[str] = set()
    for name in names:
        while True:
            crd = request(api, "GET", f"{CRDS}/{name}")
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                raise DevClusterError(f"CRD {name} never became Established")
            time.sleep(0.1)
        group = crd["spec"]["group"]
        versions.update(f"{group}/{v['name']}" for v in crd["spec"]["versions"] if v["served"])
    for version in sorted(versions):
        while True:
            try:
                request(api, "GET", f"/apis/{version}")
                break
            except k8s.ApiException as exc:
                if time.monotonic() > deadline:
                    raise DevClusterError(f"{version} never served: {exc.reason}") from exc
                time.sleep(0.1)
