"""Telemetry set-up shared by every canarycast process: OTel traces, structlog, Prometheus.

Configured once at start-up by the CLI (the composition root). Library code
only asks for a tracer (`opentelemetry.trace.get_tracer`) and logs through
`structlog.get_logger()`; tests inject their own `TracerProvider` and
`CollectorRegistry` instead of touching globals.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry, start_http_server

from canarycast.environment import (
    CANARYCAST_LOG_LEVEL,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_SERVICE_NAME,
)


def add_trace_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: add the current OTel trace_id/span_id to every event."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def configure_logging(level: str | None = None) -> None:
    """structlog JSON lines on stderr, with context vars and trace ids."""
    name = (level or os.environ.get(CANARYCAST_LOG_LEVEL) or "INFO").upper()
    numeric = logging.getLevelNamesMapping().get(name, logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            add_trace_context,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def configure_tracing(service_name: str) -> TracerProvider:
    """Install a global TracerProvider; export with OTLP/gRPC when the endpoint is set.

    W3C trace context (the OTel default propagator) is what interceptors read
    from incoming metadata.
    """
    resource = Resource.create({"service.name": os.environ.get(OTEL_SERVICE_NAME, service_name)})
    provider = TracerProvider(resource=resource)
    if os.environ.get(OTEL_EXPORTER_OTLP_ENDPOINT):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        from canarycast.spans import EXPORT_BATCH_SPANS

        # A forecast span carries up to SERIES_PER_SPAN series: batches of 64 stay well
        # under a Collector's default 4 MiB per export (the SDK's default is 512 spans).
        given = os.environ.get(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "")
        batch = int(given) if given.isdigit() and int(given) > 0 else EXPORT_BATCH_SPANS
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(), max_export_batch_size=batch)
        )
    trace.set_tracer_provider(provider)
    return provider


@dataclass
class MetricsEndpoint:
    """A running Prometheus /metrics HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(
    registry: CollectorRegistry, port: int, host: str = "127.0.0.1"
) -> MetricsEndpoint:
    """Expose `registry` on http://host:port/metrics (port 0 picks a free port)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread)
