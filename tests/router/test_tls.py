"""The router's port with TLS and mutual TLS: the control API refuses what it must."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from canarycast.rollout_client import RolloutClient
from canarycast.tls import ServerTLS, channel_credentials
from canarycast.v1 import rollout_pb2 as rpb
from router.app import ControllerSettings, RouterServer, RouterSettings
from tests.conftest import MODEL, TrainedRegistry

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

TOKEN = "tls-token"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
    names: Sequence[x509.GeneralName] | None = None,
) -> x509.Certificate:
    """`server`: the certificate names `names` (default: localhost and 127.0.0.1)."""
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
                names
                if names is not None
                else [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("canarycast test CA", ca_key, None, ca_key, ca=True)
    files = {"ca": d / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"canarycast {role}", key, ca, ca_key, server=role == "server")
        files[f"{role}_cert"] = d / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = d / f"{role}.key"
        _write_key(files[f"{role}_key"], key)
    return files


async def test_mtls_control_api(registry_copy: TrainedRegistry, pki: dict[str, Path]) -> None:
    router = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            port=0,
            tls=ServerTLS(pki["server_cert"], pki["server_key"], pki["ca"]),
            controller=ControllerSettings(
                registry=registry_copy.root,
                model=MODEL,
                state=registry_copy.root / "rollouts.db",
                admin_token=TOKEN,
            ),
        )
    )
    await router.start()
    target = f"127.0.0.1:{router.port}"

    def status(token: str | None, credentials: grpc.ChannelCredentials | None) -> int:
        with RolloutClient(target, token, timeout=5, credentials=credentials) as client:
            return client.status().phase

    mtls = channel_credentials(pki["ca"], pki["client_cert"], pki["client_key"])
    tls_only = channel_credentials(pki["ca"])
    try:
        assert await asyncio.to_thread(status, TOKEN, mtls) == rpb.IDLE
        with pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(status, None, mtls)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for credentials in (tls_only, None):  # no client certificate; no TLS at all
            with pytest.raises(grpc.RpcError) as err:
                await asyncio.to_thread(status, TOKEN, credentials)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await router.stop(grace=1)


def test_tls_settings_name_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"TLS key .*nope\.key: No such file"):
        ServerTLS(tmp_path / "nope.pem", tmp_path / "nope.key").credentials()
    with pytest.raises(ValueError, match="go together"):
        channel_credentials(None, tmp_path / "c.pem", None)


async def test_the_embedded_analyzer_also_takes_spans_over_otlp(
    registry_copy: TrainedRegistry,
) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    router = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            port=0,
            controller=ControllerSettings(
                registry=registry_copy.root,
                model=MODEL,
                state=registry_copy.root / "rollouts.db",
                admin_token=TOKEN,
                otlp_port=0,
            ),
        )
    )
    await router.start()
    try:
        assert router.otlp_port
        # another router replica, exporting with OTLP
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{router.otlp_port}", insecure=True)
        await send_one_pair_and_wait(router, exporter, attempts=200, pause=0.01)
    finally:
        await router.stop(grace=1)


async def send_one_pair_and_wait(
    router: RouterServer, exporter: SpanExporter, attempts: int = 500, pause: float = 0.02
) -> None:
    """A replica's spans for one call (both variants forecast, then the actual) exported
    with `exporter`; waits until the router's analyzer has paired them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from canarycast import spans

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("replica")

    def emit() -> None:
        for variant in ("stable", "canary"):
            spans.record_forecast(
                tracer,
                series_id="s",
                forecast_id=f"f-{variant}",
                model_name=MODEL,
                model_version=variant,
                variant=variant,
                point=[1.0],
                timestamps=[10],
                scale=1.0,
                extra={spans.CALL_ID: "c1"},
            )
        spans.record_observation(tracer, "s", [10], [1.5])
        provider.shutdown()

    await asyncio.to_thread(emit)
    assert router.analyzer is not None
    for _ in range(attempts):
        if router.analyzer.stats().pairs:
            break
        await asyncio.sleep(pause)
    assert router.analyzer.evidence(since=0.0).row_means().tolist() == [[0.5, 0.5]]


def test_route_and_rollout_commands_speak_mtls(
    registry_copy: TrainedRegistry, pki: dict[str, Path]
) -> None:
    import os
    import subprocess
    import sys

    from canarycast.processes import start_component

    env = {"CANARYCAST_ADMIN_TOKEN": TOKEN}
    router = start_component(
        "router",
        [
            "route",
            "--port",
            "0",
            "--stable",
            "127.0.0.1:1",
            "--registry",
            str(registry_copy.root),
            "--model",
            MODEL,
            "--tls-cert",
            str(pki["server_cert"]),
            "--tls-key",
            str(pki["server_key"]),
            "--tls-client-ca",
            str(pki["ca"]),
        ],
        env=env,
    )
    try:

        def canarycast(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "cli.main", *args],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, **env},
            )

        mtls = ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"])]
        mtls += ["--tls-key", str(pki["client_key"])]
        rollout = ["rollout", "--router", router.target]
        ok = canarycast(*rollout, *mtls, "status")
        assert ok.returncode == 0, ok.stderr
        assert "no rollout has run yet" in ok.stdout
        never = canarycast(*rollout, *mtls, "status", "--wait")
        assert never.returncode == 2 and "no rollout has run yet" in never.stderr
        refused = canarycast(*rollout, "--tls-ca", str(pki["ca"]), "status")  # no client cert
        assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr

        # `retrain` starts its rollout over the same mTLS (the chart's CronJob does this).
        from server.lifecycle.observations import ObservationStore

        store = registry_copy.root / "observations.db"
        ObservationStore(store).close()
        retrain = canarycast(
            *("retrain", "--registry", str(registry_copy.root), "--model", MODEL),
            *("--observations", str(store), "--router", router.target, *mtls),
            *("--epochs", "1", "--max-windows-per-epoch", "256", "--tolerance", "100"),
            *("--no-progress", "--json"),
        )
        assert retrain.returncode == 0, retrain.stderr
        outcome = json.loads(retrain.stdout)
        assert outcome["action"] == "rollout", outcome
        status = canarycast(*rollout, *mtls, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["candidate_version"] == outcome["version"]
    finally:
        assert router.stop() == 0
