"""What every canarycast gRPC process sets up the same way: the aio server with the
shared interceptor and limits, health and reflection, and running until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from canarycast.interceptors import RpcMetrics, ServerInterceptor
from canarycast.v1 import forecast_pb2 as pb

FORECASTER = pb.DESCRIPTOR.services_by_name["Forecaster"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def make_server(
    tracer: trace.Tracer,
    rpc_metrics: RpcMetrics,
    max_message_bytes: int,
    *,
    maximum_concurrent_rpcs: int | None = None,
    guards: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """`guards` (authentication) run before the shared tracing/metrics interceptor."""
    return grpc.aio.server(
        interceptors=[*guards, ServerInterceptor(tracer, rpc_metrics)],
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Routers ping idle connections to notice a stalled backend; allow it.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
            ("grpc.http2.max_ping_strikes", 0),
        ],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )


def add_health_and_reflection(server: grpc.aio.Server, service: str) -> HealthServicer:
    """grpc.health.v1 (for "" and `service`) and server reflection on `server`."""
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((service, HEALTH, reflection.SERVICE_NAME), server)
    return health


async def set_serving(health: HealthServicer, service: str, serving: bool) -> None:
    status = (
        health_pb2.HealthCheckResponse.SERVING
        if serving
        else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", service):
        await health.set(name, status)


class Component(Protocol):
    async def start(self) -> int: ...

    async def stop(self, grace: float | None = None) -> None: ...


async def run_until_signalled(component: Component) -> int:
    """Start, run until SIGTERM/SIGINT, then stop (drain) and return the exit code (0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await component.start()
        await stop.wait()
    finally:
        await component.stop()
    return 0
