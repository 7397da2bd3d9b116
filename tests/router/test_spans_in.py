"""Spans into the analyzer: in process, and over OTLP/gRPC with the real exporter."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import TypedDict

import numpy as np
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from canarycast import spans
from router.rollout.analysis import Analyzer, CallRecord, ForecastRecord, ObservationRecord
from router.rollout.spans_in import (
    CALL_SPAN,
    AnalyzerSpanProcessor,
    any_value,
    records_from_span,
    serve_otlp_receiver,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S
TARGETS = [T0 + i * S for i in range(3)]

#: Span attributes as spans.record_forecast writes them, lists included: its `extra`
#: parameter is typed scalars-only, though older spans carried recent history in it.
HistoryExtra = dict[str, str | int | float | bool | list[int] | list[float]]


def routed_call(
    tracer: Tracer, call_id: str, series: str, stable: list[float], canary: list[float]
) -> None:
    """What the router writes for one call: its server span and the two forecasts."""
    with tracer.start_as_current_span(CALL_SPAN, kind=SpanKind.SERVER) as span:
        span.set_attributes(
            {
                spans.VARIANT: "stable",
                spans.ROUTING_REASON: "weight",
                spans.MODEL_VERSION: "v1",
                "rpc.grpc.status_code": 0,
            }
        )
        for variant, point in (("stable", stable), ("canary", canary)):
            spans.record_forecast(
                tracer,
                series_id=series,
                forecast_id=f"{call_id}-{variant}",
                model_name="temps",
                model_version="v1" if variant == "stable" else "v2",
                variant=variant,
                point=point,
                timestamps=TARGETS,
                scale=2.0,
                extra={spans.CALL_ID: call_id, spans.SHADOW: variant == "canary"},
            )


def emit(tracer: Tracer) -> None:
    """Two paired calls, an unscorable forecast, failed calls and the actuals."""
    routed_call(tracer, "c1", "a", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    routed_call(tracer, "c2", "b", [0.0, 0.0, 0.0], [4.0, 4.0, 4.0])
    spans.record_forecast(
        tracer,
        series_id="a",
        forecast_id="no-start",
        model_name="temps",
        model_version="v1",
        variant="stable",
        point=[1.0],
        timestamps=None,
        scale=0.0,
        extra={spans.CALL_ID: "c3", spans.SHADOW: False},
    )
    with tracer.start_as_current_span(CALL_SPAN, kind=SpanKind.SERVER) as span:
        span.set_attributes({spans.VARIANT: "canary", "rpc.grpc.status_code": 14})
        span.set_status(Status(StatusCode.ERROR, "backend down"))
    with tracer.start_as_current_span(CALL_SPAN, kind=SpanKind.SERVER) as span:
        span.set_attribute("rpc.grpc.status_code", 3)  # rejected before routing: no variant
    with tracer.start_as_current_span("canarycast.v1.Forecaster/GetModel"):
        pass
    spans.record_observation(tracer, "a", TARGETS, [1.0, 1.0, 1.0])
    spans.record_observation(tracer, "b", TARGETS, [2.0, 2.0, 2.0])


def check(analyzer: Analyzer) -> None:
    """The evidence `emit` leads to, whichever path the spans took."""
    evidence = analyzer.evidence(0.0)
    # c1: stable |1-1|,|1-2|,|1-3| / 2; canary 1/2 each; c2: stable 1, canary 1
    np.testing.assert_allclose(
        evidence.row_means(),
        [[0.0, 0.5], [0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
    )
    assert evidence.pairs == 6
    np.testing.assert_allclose(evidence.stable_series, [0.5, 1.0])
    np.testing.assert_allclose(evidence.canary_series, [0.5, 1.0])
    assert (evidence.stable.calls, evidence.stable.errors) == (2, 0)
    assert (evidence.canary.calls, evidence.canary.errors) == (1, 1)
    assert evidence.stable.p99_latency is not None
    stats = analyzer.stats()
    assert stats.unscorable == 1
    assert stats.pending_forecasts == 0
    assert stats.last_span_at is not None


def test_forecast_span_to_record() -> None:
    attributes = {
        spans.SERIES_ID: "a",
        spans.FORECAST_ID: "f",
        spans.MODEL_VERSION: "v1",
        spans.VARIANT: "canary",
        spans.POINT: (1.0, 2.0),
        spans.TARGET_TIMESTAMPS: (T0, T0 + S),
        spans.SCALE: 0.5,
        spans.CALL_ID: "c",
        spans.SHADOW: True,
    }
    assert records_from_span(spans.FORECAST_SPAN, attributes, 0, 1, 2) == [
        ForecastRecord("a", "f", "c", "canary", "v1", (T0, T0 + S), (1.0, 2.0), 0.5, True)
    ]
    del attributes[spans.TARGET_TIMESTAMPS], attributes[spans.CALL_ID], attributes[spans.SHADOW]
    (record,) = records_from_span(spans.FORECAST_SPAN, attributes, 0, 1, 2)
    assert isinstance(record, ForecastRecord)
    assert (record.timestamps, record.call_id, record.shadow) == ((), None, False)
    del attributes[spans.POINT]
    assert records_from_span(spans.FORECAST_SPAN, attributes, 0, 1, 2) == []


def test_observe_and_call_spans_to_records() -> None:
    observe = {spans.SERIES_ID: "a", spans.TIMESTAMPS: [T0], spans.VALUES: [1.5]}
    assert records_from_span(spans.OBSERVE_SPAN, observe, 0, 0, 0) == [
        ObservationRecord("a", (T0,), (1.5,))
    ]
    call = {spans.VARIANT: "stable", "rpc.grpc.status_code": 0}
    assert records_from_span(CALL_SPAN, call, 0, 0, 250_000_000) == [
        CallRecord("stable", True, 0.25)
    ]
    call["rpc.grpc.status_code"] = 4
    assert records_from_span(CALL_SPAN, call, 0, 0, 0) == [CallRecord("stable", False, 0.0)]
    # without the gRPC code, the span status decides (2 = ERROR)
    assert records_from_span(CALL_SPAN, {spans.VARIANT: "canary"}, 2, 0, 0) == [
        CallRecord("canary", False, 0.0)
    ]
    assert records_from_span(CALL_SPAN, {"rpc.grpc.status_code": 3}, 2, 0, 0) == []
    assert records_from_span("something else", call, 0, 0, 0) == []


def test_otlp_values_decode() -> None:
    array = AnyValue(
        array_value=ArrayValue(values=[AnyValue(int_value=T0), AnyValue(double_value=1.5)])
    )
    assert any_value(array) == [T0, 1.5]
    assert any_value(AnyValue(string_value="x")) == "x"
    assert any_value(AnyValue(bool_value=True)) is True
    assert any_value(AnyValue()) is None


def test_in_process_processor_gives_scored_pairs() -> None:
    analyzer = Analyzer()
    processor = AnalyzerSpanProcessor(analyzer)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    emit(provider.get_tracer("test"))
    assert processor.force_flush()
    check(analyzer)
    assert processor.dropped == 0
    provider.shutdown()


class BlockingAnalyzer(Analyzer):
    """Holds the worker on its first observation until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def add_observation(self, record: ObservationRecord) -> None:
        self.entered.set()
        assert self.release.wait(10.0)
        super().add_observation(record)


