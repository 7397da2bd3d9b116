"""A throw-away PKI for the security tests: a CA, a server certificate for 127.0.0.1 and
localhost, a client certificate it signed, and a client certificate from another CA."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from opentelemetry.sdk.trace import TracerProvider

from canarycast.tls import ClientTLS, ServerTLS
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry
from tests.router import test_tls

# The same certificate maker as the router's TLS tests.
_cert = test_tls._cert


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


@pytest.fixture
async def mtls_server(trained: TrainedRegistry, pki: Pki) -> AsyncIterator[ModelServer]:
    server = ModelServer(
        ServerSettings(
            registry=trained.root, model=f"{MODEL}@stable", port=0, tls=pki.server(mtls=True)
        ),
        tracer_provider=TracerProvider(),
        metrics=ServerMetrics(),
    )
    await server.start()
    yield server
    await server.stop(grace=1)
