"""Spans into analyzer records: in process (a `SpanProcessor`) or over OTLP/gRPC.

Both paths hand each span's name, attributes, status and times to
`records_from_span`, the one conversion, and feed what it returns to an
`Analyzer`. Spans of both shapes (`canarycast.spans`: a series per span, or a call's
series per span as arrays) give the same records. The in-process processor never
blocks the thread that ends a span: it appends to a bounded queue (drops counted)
that a daemon thread drains. The OTLP receiver implements the collector's
`TraceService`, so router replicas can send their spans through an OpenTelemetry
Collector to one analyzer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import structlog
from opentelemetry.context import Context
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from canarycast import spans
from canarycast.grpc_server import add_port
from canarycast.tls import ServerTLS
from canarycast.v1 import forecast_pb2
from router.rollout.analysis import Analyzer, CallRecord, ForecastRecord, ObservationRecord

log = structlog.get_logger("canarycast.analysis")

# The router's server span of a Forecast call (named "<service>/<method>" by the interceptor).
CALL_SPAN = f"{forecast_pb2.DESCRIPTOR.services_by_name['Forecaster'].full_name}/Forecast"
GRPC_STATUS_CODE = "rpc.grpc.status_code"
STATUS_ERROR = 2  # OpenTelemetry's StatusCode.ERROR, also OTLP's STATUS_CODE_ERROR
WANTED_SPANS = frozenset(
    {spans.FORECAST_SPAN, spans.OBSERVE_SPAN, spans.FAILED_ATTEMPT_SPAN, CALL_SPAN}
)
MAX_OTLP_MESSAGE = 32 * 1024 * 1024

Record = ForecastRecord | ObservationRecord | CallRecord


def records_from_span(
    name: str,
    attributes: Mapping[str, Any],
    status_code: int | None,
    start_ns: int,
    end_ns: int,
) -> list[Record]:
    """The analyzer records one span carries (none for other spans or malformed ones)."""
    try:
        if name == spans.FORECAST_SPAN:
            return _forecasts(attributes)
        if name == spans.OBSERVE_SPAN:
            return [
                ObservationRecord(series_id, timestamps, values)
                for series_id, timestamps, values in spans.read_observations(attributes)
            ]
        if name == spans.FAILED_ATTEMPT_SPAN:
            return [CallRecord(variant=str(attributes[spans.VARIANT]), ok=False, latency=0.0)]
        if name == CALL_SPAN and attributes.get(spans.VARIANT) is not None:
            grpc_code = attributes.get(GRPC_STATUS_CODE)
            ok = int(grpc_code) == 0 if grpc_code is not None else status_code != STATUS_ERROR
            return [
                CallRecord(
                    variant=str(attributes[spans.VARIANT]),
                    ok=ok,
                    latency=max(end_ns - start_ns, 0) / 1e9,
                )
            ]
    except (KeyError, TypeError, ValueError):
        log.warning("malformed_span", span=name)
    return []


def _forecasts(attributes: Mapping[str, Any]) -> list[Record]:
    """Each series' forecast, followed by its implicit actuals when the span has them."""
    raw_call_id = attributes.get(spans.CALL_ID)
    call_id = None if raw_call_id is None else str(raw_call_id)
    variant = str(attributes[spans.VARIANT])
    model_version = str(attributes.get(spans.MODEL_VERSION, ""))
    shadow = bool(attributes.get(spans.SHADOW, False))
    records: list[Record] = []
    for row in spans.read_forecasts(attributes):
        records.append(
            ForecastRecord(
                series_id=row.series_id,
                forecast_id=row.forecast_id,
                call_id=call_id,
                variant=variant,
                model_version=model_version,
                timestamps=row.timestamps,
                point=row.point,
                scale=row.scale,
                shadow=shadow,
                quantile_levels=row.quantile_levels,
                quantiles=row.quantiles,
            )
        )
        if row.history_timestamps is not None and row.history_values is not None:
            records.append(
                ObservationRecord(row.series_id, row.history_timestamps, row.history_values)
            )
    return records