def test_full_queue_drops_and_never_blocks() -> None:
    analyzer = BlockingAnalyzer()
    processor = AnalyzerSpanProcessor(analyzer, max_queue=2)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    spans.record_observation(tracer, "a", [T0], [1.0])
    assert analyzer.entered.wait(5.0)
    for i in range(5):
        spans.record_observation(tracer, "a", [T0 + (i + 1) * S], [1.0])
    assert processor.dropped == 3
    assert not processor.force_flush(timeout_millis=50)
    analyzer.release.set()
    assert processor.force_flush()
    assert analyzer.stats().pending_actuals == 3
    provider.shutdown()
    spans.record_observation(tracer, "a", [T0], [1.0])  # after shutdown: dropped, no error
    assert processor.dropped == 4


async def test_otlp_receiver_reaches_the_same_evidence() -> None:
    local = Analyzer()
    processor = AnalyzerSpanProcessor(local)
    in_process = TracerProvider()
    in_process.add_span_processor(processor)
    emit(in_process.get_tracer("test"))
    assert processor.force_flush()

    threads: set[str] = set()

    class Recording(Analyzer):
        def add_forecast(self, record: ForecastRecord) -> None:
            threads.add(threading.current_thread().name)
            super().add_forecast(record)

    remote = Recording()
    server, port = await serve_otlp_receiver(remote)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True))
    )
    try:
        emit(provider.get_tracer("test"))
        # the exporter blocks its caller; the receiver needs this event loop meanwhile
        assert await asyncio.to_thread(provider.force_flush)
        check(remote)
        ours, theirs = local.evidence(0.0), remote.evidence(0.0)
        np.testing.assert_array_equal(ours.steps, theirs.steps)
        np.testing.assert_array_equal(ours.stable_series, theirs.stable_series)
        np.testing.assert_array_equal(ours.canary_series, theirs.canary_series)
        assert (ours.stable.calls, ours.canary.errors) == (
            theirs.stable.calls,
            theirs.canary.errors,
        )
        assert local.stats().scored == remote.stats().scored
        # Export hands each batch to the ingest thread and answers once it is scored: the
        # event loop a router shares with the receiver is never held by the scoring
        # (STYLE: span hooks enqueue).
        assert threads and threading.current_thread().name not in threads
        assert all(name.startswith("otlp-ingest") for name in threads)
    finally:
        await asyncio.to_thread(provider.shutdown)
        in_process.shutdown()
        await server.stop(None)


