"""What every canarycast gRPC process sets up the same way: the aio server with the
shared interceptor and limits, health and reflection, and running until a signal."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace

from canarycast.errors import ResourceExhausted
from canarycast.interceptors import RpcMetrics, ServerInterceptor, decode_request
from canarycast.tls import ServerTLS
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
    rate_limit: RateLimit | None = None,
) -> grpc.aio.Server:
    """`guards` (authentication) and the rate limit run inside the shared tracing/metrics
    interceptor, before the servicer: refused calls are traced and counted like any other."""
    inner = [*guards, *([RateLimiter(rate_limit)] if rate_limit is not None else [])]
    return grpc.aio.server(
        interceptors=[ServerInterceptor(tracer, rpc_metrics), *inner],
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


def add_port(server: grpc.aio.Server, address: str, tls: ServerTLS | None) -> int:
    """Listen on `address` with TLS (mTLS when `tls` has a client CA) or in plaintext;
    returns the bound port, refusing with OSError when it cannot listen."""
    if tls is not None:
        port = server.add_secure_port(address, tls.credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


RATE_LIMITED_METHODS = frozenset({f"/{FORECASTER}/Forecast", f"/{FORECASTER}/Observe"})


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per client address (or one for all, `per_peer=False`) and method of
    `methods`: `rate` calls per second refill it, up to `burst`. The bucket map is bounded by
    `max_peers` (the least recently seen address is forgotten first)."""

    rate: float
    burst: int
    per_peer: bool = True
    methods: frozenset[str] = RATE_LIMITED_METHODS
    max_peers: int = 10_000

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate limit must be > 0 calls per second, got {self.rate}")
        if self.burst < 1:
            raise ValueError(f"rate burst must be >= 1, got {self.burst}")


class TokenBuckets:
    """Token buckets by key, refilled lazily from a monotonic clock."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> bool:
        """Take one token from `key`'s bucket; False when it is empty."""
        now = self._clock()
        tokens, then = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - then) * self.limit.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.limit.max_peers:
            self._buckets.popitem(last=False)
        return allowed


def peer_address(peer: str) -> str:
    """`ipv4:127.0.0.1:5000` -> `127.0.0.1`, `ipv6:[::1]:5000` -> `[::1]` (no port)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer


class RateLimiter(grpc.aio.ServerInterceptor):
    """Refuses calls over `RateLimit` with RESOURCE_EXHAUSTED, naming the limit."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.buckets = TokenBuckets(limit, clock)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method not in self.limit.methods:
            return handler
        behavior, decode = handler.unary_unary, handler.request_deserializer
        limit, buckets = self.limit, self.buckets
        short = method.rpartition("/")[2]

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            peer = peer_address(context.peer() or "") if limit.per_peer else "*"
            if not buckets.take(f"{peer} {short}"):
                who = f"from {peer}" if limit.per_peer else "in all"
                raise ResourceExhausted(
                    f"rate limit: more than {limit.rate:g} {short} calls per second {who} "
                    f"(burst {limit.burst}); retry later"
                )
            if decode is not None:  # decoded only once admitted: a refused call costs less
                request = decode_request(decode, request)
            return await behavior(request, context)

        # No request deserializer here: the bytes reach `limited` undecoded.
        return grpc.unary_unary_rpc_method_handler(
            limited, response_serializer=handler.response_serializer
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
