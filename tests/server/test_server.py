"""A real model server on a free loopback port, called through the generated stubs."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AnyValue

from canarycast.spans import read_forecasts
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.validation import Limits
from server.lifecycle.data import load_dataset
from server.lifecycle.recipe import DEFAULT_MEMBERS
from server.serving.app import SERVICE_NAME, ModelServer, ServerSettings
from server.serving.loader import load_model
from server.serving.metrics import ServerMetrics
from tests.conftest import MODEL, TrainedRegistry, ended

SERIES = load_dataset("seattle-temps").series[0]
LOOKBACK = 48
START_NS = int(SERIES.timestamps[0].astype("datetime64[ns]").astype(np.int64))


def attrs(span: ReadableSpan) -> Mapping[str, AnyValue]:
    """A finished span's attributes: the SDK always records them, though the type allows None."""
    assert span.attributes is not None
    return span.attributes


def batch_sizes(exporter: InMemorySpanExporter) -> list[int]:
    """The batch size each finished `forecast` span records."""
    sizes: list[int] = []
    for s in exporter.get_finished_spans():
        if s.name == "forecast":
            size = attrs(s)["canarycast.batch_size"]
            assert isinstance(size, int), size
            sizes.append(size)
    return sizes


@dataclass
class Running:
    server: ModelServer
    channel: grpc.aio.Channel
    stub: pb_grpc.ForecasterStub
    spans: InMemorySpanExporter

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


async def open_server(root: Path, **settings: Any) -> Running:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    server = ModelServer(
        ServerSettings(registry=root, model=f"{MODEL}@stable", port=0, **settings),
        tracer_provider=provider,
        metrics=ServerMetrics(),
    )
    await server.open()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Running(server, channel, pb_grpc.ForecasterStub(channel), spans)


@pytest.fixture
async def running(trained: TrainedRegistry) -> AsyncIterator[Running]:
    r = await open_server(trained.root, reload_interval=0.05, metrics_port=0)
    await r.server.load()
    yield r
    await r.channel.close()
    await r.server.stop(grace=1)


def request(n: int = 1, horizon: int = 12, offset: int = 1000, **kwargs: Any) -> pb.ForecastRequest:
    req = pb.ForecastRequest(horizon=horizon, **kwargs)
    for i in range(n):
        s = req.series.add(
            series_id=f"s{i}", history=SERIES.values[offset + i : offset + i + LOOKBACK].tolist()
        )
        s.start.FromNanoseconds(START_NS + (offset + i) * 3600 * 10**9)
    return req


async def test_health_is_not_serving_until_the_model_is_loaded(trained: TrainedRegistry) -> None:
    r = await open_server(trained.root)
    try:
        for service in ("", SERVICE_NAME):
            check = await r.health.Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.stub.Forecast(request())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not loaded" in (err.value.details() or "")
        await r.server.load()
        check = await r.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)


async def test_forecast_answers_with_timestamps_quantiles_and_model(
    running: Running, trained: TrainedRegistry
) -> None:
    response = await running.stub.Forecast(request(horizon=6, quantiles=[0.9, 0.1]))
    assert response.model == pb.ModelRef(name=MODEL, version=trained.v1.version, variant="stable")
    [f] = response.forecasts
    assert f.series_id == "s0" and len(f.forecast_id) == 24
    assert len(f.point) == 6
    assert [q.quantile for q in f.quantiles] == [0.9, 0.1]
    assert all(
        lo <= hi for lo, hi in zip(f.quantiles[1].values, f.quantiles[0].values, strict=True)
    )
    # targets: the 6 hours after the 24 history values that start at offset 1000
    expected = SERIES.timestamps[1000 + LOOKBACK : 1000 + LOOKBACK + 6]
    got = np.array([t.ToNanoseconds() for t in f.timestamps], dtype="datetime64[ns]")
    np.testing.assert_array_equal(got, expected)
    # the same numbers as the model's own forward pass, median column
    model = load_model(trained.registry, f"{MODEL}:{trained.v1.version}")
    direct = model.predict(SERIES.values[1000 : 1000 + LOOKBACK][None, :])[0]
    np.testing.assert_allclose(f.point, direct[:6, model.point_index], rtol=1e-6)
    # no start: no timestamps; ids differ per forecast
    bare = await running.stub.Forecast(
        pb.ForecastRequest(horizon=3, series=[pb.SeriesInput(series_id="x", history=[1.0] * 60)])
    )
    assert len(bare.forecasts[0].timestamps) == 0
    assert bare.forecasts[0].forecast_id != f.forecast_id


