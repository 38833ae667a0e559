"""Unit tests for the dev cluster's PKI, down to a real mutual-TLS handshake."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from limpet.devcluster.certs import (
    ADMIN_GROUP,
    ADMIN_USER,
    CertificateAuthority,
    ClusterPKI,
    ServiceAccountKeys,
)


@pytest.fixture(scope="module")
def pki() -> ClusterPKI:
    return ClusterPKI.generate(service_ip="10.96.0.1")


def _names(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def test_ca_is_a_self_signed_ca(pki: ClusterPKI) -> None:
    ca = pki.ca.certificate
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca
    assert constraints.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign


def test_leaf_certs_cannot_sign_certificates(pki: ClusterPKI) -> None:
    components = (pki.controller_manager, pki.scheduler)
    for pair in (pki.serving, pki.admin, *(p for c in components for p in (c.client, c.serving))):
        cert = pair.certificate
        assert cert.issuer == pki.ca.certificate.subject
        assert cert.not_valid_before_utc < cert.not_valid_after_utc
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.digital_signature
        assert not usage.key_cert_sign
        assert not usage.crl_sign
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert constraints.path_length is None


def test_serving_cert_covers_loopback_and_in_cluster_names(pki: ClusterPKI) -> None:
    cert = pki.serving.certificate
    cert.verify_directly_issued_by(pki.ca.certificate)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"} <= dns
    assert "kubernetes.default.svc.cluster.local" in dns
    assert {"127.0.0.1", "::1", "10.96.0.1"} <= ips
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_admin_cert_is_in_system_masters(pki: ClusterPKI) -> None:
    cert = pki.admin.certificate
    cert.verify_directly_issued_by(pki.ca.certificate)
    assert _names(cert, NameOID.COMMON_NAME) == [ADMIN_USER]
    assert _names(cert, NameOID.ORGANIZATION_NAME) == [ADMIN_GROUP]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize(
    ("component", "user"),
    [
        ("controller_manager", "system:kube-controller-manager"),
        ("scheduler", "system:kube-scheduler"),
    ],
)
def test_components_get_their_bootstrap_user_and_a_loopback_serving_cert(
    pki: ClusterPKI, component: str, user: str
) -> None:
    creds = getattr(pki, component)
    client = creds.client.certificate
    client.verify_directly_issued_by(pki.ca.certificate)
    # The bootstrap ClusterRoleBinding names the user; no group, least of all masters.
    assert _names(client, NameOID.COMMON_NAME) == [user]
    assert _names(client, NameOID.ORGANIZATION_NAME) == []
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    serving = creds.serving.certificate
    serving.verify_directly_issued_by(pki.ca.certificate)
    san = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_client_cert_carries_user_and_groups(pki: ClusterPKI) -> None:
    cert = pki.ca.issue_client(common_name="alice", groups=("dev", "ops")).certificate
    assert _names(cert, NameOID.COMMON_NAME) == ["alice"]
    assert sorted(_names(cert, NameOID.ORGANIZATION_NAME)) == ["dev", "ops"]


def test_certificate_from_another_ca_does_not_verify(pki: ClusterPKI) -> None:
    # Same subject name on purpose: only the signature tells the two CAs apart.
    other = CertificateAuthority.generate()
    with pytest.raises(InvalidSignature):
        pki.serving.certificate.verify_directly_issued_by(other.certificate)
    with pytest.raises(InvalidSignature):
        other.issue_client(common_name="mallory").certificate.verify_directly_issued_by(
            pki.ca.certificate
        )


def test_service_account_keys_are_a_pair() -> None:
    keys = ServiceAccountKeys.generate()
    private = serialization.load_pem_private_key(keys.private_pem, password=None)
    public = serialization.load_pem_public_key(keys.public_pem)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.public_key().public_numbers() == public.public_numbers()


def test_write_puts_private_keys_in_owner_only_files(pki: ClusterPKI, tmp_path: Path) -> None:
    paths = pki.write(tmp_path / "pki")
    components = (paths.controller_manager, paths.scheduler)
    keys = [paths.ca_key, paths.serving_key, paths.sa_private_key, paths.admin_key]
    keys += [k for c in components for k in (c.client_key, c.serving_key)]
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert paths.scheduler.client_cert.read_bytes() == pki.scheduler.client.cert_pem
    assert paths.ca_cert.read_bytes() == pki.ca.cert_pem
    x509.load_pem_x509_certificate(paths.serving_cert.read_bytes())


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> dict[str, object]:
    """One TLS connection over loopback; returns the client certificate the server saw."""
    seen: dict[str, object] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                try:
                    with server_ctx.wrap_socket(conn, server_side=True) as tls:
                        seen.update(tls.getpeercert() or {})
                        tls.sendall(b"hello")
                except ssl.SSLError as e:
                    seen["server_error"] = e

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                assert tls.recv(5) == b"hello"
        finally:
            thread.join(timeout=10)
    return seen


@pytest.fixture
def tls_contexts(pki: ClusterPKI, tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    paths = pki.write(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(paths.ca_cert))
    server_ctx.load_cert_chain(str(paths.serving_cert), str(paths.serving_key))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
    client_ctx.load_cert_chain(str(paths.admin_cert), str(paths.admin_key))
    return server_ctx, client_ctx


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "kubernetes.default.svc"])
def test_mutual_tls_handshake_with_the_generated_pki(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext], name: str
) -> None:
    peer = _handshake(*tls_contexts, name)
    subject = peer["subject"]
    assert isinstance(subject, tuple)
    assert dict(x[0] for x in subject) == {
        "organizationName": ADMIN_GROUP,
        "commonName": ADMIN_USER,
    }


def test_serving_cert_is_rejected_for_a_name_it_does_not_cover(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(*tls_contexts, "example.invalid")
