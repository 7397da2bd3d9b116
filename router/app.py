"""A router process: the same `canarycast.v1.Forecaster` service as a model server,
answered by forwarding to stable and canary backends (see `router.proxy`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from canarycast.grpc_server import (
    add_health_and_reflection,
    make_server,
    run_until_signalled,
    set_serving,
)
from canarycast.telemetry import MetricsEndpoint, serve_metrics
from canarycast.tls import ServerTLS
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from canarycast.validation import Limits
from router.analysis import Analyzer
from router.backends import SERVICE, BackendPool, Replica
from router.control import AdminAuth, RolloutControlServicer
from router.controller import Controller, RolloutPolicy
from router.follow import WeightFollower
from router.metrics import RolloutMetrics, RouterMetrics
from router.mirror import MirrorQueue
from router.proxy import Router
from router.routing import CANARY, STABLE, Mode, RoutingPolicy, StickyKey
from router.spans_in import AnalyzerSpanProcessor, serve_otlp_receiver
from router.store import RolloutStore
from server.registry import Registry

log = structlog.get_logger("canarycast.router")


@dataclass(frozen=True)
class ControllerSettings:
    """The embedded rollout controller and analyzer (`canarycast route --registry --model`)."""

    registry: Path
    model: str
    state: Path
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    admin_token: str | None = None
    otlp_port: int | None = None  # also receive spans over OTLP/gRPC
    analysis_ttl: float = 3600.0
    max_pending: int = 100_000


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
    controller: ControllerSettings | None = None
    tls: ServerTLS | None = None  # TLS (and mTLS with a client CA) on the router's port
    follow: str | None = None  # HOST:PORT of the router whose controller sets the weights
    follow_token: str | None = None


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
        if settings.follow is not None and settings.controller is not None:
            raise ValueError("a router either runs the controller or follows one, not both")
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
        self.analyzer: Analyzer | None = None
        self.controller: Controller | None = None
        self.otlp_server: grpc.aio.Server | None = None
        self.otlp_port: int | None = None
        self.follower: WeightFollower | None = None
        if settings.follow is not None:
            self.follower = WeightFollower(
                settings.follow, settings.follow_token, self.router.set_weight
            )
        guards: list[grpc.aio.ServerInterceptor] = []
        if settings.controller is not None:
            guards.append(AdminAuth(settings.controller.admin_token))
            tracer = self._embed_controller(settings.controller, tracer_provider)
            self.router.tracer = tracer
        self.server = make_server(
            tracer, self.metrics.rpc, settings.limits.max_message_bytes, guards=guards
        )
        if self.controller is not None:
            rpb_grpc.add_RolloutControlServicer_to_server(
                RolloutControlServicer(self.controller), self.server
            )
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

    def _embed_controller(
        self, cs: ControllerSettings, tracer_provider: trace.TracerProvider | None
    ) -> trace.Tracer:
        """Analyzer fed by this router's own spans, and the controller over it."""
        provider = tracer_provider or trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # no SDK installed globally: our own
            provider = TracerProvider()
        self.analyzer = Analyzer(
            ttl=cs.analysis_ttl,
            max_pending=cs.max_pending,
            clock=time.time,
            registry=self.metrics.registry,
        )
        self.span_processor = AnalyzerSpanProcessor(self.analyzer)
        provider.add_span_processor(self.span_processor)
        self.controller = Controller(
            model=cs.model,
            registry=Registry(cs.registry),
            traffic=self.router,
            analyzer=self.analyzer,
            store=RolloutStore(cs.state),
            policy=cs.policy,
            stable_probe=self._stable_version,
            metrics=RolloutMetrics(self.metrics.registry),
        )
        return provider.get_tracer("canarycast.router")

    async def _stable_version(self) -> str | None:
        replica = self.router.pools[STABLE].pick()
        if replica is None:
            return None
        raw = await replica.get_model(pb.GetModelRequest().SerializeToString(), 5.0, [])
        return pb.ModelInfo.FromString(raw).model.version

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
        address = f"{self.settings.host}:{self.settings.port}"
        if self.settings.tls is not None:
            self.port = self.server.add_secure_port(address, self.settings.tls.credentials())
        else:
            self.port = self.server.add_insecure_port(address)
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
        if self.follower is not None:
            self.follower.start()
        if self.controller is not None and self.analyzer is not None:
            await self.controller.resume_after_restart()
            self.controller.start_loop()
            assert self.settings.controller is not None
            if self.settings.controller.otlp_port is not None:
                self.otlp_server, self.otlp_port = await serve_otlp_receiver(
                    self.analyzer, self.settings.host, self.settings.controller.otlp_port
                )
        await set_serving(self.health, SERVICE, True)
        policy = self.router.policy
        log.info(
            "serving",
            port=self.port,
            metrics_port=self.metrics_endpoint.port if self.metrics_endpoint else None,
            stable=list(self.settings.stable),
            canary=list(self.settings.canary),
            controller=self.controller is not None,
            otlp_port=self.otlp_port,
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
        if self.follower is not None:
            await self.follower.stop()
        if self.controller is not None:
            await self.controller.stop()
            self.controller.store.close()
        if self.otlp_server is not None:
            await self.otlp_server.stop(1)
        for pool in self.router.pools.values():
            await pool.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        log.info("stopped")


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    return [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]


def _remaining(value: float | None) -> float | None:
    return None if value is None or value > 1e9 else value


async def run(settings: RouterSettings, tracer_provider: trace.TracerProvider | None = None) -> int:
    """Route until SIGTERM/SIGINT, then drain and return the exit code (0)."""
    return await run_until_signalled(RouterServer(settings, tracer_provider=tracer_provider))
