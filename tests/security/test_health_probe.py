"""`canarycast health`: the exec probe for ports the kubelet's plaintext gRPC probe cannot
reach. Real model servers, plaintext and mTLS, on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider

from cli.main import main
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry
from tests.security.conftest import Pki


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process CLI runs must not point structlog (cached loggers) at a test's captured
    stderr: later tests would log into a closed file."""
    monkeypatch.setattr("canarycast.telemetry.configure_logging", lambda *a, **k: None)


async def health(*args: str) -> int:
    """Runs the command in a thread (the servers live on this test's event loop)."""
    return await asyncio.to_thread(main, ["health", *args])


async def test_exit_codes_follow_the_servers_health(
    trained: TrainedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ModelServer(
        ServerSettings(registry=trained.root, model=f"{MODEL}@stable", port=0),
        tracer_provider=TracerProvider(),
        metrics=ServerMetrics(),
    )
    await server.open()  # listening, model not loaded yet: NOT_SERVING
    target = f"127.0.0.1:{server.port}"
    try:
        assert (await health("--target", target)) == 1
        assert "NOT_SERVING" in capsys.readouterr().out
        await server.load()
        assert (await health("--target", target)) == 0
        assert "canarycast.v1.Forecaster: SERVING" in capsys.readouterr().out
        assert (await health("--target", target, "--service", "no.such.Service")) == 1
        assert "SERVICE_UNKNOWN" in capsys.readouterr().out
    finally:
        await server.stop(grace=1)
    assert (await health("--target", target, "--timeout", "1")) == 2  # gone
    assert "UNAVAILABLE" in capsys.readouterr().err
    assert (await health("--target", target, "--tls-server-name", "x")) == 2
    assert "--tls-server-name needs TLS" in capsys.readouterr().err


async def test_the_probe_speaks_mtls_and_checks_the_name_it_is_told(
    pki: Pki, mtls_server: ModelServer, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{mtls_server.port}"
    client = pki.client()
    mtls = ["--tls-ca", str(client.ca), "--tls-cert", str(client.cert)]
    mtls += ["--tls-key", str(client.key)]
    assert (await health("--target", target, *mtls, "--tls-server-name", "localhost")) == 0
    assert "SERVING" in capsys.readouterr().out
    # the certificate does not name this host: the handshake fails, no answer
    wrong = await health("--target", target, *mtls, "--tls-server-name", "stable.elsewhere")
    assert wrong == 2
    assert (await health("--target", target, "--tls-ca", str(client.ca))) == 2  # no cert
    assert (await health("--target", target)) == 2  # plaintext to a TLS port
    capsys.readouterr()


def test_the_probe_does_not_import_torch() -> None:
    """Run every few seconds in each pod: it must stay cheap (grpc only)."""
    code = (
        "import sys; from cli.main import main; "
        "rc = main(['health', '--target', '127.0.0.1:1', '--timeout', '0.5']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["2", "False"]
