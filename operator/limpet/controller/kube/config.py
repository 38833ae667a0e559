"""Where the cluster is and how to log in: ``$KUBECONFIG`` or the in-cluster account.

Data flow: at start-up :func:`load_cluster_config` asks the official client library's
loaders (the same rules as kubectl: ``$KUBECONFIG`` or ``~/.kube/config`` with its current
context, exec plugins and auth providers; otherwise the pod's service account) for a
``kubernetes.client.Configuration`` and reduces it to a frozen :class:`ClusterConfig`: a
server URL, TLS material as file paths, and a way to get the current bearer token.
Both :mod:`limpet.controller.kube.client` (our own aiohttp client) and kopf's login handler are
fed from it, so the operator has exactly one notion of "the cluster".

In a pod the token comes from the kubelet's service-account mount (``SERVICE_ACCOUNT_DIR``;
tests pass another folder laid out the same way) and is re-read from that file, since
projected service-account tokens rotate.

Concurrency: loading is blocking (files, perhaps an exec plugin) and happens once before
the event loop starts. :meth:`ClusterConfig.authorization` may re-read the token file or
call the library's refresh hook (exec plugins), at most every ``token_reread`` seconds.
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


SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts a pod's service-account token, CA bundle and namespace."""


def _refresher(cfg: Any, *, every: float = 30.0) -> Callable[[], str | None]:
    """Wrap the library's refresh hook (exec plugins, auth providers), at most every ``every`` s."""
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


def _token_file(path: Path, *, every: float) -> Callable[[], str | None]:
    """The token in ``path``, re-read at most every ``every`` s.

    Not the library's refresh hook: that one re-reads only after its own fixed minute.
    The kubelet replaces a projected token well before it expires (at 80 % of its life),
    so any period of seconds to a minute is safe. A failed or empty re-read keeps the last
    token: whether it is still good is the API server's call, not a reason to send none."""
    current = [path.read_text().strip()]
    last = [time.monotonic()]

    def token() -> str | None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            try:
                fresh = path.read_text().strip()
            except OSError:
                fresh = ""
            if fresh:
                current[0] = fresh
        return current[0] or None

    return token


def _kubeconfig_namespace(path: str, context: str | None) -> str | None:
    from kubernetes import config as k8s_config

    contexts, active = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
        config_file=path
    )
    chosen = (
        active
        if context is None
        else next(
            (c for c in contexts or () if isinstance(c, dict) and c.get("name") == context), None
        )
    )
    if not isinstance(chosen, dict):
        return None
    namespace = (chosen.get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


def load_cluster_config(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
    token_reread: float = 30.0,
) -> ClusterConfig:
    """Like kubectl: the given file, else ``$KUBECONFIG`` or ``~/.kube/config``, else in-cluster
    (``$KUBERNETES_SERVICE_HOST``/``_PORT`` and the files in ``service_account_dir``, whose
    token is re-read at most every ``token_reread`` s)."""
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.incluster_config import InClusterConfigLoader

    cfg = k8s_client.Configuration()
    # Resolved here and passed on: the library reads $KUBECONFIG once, when it is imported.
    # An empty $KUBECONFIG counts as unset, as in kubectl.
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    default_file = Path("~/.kube/config").expanduser()
    if path is None and default_file.exists():
        path = str(default_file)
    try:
        if path is not None:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, context=context, client_configuration=cfg
            )
            namespace = _kubeconfig_namespace(path, context)
            has_token = bool(cfg.api_key) or cfg.refresh_api_key_hook is not None
            refresh = _refresher(cfg, every=token_reread) if has_token else None
        else:
            token_file = service_account_dir / "token"
            InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(token_file),
                cert_filename=str(service_account_dir / "ca.crt"),
                try_refresh_token=False,
            ).load_and_set(cfg)
            ns_file = service_account_dir / "namespace"
            namespace = (ns_file.read_text().strip() or None) if ns_file.exists() else None
            refresh = _token_file(token_file, every=token_reread)
    except k8s_config.ConfigException as exc:
        raise ConfigError(f"no cluster configuration: {exc}") from exc
    return ClusterConfig(
        server=cfg.host.rstrip("/"),
        ca_file=cfg.ssl_ca_cert,
        verify=bool(cfg.verify_ssl),
        cert_file=cfg.cert_file,
        key_file=cfg.key_file,
        default_namespace=namespace,
        token_refresh=refresh,
    )
