"""The dev cluster's PKI: a throwaway CA and everything it signs.

Data flow: :meth:`ClusterPKI.generate` makes, in memory, a CA, the API server's
serving certificate (SANs for loopback and the in-cluster ``kubernetes`` names),
the service-account signing key pair, the admin client certificate
(CN ``limpet-admin``, O ``system:masters``) and, for kube-controller-manager and
kube-scheduler each, a client certificate whose CN is the user that the API
server's bootstrap RBAC binds (``system:kube-controller-manager``,
``system:kube-scheduler``) and a serving certificate for its secure port on
loopback. :meth:`ClusterPKI.write` puts them as PEM files into the cluster's
private work directory, where the components and clients read them.
:meth:`CertificateAuthority.issue_client` signs more client certificates later,
e.g. for an unprivileged test user.

All keys are ECDSA P-256: they take microseconds to generate (RSA takes tens of
milliseconds each) and kube-apiserver, kubectl, Python's ssl and the service
account token signer (ES256) all accept them.

Pure computation, no shared state: safe to call from any thread.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "limpet-admin"
ADMIN_GROUP = "system:masters"
# The users the API server's bootstrap ClusterRoleBindings of the same names grant
# the controller manager's and the scheduler's permissions to.
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"

# What clients may call the API server: loopback, and the names and Service IP
# under which in-cluster clients know it.
SERVING_DNS_NAMES: tuple[str, ...] = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
# Backdate validity a little so that a clock step right after generation does
# not make a fresh certificate "not yet valid".
_BACKDATE = dt.timedelta(hours=1)
DEFAULT_VALIDITY = dt.timedelta(days=365)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


@dataclass(frozen=True, slots=True)
class CertKeyPair:
    """A certificate and its private key, both PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    validity: dt.timedelta,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What a CA and a leaf certificate share: names, key, serial, validity (backdated
    for clock skew), basic constraints and key usage (a CA also signs certificates)."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A self-signed CA that issues the cluster's serving and client certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(
        cls,
        *,
        common_name: str = "limpet-devcluster-ca",
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> CertificateAuthority:
        key = _new_key()
        subject = _name(common_name)
        cert = (
            _builder(subject, subject, key, validity, ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=cert, key=key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def _issue(
        self,
        subject: x509.Name,
        *,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName],
        validity: dt.timedelta,
    ) -> CertKeyPair:
        key = _new_key()
        builder = (
            _builder(subject, self.certificate.subject, key, validity, ca=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return CertKeyPair(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key)
        )

    def issue_server(
        self,
        *,
        common_name: str = "kube-apiserver",
        dns_names: Sequence[str] = SERVING_DNS_NAMES,
        ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> CertKeyPair:
        """A TLS serving certificate valid for the given names and addresses."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        return self._issue(
            _name(common_name),
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            sans=sans,
            validity=validity,
        )

    def issue_client(
        self,
        *,
        common_name: str,
        groups: Sequence[str] = (),
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> CertKeyPair:
        """A client certificate: kube-apiserver reads the user from CN, groups from O."""
        return self._issue(
            _name(common_name, groups),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            sans=(),
            validity=validity,
        )


@dataclass(frozen=True, slots=True)
class ServiceAccountKeys:
    """The key pair kube-apiserver signs and verifies service-account tokens with."""

    private_pem: bytes
    public_pem: bytes

    @classmethod
    def generate(cls) -> ServiceAccountKeys:
        key = _new_key()
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(private_pem=_key_pem(key), public_pem=public)


@dataclass(frozen=True, slots=True)
class ComponentCredentials:
    """What a control-plane component with a secure port gets: a client certificate for
    its calls to the API server and a serving certificate for its own port."""

    client: CertKeyPair
    serving: CertKeyPair

    @classmethod
    def generate(cls, ca: CertificateAuthority, *, user: str) -> ComponentCredentials:
        return cls(
            client=ca.issue_client(common_name=user),
            serving=ca.issue_server(
                common_name=user, dns_names=("localhost",), ip_addresses=("127.0.0.1",)
            ),
        )

    def write(self, directory: Path, name: str) -> ComponentPaths:
        paths = ComponentPaths(
            client_cert=directory / f"{name}-client.crt",
            client_key=directory / f"{name}-client.key",
            serving_cert=directory / f"{name}-serving.crt",
            serving_key=directory / f"{name}-serving.key",
        )
        self.client.write(paths.client_cert, paths.client_key)
        self.serving.write(paths.serving_cert, paths.serving_key)
        return paths


@dataclass(frozen=True, slots=True)
class ComponentPaths:
    client_cert: Path
    client_key: Path
    serving_cert: Path
    serving_key: Path


@dataclass(frozen=True, slots=True)
class PKIPaths:
    """Where :meth:`ClusterPKI.write` put each file."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_private_key: Path
    sa_public_key: Path
    admin_cert: Path
    admin_key: Path
    controller_manager: ComponentPaths
    scheduler: ComponentPaths


@dataclass(frozen=True, slots=True)
class ClusterPKI:
    """Everything a dev cluster needs, generated together."""

    ca: CertificateAuthority
    serving: CertKeyPair
    service_account: ServiceAccountKeys
    admin: CertKeyPair
    controller_manager: ComponentCredentials
    scheduler: ComponentCredentials

    @classmethod
    def generate(cls, *, service_ip: str | None = None) -> ClusterPKI:
        """``service_ip`` is the ClusterIP of the ``kubernetes`` Service, added as a SAN."""
        ca = CertificateAuthority.generate()
        ips = ["127.0.0.1", "::1"]
        if service_ip is not None:
            ips.append(service_ip)
        return cls(
            ca=ca,
            serving=ca.issue_server(ip_addresses=ips),
            service_account=ServiceAccountKeys.generate(),
            admin=ca.issue_client(common_name=ADMIN_USER, groups=(ADMIN_GROUP,)),
            controller_manager=ComponentCredentials.generate(ca, user=CONTROLLER_MANAGER_USER),
            scheduler=ComponentCredentials.generate(ca, user=SCHEDULER_USER),
        )

    def write(self, directory: Path) -> PKIPaths:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = PKIPaths(
            ca_cert=directory / "ca.crt",
            ca_key=directory / "ca.key",
            serving_cert=directory / "apiserver.crt",
            serving_key=directory / "apiserver.key",
            sa_private_key=directory / "sa.key",
            sa_public_key=directory / "sa.pub",
            admin_cert=directory / "admin.crt",
            admin_key=directory / "admin.key",
            controller_manager=self.controller_manager.write(directory, "controller-manager"),
            scheduler=self.scheduler.write(directory, "scheduler"),
        )
        CertKeyPair(self.ca.cert_pem, _key_pem(self.ca.key)).write(paths.ca_cert, paths.ca_key)
        self.serving.write(paths.serving_cert, paths.serving_key)
        paths.sa_private_key.touch(mode=0o600)
        paths.sa_private_key.write_bytes(self.service_account.private_pem)
        paths.sa_public_key.write_bytes(self.service_account.public_pem)
        self.admin.write(paths.admin_cert, paths.admin_key)
        return paths