def test_a_failed_attempt_counts_as_a_failed_call_of_its_variant() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from canarycast import spans as span_names
    from router.rollout.analysis import Analyzer
    from router.rollout.spans_in import AnalyzerSpanProcessor

    analyzer = Analyzer()
    provider = TracerProvider()
    processor = AnalyzerSpanProcessor(analyzer)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for _ in range(3):
        span_names.record_failed_attempt(tracer, "canary", "127.0.0.1:1", 14, "unreachable")
    assert processor.force_flush()
    evidence = analyzer.evidence(since=0.0)
    assert (evidence.canary.calls, evidence.canary.errors) == (3, 3)
    assert evidence.stable.calls == 0
    processor.shutdown()


def test_a_later_calls_history_scores_an_earlier_forecast_without_observe() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from canarycast import spans as span_names
    from router.rollout.analysis import Analyzer
    from router.rollout.spans_in import AnalyzerSpanProcessor

    analyzer = Analyzer()
    provider = TracerProvider()
    processor = AnalyzerSpanProcessor(analyzer)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    hour = 3600 * 10**9
    for variant, point in (("stable", [10.0, 11.0]), ("canary", [10.5, 11.5])):
        span_names.record_forecast(
            tracer,
            series_id="s",
            forecast_id=f"f-{variant}",
            model_name="m",
            model_version=variant,
            variant=variant,
            point=point,
            timestamps=[10 * hour, 11 * hour],
            scale=1.0,
            extra={span_names.CALL_ID: "call-1", span_names.SHADOW: variant == "canary"},
        )
    # a later call whose history covers hours 8..11 (the values that really happened)
    later: HistoryExtra = {
        span_names.CALL_ID: "call-2",
        span_names.HISTORY_TIMESTAMPS: [8 * hour, 9 * hour, 10 * hour, 11 * hour],
        span_names.HISTORY_VALUES: [9.0, 9.5, 10.0, 12.0],
    }
    span_names.record_forecast(
        tracer,
        series_id="s",
        forecast_id="f-later",
        model_name="m",
        model_version="stable",
        variant="stable",
        point=[12.0],
        timestamps=[12 * hour],
        scale=1.0,
        # record_forecast's `extra` is typed scalars-only but writes list values as they are
        # (HistoryExtra above); widening it is a change to canarycast/spans.py.
        extra=later,  # type: ignore[arg-type]
    )
    assert processor.force_flush()
    evidence = analyzer.evidence(since=0.0)
    assert evidence.pairs == 2
    # stable: |10-10| and |12-11|; canary: |10-10.5| and |12-11.5|
    assert evidence.row_means().tolist() == [[0.0, 0.5], [1.0, 0.5]]
    processor.shutdown()