async def test_get_model_describes_limits_and_lineage(
    running: Running, trained: TrainedRegistry
) -> None:
    info = await running.stub.GetModel(pb.GetModelRequest())
    assert info.model.version == trained.v1.version
    assert (info.lookback, info.max_horizon) == (LOOKBACK, 12)
    assert list(info.quantiles) == [0.1, 0.5, 0.9]
    assert info.step.seconds == 3600
    assert info.lineage.dataset == "seattle-temps"
    assert info.lineage.dataset_hash == load_dataset("seattle-temps").content_hash
    assert {"mae", "rmse", "smape", "mase"} <= set(info.lineage.scores)
    assert info.lineage.parameters["hidden"] == "8"
    assert DEFAULT_MEMBERS == 1 and "members" not in info.lineage.parameters  # as before it
    assert info.lineage.created_at.seconds > 0
    assert info.max_series_per_call == Limits().max_series_per_call
    assert info.reload_error == ""


async def test_a_seed_ensemble_and_a_single_network_serve_from_one_registry(
    tmp_path: Path,
) -> None:
    import torch

    from server.lifecycle.model import LSTMForecaster, ModelConfig, build_model, scale_windows
    from server.lifecycle.pipeline import train_and_register
    from server.lifecycle.registry import Registry
    from server.lifecycle.training import TrainParams
    from tests.conftest import tiny_config

    registry = Registry(tmp_path)
    dataset = load_dataset("seattle-temps")
    params = TrainParams(epochs=1, max_windows_per_epoch=256)
    single, pair = (
        train_and_register(dataset, tiny_config(members=k), params, registry, MODEL, progress=False)
        for k in (1, 2)
    )
    assert "members" not in single.config  # saved as every model before ensembles
    assert pair.config["members"] == 2
    history = SERIES.values[1000 : 1000 + LOOKBACK]
    # what the ensemble must answer: its members' mean, the offset once, sorted, unscaled
    _, state = registry.load(MODEL, pair.version)
    member_config = ModelConfig.from_dict({**pair.config, "members": 1})
    members = [
        build_model(
            member_config,
            {
                k.removeprefix(f"members.{i}."): v
                for k, v in state.items()
                if k.startswith(f"members.{i}.")
            },
        )
        for i in (0, 1)
    ]
    assert all(type(m) is LSTMForecaster for m in members)
    scaled, loc, scale = scale_windows(history[None, :])
    x = torch.from_numpy(scaled.astype(np.float32))
    with torch.inference_mode():
        mean = torch.stack([m(x) for m in members]).mean(dim=0)
        out = mean + members[0].seasonal_scale(x).unsqueeze(-1) * state["interval_offset"]
    expected = loc[:, :, None] + scale[:, :, None] * np.sort(out.double().numpy(), axis=-1)
    for version in (pair, single):
        registry.set_alias(MODEL, "stable", version.version)
        r = await open_server(tmp_path)
        try:
            await r.server.load()
            response = await r.stub.Forecast(request(horizon=6, quantiles=[0.1, 0.9]))
            assert response.model.version == version.version
            [f] = response.forecasts
            direct = load_model(registry, f"{MODEL}:{version.version}").predict(history[None, :])
            if version is pair:
                np.testing.assert_allclose(direct, expected, rtol=1e-6)
            np.testing.assert_allclose(f.point, direct[0, :6, 1], rtol=1e-6)
            np.testing.assert_allclose(f.quantiles[0].values, direct[0, :6, 0], rtol=1e-6)
            np.testing.assert_allclose(f.quantiles[1].values, direct[0, :6, 2], rtol=1e-6)
        finally:
            await r.channel.close()
            await r.server.stop(grace=1)


def _series(history: Sequence[float], series_id: str = "a", **kw: Any) -> pb.SeriesInput:
    return pb.SeriesInput(series_id=series_id, history=history, **kw)


