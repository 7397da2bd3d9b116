"""A model server process: gRPC `Forecaster` + health + reflection + metrics.

Load, then serve: the port opens at once with health NOT_SERVING (so probes
and routers see a live process that is not ready), the model is loaded and
warmed up, and only then does health turn SERVING. On stop, health turns
NOT_SERVING first, the server stops taking calls and drains the ones in
flight for up to `grace` seconds, and the batcher finishes what it queued.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from opentelemetry import trace

from canarycast.grpc_server import (
    FORECASTER,
    RateLimit,
    add_health_and_reflection,
    add_port,
    make_server,
    run_until_signalled,
    set_serving,
)
from canarycast.telemetry import MetricsEndpoint, serve_metrics
from canarycast.tls import ServerTLS
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.validation import Limits
from canarycast.workers import (
    Supervisor,
    WorkerLink,
    default_workers,
    flush_spans,
    reserve_port,
    serve_pod_metrics,
    worker_ports,
)
from server.lifecycle.registry import ModelRef, Registry, RegistryError
from server.serving.batching import DynamicBatcher
from server.serving.forecasting import Forecaster
from server.serving.loader import LoadedModel, ModelWatcher, run_forward
from server.serving.metrics import ServerMetrics
from server.serving.servicer import ForecasterServicer

log = structlog.get_logger("canarycast.server")

SERVICE_NAME = FORECASTER


@dataclass(frozen=True)
class ServerSettings:
    """Everything `canarycast serve` can set (flags; see `canarycast serve --help`)."""

    registry: Path
    model: str  # NAME@ALIAS or NAME:VERSION
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    metrics_port: int | None = None  # None: no /metrics endpoint; 0: a free port
    variant: str | None = None  # default: the alias of `model`, if any
    max_batch_size: int = 256
    max_queue_delay: float = 0.002
    max_queue_size: int = 8192
    reload_interval: float = 1.0
    grace: float = 10.0
    #: NOT_SERVING this long before the port stops taking calls, so that routers and
    #: health-checking clients stop sending first (grpc answers calls that race the
    #: stop with CANCELLED); see docs/reliability.md
    drain_delay: float = 0.0
    max_concurrent_rpcs: int | None = None
    limits: Limits = field(default_factory=Limits)
    tls: ServerTLS | None = None  # TLS (and mTLS with a client CA) on the gRPC port
    rate_limit: RateLimit | None = None  # token bucket on Forecast/Observe; None: off
    #: A worker of `--workers N` (see canarycast/workers.py) also listens on a port of its
    #: own, which routers dial as one replica (0: a free one); None: one port only.
    worker_port: int | None = None
    metrics_host: str | None = None  # where /metrics listens (default: `host`)
    #: Intra-op torch threads of the forward passes (None: torch's default, one per core).
    #: Set in the batcher's own thread: with OpenMP the count is per calling thread.
    torch_threads: int | None = None


def forward_with_threads(threads: int | None) -> Callable[[object, np.ndarray], np.ndarray]:
    """`run_forward`, with `torch.set_num_threads(threads)` once in each thread that runs it.
    torch's OpenMP thread count belongs to the calling thread: set in a worker's main thread
    it left the batcher's thread at one thread per core, and two workers on two cores then
    ran four spinning threads (one worker's port at concurrency 8: p99 2.3 s, 23 ms once set
    here)."""
    if threads is None:
        return run_forward
    done = threading.local()

    def forward(model: object, windows: np.ndarray) -> np.ndarray:
        if not getattr(done, "set", False):
            import torch

            torch.set_num_threads(threads)
            done.set = True
        return run_forward(model, windows)

    return forward


class ModelServer:
    def __init__(
        self,
        settings: ServerSettings,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.ref = ModelRef.parse(settings.model)
        self.metrics = metrics or ServerMetrics()
        tracer = trace.get_tracer("canarycast.server", tracer_provider=tracer_provider)
        self.watcher = ModelWatcher(
            Registry(settings.registry),
            self.ref,
            poll_interval=settings.reload_interval,
            on_change=self._model_changed,
        )
        self.batcher = DynamicBatcher(
            forward_with_threads(settings.torch_threads),
            max_batch_size=settings.max_batch_size,
            max_queue_delay=settings.max_queue_delay,
            max_queue_size=settings.max_queue_size,
            on_batch=self.metrics.record_batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue_depth)
        variant = settings.variant if settings.variant is not None else (self.ref.alias or "")
        self.forecaster = Forecaster(
            self.watcher,
            self.batcher,
            limits=settings.limits,
            variant=variant,
            metrics=self.metrics,
            tracer=tracer,
        )
        self.server = make_server(
            tracer,
            self.metrics.rpc,
            settings.limits.max_message_bytes,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            rate_limit=settings.rate_limit,
        )
        pb_grpc.add_ForecasterServicer_to_server(ForecasterServicer(self.forecaster), self.server)
        self.health = add_health_and_reflection(self.server, SERVICE_NAME)
        self.port = 0
        self.worker_port: int | None = None
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._stopped = False

    async def start(self) -> int:
        """Open the port (NOT_SERVING), load the model, then turn SERVING. Returns the port."""
        await self.open()
        await self.load()
        return self.port

    async def open(self) -> int:
        """Listen, with health NOT_SERVING and Forecast UNAVAILABLE until `load`."""
        await set_serving(self.health, SERVICE_NAME, False)
        host = self.settings.host
        self.port = add_port(self.server, f"{host}:{self.settings.port}", self.settings.tls)
        if self.settings.worker_port is not None:
            self.worker_port = add_port(
                self.server, f"{host}:{self.settings.worker_port}", self.settings.tls
            )
        if self.settings.metrics_port is not None:
            self.metrics_endpoint = serve_metrics(
                self.metrics.registry,
                self.settings.metrics_port,
                self.settings.metrics_host or host,
            )
        await self.server.start()
        self.batcher.start()
        log.info("listening", port=self.port, worker_port=self.worker_port, model=str(self.ref))
        return self.port

    async def load(self, *, serve: bool = True) -> None:
        """Load and warm up the model, follow its alias, then turn SERVING (`serve=False`:
        a worker waits for the others, then calls `serve`)."""
        await self.watcher.load_initial()
        self.watcher.start_watching()
        if serve:
            await self.serve("serving")

    async def serve(self, event: str = "worker serving") -> None:
        """Health SERVING; log `event` with the ports and the model."""
        await set_serving(self.health, SERVICE_NAME, True)
        log.info(
            event,
            port=self.port,
            worker_port=self.worker_port,
            metrics_port=self.metrics_endpoint.port if self.metrics_endpoint else None,
            model=self.forecaster.model().name,
            version=self.forecaster.model().version_id,
        )

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, stop accepting, drain in-flight calls, release everything."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(self.settings.drain_delay)
        log.info("draining", grace=self.settings.grace if grace is None else grace)
        await self.server.stop(self.settings.grace if grace is None else grace)
        await self.batcher.stop()
        await self.watcher.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
        log.info("stopped")

    def _model_changed(
        self, old: LoadedModel | None, new: LoadedModel | None, error: str | None
    ) -> None:
        if new is not None:
            self.metrics.model.info(
                {"name": new.name, "version": new.version_id, "variant": self.forecaster.variant}
            )
            self.metrics.reload_failing.set(0)
            if old is not None:
                self.metrics.reloads.labels("success").inc()
        elif error is not None:
            self.metrics.reloads.labels("failure").inc()
            self.metrics.reload_failing.set(1)


async def run(settings: ServerSettings) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return the exit code (0)."""
    return await run_until_signalled(ModelServer(settings))