class RecordingAnalyzer(Analyzer):
    """Keeps every record it is fed, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[object] = []

    def add_forecast(self, record: ForecastRecord) -> None:
        self.seen.append(record)
        super().add_forecast(record)

    def add_observation(self, record: ObservationRecord) -> None:
        self.seen.append(record)
        super().add_observation(record)


class Call(TypedDict):
    """A routed call's forecasts, spans.record_forecasts' arguments of the same names."""

    series_ids: list[str]
    forecast_ids: list[str]
    points: np.ndarray
    timestamps: np.ndarray
    timed: np.ndarray
    scales: np.ndarray
    quantiles: np.ndarray
    quantile_levels: tuple[float, ...]
    history_counts: np.ndarray
    history_times: np.ndarray
    history_values: np.ndarray


def _call_of_many_series(rng: np.random.Generator, k: int) -> Call:
    """A routed call's forecasts of `k` series: some untimed, some with recent history."""
    h, levels = 4, (0.1, 0.5, 0.9)
    timed = rng.random(k) < 0.8
    times = T0 + S * (np.arange(k)[:, None] * 10 + np.arange(h)[None, :])
    counts = np.where(timed & (rng.random(k) < 0.7), rng.integers(1, 6, k), 0)
    total = int(counts.sum())
    return {
        "series_ids": [f"series-{i}" for i in range(k)],
        "forecast_ids": [f"f{i}" for i in range(k)],
        "points": rng.normal(size=(k, h)),
        "timestamps": np.where(timed[:, None], times, 0),
        "timed": timed,
        "scales": rng.random(k) + 0.1,
        "quantiles": rng.normal(size=(k, len(levels), h)),
        "quantile_levels": levels,
        "history_counts": counts,
        "history_times": T0 - S * np.arange(total, 0, -1),
        "history_values": rng.normal(size=total),
    }


def _emit_old_shape(tracer: Tracer, c: Call, extra: dict[str, str | int | float | bool]) -> None:
    """The same forecasts, one span per series (what servers and routers wrote before)."""
    ends = np.cumsum(c["history_counts"])
    for i, sid in enumerate(c["series_ids"]):
        more: HistoryExtra = dict(extra)
        n = int(c["history_counts"][i])
        if n:
            more[spans.HISTORY_TIMESTAMPS] = c["history_times"][ends[i] - n : ends[i]].tolist()
            more[spans.HISTORY_VALUES] = c["history_values"][ends[i] - n : ends[i]].tolist()
        spans.record_forecast(
            tracer,
            series_id=sid,
            forecast_id=c["forecast_ids"][i],
            model_name="temps",
            model_version="v1",
            variant="stable",
            point=c["points"][i],
            timestamps=c["timestamps"][i] if c["timed"][i] else None,
            scale=float(c["scales"][i]),
            # record_forecast's `extra` is typed scalars-only but writes list values as they
            # are (HistoryExtra above); widening it is a change to canarycast/spans.py.
            extra=more,  # type: ignore[arg-type]
            quantile_levels=c["quantile_levels"],
            quantiles=c["quantiles"][i],
        )


