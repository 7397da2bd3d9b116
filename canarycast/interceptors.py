"""Cross-cutting concerns of every canarycast gRPC server, in one place.

`ServerInterceptor` gives each unary call a SERVER span (continuing the W3C
trace context found in the incoming metadata), counts it by method and status
code, times it, binds `rpc_method`/trace ids for structlog, and translates
domain errors (`canarycast.errors`) into gRPC statuses: the one place a status
code is set, for servicers and for the guards inside it (authentication raises
`Unauthenticated` / `PermissionDenied` like any other domain error). Health checks and
reflection are left out of tracing and metrics, as the OTel gRPC
instrumentation's filters do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import DecodeError
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from canarycast.errors import CanarycastError, InvalidArgument

UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

log = structlog.get_logger("canarycast.rpc")


class RpcMetrics:
    """Calls by method and status code, and call latency, under a component prefix."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.calls = Counter(
            f"{prefix}_calls",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{prefix}_call_duration_seconds",
            "Time to answer a gRPC call, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.calls.labels(method, code.name).inc()
        self.latency.labels(method).observe(seconds)


Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Tracing, metrics, log context and error mapping for unary-unary methods."""

    def __init__(self, tracer: trace.Tracer, metrics: RpcMetrics | None = None) -> None:
        self._tracer = tracer
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        if handler.unary_stream is not None:
            # Not traced, but bad bytes still get INVALID_ARGUMENT rather than UNKNOWN, and
            # domain errors (a guard's refusal among them) their own status code.
            return grpc.unary_stream_rpc_method_handler(
                _mapping_stream(handler.unary_stream, handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is None:
            return handler
        # The request is decoded inside the wrapper: grpc's own decoding would answer
        # undecodable bytes with UNKNOWN; here they get INVALID_ARGUMENT naming the type.
        wrapped = self._wrap(method, handler.unary_unary, handler.request_deserializer)
        return grpc.unary_unary_rpc_method_handler(
            wrapped, response_serializer=handler.response_serializer
        )

    def _wrap(
        self, method: str, behavior: Behavior, decode: Callable[[bytes], Any] | None = None
    ) -> Behavior:
        service, _, short = method.lstrip("/").rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": short}

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            parent = propagate.extract(carrier)
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            refusal: tuple[grpc.StatusCode, str] | None = None
            with (
                self._tracer.start_as_current_span(
                    method.lstrip("/"),
                    context=parent,
                    kind=SpanKind.SERVER,
                    attributes=attributes,
                    record_exception=False,
                    set_status_on_exception=False,
                ) as span,
                structlog.contextvars.bound_contextvars(rpc_method=short),
            ):
                try:
                    if decode is not None:
                        request = decode_request(decode, request)
                    return await behavior(request, context)
                except CanarycastError as exc:
                    code = exc.status_code
                    span.set_status(Status(StatusCode.ERROR, str(exc)))
                    log.info("call_rejected", code=code.name, error=str(exc))
                    refusal = (code, str(exc))
                except asyncio.CancelledError:
                    code = grpc.StatusCode.CANCELLED
                    raise
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as exc:
                    code = grpc.StatusCode.INTERNAL
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    log.exception("call_failed")
                    refusal = (code, f"internal error: {type(exc).__name__}")
                finally:
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if self._metrics is not None:
                        self._metrics.observe(short, code, time.perf_counter() - started)
            # The span has ended and the call is counted before the refusal leaves, so a
            # caller holding the answer finds both (a successful answer leaves after too).
            assert refusal is not None
            await context.abort(*refusal)

        return wrapped


def decode_request(decode: Callable[[bytes], Any], raw: bytes) -> Any:
    """`decode(raw)`, with undecodable bytes an `InvalidArgument` naming the message type."""
    try:
        return decode(raw)
    except DecodeError as exc:
        message_type = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
        name = message_type.full_name if message_type is not None else "request message"
        raise InvalidArgument("request", f"not a {name}: {exc}") from exc


def _mapping_stream(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Any],
    decode: Callable[[bytes], Any] | None,
) -> Callable[[Any, grpc.aio.ServicerContext], Any]:
    """A server stream whose request is decoded (when `decode` is given) and whose domain
    errors, raised before or between its messages, end it with their status code."""

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if decode is not None:
                request = decode_request(decode, request)
            async for response in behavior(request, context):
                yield response
        except CanarycastError as exc:
            log.info("call_rejected", code=exc.status_code.name, error=str(exc))
            await context.abort(exc.status_code, str(exc))

    return stream
