"""A renewed certificate is picked up without a restart: the next handshake uses the files
as they are now (cert-manager swaps a mounted Secret's files at once); a broken set is
refused and the last good one kept. A real model server with TLS on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from canarycast.tls import ServerTLS
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry
from tests.router.test_tls import _cert, _write_key


def issue(d: Path, name: str) -> dict[str, Path]:
    """A CA and a server certificate (localhost, 127.0.0.1) it signed, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(f"{name} CA", ca_key, None, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"{name} server", key, ca, ca_key, server=True)
    files = {"ca": d / f"{name}-ca.pem", "cert": d / f"{name}.pem", "key": d / f"{name}.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(files["key"], key)
    return files


def install(files: dict[str, Path], cert: Path, key: Path) -> None:
    """Swap both files into place, each by rename (what a Secret volume update amounts to)."""
    for src, dst in ((files["cert"], cert), (files["key"], key)):
        tmp = dst.with_name(dst.name + ".new")
        tmp.write_bytes(src.read_bytes())
        os.replace(tmp, dst)


def check(target: str, ca: Path) -> bool:
    """A new connection trusting `ca` completes a health check."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return True
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False


async def test_a_renewed_certificate_is_used_by_the_next_handshake(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    import asyncio

    old, new = issue(tmp_path, "old"), issue(tmp_path, "new")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    install(old, cert, key)
    server = ModelServer(
        ServerSettings(
            registry=trained.root, model=f"{MODEL}@stable", port=0, tls=ServerTLS(cert, key)
        ),
        tracer_provider=TracerProvider(),
        metrics=ServerMetrics(),
    )
    await server.start()
    target = f"localhost:{server.port}"
    try:
        assert await asyncio.to_thread(check, target, old["ca"])
        assert not await asyncio.to_thread(check, target, new["ca"])

        install(new, cert, key)  # renewed: no restart
        assert await asyncio.to_thread(check, target, new["ca"])
        assert not await asyncio.to_thread(check, target, old["ca"])

        # A half-written renewal (a key that is not the certificate's) is refused: the
        # last good pair keeps serving.
        key.write_bytes(old["key"].read_bytes())
        assert await asyncio.to_thread(check, target, new["ca"])
    finally:
        await server.stop(grace=1)


def test_a_mismatched_pair_is_refused_at_start_naming_the_files(tmp_path: Path) -> None:
    a, b = issue(tmp_path, "a"), issue(tmp_path, "b")
    with pytest.raises(ValueError, match=r"a\.pem"):
        ServerTLS(a["cert"], b["key"]).credentials()
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        ServerTLS(tmp_path / "garbage.pem", a["key"]).credentials()
    with pytest.raises(ValueError, match="client CA"):
        ServerTLS(a["cert"], a["key"], tmp_path / "garbage.pem").credentials()
