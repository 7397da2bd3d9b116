"""TLS on every listening port, with real handshakes on loopback: the model server, the
router's port, router -> server channels, the OTLP receiver and the follow stream.
A plaintext client against a TLS port fails cleanly (UNAVAILABLE, the port keeps
serving); with mTLS, a client without a certificate from the right CA is refused."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.sdk.trace import TracerProvider

from canarycast.client import ForecastClient
from canarycast.processes import start_component
from canarycast.tls import ClientTLS
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from router.app import ControllerSettings, RouterServer, RouterSettings
from server.lifecycle.data import load_dataset
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry
from tests.router.test_tls import send_one_pair_and_wait
from tests.security.conftest import Pki

ADMIN = "tls-admin-token"
VIEWER = "tls-viewer-token"
HISTORY = load_dataset("seattle-temps").series[0].values[1000:1048].tolist()


def forecast_request() -> pb.ForecastRequest:
    return pb.ForecastRequest(horizon=3, series=[pb.SeriesInput(series_id="s", history=HISTORY)])


def channel(target: str, tls: ClientTLS | None) -> grpc.aio.Channel:
    if tls is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, tls.credentials())


async def forecast(target: str, tls: ClientTLS | None) -> pb.ForecastResponse:
    async with channel(target, tls) as ch:
        response: pb.ForecastResponse = await pb_grpc.ForecasterStub(ch).Forecast(
            forecast_request(), timeout=10
        )
        return response


async def refused(target: str, tls: ClientTLS | None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await forecast(target, tls)
    return err.value


async def test_model_server_tls_and_mtls(
    trained: TrainedRegistry, pki: Pki, mtls_server: ModelServer
) -> None:
    target = f"127.0.0.1:{mtls_server.port}"
    answer = await forecast(target, pki.client())
    assert answer.model.version == trained.v1.version and len(answer.forecasts[0].point) == 3
    for tls, why in (
        (None, "plaintext"),
        (pki.client(None), "TLS without a client certificate"),
        (pki.client("rogue"), "a client certificate from another CA"),
    ):
        err = await refused(target, tls)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, why
    # the server is unharmed by the refused handshakes
    assert len((await forecast(target, pki.client())).forecasts) == 1

    # TLS without client authentication: any TLS client that trusts the CA gets in
    server = ModelServer(
        ServerSettings(registry=trained.root, model=f"{MODEL}@stable", port=0, tls=pki.server()),
        tracer_provider=TracerProvider(),
        metrics=ServerMetrics(),
    )
    await server.start()
    try:
        tls_target = f"127.0.0.1:{server.port}"
        assert len((await forecast(tls_target, pki.client(None))).forecasts) == 1
        assert (await refused(tls_target, None)).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(grace=1)


async def test_router_speaks_mtls_to_its_backends_and_to_its_clients(
    trained: TrainedRegistry, pki: Pki, mtls_server: ModelServer
) -> None:
    backend = f"127.0.0.1:{mtls_server.port}"
    router = RouterServer(
        RouterSettings(
            stable=[backend], port=0, tls=pki.server(mtls=True), backend_tls=pki.client()
        ),
        tracer_provider=TracerProvider(),
    )
    await router.start()
    try:
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        target = f"127.0.0.1:{router.port}"
        answer = await forecast(target, pki.client())
        assert answer.model.variant == "stable" and answer.model.version == trained.v1.version
        assert (await refused(target, None)).code() == grpc.StatusCode.UNAVAILABLE
        assert (await refused(target, pki.client(None))).code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await router.stop(grace=1)

    # A router that cannot complete the handshake with the server never sends it a call.
    for backend_tls in (None, pki.client(None)):
        router = RouterServer(
            RouterSettings(stable=[backend], port=0, backend_tls=backend_tls),
            tracer_provider=TracerProvider(),
        )
        await router.start()
        try:
            await asyncio.sleep(1.0)  # several health-watch attempts
            assert not router.router.pools["stable"].serving
            err = await refused(f"127.0.0.1:{router.port}", None)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert "no backend is serving" in (err.details() or "")
        finally:
            await router.stop(grace=1)


async def test_otlp_receiver_requires_mtls(
    registry_copy: TrainedRegistry, pki: Pki, monkeypatch: pytest.MonkeyPatch
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
                admin_token=ADMIN,
                otlp_port=0,
                otlp_tls=pki.server(mtls=True),
            ),
        ),
        tracer_provider=TracerProvider(),
    )
    await router.start()
    try:
        otlp = f"127.0.0.1:{router.otlp_port}"
        for tls in (None, pki.client(None), pki.client("rogue")):
            async with channel(otlp, tls) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await TraceServiceStub(ch).Export(ExportTraceServiceRequest(), timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        # a router replica exporting to the leader over mTLS, set up as a replica is:
        # with the standard OpenTelemetry variables only
        for variable, value in (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", f"https://{otlp}"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.file("ca.pem")),
            ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.file("client.pem")),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.file("client.key")),
        ):
            monkeypatch.setenv(variable, str(value))
        await send_one_pair_and_wait(router, OTLPSpanExporter())
    finally:
        await router.stop(grace=1)


async def test_follow_stream_over_mtls(registry_copy: TrainedRegistry, pki: Pki) -> None:
    leader = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            port=0,
            tls=pki.server(mtls=True),
            controller=ControllerSettings(
                registry=registry_copy.root,
                model=MODEL,
                state=registry_copy.root / "rollouts.db",
                admin_token=ADMIN,
                viewer_token=VIEWER,
            ),
        ),
        tracer_provider=TracerProvider(),
    )
    await leader.start()
    followers = [
        RouterServer(
            RouterSettings(
                stable=["127.0.0.1:1"],
                port=0,
                canary_weight=0.5,
                follow=f"127.0.0.1:{leader.port}",
                follow_token=VIEWER,  # reading is all following needs
                follow_tls=tls,
            ),
            tracer_provider=TracerProvider(),
        )
        for tls in (pki.client(), pki.client(None), None)
    ]
    try:
        for follower in followers:
            await follower.start()
        good, no_cert, plaintext = (f.follower for f in followers)
        assert good is not None and no_cert is not None and plaintext is not None
        for _ in range(500):
            if good.applied is not None:
                break
            await asyncio.sleep(0.02)
        assert good.connected and good.applied == 0.0  # no rollout: the leader says weight 0
        assert followers[0].router.policy.canary_weight == 0.0
        await asyncio.sleep(1.0)  # the others keep trying, and keep failing the handshake
        for f, refused_follower in ((followers[1], no_cert), (followers[2], plaintext)):
            assert not refused_follower.connected and refused_follower.applied is None
            assert f.router.policy.canary_weight == 0.5  # they keep the weight they had
        # the viewer token reads but cannot steer, over the very same channel
        async with channel(f"127.0.0.1:{leader.port}", pki.client()) as ch:
            stub = rpb_grpc.RolloutControlStub(ch)
            metadata = (("authorization", f"Bearer {VIEWER}"),)
            assert (await stub.GetStatus(rpb.GetStatusRequest(), metadata=metadata)).phase == (
                rpb.IDLE
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Pause(rpb.PauseRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for follower in followers:
            await follower.stop(grace=1)
        await leader.stop(grace=1)


@pytest.mark.slow
def test_serve_route_and_forecast_commands_speak_mtls(trained: TrainedRegistry, pki: Pki) -> None:
    f = pki.file
    server = start_component(
        "server",
        [
            "serve",
            "--registry",
            str(trained.root),
            "--model",
            f"{MODEL}@stable",
            "--port",
            "0",
            "--tls-cert",
            str(f("server.pem")),
            "--tls-key",
            str(f("server.key")),
            "--tls-client-ca",
            str(f("ca.pem")),
        ],
    )
    try:
        router = start_component(
            "router",
            [
                "route",
                "--port",
                "0",
                "--stable",
                server.target,
                "--backend-tls-ca",
                str(f("ca.pem")),
                "--backend-tls-cert",
                str(f("client.pem")),
                "--backend-tls-key",
                str(f("client.key")),
                "--tls-cert",
                str(f("server.pem")),
                "--tls-key",
                str(f("server.key")),
                "--tls-client-ca",
                str(f("ca.pem")),
            ],
        )
        try:

            def call(*flags: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "cli.main",
                        "forecast",
                        "--target",
                        router.target,
                        "--values",
                        ",".join(map(str, HISTORY)),
                        "--horizon",
                        "3",
                        "--json",
                        *flags,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=dict(os.environ),
                )

            # the router's health watch needs a moment to see the server SERVING
            credentials = pki.client().credentials()
            with ForecastClient(router.target, timeout=5, credentials=credentials) as client:
                for _ in range(200):
                    try:
                        client.forecast({"s": HISTORY}, horizon=3)
                        break
                    except grpc.RpcError:
                        time.sleep(0.05)
            mtls = ["--tls-ca", str(f("ca.pem"))]
            mtls += ["--tls-cert", str(f("client.pem")), "--tls-key", str(f("client.key"))]
            ok = call(*mtls)
            assert ok.returncode == 0, ok.stderr
            answer = json.loads(ok.stdout)
            assert answer["model"]["variant"] == "stable" and len(answer["point"]) == 3
            with ForecastClient(router.target, timeout=5) as plaintext:  # refused cleanly
                with pytest.raises(grpc.RpcError) as err:
                    plaintext.forecast({"s": HISTORY}, horizon=3)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            assert router.stop() == 0
    finally:
        assert server.stop() == 0