GOOD = [20.0] * LOOKBACK
BAD_REQUESTS = {
    "no series": (pb.ForecastRequest(horizon=1), "series"),
    "empty history": (pb.ForecastRequest(horizon=1, series=[_series([])]), "series[0].history"),
    "short history": (
        pb.ForecastRequest(horizon=1, series=[_series([1.0] * (LOOKBACK - 1))]),
        f"series[0].history: has {LOOKBACK - 1} values (series 'a'); "
        f"the model needs at least {LOOKBACK}",
    ),
    "NaN": (
        pb.ForecastRequest(horizon=1, series=[_series([*GOOD[:-1], float("nan")])]),
        f"series[0].history[{LOOKBACK - 1}]",
    ),
    "Inf": (
        pb.ForecastRequest(horizon=1, series=[_series([float("inf"), *GOOD])]),
        "series[0].history[0]",
    ),
    "too long": (
        pb.ForecastRequest(horizon=1, series=[_series([1.0] * 100_001)]),
        "series[0].history: has 100001 values",
    ),
    "horizon 0": (pb.ForecastRequest(horizon=0, series=[_series(GOOD)]), "horizon"),
    "horizon too far": (pb.ForecastRequest(horizon=13, series=[_series(GOOD)]), "horizon"),
    "duplicate ids": (
        pb.ForecastRequest(horizon=1, series=[_series(GOOD), _series(GOOD)]),
        "series[1].series_id: duplicate series id 'a'",
    ),
    "empty id": (pb.ForecastRequest(horizon=1, series=[_series(GOOD, "")]), "series[0].series_id"),
    "too many series": (
        pb.ForecastRequest(horizon=1, series=[_series(GOOD, f"s{i}") for i in range(1025)]),
        "series: 1025 series in one call",
    ),
    "unknown quantile": (
        pb.ForecastRequest(horizon=1, series=[_series(GOOD)], quantiles=[0.5, 0.33]),
        "quantiles[1]: 0.33 is not served",
    ),
    "step without start": (
        pb.ForecastRequest(horizon=1, series=[_series(GOOD, step={"seconds": 60})]),
        "series[0].step",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
async def test_bad_forecast_input_is_invalid_argument_naming_the_field(
    running: Running, case: str
) -> None:
    req, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await running.stub.Forecast(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(field.split(":")[0])
    assert field in (err.value.details() or "")
    # and the server keeps serving
    ok = await running.stub.Forecast(request())
    assert len(ok.forecasts) == 1


async def test_oversize_message_is_resource_exhausted(trained: TrainedRegistry) -> None:
    r = await open_server(trained.root, limits=Limits(max_message_bytes=64 * 1024))
    await r.server.load()
    try:
        huge = pb.ForecastRequest(horizon=1, series=[_series([1.0] * 20_000)])  # ~160 kB
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.stub.Forecast(huge)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len((await r.stub.Forecast(request())).forecasts) == 1
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)


async def test_observe_acknowledges_valid_points_and_rejects_bad_ones(running: Running) -> None:
    obs = pb.SeriesObservation(series_id="a", values=[1.0, 2.0, 3.0])
    for k in range(3):
        obs.timestamps.add(seconds=1_700_000_000 + 3600 * k)
    ok = await running.stub.Observe(pb.ObserveRequest(observations=[obs]))
    assert ok.accepted_points == 3
    bad_cases = {
        "observations[0].timestamps": pb.SeriesObservation(
            series_id="a", values=[1.0, 2.0], timestamps=[{"seconds": 1}]
        ),
        "observations[0].values[1]": pb.SeriesObservation(
            series_id="a", values=[1.0, float("nan")], timestamps=[{"seconds": 1}, {"seconds": 2}]
        ),
        "observations[0].timestamps[1]": pb.SeriesObservation(
            series_id="a", values=[1.0, 2.0], timestamps=[{"seconds": 2}, {"seconds": 2}]
        ),
        "observations[0].series_id": pb.SeriesObservation(
            series_id="", values=[1.0], timestamps=[{"seconds": 1}]
        ),
        "observations[0].values": pb.SeriesObservation(series_id="a"),
    }
    for field, bad in bad_cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await running.stub.Observe(pb.ObserveRequest(observations=[bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert (err.value.details() or "").startswith(field), err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await running.stub.Observe(pb.ObserveRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_calls_are_batched_and_equal_unbatched_results(
    trained: TrainedRegistry,
) -> None:
    r = await open_server(trained.root, max_queue_delay=0.02)
    await r.server.load()
    try:
        offsets = [100 * k for k in range(32)]
        sequential = [await r.stub.Forecast(request(offset=o)) for o in offsets]
        seq_sizes = batch_sizes(r.spans)
        assert set(seq_sizes) == {1}
        r.spans.clear()
        concurrent = await asyncio.gather(*(r.stub.Forecast(request(offset=o)) for o in offsets))
        sizes = batch_sizes(r.spans)
        assert max(sizes) > 1, sizes
        for a, b in zip(sequential, concurrent, strict=True):
            # one forward pass over many rows vs one row: same numbers up to float32 rounding
            np.testing.assert_allclose(a.forecasts[0].point, b.forecasts[0].point, rtol=1e-5)
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)


async def test_hot_reload_under_load_drops_no_call(registry_copy: TrainedRegistry) -> None:
    r = await open_server(registry_copy.root, reload_interval=0.05)
    await r.server.load()
    versions: list[str] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client(k: int) -> None:
        while not stop.is_set():
            try:
                resp = await r.stub.Forecast(request(offset=50 * k), timeout=10)
                versions.append(resp.model.version)
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    try:
        tasks = [asyncio.create_task(client(k)) for k in range(8)]
        await asyncio.sleep(0.3)
        registry_copy.registry.set_alias(MODEL, "stable", registry_copy.v2.version)
        for _ in range(200):
            await asyncio.sleep(0.05)
            if versions and versions[-1] == registry_copy.v2.version:
                break
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)
    assert failures == []
    assert versions[0] == registry_copy.v1.version
    assert versions[-1] == registry_copy.v2.version
    assert len(versions) > 20
    # once the new version answers, the old one never answers again
    first_new = versions.index(registry_copy.v2.version)
    assert set(versions[first_new:]) == {registry_copy.v2.version}


async def test_failed_reload_keeps_serving_the_old_version(registry_copy: TrainedRegistry) -> None:
    r = await open_server(registry_copy.root, reload_interval=0.05)
    await r.server.load()
    try:
        weights = registry_copy.v2.path / "weights.pt"
        weights.write_bytes(weights.read_bytes()[:-100])  # a half-written version
        registry_copy.registry.set_alias(MODEL, "stable", registry_copy.v2.version)
        info = await r.stub.GetModel(pb.GetModelRequest())
        for _ in range(100):
            info = await r.stub.GetModel(pb.GetModelRequest())
            if info.reload_error:
                break
            await asyncio.sleep(0.05)
        assert registry_copy.v2.version in info.reload_error
        assert info.model.version == registry_copy.v1.version
        resp = await r.stub.Forecast(request())
        assert resp.model.version == registry_copy.v1.version
        check = await r.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        metrics = r.server.metrics
        assert metrics.reload_failing._value.get() == 1
        # alias moved back: the error clears
        registry_copy.registry.set_alias(MODEL, "stable", registry_copy.v1.version)
        for _ in range(100):
            info = await r.stub.GetModel(pb.GetModelRequest())
            if not info.reload_error:
                break
            await asyncio.sleep(0.05)
        assert info.reload_error == ""
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)


async def test_call_whose_deadline_passes_in_the_queue_is_not_computed(
    trained: TrainedRegistry,
) -> None:
    # A batch stays open 0.5 s for more calls; a call with a 0.1 s deadline joins it
    # and must be dropped, not computed, when the batch closes.
    r = await open_server(trained.root, max_queue_delay=0.5)
    await r.server.load()
    try:
        opener = asyncio.ensure_future(r.stub.Forecast(request()))
        for _ in range(400):  # until the opener waits in the open batch
            if r.server.batcher.queue_depth or opener.done():
                break
            await asyncio.sleep(0.005)
        assert r.server.batcher.queue_depth == 1
        late = pb.ForecastRequest(horizon=1, series=[_series(GOOD, "late")])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await r.stub.Forecast(late, timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len((await opener).forecasts) == 1
        computed = {
            row.series_id
            for s in r.spans.get_finished_spans()
            if s.name == "forecast"
            for row in read_forecasts(attrs(s))
        }
        assert computed == {"s0"}
        dropped = r.server.metrics.dropped
        assert (
            dropped.labels("deadline")._value.get() + dropped.labels("cancelled")._value.get() == 1
        )
    finally:
        await r.channel.close()
        await r.server.stop(grace=1)


async def test_spans_continue_the_callers_trace_and_carry_the_forecast(running: Running) -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    metadata = (("traceparent", f"00-{trace_id:032x}-b7ad6b7169203331-01"),)
    await running.stub.Forecast(request(n=2), metadata=metadata)
    [call] = await ended(running.spans, lambda s: s.name == "canarycast.v1.Forecaster/Forecast")
    spans = running.spans.get_finished_spans()
    assert call.context.trace_id == trace_id
    assert call.kind == trace.SpanKind.SERVER
    assert attrs(call)["rpc.grpc.status_code"] == 0
    # one span for the call, carrying both series as arrays
    [s] = [s for s in spans if s.name == "forecast"]
    assert s.context.trace_id == trace_id
    assert s.parent is not None and s.parent.span_id == call.context.span_id
    assert attrs(s)["canarycast.model.name"] == MODEL
    assert attrs(s)["canarycast.variant"] == "stable"
    rows = read_forecasts(attrs(s))
    assert len(rows) == 2
    for row in rows:
        assert len(row.point) == 12 and len(row.timestamps) == 12
        assert row.scale > 0
        assert row.quantile_levels and len(row.quantiles[0]) == 12
    # a rejected call is traced with its status code, health checks are not traced
    running.spans.clear()
    with pytest.raises(grpc.aio.AioRpcError):
        await running.stub.Forecast(pb.ForecastRequest(horizon=1))
    await running.health.Check(health_pb2.HealthCheckRequest())
    [rejected] = await ended(running.spans, lambda s: True)
    assert attrs(rejected)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_metrics_endpoint_exposes_calls_batches_and_model(
    running: Running, trained: TrainedRegistry
) -> None:
    await running.stub.Forecast(request(n=3))
    with pytest.raises(grpc.aio.AioRpcError):
        await running.stub.Forecast(pb.ForecastRequest(horizon=1))
    assert running.server.metrics_endpoint is not None
    url = f"http://127.0.0.1:{running.server.metrics_endpoint.port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'canarycast_server_calls_total{code="OK",method="Forecast"} 1.0' in body
    assert 'canarycast_server_calls_total{code="INVALID_ARGUMENT",method="Forecast"} 1.0' in body
    assert "canarycast_server_batch_size_count 1.0" in body
    assert "canarycast_server_batch_size_sum 3.0" in body
    assert "canarycast_server_queue_depth 0.0" in body
    assert f'version="{trained.v1.version}"' in body
    assert 'canarycast_server_call_duration_seconds_count{method="Forecast"}' in body


async def test_reflection_lets_a_generic_client_list_and_call(running: Running) -> None:
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    target = f"127.0.0.1:{running.server.port}"

    def generic_call() -> tuple[list[str], int]:
        with grpc.insecure_channel(target) as channel:
            db = ProtoReflectionDescriptorDatabase(channel)
            services = list(db.get_services())
            pool = descriptor_pool.DescriptorPool(db)
            method = pool.FindServiceByName(SERVICE_NAME).FindMethodByName("GetModel")
            req_cls = message_factory.GetMessageClass(method.input_type)
            resp_cls = message_factory.GetMessageClass(method.output_type)
            call = channel.unary_unary(
                f"/{SERVICE_NAME}/GetModel",
                request_serializer=req_cls.SerializeToString,
                response_deserializer=resp_cls.FromString,
            )
            return services, call(req_cls(), timeout=5).lookback

    services, lookback = await asyncio.to_thread(generic_call)
    assert SERVICE_NAME in services and "grpc.health.v1.Health" in services
    assert lookback == LOOKBACK


async def test_stop_drains_in_flight_calls(trained: TrainedRegistry) -> None:
    # The batch stays open 0.5 s: stop() arrives while all six calls wait in it.
    r = await open_server(trained.root, max_queue_delay=0.5, max_batch_size=4096)
    await r.server.load()
    calls = [asyncio.ensure_future(r.stub.Forecast(request(n=256, offset=k))) for k in range(6)]
    for _ in range(200):
        if r.server.batcher.queue_depth == 6 * 256:
            break
        await asyncio.sleep(0.002)
    assert r.server.batcher.queue_depth == 6 * 256
    await r.server.stop(grace=10)
    results = await asyncio.gather(*calls)
    await r.channel.close()
    assert all(len(res.forecasts) == 256 for res in results)
