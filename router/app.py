"""A router process: the same `canarycast.v1.Forecaster` service as a model server,
answered by forwarding to stable and canary backends (see `router.traffic.proxy`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from canarycast.grpc_server import (
    RateLimit,
    add_health_and_reflection,
    add_port,
    make_server,
    run_until_signalled,
    set_serving,
)
from canarycast.periodic import Periodic
from canarycast.telemetry import MetricsEndpoint, serve_metrics
from canarycast.tls import ClientTLS, ServerTLS
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from canarycast.validation import Limits
from canarycast.workers import (
    Supervisor,
    WorkerLink,
    flush_spans,
    reserve_port,
    run_worker,
    serve_pod_metrics,
    worker_ports,
)
from router.metrics import DriftMetrics, RolloutMetrics, RouterMetrics
from router.rollout.analysis import Analyzer, AnalyzerStats
from router.rollout.control import AdminAuth, RolloutControlServicer, TokenLike
from router.rollout.controller import Controller, RolloutPolicy
from router.rollout.spans_in import MAX_OTLP_MESSAGE, AnalyzerSpanProcessor, serve_otlp_receiver
from router.rollout.store import RolloutStore
from router.traffic.backends import (
    SERVICE,
    BackendPool,
    Replica,
    Resolver,
    parse_dns_target,
    resolve,
)
from router.traffic.follow import WeightFollower
from router.traffic.mirror import MirrorQueue
from router.traffic.proxy import Copy, Router
from router.traffic.routing import CANARY, STABLE, Mode, RoutingPolicy, StickyKey
from server.lifecycle.observations import ObservationStore
from server.lifecycle.registry import Registry

log = structlog.get_logger("canarycast.router")

#: Seconds a starting router waits for its backends' first health answers.
FIRST_HEALTH_WAIT = 2.0


@dataclass(frozen=True)
class ControllerSettings:
    """The embedded rollout controller and analyzer (`canarycast route --registry --model`)."""

    registry: Path
    model: str
    state: Path
    policy: RolloutPolicy = field(default_factory=RolloutPolicy)
    admin_token: TokenLike = None  # a Token from a file follows the file (rotation)
    viewer_token: TokenLike = None  # may read (status, history, watch), not steer
    otlp_port: int | None = None  # also receive spans over OTLP/gRPC
    desired_canary: Path | None = None  # file naming the version to roll out (Helm values)
    otlp_tls: ServerTLS | None = None  # TLS (mTLS with a client CA) on the OTLP port
    otlp_max_message_bytes: int = MAX_OTLP_MESSAGE
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
    #: Share of series in the analysis sample (copied and recorded; the rest counted only).
    analysis_fraction: float = 1.0
    mirror_queue_size: int = 1024
    mirror_workers: int = 8
    mirror_batch: int = 64  # series per mirror call at most (copies waiting are joined)
    join_after: int = 4  # calls in flight per replica before further calls are joined; 0: never
    join_max: int = 64  # series per joined call at most
    mirror_timeout: float = 5.0
    keepalive: float = 2.0
    grace: float = 10.0
    #: NOT_SERVING this long before the port stops taking calls, so that routers and
    #: health-checking clients stop sending first (grpc answers calls that race the
    #: stop with CANCELLED); see docs/reliability.md
    drain_delay: float = 0.0
    limits: Limits = field(default_factory=Limits)
    controller: ControllerSettings | None = None
    tls: ServerTLS | None = None  # TLS (and mTLS with a client CA) on the router's port
    follow: str | None = None  # HOST:PORT of the router whose controller sets the weights
    follow_token: TokenLike = None
    observations: Path | None = None  # SQLite store of every accepted Observe point (off: None)
    #: With the controller: the stable model's online error gauge every N seconds (the drift
    #: scores themselves come from `canarycast drift --serve-metrics`, which loads the model)
    drift_interval: float = 300.0
    follow_tls: ClientTLS | None = None  # TLS (mTLS) to the router followed
    backend_tls: ClientTLS | None = None  # TLS (mTLS) to the model servers
    rate_limit: RateLimit | None = None  # token bucket on Forecast/Observe; None: off
    max_concurrent_rpcs: int | None = None  # beyond: RESOURCE_EXHAUSTED at once; None: no limit
    dns_refresh: float = 5.0  # seconds between resolutions of dns:///HOST:PORT backends
    #: A worker of `route --workers N` (canarycast/workers.py) also listens on a port of its
    #: own (0: a free one); None: one port only.
    worker_port: int | None = None
    metrics_host: str | None = None  # where /metrics listens (default: `host`)


class RouterServer:
    def __init__(
        self,
        settings: RouterSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metrics: RouterMetrics | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        """`resolver`: what dns:///HOST:PORT backends resolve with (the system resolver)."""
        if not settings.stable:
            raise ValueError("at least one stable backend is required")
        if settings.dns_refresh <= 0:
            raise ValueError("--dns-refresh must be above 0 seconds")
        if settings.follow is not None and settings.controller is not None:
            raise ValueError("a router either runs the controller or follows one, not both")
        if not settings.drift_interval > 0:
            raise ValueError("--drift-interval must be above 0 seconds")
        for flag, value in (
            ("--mirror-queue-size", settings.mirror_queue_size),
            ("--mirror-batch", settings.mirror_batch),
            ("--join-max", settings.join_max),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
        if settings.join_after < 0:
            raise ValueError(
                f"--join-after must be 0 (never join) or more, got {settings.join_after}"
            )
        self.settings = settings
        self.metrics = metrics or RouterMetrics()
        self._health_changed = asyncio.Condition()
        self._notifications: set[asyncio.Task[None]] = set()
        tracer = trace.get_tracer("canarycast.router", tracer_provider=tracer_provider)

        backend_credentials = (
            settings.backend_tls.credentials() if settings.backend_tls is not None else None
        )

        def pool(variant: str, addresses: Sequence[str]) -> BackendPool:
            def replica(address: str, authority: str | None = None) -> Replica:
                return Replica(
                    variant,
                    address,
                    keepalive=settings.keepalive,
                    on_health=self._health,
                    credentials=backend_credentials,
                    authority=authority,
                )

            targets = [(a, parse_dns_target(a)) for a in addresses]
            return BackendPool(
                variant,
                [replica(a) for a, dns in targets if dns is None],
                dns_targets=[dns for _, dns in targets if dns is not None],
                make_replica=replica,
                on_removed=self._removed,
                resolver=resolver,
                refresh=settings.dns_refresh,
                drain=settings.grace,
            )

        self.mirror: MirrorQueue[Copy] = MirrorQueue(
            lambda batch: self.router.send_copies(batch),
            max_size=settings.mirror_queue_size,
            workers=settings.mirror_workers,
            max_batch=settings.mirror_batch,
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
                analysis_fraction=settings.analysis_fraction,
            ),
            mirror=self.mirror,
            metrics=self.metrics,
            tracer=tracer,
            limits=settings.limits,
            mirror_timeout=settings.mirror_timeout,
            join_after=settings.join_after,
            join_max=settings.join_max,
            observations=(
                ObservationStore(settings.observations) if settings.observations else None
            ),
        )
        self.analyzer: Analyzer | None = None
        self.controller: Controller | None = None
        self.otlp_server: grpc.aio.Server | None = None
        self.otlp_port: int | None = None
        self.follower: WeightFollower | None = None
        self._drift: Periodic | None = None
        self._drift_metrics = DriftMetrics(self.metrics.registry)
        if settings.follow is not None:
            self.follower = WeightFollower(
                settings.follow,
                settings.follow_token,
                self.router.set_weight,
                credentials=(
                    settings.follow_tls.credentials() if settings.follow_tls is not None else None
                ),
            )
        guards: list[grpc.aio.ServerInterceptor] = []
        if settings.controller is not None:
            guards.append(
                AdminAuth(settings.controller.admin_token, settings.controller.viewer_token)
            )
            tracer = self._embed_controller(settings.controller, tracer_provider)
            self.router.tracer = tracer
        self.server = make_server(
            tracer,
            self.metrics.rpc,
            settings.limits.max_message_bytes,
            guards=guards,
            rate_limit=settings.rate_limit,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        if self.controller is not None:
            rpb_grpc.add_RolloutControlServicer_to_server(
                RolloutControlServicer(self.controller, self._sample), self.server
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
            return await router.observe(request)

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
        self.worker_port: int | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = False

    def _embed_controller(
        self, cs: ControllerSettings, tracer_provider: trace.TracerProvider | None
    ) -> trace.Tracer:
        """Analyzer fed by this router's own spans, and the controller over it."""
        provider = tracer_provider or trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):  # no SDK installed globally: our own
            provider = TracerProvider()
        self._analysis_clock = time.time  # what the controller's `since` is measured on too
        self.analyzer = Analyzer(
            ttl=cs.analysis_ttl,
            max_pending=cs.max_pending,
            clock=self._analysis_clock,
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
            desired_canary=cs.desired_canary,
        )
        return provider.get_tracer("canarycast.router")

    async def _online_error_step(self) -> None:
        """The stable model's mean scaled online error over the last interval, from the
        analyzer (on the analyzer's clock, the one its evidence is stamped with)."""
        assert self.analyzer is not None
        since = self._analysis_clock() - self.settings.drift_interval
        stable = self.analyzer.evidence(since).stable_series
        if len(stable):
            self._drift_metrics.online_error.set(float(stable.mean()))

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
        self._health_changed_soon()

    def _health_changed_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify_health())
        self._notifications.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._notifications.discard)

    def _removed(self, replica: Replica) -> None:
        """A DNS backend's address went away: its gauge goes too (no stale alert)."""
        with contextlib.suppress(KeyError):
            self.metrics.backend_serving.remove(replica.variant, replica.address)
        self._health_changed_soon()

    async def _notify_health(self) -> None:
        async with self._health_changed:
            self._health_changed.notify_all()

    def _sample(self) -> tuple[float, AnalyzerStats]:
        """The analysis sample for the rollout status: the fraction and what reached it."""
        assert self.analyzer is not None
        return self.router.policy.analysis_fraction, self.analyzer.stats()

    async def _first_health(self) -> None:
        """Wait (at most FIRST_HEALTH_WAIT seconds) for every replica's first health
        answer, so that the first calls do not find a serving backend marked down."""
        replicas = [r for pool in self.router.pools.values() for r in pool.replicas]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(r.checked.wait() for r in replicas)), FIRST_HEALTH_WAIT
            )

    async def start(self) -> int:
        address = f"{self.settings.host}:{self.settings.port}"
        self.port = add_port(self.server, address, self.settings.tls)
        if self.settings.worker_port is not None:
            own = f"{self.settings.host}:{self.settings.worker_port}"
            self.worker_port = add_port(self.server, own, self.settings.tls)
        if self.settings.metrics_port is not None:
            self.metrics_endpoint = serve_metrics(
                self.metrics.registry,
                self.settings.metrics_port,
                self.settings.metrics_host or self.settings.host,
            )
        for pool in self.router.pools.values():
            await pool.discover()  # DNS backends: the addresses they stand for now
            for replica in pool.replicas:
                self._health(replica)
            pool.start()
        await self._first_health()
        self.mirror.start()
        await self.server.start()
        if self.follower is not None:
            self.follower.start()
        if self.controller is not None and self.analyzer is not None:
            await self.controller.resume_after_restart()
            self.controller.start_loop()
            self._drift = Periodic(
                "online error", self.settings.drift_interval, self._online_error_step
            )
            self._drift.start()
            cs = self.settings.controller
            assert cs is not None
            if cs.otlp_port is not None:
                self.otlp_server, self.otlp_port = await serve_otlp_receiver(
                    self.analyzer,
                    self.settings.host,
                    cs.otlp_port,
                    tls=cs.otlp_tls,
                    max_message_bytes=cs.otlp_max_message_bytes,
                )
        await set_serving(self.health, SERVICE, True)
        policy = self.router.policy
        log.info(
            "serving" if self.settings.worker_port is None else "worker serving",
            port=self.port,
            worker_port=self.worker_port,
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
        await asyncio.sleep(self.settings.drain_delay)
        await self.server.stop(self.settings.grace if grace is None else grace)
        await self.mirror.drain(1.0)
        if self.follower is not None:
            await self.follower.stop()
        if self._drift is not None:
            await self._drift.stop()
        if self.controller is not None:
            await self.controller.stop()
            self.controller.store.close()
        if self.otlp_server is not None:
            await self.otlp_server.stop(1)
        for pool in self.router.pools.values():
            await pool.close()
        if self.router.observations is not None:
            await asyncio.to_thread(self.router.observations.close)
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


#: Gauges of a router worker that the pod's scrape shows as the largest, not the sum: the
#: weight every worker follows, and whether a backend serves (as any worker sees it).
ROUTER_MAX_GAUGES = frozenset(
    {"canarycast_router_canary_weight", "canarycast_router_backend_serving"}
)


def worker_observations(path: Path | None, index: int) -> Path | None:
    """Worker i's observation store: worker 0 the path given, worker i > 0 `STEM.wI.db`
    beside it (SQLite has one writer at a time; a folder of stores is what drift and
    retraining read)."""
    if path is None or index == 0:
        return path
    return path.with_name(f"{path.stem}.w{index}{path.suffix or '.db'}")


def run_workers(
    settings: RouterSettings,
    workers: int,
    *,
    worker_port_base: int | None = None,
    setup: Callable[[], trace.TracerProvider | None] = lambda: None,
) -> int:
    """`canarycast route --workers N` (N > 1): N router processes forked before any gRPC
    object, each on the shared port (SO_REUSEPORT: clients' connections spread over them)
    and a port of its own, each following the controller (`--follow`) and sending its spans
    to the one analyzer over OTLP; the parent serves their merged metrics. The embedded
    controller is one process: it refuses N > 1."""
    if settings.controller is not None:
        raise ValueError(
            f"--workers {workers}: the embedded controller (--registry, --model) runs in one "
            "process; run it with --workers 1, and routers that --follow it with --workers N"
        )
    ports = worker_ports(workers, settings.port, worker_port_base)
    reserved = reserve_port(settings.host, settings.port)
    shared = int(reserved.getsockname()[1])

    def worker(link: WorkerLink) -> int:
        provider = setup()
        worker_settings = replace(
            settings,
            port=shared,
            worker_port=ports[link.index],
            metrics_port=0 if settings.metrics_port is not None else None,
            metrics_host="127.0.0.1",
            observations=worker_observations(settings.observations, link.index),
        )

        async def serve() -> None:  # on the loop: grpc.aio objects belong to one
            router = RouterServer(worker_settings, tracer_provider=provider)
            await run_worker(router, link, lambda: _worker_info(router))

        try:
            asyncio.run(serve())
            return 0
        except (ValueError, OSError) as exc:
            print(f"canarycast route: worker {link.index}: {exc}", file=sys.stderr)
            return 1
        finally:
            flush_spans(provider)

    def ready(infos: list[dict[str, Any]]) -> Callable[[], None] | None:
        endpoint = serve_pod_metrics(
            infos,
            prefix="canarycast_router",
            max_gauges=ROUTER_MAX_GAUGES,
            port=settings.metrics_port,
            host=settings.host,
        )
        log.info(
            "serving",
            port=shared,
            metrics_port=endpoint.port if endpoint else None,
            worker_ports=[i["port"] for i in infos],
            workers=infos,
            stable=list(settings.stable),
            canary=list(settings.canary),
        )
        return endpoint.close if endpoint else None

    try:
        return Supervisor(
            workers, worker, ready, stop_timeout=settings.drain_delay + settings.grace + 10.0
        ).run()
    finally:
        reserved.close()


def _worker_info(router: RouterServer) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "port": router.worker_port,
        "metrics_port": router.metrics_endpoint.port if router.metrics_endpoint else None,
    }
