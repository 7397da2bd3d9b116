"""Request size and rate limits on every port: over-size and over-rate calls get
RESOURCE_EXHAUSTED with a clear message, are counted, and the port keeps serving."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.sdk.trace import TracerProvider

from canarycast.grpc_server import RateLimit, TokenBuckets, peer_address
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from canarycast.validation import Limits
from cli.main import _limits, _rate_limit, build_parser
from router.app import ControllerSettings, RouterServer, RouterSettings
from router.metrics import RouterMetrics
from server.serving.app import ModelServer, ServerSettings
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry
from tests.security.test_tls import HISTORY

ADMIN = "limits-admin"
SMALL = 64 * 1024


def observe_request(points: int = 3) -> pb.ObserveRequest:
    obs = pb.SeriesObservation(series_id="s", values=[1.0] * points)
    for i in range(points):
        obs.timestamps.add(seconds=3600 * (i + 1))
    return pb.ObserveRequest(observations=[obs])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_buckets_refill_per_key_and_stay_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(RateLimit(rate=2.0, burst=3, max_peers=2), clock)
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b")  # another key has its own bucket
    clock.now += 0.25  # half a token
    assert not buckets.take("a")
    clock.now += 0.25
    assert buckets.take("a") and not buckets.take("a")
    clock.now += 100.0  # refills up to the burst, no more
    assert [buckets.take("a") for _ in range(4)] == [True, True, True, False]
    buckets.take("c")  # a third key: the least recently seen ("b") is forgotten
    assert set(buckets._buckets) == {"a", "c"}


def test_rate_limit_settings() -> None:
    assert peer_address("ipv4:127.0.0.1:50312") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:50312") == "[::1]"
    assert peer_address("unix:/run/x.sock") == "unix:/run/x.sock"
    with pytest.raises(ValueError, match="rate limit must be > 0"):
        RateLimit(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        RateLimit(rate=1, burst=0)
    parse = build_parser().parse_args
    args = parse(["serve", "--model", "m@stable"])
    assert _rate_limit(args) is None and _limits(args) == Limits()  # off by default
    args = parse(["route", "--stable", "h:1", "--rate-limit", "50", "--rate-limit-scope", "global"])
    assert _rate_limit(args) == RateLimit(50.0, 50, per_peer=False)
    args = parse(["serve", "--model", "m@stable", "--rate-limit", "0.5", "--rate-burst", "4"])
    assert _rate_limit(args) == RateLimit(0.5, 4)
    with pytest.raises(ValueError, match="--rate-burst needs --rate-limit"):
        _rate_limit(parse(["serve", "--model", "m@stable", "--rate-burst", "4"]))
    with pytest.raises(ValueError, match="--max-message-bytes must be at least 1024"):
        _limits(parse(["serve", "--model", "m@stable", "--max-message-bytes", "10"]))


async def test_model_server_limits(trained: TrainedRegistry) -> None:
    args = build_parser().parse_args(
        [
            *("serve", "--model", "m@stable", "--max-message-bytes", str(SMALL)),
            *("--rate-limit", "0.1", "--rate-burst", "3"),
        ]
    )
    metrics = ServerMetrics()
    server = ModelServer(
        ServerSettings(
            registry=trained.root,
            model=f"{MODEL}@stable",
            port=0,
            limits=_limits(args),
            rate_limit=_rate_limit(args),
        ),
        tracer_provider=TracerProvider(),
        metrics=metrics,
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ForecasterStub(channel)
            huge = pb.ForecastRequest(
                horizon=1, series=[pb.SeriesInput(series_id="s", history=[1.0] * 20_000)]
            )  # ~160 kB
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Forecast(huge, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            request = pb.ForecastRequest(
                horizon=2, series=[pb.SeriesInput(series_id="s", history=HISTORY)]
            )
            for _ in range(3):  # the burst (the over-size call never reached the limiter)
                assert len((await stub.Forecast(request, timeout=10)).forecasts) == 1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Forecast(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = err.value.details() or ""
            assert "rate limit: more than 0.1 Forecast calls per second from 127.0.0.1" in details
            # a refused call's bytes are not read: garbage over the limit is refused as such
            raw = channel.unary_unary("/canarycast.v1.Forecaster/Forecast")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff", timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # Observe has its own bucket; GetModel and health are not limited
            assert (await stub.Observe(observe_request(), timeout=10)).accepted_points == 3
            # admitted garbage is decoded after the limiter and named as such
            raw = channel.unary_unary("/canarycast.v1.Forecaster/Observe")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff", timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a canarycast.v1.ObserveRequest" in (err.value.details() or "")
            for _ in range(5):
                assert (await stub.GetModel(pb.GetModelRequest(), timeout=10)).model.name == MODEL
        sample = metrics.registry.get_sample_value(
            "canarycast_server_calls_total", {"method": "Forecast", "code": "RESOURCE_EXHAUSTED"}
        )
        assert sample == 2.0  # the rate-limited calls; the over-size one died in the transport
    finally:
        await server.stop(grace=1)


async def test_router_limits_on_the_request_path_and_the_control_api(
    registry_copy: TrainedRegistry,
) -> None:
    metrics = RouterMetrics()
    router = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],  # Observe and the control API need no backend
            port=0,
            limits=Limits(max_message_bytes=SMALL),
            rate_limit=RateLimit(rate=0.1, burst=2, per_peer=False),
            controller=ControllerSettings(
                registry=registry_copy.root,
                model=MODEL,
                state=registry_copy.root / "rollouts.db",
                admin_token=ADMIN,
                otlp_port=0,
                otlp_max_message_bytes=SMALL,
            ),
        ),
        tracer_provider=TracerProvider(),
        metrics=metrics,
    )
    await router.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
            stub = pb_grpc.ForecasterStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Observe(observe_request(10_000), timeout=10)  # ~200 kB
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for _ in range(2):
                assert (await stub.Observe(observe_request(), timeout=10)).accepted_points == 3
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Observe(observe_request(), timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "rate limit: more than 0.1 Observe calls per second in all" in (
                err.value.details() or ""
            )

            control = rpb_grpc.RolloutControlStub(channel)
            admin = (("authorization", f"Bearer {ADMIN}"),)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await control.StartRollout(
                    rpb.StartRolloutRequest(candidate="x" * (2 * SMALL)), metadata=admin
                )
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (await control.GetStatus(rpb.GetStatusRequest(), metadata=admin)).phase == (
                rpb.IDLE
            )
        sample = metrics.registry.get_sample_value(
            "canarycast_router_calls_total", {"method": "Observe", "code": "RESOURCE_EXHAUSTED"}
        )
        assert sample == 1.0

        async with grpc.aio.insecure_channel(f"127.0.0.1:{router.otlp_port}") as channel:
            otlp = TraceServiceStub(channel)
            big = ExportTraceServiceRequest()
            span = big.resource_spans.add().scope_spans.add().spans.add(name="x" * (2 * SMALL))
            assert span.name
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await otlp.Export(big, timeout=10)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await otlp.Export(ExportTraceServiceRequest(), timeout=10)  # still serving
    finally:
        await router.stop(grace=1)
