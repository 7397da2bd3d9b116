"""A throw-away PKI for the security tests: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate it signed, and a client certificate from another CA."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canarycast.tls import ClientTLS, ServerTLS


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@dataclass(frozen=True)
class Pki:
    dir: Path

    def file(self, name: str) -> Path:
        return self.dir / name

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def server(self, mtls: bool = False) -> ServerTLS:
        """The server side; with `mtls`, clients must show a certificate from our CA."""
        return ServerTLS(
            self.dir / "server.pem", self.dir / "server.key", self.ca if mtls else None
        )

    def client(self, cert: str | None = "client") -> ClientTLS:
        """Trusts our CA; presents `cert` (`client`, `rogue` from another CA, or None)."""
        if cert is None:
            return ClientTLS(self.ca)
        return ClientTLS(self.ca, self.dir / f"{cert}.pem", self.dir / f"{cert}.key")


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("canarycast test CA", ca_key, None, ca_key, ca=True)
    _write(d / "ca", ca, None)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("some other CA", other_key, None, other_key, ca=True)
    for name, issuer, issuer_key, server in (
        ("server", ca, ca_key, True),
        ("client", ca, ca_key, False),
        ("rogue", other, other_key, False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(d / name, _cert(f"canarycast {name}", key, issuer, issuer_key, server=server), key)
    return Pki(d)
