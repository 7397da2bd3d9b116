"""Prometheus metrics of a model server (beside the per-call ones of `RpcMetrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from canarycast.interceptors import RpcMetrics
from server.serving.batching import BatchStats

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics(self.registry, "canarycast_server")
        self.batch_size = Histogram(
            "canarycast_server_batch_size",
            "Series computed in one forward pass.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_calls = Histogram(
            "canarycast_server_batch_calls",
            "Calls merged into one forward pass.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.forward_seconds = Histogram(
            "canarycast_server_forward_seconds",
            "Time of one batched forward pass.",
            registry=self.registry,
        )
        self.dropped = Counter(
            "canarycast_server_dropped_calls",
            "Queued calls dropped before their forward pass: deadline passed, or caller gone.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "canarycast_server_queue_depth",
            "Series waiting for a forward pass.",
            registry=self.registry,
        )
        self.forecasts = Counter(
            "canarycast_server_forecasts",
            "Series forecast.",
            registry=self.registry,
        )
        self.observed_points = Counter(
            "canarycast_server_observed_points",
            "Observed values accepted by Observe.",
            registry=self.registry,
        )
        self.model = Info(
            "canarycast_server_model",
            "The model version being served.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "canarycast_server_model_reloads",
            "Attempts to load a new model version, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.reload_failing = Gauge(
            "canarycast_server_model_reload_failing",
            "1 while the last attempt to load a new version failed (the old one still serves).",
            registry=self.registry,
        )

    def record_batch(self, stats: BatchStats) -> None:
        if stats.calls:
            self.batch_size.observe(stats.batch_size)
            self.batch_calls.observe(stats.calls)
            self.forward_seconds.observe(stats.compute_seconds)
        if stats.expired:
            self.dropped.labels("deadline").inc(stats.expired)
        if stats.cancelled:
            self.dropped.labels("cancelled").inc(stats.cancelled)
