"""Where the cluster is and how to log in: ``$KUBECONFIG`` or the in-cluster account.

Data flow: at start-up :func:`load_cluster_config` asks the official client library's
loaders (the same rules as kubectl: ``$KUBECONFIG`` or ``~/.kube/config`` with its current
context, exec plugins and auth providers; otherwise the pod's service account) for a
``kubernetes.client.Configuration`` and reduces it to a frozen :class:`ClusterConfig`: a
server URL, TLS material as file paths, and a way to get the current bearer token.
Both :mod:`limpet.controller.kube` (our own aiohttp client) and kopf's login handler are
fed from it, so the operator has exactly one notion of "the cluster".

Concurrency: loading is blocking (files, perhaps an exec plugin) and happens once before
the event loop starts. :meth:`ClusterConfig.authorization` may call the library's token
refresh hook, which only re-reads a file (projected service-account tokens rotate).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(RuntimeError):
    """No usable cluster configuration."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """A cluster endpoint and credentials, as plain values."""

    server: str
    ca_file: str | None = None
    verify: bool = True
    cert_file: str | None = None
    key_file: str | None = None
    default_namespace: str | None = None
    token: str | None = None
    token_refresh: Callable[[], str | None] | None = field(default=None, compare=False)
    """Returns a fresh bearer token (rotated service-account tokens, exec plugins)."""

    def authorization(self) -> str | None:
        """The ``Authorization`` header value, refreshed when the source can refresh it."""
        token = self.token_refresh() if self.token_refresh is not None else self.token
        return f"Bearer {token}" if token else None

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _refresher(cfg: Any, *, every: float = 30.0) -> Callable[[], str | None]:
    """Wrap the library's refresh hook: it re-reads the token file, at most every ``every`` s."""
    hook = cfg.refresh_api_key_hook
    last = [time.monotonic()]

    def token() -> str | None:
        now = time.monotonic()
        if hook is not None and now - last[0] >= every:
            last[0] = now
            hook(cfg)
        value = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
        if not value:
            return None
        text = str(value)
        return text.split(" ", 1)[1] if text.lower().startswith("bearer ") else text

    return token


def load_cluster_config(kubeconfig: str | None = None, context: str | None = None) -> ClusterConfig:
    """Like kubectl: the given file, else ``$KUBECONFIG`` or ``~/.kube/config``, else in-cluster."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config

    cfg = k8s_client.Configuration()
    namespace: str | None = None
    explicit = kubeconfig or os.environ.get("KUBECONFIG")
    default_file = Path("~/.kube/config").expanduser()
    try:
        if explicit or default_file.exists():
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=cfg
            )
            _, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=kubeconfig
            )
            if context is None and isinstance(active, dict):
                namespace = active.get("context", {}).get("namespace")
        else:
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg
            )
            ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            if ns_file.exists():
                namespace = ns_file.read_text().strip() or None
    except k8s_config.ConfigException as exc:
        raise ConfigError(f"no cluster configuration: {exc}") from exc
    has_token = bool(cfg.api_key) or cfg.refresh_api_key_hook is not None
    return ClusterConfig(
        server=cfg.host.rstrip("/"),
        ca_file=cfg.ssl_ca_cert,
        verify=bool(cfg.verify_ssl),
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        default_namespace=namespace,
        token_refresh=_refresher(cfg) if has_token else None,
    )
