"""A router in front of real stable and canary model servers, all on loopback."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AnyValue

from canarycast import spans
from canarycast.headers import VARIANT_HEADER
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from router.app import RouterServer, RouterSettings
from router.traffic.routing import Mode, StickyKey
from server.lifecycle.data import load_dataset
from server.serving.app import ModelServer, ServerSettings
from tests.conftest import MODEL, TrainedRegistry, ended

SERIES = load_dataset("seattle-temps").series[0]
LOOKBACK = 48
START_NS = int(SERIES.timestamps[0].astype("datetime64[ns]").astype(np.int64))


def request(series_id: str = "s", offset: int = 1000, horizon: int = 6) -> pb.ForecastRequest:
    req = pb.ForecastRequest(horizon=horizon)
    s = req.series.add(series_id=series_id, history=SERIES.values[offset : offset + LOOKBACK])
    s.start.FromNanoseconds(START_NS + offset * 3600 * 10**9)
    return req


RPC_SPAN = "canarycast.v1.Forecaster/Forecast"


def attrs(span: ReadableSpan) -> Mapping[str, AnyValue]:
    """A finished span's attributes: the SDK always records them, though the type allows None."""
    assert span.attributes is not None
    return span.attributes


def tracer_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@dataclass
class Cluster:
    stable: ModelServer
    canary: ModelServer
    router: RouterServer
    channel: grpc.aio.Channel
    stub: pb_grpc.ForecasterStub
    router_spans: InMemorySpanExporter
    server_spans: InMemorySpanExporter
    trained: TrainedRegistry

    async def close(self) -> None:
        await self.channel.close()
        await self.router.stop(grace=1)
        await self.stable.stop(grace=1)
        await self.canary.stop(grace=1)

    def forecasts(self) -> list[ReadableSpan]:
        return [s for s in self.router_spans.get_finished_spans() if s.name == "forecast"]


async def make_cluster(
    trained: TrainedRegistry, *, load_canary: bool = True, **router_kw: Any
) -> Cluster:
    trained.registry.set_alias(MODEL, "canary", trained.v2.version)
    server_provider, server_spans = tracer_provider()
    servers = []
    for alias in ("stable", "canary"):
        server = ModelServer(
            ServerSettings(
                registry=trained.root,
                model=f"{MODEL}@{alias}",
                port=0,
                **(
                    {"max_queue_delay": router_kw.pop("server_queue_delay")}
                    if "server_queue_delay" in router_kw
                    else {}
                ),
            ),
            tracer_provider=server_provider,
        )
        await server.open()
        if alias == "stable" or load_canary:
            await server.load()
        servers.append(server)
    stable, canary = servers
    router_provider, router_spans = tracer_provider()
    router = RouterServer(
        RouterSettings(
            stable=[f"127.0.0.1:{stable.port}"],
            canary=[f"127.0.0.1:{canary.port}"],
            port=0,
            metrics_port=0,
            **router_kw,
        ),
        tracer_provider=router_provider,
    )
    await router.start()
    async with asyncio.timeout(20):
        await router.wait_for_backends(*(() if load_canary else ("stable",)))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    return Cluster(
        stable,
        canary,
        router,
        channel,
        pb_grpc.ForecasterStub(channel),
        router_spans,
        server_spans,
        trained,
    )


@pytest.fixture
async def cluster(registry_copy: TrainedRegistry) -> AsyncIterator[Cluster]:
    c = await make_cluster(registry_copy, canary_weight=0.2, mirror_fraction=0.0)
    yield c
    await c.close()


