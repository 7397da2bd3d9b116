"""A router process: the same `canarycast.v1.Forecaster` service as a model server,
answered by forwarding to stable and canary backends (see `router.proxy`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import structlog
from opentelemetry import trace

from canarycast.grpc_server import (
    add_health_and_reflection,
    make_server,
    run_until_signalled,
    set_serving,
)
from canarycast.telemetry import MetricsEndpoint, serve_metrics
from canarycast.validation import Limits
from router.backends import SERVICE, BackendPool, Replica
from router.metrics import RouterMetrics
from router.mirror import MirrorQueue
from router.proxy import Router
from router.routing import CANARY, STABLE, Mode, RoutingPolicy, StickyKey

log = structlog.get_logger("canarycast.router")


@dataclass(frozen=True)
class RouterSettings:
    """Everything `canarycast route` can set (see `canarycast route --help`)."""

    stable: Sequence[str]
    canary: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int | None = None
    canary_weight: float = 0.0
    mode: Mode = Mode.SPLIT
    sticky_key: StickyKey = StickyKey.SERIES_ID
    mirror_fraction: float = 1.0
    mirror_queue_size: int = 1024
    mirror_workers: int = 8
    mirror_timeout: float = 5.0
    keepalive: float = 2.0
    grace: float = 10.0
    limits: Limits = field(default_factory=Limits)


class RouterServer:
    def __init__(
        self,
        settings: RouterSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metrics: RouterMetrics | None = None,
    ) -> None:
        if not settings.stable:
            raise ValueError("at least one stable backend is required")
        self.settings = settings
        self.metrics = metrics or RouterMetrics()
        self._health_changed = asyncio.Condition()
        self._notifications: set[asyncio.Task[None]] = set()
        tracer = trace.get_tracer("canarycast.router", tracer_provider=tracer_provider)

        def pool(variant: str, addresses: Sequence[str]) -> BackendPool:
            return BackendPool(
                variant,
                [
                    Replica(variant, a, keepalive=settings.keepalive, on_health=self._health)
                    for a in addresses
                ],
            )

        self.mirror = MirrorQueue(
            max_size=settings.mirror_queue_size,
            workers=settings.mirror_workers,
            on_drop=lambda variant: self.metrics.mirror_dropped.labels(variant).inc(),
        )
        self.router = Router(
            pool(STABLE, settings.stable),
            pool(CANARY, settings.canary) if settings.canary else None,
            RoutingPolicy(
                canary_weight=settings.canary_weight,
                mode=settings.mode,
                sticky_key=settings.sticky_key,
                mirror_fraction=settings.mirror_fraction,
            ),
            mirror=self.mirror,
            metrics=self.metrics,
            tracer=tracer,
            limits=settings.limits,
            mirror_timeout=settings.mirror_timeout,
        )
        self.server = make_server(tracer, self.metrics.rpc, settings.limits.max_message_bytes)
        router = self.router

        async def forecast(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await router.forecast(
                request, _metadata(context), _remaining(context.time_remaining())
            )

        async def get_model(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await router.get_model(
                request, _metadata(context), _remaining(context.time_remaining())
            )

        async def observe(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return router.observe(request)

        # Raw bytes in and out (no serializers): the request is forwarded as it came.
        handlers = {
            "Forecast": grpc.unary_unary_rpc_method_handler(forecast),
            "GetModel": grpc.unary_unary_rpc_method_handler(get_model),
            "Observe": grpc.unary_unary_rpc_method_handler(observe),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.health = add_health_and_reflection(self.server, SERVICE)
        self.port = 0
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = False

    def _health(self, replica: Replica) -> None:
        self.metrics.backend_serving.labels(replica.variant, replica.address).set(
            1 if replica.serving else 0
        )
        task = asyncio.get_running_loop().create_task(self._notify_health())
        self._notifications.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._notifications.discard)

    async def _notify_health(self) -> None:
        async with self._health_changed:
            self._health_changed.notify_all()

    async def start(self) -> int:
        self.port = self.server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.host}:{self.settings.port}")
        if self.settings.metrics_port is not None:
            self.metrics_endpoint = serve_metrics(
                self.metrics.registry, self.settings.metrics_port, self.settings.host
            )
        for pool in self.router.pools.values():
            for replica in pool.replicas:
                self._health(replica)
            pool.start()
        self.mirror.start()
        await self.server.start()
        await set_serving(self.health, SERVICE, True)
        policy = self.router.policy
        log.info(
            "serving",
            port=self.port,
            metrics_port=self.metrics_endpoint.port if self.metrics_endpoint else None,
            stable=list(self.settings.stable),
            canary=list(self.settings.canary),
            mode=str(policy.mode),
            canary_weight=policy.canary_weight,
        )
        return self.port

    async def wait_for_backends(self, *variants: str) -> None:
        """Until every replica of `variants` (default: all) reports SERVING."""
        pools = [p for v, p in self.router.pools.items() if not variants or v in variants]
        async with self._health_changed:
            await self._health_changed.wait_for(
                lambda: all(r.serving for p in pools for r in p.replicas)
            )

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace if grace is None else grace)
        await self.mirror.drain(1.0)
        for pool in self.router.pools.values():
            await pool.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        log.info("stopped")


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]


def _remaining(value: float | None) -> float | None:
    return None if value is None or value > 1e9 else value


async def run(settings: RouterSettings) -> int:
    """Route until SIGTERM/SIGINT, then drain and return the exit code (0)."""
    return await run_until_signalled(RouterServer(settings))
