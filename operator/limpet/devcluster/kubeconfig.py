"""Kubeconfig files for the dev cluster.

Data flow: server URL, CA and a client certificate or a bearer token in; a kubeconfig
file out.
The file embeds the certificates (``*-data`` fields) so that it stays usable
wherever it is copied, and is written as JSON, which kubectl and every client
library read as YAML, so no YAML library is needed. Written atomically with
mode 0600 (it holds a private key or a token).

No shared state; safe from any thread.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

from limpet.devcluster.certs import CertKeyPair

CLUSTER_NAME = "limpet-devcluster"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_kubeconfig(
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    client: CertKeyPair | None = None,
    token: str | None = None,
    namespace: str | None = "default",
    cluster_name: str = CLUSTER_NAME,
) -> dict[str, object]:
    """``user`` authenticates with ``client`` (a certificate) or ``token`` (a bearer
    token), exactly one of them; ``namespace=None`` leaves the context's namespace out."""
    if (client is None) == (token is None):
        raise ValueError("build_kubeconfig needs exactly one of client and token")
    if client is not None:
        credentials = {
            "client-certificate-data": _b64(client.cert_pem),
            "client-key-data": _b64(client.key_pem),
        }
    else:
        credentials = {"token": str(token)}
    context = f"{user}@{cluster_name}"
    scope = {"cluster": cluster_name, "user": user}
    if namespace is not None:
        scope["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": scope}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: Path, config: dict[str, object]) -> Path:
    path = path.expanduser().absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