def _emit_new_shape(tracer: Tracer, c: Call, extra: dict[str, str | int | float | bool]) -> None:
    spans.record_forecasts(
        tracer, model_name="temps", model_version="v1", variant="stable", extra=extra, **c
    )


async def test_many_series_spans_give_the_analyzer_exactly_what_one_series_spans_did() -> None:
    """One span per call (and per 16 series) instead of one per series: the analyzer gets
    the same records in the same order, in process and over OTLP, and the same evidence."""
    rng = np.random.default_rng(7)
    calls = [_call_of_many_series(rng, k) for k in (1, 5, 16, 17, 40)]
    actuals = (
        ("series-3", [T0 + 30 * S + i * S for i in range(4)], [0.5, 1.0, 1.5, 2.0]),
        ("series-0", [T0 + i * S for i in range(4)], [1.0, 2.0, 3.0, 4.0]),
    )

    def emit(tracer: Tracer, shape: str) -> None:
        for n, call in enumerate(calls):
            extra: dict[str, str | int | float | bool] = {
                spans.CALL_ID: f"call-{n}",
                spans.SHADOW: False,
            }
            (_emit_new_shape if shape == "new" else _emit_old_shape)(tracer, call, extra)
        ids = [a[0] for a in actuals]
        if shape == "new":
            counts = np.array([len(a[1]) for a in actuals])
            all_times = np.concatenate([a[1] for a in actuals])
            all_values = np.concatenate([a[2] for a in actuals])
            spans.record_observations(tracer, ids, all_times, all_values, counts)
        else:
            for series_id, times, values in actuals:
                spans.record_observation(tracer, series_id, times, values)

    analyzers: dict[str, RecordingAnalyzer] = {}
    for shape in ("old", "new"):
        analyzer = RecordingAnalyzer()
        processor = AnalyzerSpanProcessor(analyzer)
        provider = TracerProvider()
        provider.add_span_processor(processor)
        emit(provider.get_tracer("test"), shape)
        assert processor.force_flush() and processor.dropped == 0
        provider.shutdown()
        analyzers[shape] = analyzer
    remote = RecordingAnalyzer()
    server, port = await serve_otlp_receiver(remote)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True))
    )
    try:
        emit(provider.get_tracer("test"), "new")
        assert await asyncio.to_thread(provider.force_flush)
    finally:
        await asyncio.to_thread(provider.shutdown)
        await server.stop(None)
    old, new = analyzers["old"], analyzers["new"]
    assert len(old.seen) == sum(len(c["series_ids"]) for c in calls) + 2 + sum(
        int((c["history_counts"] > 0).sum()) for c in calls
    )
    assert new.seen == old.seen
    assert remote.seen == old.seen
    for analyzer in (new, remote):
        assert replace(analyzer.stats(), last_span_at=None) == replace(
            old.stats(), last_span_at=None
        )
        ours, theirs = old.evidence(0.0), analyzer.evidence(0.0)
        np.testing.assert_array_equal(ours.steps, theirs.steps)
    assert old.stats().scored  # the check compares something


def test_a_malformed_many_series_span_is_dropped_and_said() -> None:
    good = {
        spans.SERIES_IDS: ["a", "b"],
        spans.FORECAST_IDS: ["f1", "f2"],
        spans.VARIANT: "stable",
        spans.HORIZON: 2,
        spans.POINTS: spans.pack(np.zeros(4), "<f8"),
        spans.SCALES: spans.pack(np.ones(2), "<f8"),
    }
    assert len(records_from_span(spans.FORECAST_SPAN, good, 0, 0, 0)) == 2
    for broken in (
        {spans.POINTS: spans.pack(np.zeros(3), "<f8")},  # sizes disagree
        {spans.POINTS: "not base64!"},
        {spans.FORECAST_IDS: ["f1"]},
        {spans.SCALES: [1.0, 1.0]},  # a list where a packed array belongs
    ):
        assert records_from_span(spans.FORECAST_SPAN, {**good, **broken}, 0, 0, 0) == []