def feed(analyzer: Analyzer, records: Iterable[Record]) -> None:
    """Hand records to the analyzer."""
    for record in records:
        if isinstance(record, ForecastRecord):
            analyzer.add_forecast(record)
        elif isinstance(record, ObservationRecord):
            analyzer.add_observation(record)
        else:
            analyzer.add_call(record)


class AnalyzerSpanProcessor(SpanProcessor):
    """Feeds the spans of this process to an analyzer, off the thread that ends them."""

    def __init__(self, analyzer: Analyzer, *, max_queue: int = 65536) -> None:
        self.analyzer = analyzer
        self.max_queue = max_queue
        self.dropped = 0
        self._queue: deque[ReadableSpan] = deque()
        self._in_flight = 0
        self._stopped = False
        self._cond = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="span-analysis", daemon=True)
        self._worker.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        """Enqueue a span the analysis reads; never blocks for long, never raises."""
        try:
            if span.name not in WANTED_SPANS:
                return
            with self._cond:
                if self._stopped or len(self._queue) >= self.max_queue:
                    self.dropped += 1
                    return
                self._queue.append(span)
                self._cond.notify()
        except Exception:  # a span hook must never raise into the caller
            self.dropped += 1

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait until every queued span has been fed to the analyzer."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and self._in_flight == 0, timeout_millis / 1000
            )

    def shutdown(self) -> None:
        """Feed what is queued, then stop the worker."""
        self.force_flush(5000)
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._worker.join(timeout=5.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._stopped)
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._in_flight = len(batch)
            started = time.thread_time()
            for span in batch:
                try:
                    feed(self.analyzer, _records_of_sdk_span(span))
                except Exception:  # a bad span must not stop the analysis
                    log.exception("span_analysis_failed", span=span.name)
            self.analyzer.charge(time.thread_time() - started)
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()


def _records_of_sdk_span(span: ReadableSpan) -> list[Record]:
    return records_from_span(
        span.name,
        span.attributes or {},
        span.status.status_code.value,
        span.start_time or 0,
        span.end_time or 0,
    )


def any_value(value: AnyValue) -> Any:
    """An OTLP attribute value as the Python value the SDK would have held."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value
    return None


class OtlpTraceReceiver(TraceServiceServicer):
    """An OTLP/gRPC trace receiver feeding an analyzer (grpc.aio servicer).

    Decoding and scoring a batch takes tens of milliseconds, so it runs on one
    ingest thread, never on the event loop the receiver may share with a router's
    request path; Export answers once its spans are in the analyzer, which is the
    exporter's backpressure and means nothing acknowledged is lost.
    """

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self._ingest = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="otlp-ingest")

    async def Export(  # the gRPC method name
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExportTraceServiceResponse:
        await asyncio.get_running_loop().run_in_executor(self._ingest, self.ingest, request)
        return ExportTraceServiceResponse()

    def ingest(self, request: ExportTraceServiceRequest) -> None:
        """Feed the wanted spans of one export to the analyzer (blocking)."""
        started = time.thread_time()
        try:
            self._ingest_spans(request)
        finally:
            self.analyzer.charge(time.thread_time() - started)

    def _ingest_spans(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if span.name not in WANTED_SPANS:
                        continue
                    attributes = {kv.key: any_value(kv.value) for kv in span.attributes}
                    records = records_from_span(
                        span.name,
                        attributes,
                        int(span.status.code),
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                    )
                    feed(self.analyzer, records)


async def serve_otlp_receiver(
    analyzer: Analyzer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: ServerTLS | None = None,
    max_message_bytes: int = MAX_OTLP_MESSAGE,
) -> tuple[grpc.aio.Server, int]:
    """Start an OTLP/gRPC trace receiver (TLS, or mTLS when `tls` has a client CA);
    returns the server and the port it listens on. Over-size exports get
    RESOURCE_EXHAUSTED from gRPC."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    )
    add_TraceServiceServicer_to_server(OtlpTraceReceiver(analyzer), server)
    bound = add_port(server, f"{host}:{port}", tls)
    await server.start()
    log.info("otlp_receiver_started", address=f"{host}:{bound}", tls=tls is not None)
    return server, bound
