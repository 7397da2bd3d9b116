"""A real router process with admin and viewer tokens, called with right and wrong tokens:
no token shows up in its stdout, its stderr logs (at DEBUG), its exported spans or its
Prometheus metrics."""

from __future__ import annotations

import os
import threading
import urllib.request
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)

from canarycast.client import ForecastClient
from canarycast.processes import start_component
from canarycast.rollout_client import RolloutClient
from tests.conftest import MODEL, TrainedRegistry
from tests.security.test_tls import HISTORY

ADMIN = "adm-5e1f0c9b2d7a4e83"
VIEWER = "vwr-0a6c3f8e91b24d57"
WRONG = "bad-7c2e9a41f05d3b68"


class Collector(TraceServiceServicer):
    """An OTLP trace receiver that keeps every export as it came over the wire."""

    def __init__(self) -> None:
        self.exports: list[bytes] = []
        self.lock = threading.Lock()

    def Export(  # the gRPC method name
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        with self.lock:
            self.exports.append(request.SerializeToString())
        return ExportTraceServiceResponse()

    def span_names(self) -> set[str]:
        with self.lock:
            requests = [ExportTraceServiceRequest.FromString(b) for b in self.exports]
        return {
            span.name
            for r in requests
            for rs in r.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        }


@pytest.mark.slow
def test_tokens_never_reach_logs_spans_or_metrics(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    collector = Collector()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    viewer_file = tmp_path / "viewer-token"
    viewer_file.write_text(VIEWER)
    stdout = tmp_path / "router.stdout"
    try:
        with stdout.open("w") as out:
            router = start_component(
                "router",
                [
                    "route",
                    "--port",
                    "0",
                    "--metrics-port",
                    "0",
                    "--stable",
                    "127.0.0.1:1",
                    "--registry",
                    str(registry_copy.root),
                    "--model",
                    MODEL,
                    "--viewer-token-file",
                    str(viewer_file),
                ],
                env={
                    "CANARYCAST_ADMIN_TOKEN": ADMIN,
                    "CANARYCAST_LOG_LEVEL": "DEBUG",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                },
                stdout=out,
            )
            try:
                codes = []
                for token, action in (
                    (ADMIN, "status"),
                    (ADMIN, "pause"),  # no rollout: FAILED_PRECONDITION, after auth
                    (ADMIN, "history"),
                    (VIEWER, "status"),
                    (VIEWER, "pause"),  # PERMISSION_DENIED
                    (WRONG, "status"),  # UNAUTHENTICATED
                    (WRONG, "pause"),
                    (f"{ADMIN} {WRONG}", "status"),
                ):
                    with RolloutClient(router.target, token, timeout=10) as client:
                        try:
                            getattr(client, action)()
                            codes.append(grpc.StatusCode.OK)
                        except grpc.RpcError as exc:
                            codes.append(exc.code())
                assert grpc.StatusCode.OK in codes
                assert grpc.StatusCode.PERMISSION_DENIED in codes
                assert grpc.StatusCode.UNAUTHENTICATED in codes
                # a token sent where none belongs (the Forecast path) is not recorded either
                with ForecastClient(
                    router.target, timeout=10, metadata=[("authorization", f"Bearer {ADMIN}")]
                ) as fc:
                    with pytest.raises(grpc.RpcError) as err:
                        fc.forecast({"s": HISTORY}, horizon=3)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # no backend
                    assert fc.observe("s", ["2010-01-01T00:00"], [1.0]) == 1
                assert router.metrics_port is not None
                url = f"http://127.0.0.1:{router.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    metrics = response.read().decode()
            finally:
                assert router.stop() == 0  # flushes the span exporter on exit
        logs = "\n".join(router.lines)
        printed = stdout.read_text()
        exported = b"".join(collector.exports)
        # what was looked at is really there: the calls left logs, spans and metrics
        assert '"event": "serving"' in logs and '"event": "stopped"' in logs
        names = collector.span_names()
        assert {
            "canarycast.v1.RolloutControl/GetStatus",
            "canarycast.v1.RolloutControl/Pause",
            "canarycast.v1.Forecaster/Forecast",
        } <= names, names
        for code, method in (
            ("OK", "GetStatus"),
            ("UNAUTHENTICATED", "GetStatus"),
            ("UNAUTHENTICATED", "Pause"),
            ("PERMISSION_DENIED", "Pause"),
        ):  # refused calls are counted too
            assert f'canarycast_router_calls_total{{code="{code}",method="{method}"}}' in metrics
        for secret in (ADMIN, VIEWER, WRONG):
            assert secret not in logs
            assert secret not in printed
            assert secret.encode() not in exported
            assert secret not in metrics
        assert os.environ.get("CANARYCAST_ADMIN_TOKEN") != ADMIN  # the test's own env is clean
    finally:
        otlp.stop(0)