#: Gauges of a worker that the pod's scrape shows as the largest, not the sum.
MAX_GAUGES = frozenset({"canarycast_server_model_reload_failing"})


def torch_threads(workers: int, cores: int | None = None) -> int:
    """Intra-op torch threads of one of `workers` workers: the cores shared out, at least
    one (2 workers on 2 cores: 1 each; without it each worker would start a thread per core
    and they would fight over the same cores)."""
    return max(1, (cores if cores is not None else default_workers()) // workers)


def run_workers(
    settings: ServerSettings,
    workers: int,
    *,
    worker_port_base: int | None = None,
    setup: Callable[[], object] = lambda: None,
    error_prefix: str = "canarycast serve",
) -> int:
    """`canarycast serve --workers N` (N > 1): fork N workers, each a whole `ModelServer`
    (its own batcher, model watcher and torch threads) on the shared port and a port of its
    own; the parent serves their merged metrics on `settings.metrics_port`. Returns the exit
    code: 0 after SIGTERM/SIGINT and a clean drain of every worker, 1 if one failed.

    `setup` runs first in each worker (tracing: its exporter holds a gRPC channel, which
    must not exist before the fork)."""
    ports = worker_ports(workers, settings.port, worker_port_base)
    reserved = reserve_port(settings.host, settings.port)  # holds the shared port's number
    shared = int(reserved.getsockname()[1])
    threads = torch_threads(workers)

    def worker(link: WorkerLink) -> int:
        import torch

        torch.set_num_threads(threads)
        setup()
        worker_settings = replace(
            settings,
            port=shared,
            worker_port=ports[link.index],
            metrics_port=0 if settings.metrics_port is not None else None,
            metrics_host="127.0.0.1",
            torch_threads=threads,
        )
        try:
            return asyncio.run(_run_worker(worker_settings, link, threads))
        except (RegistryError, ValueError, OSError) as exc:
            print(f"{error_prefix}: worker {link.index}: {exc}", file=sys.stderr)
            return 1
        finally:
            flush_spans(trace.get_tracer_provider())

    def ready(infos: list[dict[str, Any]]) -> Callable[[], None] | None:
        endpoint = serve_pod_metrics(
            infos,
            prefix="canarycast_server",
            max_gauges=MAX_GAUGES,
            port=settings.metrics_port,
            host=settings.host,
        )
        log.info(
            "serving",
            port=shared,
            metrics_port=endpoint.port if endpoint else None,
            worker_ports=[i["port"] for i in infos],
            workers=infos,
            model=infos[0].get("model"),
            version=infos[0].get("version"),
        )
        return endpoint.close if endpoint else None

    try:
        return Supervisor(
            workers,
            worker,
            ready,
            stop_timeout=settings.drain_delay + settings.grace + 10.0,
        ).run()
    finally:
        reserved.close()


async def _run_worker(settings: ServerSettings, link: WorkerLink, threads: int) -> int:
    """One worker: open and load, report to the parent, SERVING on its go; drain on
    SIGTERM/SIGINT or when the parent is gone."""
    server = ModelServer(settings)  # on this loop: grpc.aio objects belong to one
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    go = asyncio.Event()
    link.watch(go.set, stop.set)
    try:
        await server.open()
        await server.load(serve=False)
        model = server.forecaster.model()
        link.report(
            {
                "pid": os.getpid(),
                "port": server.worker_port,
                "metrics_port": server.metrics_endpoint.port if server.metrics_endpoint else None,
                "torch_threads": threads,
                "model": model.name,
                "version": model.version_id,
            }
        )
        waiting = [asyncio.ensure_future(go.wait()), asyncio.ensure_future(stop.wait())]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        if not stop.is_set():
            await server.serve()
            await stop.wait()
    finally:
        await server.stop()
    return 0