async def test_weighted_split_over_many_calls(registry_copy: TrainedRegistry) -> None:
    c = await make_cluster(
        registry_copy, canary_weight=0.2, sticky_key=StickyKey.NONE, mirror_fraction=0.0
    )
    try:
        n, versions = 2000, []
        for _ in range(n // 100):
            answers = await asyncio.gather(*(c.stub.Forecast(request()) for _k in range(100)))
            versions += [(a.model.variant, a.model.version) for a in answers]
        v1, v2 = registry_copy.v1.version, registry_copy.v2.version
        assert set(versions) == {("stable", v1), ("canary", v2)}
        canary = sum(variant == "canary" for variant, _ in versions)
        assert abs(canary - 0.2 * n) <= 4.5 * math.sqrt(n * 0.2 * 0.8), canary
    finally:
        await c.close()


async def test_sticky_series_keep_their_variant_and_only_move_into_canary(cluster: Cluster) -> None:
    ids = [f"sensor-{i}" for i in range(80)]

    async def variants() -> dict[str, str]:
        answers = await asyncio.gather(*(cluster.stub.Forecast(request(i)) for i in ids))
        return {i: a.model.variant for i, a in zip(ids, answers, strict=True)}

    first, second = await variants(), await variants()
    assert first == second
    assert 0 < sum(v == "canary" for v in first.values()) < len(ids)
    cluster.router.router.set_weight(0.6)
    raised = await variants()
    moved_out = [i for i in ids if first[i] == "canary" and raised[i] == "stable"]
    assert moved_out == []
    assert sum(v == "canary" for v in raised.values()) > sum(v == "canary" for v in first.values())


async def test_header_forces_a_variant_and_bad_values_are_refused(cluster: Cluster) -> None:
    cluster.router.router.set_weight(0.0)
    forced = await cluster.stub.Forecast(request(), metadata=((VARIANT_HEADER, "canary"),))
    assert forced.model.variant == "canary"
    assert forced.model.version == cluster.trained.v2.version
    info = await cluster.stub.GetModel(pb.GetModelRequest(), metadata=((VARIANT_HEADER, "canary"),))
    assert info.model.version == cluster.trained.v2.version
    info = await cluster.stub.GetModel(pb.GetModelRequest())
    assert info.model.version == cluster.trained.v1.version
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.stub.Forecast(request(), metadata=((VARIANT_HEADER, "blue"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert VARIANT_HEADER in (err.value.details() or "")
    route_spans = await ended(
        cluster.router_spans, lambda s: s.name == RPC_SPAN and spans.ROUTING_REASON in attrs(s)
    )
    assert attrs(route_spans[0])[spans.ROUTING_REASON] == "header"


async def test_dual_run_records_both_variants_and_returns_only_the_chosen(
    registry_copy: TrainedRegistry,
) -> None:
    c = await make_cluster(registry_copy, canary_weight=0.0, mirror_fraction=1.0)
    try:
        answer = await c.stub.Forecast(request("paired"))
        assert answer.model.variant == "stable" and len(answer.forecasts) == 1
        for _ in range(200):
            if len(c.forecasts()) == 2:
                break
            await asyncio.sleep(0.01)
        recorded = {attrs(s)[spans.VARIANT]: s for s in c.forecasts()}
        assert set(recorded) == {"stable", "canary"}
        assert attrs(recorded["stable"])[spans.SHADOW] is False
        assert attrs(recorded["canary"])[spans.SHADOW] is True
        assert attrs(recorded["canary"])[spans.MODEL_VERSION] == registry_copy.v2.version
        assert attrs(recorded["stable"])[spans.CALL_ID] == attrs(recorded["canary"])[spans.CALL_ID]
        rows = {v: spans.read_forecasts(attrs(s)) for v, s in recorded.items()}
        for [row] in rows.values():  # one series in the call: one row in each span
            assert row.series_id == "paired"
            assert row.timestamps == rows["stable"][0].timestamps
            assert row.scale > 0
        # the answered forecast carries its recent history as implicit actuals; the copy does not
        [stable], [canary] = rows["stable"], rows["canary"]
        expected = (
            SERIES.timestamps[1000 : 1000 + LOOKBACK].astype("datetime64[ns]").astype(np.int64)
        )
        assert stable.history_timestamps is not None and stable.history_values is not None
        assert list(stable.history_timestamps) == expected.tolist()
        assert list(stable.history_values) == pytest.approx(
            SERIES.values[1000 : 1000 + LOOKBACK].tolist()
        )
        assert canary.history_timestamps is None
        returned = list(answer.forecasts[0].point)
        assert list(stable.point) == pytest.approx(returned)
        assert list(canary.point) != pytest.approx(returned)
        mirrored = c.router.metrics.mirrored.labels("canary", "OK")._value.get()
        assert mirrored == 1
    finally:
        await c.close()


async def test_weight_changes_under_load_drop_no_call(cluster: Cluster) -> None:
    failures: list[BaseException] = []
    seen: set[str] = set()
    stop = asyncio.Event()

    async def client(k: int) -> None:
        while not stop.is_set():
            try:
                a = await cluster.stub.Forecast(request(f"load-{k}", offset=10 * k))
                seen.add(a.model.variant)
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    tasks = [asyncio.create_task(client(k)) for k in range(16)]
    for weight in (0.0, 0.5, 1.0, 0.0):
        cluster.router.router.set_weight(weight)
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.gather(*tasks)
    assert failures == []
    assert seen == {"stable", "canary"}


async def test_traces_and_deadlines_reach_the_server(registry_copy: TrainedRegistry) -> None:
    # The servers keep a batch open 1 s; a 0.3 s client deadline must reach them and
    # make them drop the call rather than compute it.
    c = await make_cluster(
        registry_copy, canary_weight=0.0, mirror_fraction=0.0, server_queue_delay=1.0
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.stub.Forecast(request("late"), timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(300):
            dropped = c.stable.metrics.dropped
            total = (
                dropped.labels("deadline")._value.get() + dropped.labels("cancelled")._value.get()
            )
            if total:
                break
            await asyncio.sleep(0.01)
        assert total == 1
        await ended(c.router_spans, lambda s: s.name == RPC_SPAN)  # the late call's span
        ok = await c.stub.Forecast(request("traced"), timeout=10)
        assert ok.model.variant == "stable"
        [_, router_call] = await ended(c.router_spans, lambda s: s.name == RPC_SPAN, 2)
        [server_call] = await ended(
            c.server_spans,
            lambda s: s.name == RPC_SPAN and s.context.trace_id == router_call.context.trace_id,
        )
        assert server_call.context.trace_id == router_call.context.trace_id
        assert server_call.parent is not None
        assert server_call.parent.span_id == router_call.context.span_id
        server_forecast = next(
            s for s in c.server_spans.get_finished_spans() if s.name == "forecast"
        )
        assert attrs(server_forecast)[spans.VARIANT] == "stable"
        assert attrs(router_call)[spans.BACKEND] == f"127.0.0.1:{c.stable.port}"
    finally:
        await c.close()


async def test_a_canary_that_is_not_serving_takes_no_traffic(
    registry_copy: TrainedRegistry,
) -> None:
    c = await make_cluster(registry_copy, load_canary=False, canary_weight=1.0, mirror_fraction=0.0)
    try:
        answers = await asyncio.gather(*(c.stub.Forecast(request(f"s{i}")) for i in range(20)))
        assert {a.model.variant for a in answers} == {"stable"}
        assert c.router.metrics.failovers.labels("canary")._value.get() == 20
        reasons = {
            attrs(s).get(spans.ROUTING_REASON)
            for s in await ended(c.router_spans, lambda s: s.name == RPC_SPAN, 20)
        }
        assert reasons == {"failover"}
        attempts = [
            s for s in c.router_spans.get_finished_spans() if s.name == spans.FAILED_ATTEMPT_SPAN
        ]
        assert len(attempts) == 20 and {attrs(s)[spans.VARIANT] for s in attempts} == {"canary"}
        # a forced canary is not failed over: the caller asked for it
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.stub.Forecast(request(), metadata=((VARIANT_HEADER, "canary"),))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "canary: 127.0.0.1" in (err.value.details() or "")
    finally:
        await c.close()


async def test_observe_is_validated_and_recorded_even_with_every_backend_down(
    registry_copy: TrainedRegistry,
) -> None:
    c = await make_cluster(registry_copy, canary_weight=0.5)
    try:
        await c.stable.stop(grace=0)
        await c.canary.stop(grace=0)
        obs = pb.SeriesObservation(series_id="a", values=[1.0, 2.0])
        obs.timestamps.add(seconds=100)
        obs.timestamps.add(seconds=200)
        ok = await c.stub.Observe(pb.ObserveRequest(observations=[obs]))
        assert ok.accepted_points == 2
        [recorded] = [s for s in c.router_spans.get_finished_spans() if s.name == "observe"]
        assert spans.read_observations(attrs(recorded)) == [
            ("a", (100 * 10**9, 200 * 10**9), (1.0, 2.0))
        ]
        bad = pb.SeriesObservation(
            series_id="a", values=[float("inf")], timestamps=[{"seconds": 1}]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.stub.Observe(pb.ObserveRequest(observations=[bad]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("observations[0].values[0]")
        # and forecasts now fail clearly
        for _ in range(300):
            if not any(r.serving for p in c.router.router.pools.values() for r in p.replicas):
                break
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.stub.Forecast(request())
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no backend is serving" in (err.value.details() or "")
    finally:
        await c.close()


async def test_backend_errors_pass_through_and_garbage_is_refused(cluster: Cluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cluster.stub.Forecast(
            pb.ForecastRequest(horizon=99, series=[{"series_id": "a", "history": [1.0] * 48}])
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("horizon")
    raw = cluster.channel.unary_unary("/canarycast.v1.Forecaster/Forecast")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(b"\xff\xff\xff\xff")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ForecastRequest" in (err.value.details() or "")


async def test_shadow_mode_answers_from_stable_and_copies_to_canary(
    registry_copy: TrainedRegistry,
) -> None:
    c = await make_cluster(registry_copy, mode=Mode.SHADOW, canary_weight=0.9)
    try:
        answers = await asyncio.gather(*(c.stub.Forecast(request(f"s{i}")) for i in range(30)))
        assert {a.model.variant for a in answers} == {"stable"}
        for _ in range(300):
            if c.router.metrics.mirrored.labels("canary", "OK")._value.get() == 30:
                break
            await asyncio.sleep(0.01)
        assert c.router.metrics.mirrored.labels("canary", "OK")._value.get() == 30
        assert c.router.metrics.canary_weight._value.get() == 0.0
    finally:
        await c.close()


async def test_a_failed_call_is_counted_against_the_variant_that_failed(cluster: Cluster) -> None:
    bad = pb.ForecastRequest(horizon=99, series=[pb.SeriesInput(series_id="x", history=[1.0] * 48)])
    with pytest.raises(grpc.aio.AioRpcError):
        await cluster.stub.Forecast(bad, metadata=((VARIANT_HEADER, "canary"),))
    [call] = await ended(cluster.router_spans, lambda s: s.name == RPC_SPAN)
    assert attrs(call)[spans.VARIANT] == "canary"
    assert attrs(call)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_record_writes_each_series_of_a_call_as_the_old_per_series_spans_did() -> None:
    """`Router.record` over a call of several series: per-series times, scales and recent
    history (where the times continue the history at a fixed step) as before."""
    from canarycast.validation import history_scale
    from router.traffic.proxy import RECENT_HISTORY, Router

    provider, exporter = tracer_provider()
    hour = 3600 * 10**9
    t0 = 1_262_304_000 * 10**9
    rng = np.random.default_rng(3)
    histories: dict[str, np.ndarray | list[float]] = {
        "long": rng.normal(size=60),
        "untimed": rng.normal(size=5),
        "short": [2.0],
    }
    request = pb.ForecastRequest(horizon=3, quantiles=[0.1, 0.9])
    answer = pb.ForecastResponse(model=pb.ModelRef(name="m", version="v1"))
    for sid, history in histories.items():
        series = request.series.add(series_id=sid, history=list(history))
        f = answer.forecasts.add(series_id=sid, forecast_id=f"f-{sid}", point=[1.0, 2.0, 3.0])
        for q in (0.1, 0.9):
            f.quantiles.add(quantile=q, values=[q, q, q])
        if sid != "untimed":
            series.start.FromNanoseconds(t0)
            for j in range(3):
                f.timestamps.add().FromNanoseconds(t0 + (len(history) + j) * hour)
    router = Router.__new__(Router)  # only its tracer is needed to record
    router.tracer = provider.get_tracer("test")
    router.record(request, answer, "stable", "call-1", False)
    [span] = [s for s in exporter.get_finished_spans() if s.name == "forecast"]
    assert span.attributes is not None
    assert span.attributes[spans.CALL_ID] == "call-1"
    rows = {row.series_id: row for row in spans.read_forecasts(span.attributes)}
    for sid, history in histories.items():
        row, n = rows[sid], len(history)
        assert row.forecast_id == f"f-{sid}" and row.point == (1.0, 2.0, 3.0)
        assert row.scale == pytest.approx(history_scale(np.asarray(history)))
        assert row.quantiles == ((0.1,) * 3, (0.9,) * 3)
        if sid == "untimed":
            assert row.timestamps == () and row.history_timestamps is None
            continue
        assert row.timestamps == tuple(t0 + (n + j) * hour for j in range(3))
        k = min(n, RECENT_HISTORY)
        assert row.history_timestamps == tuple(t0 + i * hour for i in range(n - k, n))
        assert row.history_values == pytest.approx(list(history)[n - k :])


async def test_dual_run_copies_that_wait_are_joined_and_each_recorded_as_its_call(
    registry_copy: TrainedRegistry,
) -> None:
    """One mirror worker and 40 calls at once: the copies queue behind the first, leave
    in multi-series calls, and each copy's forecast is recorded under its own call id
    with the canary's forecast of its own series (as a call of its own would give)."""
    c = await make_cluster(registry_copy, canary_weight=0.0, mirror_fraction=1.0, mirror_workers=1)
    try:
        offsets = {f"s{i}": 900 + 7 * i for i in range(40)}
        answers = await asyncio.gather(
            *(c.stub.Forecast(request(x, offset=o)) for x, o in offsets.items())
        )
        assert {a.model.variant for a in answers} == {"stable"}
        ok = c.router.metrics.mirrored.labels("canary", "OK")
        for _ in range(500):
            if ok._value.get() == 40:
                break
            await asyncio.sleep(0.01)
        assert ok._value.get() == 40
        batches = {
            s.labels["le"]: s.value
            for s in next(iter(c.router.metrics.mirror_batch.collect())).samples
            if s.name.endswith("_bucket")
        }
        calls = batches["+Inf"]
        assert calls < 40 and batches["1.0"] < calls  # some copies shared a call
        recorded: dict[str, dict[str, Any]] = {"stable": {}, "canary": {}}
        for span in c.forecasts():
            a = attrs(span)
            [row] = spans.read_forecasts(a)
            recorded[str(a[spans.VARIANT])][row.series_id] = (a[spans.CALL_ID], row)
        assert set(recorded["canary"]) == set(recorded["stable"]) == set(offsets)
        # Each shared copy call is one joined_call span, linked to the copied callers' spans
        # and the parent of the canary server's span for it.
        callers = {s.context.span_id for s in c.router_spans.get_finished_spans()}
        joined = [
            s for s in c.router_spans.get_finished_spans() if s.name == spans.JOINED_CALL_SPAN
        ]
        shared = [s for s in joined if attrs(s).get(spans.SHADOW)]  # the rest: callers joined
        assert len(shared) == calls - batches["1.0"]
        ids = {s.context.span_id for s in shared}
        servers = await ended(
            c.server_spans, lambda s: s.parent is not None and s.parent.span_id in ids, len(ids)
        )
        parents = {s.parent.span_id for s in servers if s.name == RPC_SPAN and s.parent}
        for span in shared:
            a = attrs(span)
            assert a[spans.VARIANT] == "canary"
            assert len(span.links) == a[spans.JOINED_CALLS] and len(span.links) > 1
            assert {link.context.span_id for link in span.links} <= callers
            assert span.context.span_id in parents
        canary = pb_grpc.ForecasterStub(
            channel := grpc.aio.insecure_channel(f"127.0.0.1:{c.canary.port}")
        )
        try:
            for x in ("s0", "s17", "s39"):
                call_id, row = recorded["canary"][x]
                assert call_id == recorded["stable"][x][0]
                alone = await canary.Forecast(request(x, offset=offsets[x]))
                assert list(row.point) == pytest.approx(list(alone.forecasts[0].point))
                assert list(row.timestamps) == list(recorded["stable"][x][1].timestamps)
        finally:
            await channel.close()
    finally:
        await c.close()


def _joined_calls(c: Cluster) -> float:
    [metric] = c.router.metrics.joined.collect()
    return next(s.value for s in metric.samples if s.name.endswith("_count"))


async def test_calls_to_a_busy_variant_are_joined_and_each_gets_its_own_answer(
    registry_copy: TrainedRegistry,
) -> None:
    """One call in flight at most, then joining: 40 calls at once (three of them for one
    series id, which never share a call) each get the forecasts of their own series, the
    very answer the stable server gives a call of its own."""
    c = await make_cluster(registry_copy, canary_weight=0.0, mirror_fraction=0.0, join_after=1)
    try:
        calls = [(f"s{i}", 900 + 7 * i) for i in range(37)] + [
            ("dup", 500),
            ("dup", 600),
            ("dup", 700),
        ]
        answers = await asyncio.gather(*(c.stub.Forecast(request(x, offset=o)) for x, o in calls))
        assert _joined_calls(c) >= 1
        direct = pb_grpc.ForecasterStub(
            channel := grpc.aio.insecure_channel(f"127.0.0.1:{c.stable.port}")
        )
        try:
            for (x, o), answer in zip(calls, answers, strict=True):
                assert [f.series_id for f in answer.forecasts] == [x]
                assert answer.model.variant == "stable"
                alone = await direct.Forecast(request(x, offset=o))
                got, want = answer.forecasts[0], alone.forecasts[0]
                assert list(got.point) == pytest.approx(list(want.point), rel=1e-5)
                assert list(got.timestamps) == list(want.timestamps)
                assert got.forecast_id and got.forecast_id != want.forecast_id
        finally:
            await channel.close()
        routed = c.router.metrics.routed.labels("stable", "sticky", "OK")._value.get()
        assert routed == len(calls)  # every caller counted, joined or not
        assert len(c.forecasts()) == len(calls)  # and recorded, each under its own call
    finally:
        await c.close()


async def test_every_joined_caller_s_trace_leads_to_the_server_call_that_carried_it(
    registry_copy: TrainedRegistry,
) -> None:
    """A joined call is one server call for many callers: its span (joined_call) is the
    parent of the model server's span and links to each caller's router span, and each
    joined caller's span links back to it, so no caller's trace ends at the router."""
    c = await make_cluster(registry_copy, canary_weight=0.0, mirror_fraction=0.0, join_after=1)
    try:
        calls = [(f"s{i}", 900 + 7 * i) for i in range(24)]
        await asyncio.gather(*(c.stub.Forecast(request(x, offset=o)) for x, o in calls))
        callers = await ended(c.router_spans, lambda s: s.name == RPC_SPAN, len(calls))
        joined = [
            s for s in c.router_spans.get_finished_spans() if s.name == spans.JOINED_CALL_SPAN
        ]
        assert joined and len(joined) == _joined_calls(c)
        alone = [s for s in callers if not s.links]
        servers = await ended(
            c.server_spans, lambda s: s.name == RPC_SPAN, len(alone) + len(joined)
        )
        by_parent = {s.parent.span_id: s for s in servers if s.parent is not None}
        caller_ids = {s.context.span_id: s for s in callers}
        for span in joined:
            a = attrs(span)
            linked = [link.context.span_id for link in span.links]
            assert len(linked) == a[spans.JOINED_CALLS] and len(linked) > 1
            assert set(linked) <= set(caller_ids)  # each link is a caller's router span
            for sid in linked:  # which links back
                assert span.context.span_id in {x.context.span_id for x in caller_ids[sid].links}
            assert span.parent is None and a[spans.VARIANT] == "stable"
            assert by_parent[span.context.span_id].context.trace_id == span.context.trace_id
        for caller in callers:  # alone: the server's span is its child; joined: its link's
            [carrier] = [x.context.span_id for x in caller.links] or [caller.context.span_id]
            assert carrier in by_parent, caller.name
    finally:
        await c.close()


async def test_a_bad_call_joined_with_good_ones_gets_its_own_error(
    registry_copy: TrainedRegistry,
) -> None:
    """The joined call is refused for one caller's series: it is sent again call by call,
    so that caller is told about its own series (series[0]) and the others are answered."""
    c = await make_cluster(registry_copy, canary_weight=0.0, mirror_fraction=0.0, join_after=1)
    try:
        bad = pb.ForecastRequest(horizon=6)
        bad.series.add(series_id="short", history=SERIES.values[:10])
        good = [c.stub.Forecast(request(f"g{i}", offset=900 + i)) for i in range(20)]
        results = await asyncio.gather(*good, c.stub.Forecast(bad), return_exceptions=True)
        *answers, refused = results
        assert all(isinstance(a, pb.ForecastResponse) for a in answers), answers
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "series[0]" in (refused.details() or ""), refused.details()
        assert c.router.metrics.joined_resent._value.get() >= 1  # it was in a joined call
    finally:
        await c.close()
