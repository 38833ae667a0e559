"""More addresses for the API server's serving certificate, while it runs.

Data flow: pods reach the API server through the pod runner's relay on the pod
network's bridge address (see ``podrunner/apirelay.py``), and verify it as
``https://<that address>:443``, so the certificate must name that address, which exists
only once the runner made its network. :func:`reissue` signs a new serving certificate
for the old addresses plus the new ones with the cluster CA, replaces the key and
certificate files (each by an atomic rename), and waits until the API server presents
it: kube-apiserver watches its ``--tls-cert-file`` and ``--tls-private-key-file`` and
reloads them when they change (a half-replaced pair fails its key check and is retried
at the next change).

Synchronous; the caller serializes calls (one dev cluster, one owner thread).
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from limpet.devcluster.certs import CertificateAuthority
from limpet.devcluster.errors import DevClusterError


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.touch(mode=0o600)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def presented_certificate(port: int, ctx: ssl.SSLContext) -> bytes:
    """The DER certificate the API server on 127.0.0.1:``port`` presents now."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=2.0) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return der or b""


def reissue(
    ca: CertificateAuthority,
    *,
    cert_path: Path,
    key_path: Path,
    ip_addresses: Sequence[str],
    port: int,
    ctx: ssl.SSLContext,
    timeout: float = 20.0,
) -> None:
    """Serve a certificate for ``ip_addresses``; returns once the API server presents it."""
    pair = ca.issue_server(ip_addresses=ip_addresses)
    want = pair.certificate.public_bytes(Encoding.DER)
    _replace(key_path, pair.key_pem)
    _replace(cert_path, pair.cert_pem)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if presented_certificate(port, ctx) == want:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise DevClusterError(
                f"kube-apiserver did not reload its serving certificate for "
                f"{', '.join(ip_addresses)} within {timeout:.0f} s"
            )
        time.sleep(0.1)
