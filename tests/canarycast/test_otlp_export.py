"""`canarycast serve` exports its spans with OTLP/gRPC when OTEL_EXPORTER_OTLP_ENDPOINT is set."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from canarycast.client import ForecastClient, SeriesData
from canarycast.processes import start_component
from canarycast.spans import read_forecasts
from router.rollout.spans_in import any_value
from server.lifecycle.data import load_dataset
from tests.conftest import MODEL, TrainedRegistry


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[Span]:
        with self.lock:
            return [
                span
                for req in self.requests
                for rs in req.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]


def test_spans_reach_an_otlp_receiver(trained: TrainedRegistry) -> None:
    receiver = Receiver()
    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        server = start_component(
            "server",
            ["serve", "--registry", str(trained.root), "--model", f"{MODEL}@stable", "--port", "0"],
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_SERVICE_NAME": "server-under-test",
            },
        )
        try:
            series = load_dataset("seattle-temps").series[0]
            with ForecastClient(server.target) as client:
                client.forecast([SeriesData("otlp-series", series.values[:48])], horizon=4)
        finally:
            assert server.stop() == 0  # exiting flushes the batch span processor
    finally:
        collector.stop(None)
    spans = receiver.spans()
    names = {s.name for s in spans}
    assert "canarycast.v1.Forecaster/Forecast" in names and "forecast" in names
    forecast = next(s for s in spans if s.name == "forecast")
    attributes = {a.key: any_value(a.value) for a in forecast.attributes}
    [row] = read_forecasts(attributes)  # the call's one series, as the analyzer reads it
    assert row.series_id == "otlp-series"
    assert len(row.point) == 4 and row.scale > 0
    resource = receiver.requests[0].resource_spans[0].resource
    service = {a.key: a.value.string_value for a in resource.attributes}["service.name"]
    assert service == "server-under-test"
