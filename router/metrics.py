"""Prometheus metrics of a router, per variant."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from canarycast.interceptors import LATENCY_BUCKETS, RpcMetrics


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.rpc = RpcMetrics(self.registry, "canarycast_router")
        self.routed = Counter(
            "canarycast_router_routed_calls",
            "Forecast calls answered through a backend, by variant, routing reason and code.",
            ["variant", "reason", "code"],
            registry=self.registry,
        )
        self.backend_latency = Histogram(
            "canarycast_router_backend_duration_seconds",
            "Time a backend took to answer a Forecast call, by variant.",
            ["variant"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.backend_failures = Counter(
            "canarycast_router_backend_failures",
            "Backend calls that failed, by variant and code (counted against that variant).",
            ["variant", "code"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "canarycast_router_failovers",
            "Calls retried on the other variant because the chosen one failed or was down.",
            ["from_variant"],
            registry=self.registry,
        )
        self.mirrored = Counter(
            "canarycast_router_mirror_calls",
            "Copies of calls sent off the request path (shadow, dual-run), by variant and code.",
            ["variant", "code"],
            registry=self.registry,
        )
        self.mirror_dropped = Counter(
            "canarycast_router_mirror_dropped",
            "Copies dropped because the mirror queue was full or no replica was serving.",
            ["variant"],
            registry=self.registry,
        )
        self.mirror_queue = Gauge(
            "canarycast_router_mirror_queue_depth",
            "Copies waiting to be sent.",
            registry=self.registry,
        )
        self.joined = Histogram(
            "canarycast_router_joined_calls",
            "Client calls per joined backend call (calls that wait for a busy variant).",
            buckets=(2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.joined_resent = Counter(
            "canarycast_router_joined_resent",
            "Joined calls the server refused for one caller's input, sent again call by call.",
            registry=self.registry,
        )
        self.mirror_batch = Histogram(
            "canarycast_router_mirror_batch",
            "Copies per mirror call (copies that wait are joined into one multi-series call).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "canarycast_router_canary_weight",
            "Fraction of calls the canary answers (0 in shadow mode).",
            registry=self.registry,
        )
        self.backend_serving = Gauge(
            "canarycast_router_backend_serving",
            "1 when a backend replica reports SERVING.",
            ["variant", "address"],
            registry=self.registry,
        )
        self.sampled_calls = Counter(
            "canarycast_router_sampled_calls",
            "Answered Forecast calls by whether they are in the analysis sample (yes: copied "
            "and recorded for the canary analysis; no: routed and counted only).",
            ["sampled"],
            registry=self.registry,
        )
        self.observed_points = Counter(
            "canarycast_router_observed_points",
            "Observed values accepted by Observe.",
            registry=self.registry,
        )


class RolloutMetrics:
    """The rollout as Prometheus sees it (the controller updates these)."""

    PHASES = ("idle", "progressing", "paused", "promoted", "rolled_back")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase = Gauge(
            "canarycast_rollout_phase",
            "1 for the phase the latest rollout is in.",
            ["phase"],
            registry=registry,
        )
        self.step = Gauge(
            "canarycast_rollout_step", "1-based step of the rollout in progress.", registry=registry
        )
        self.weight = Gauge(
            "canarycast_rollout_canary_weight",
            "Canary weight the controller set.",
            registry=registry,
        )
        self.samples = Gauge(
            "canarycast_rollout_samples",
            "Evidence of the current step: paired forecast steps (pairs), the effective units "
            "the judge counts (effective_units), calls per variant.",
            ["kind"],
            registry=registry,
        )
        self.ratio = Gauge(
            "canarycast_rollout_error_ratio",
            "Canary/stable mean scaled error of the current step, with its interval bounds.",
            ["bound"],
            registry=registry,
        )
        self.score_ratio = Gauge(
            "canarycast_rollout_score_ratio",
            "Canary/stable mean score of the current step per judged metric (point: scaled "
            "error of the median, interval: interval score), with its interval bounds.",
            ["metric", "bound"],
            registry=registry,
        )
        self.decisions = Counter(
            "canarycast_rollout_decisions",
            "Controller decisions by action (start, step, promote, rollback, pause, hold, ...).",
            ["action", "actor"],
            registry=registry,
        )
        self.set_phase("idle")

    def set_phase(self, phase: str) -> None:
        for name in self.PHASES:
            self.phase.labels(name).set(1 if name == phase else 0)


class DriftMetrics:
    """The stable model's online error from the analyzer (the controller sets it). The drift
    scores (`canarycast_drift_psi`, ...) come from the lifecycle's exporter,
    `canarycast drift --serve-metrics` (`server.lifecycle.drift.DriftGauges`): they need the
    model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.online_error = Gauge(
            "canarycast_drift_stable_online_error",
            "Stable model's mean scaled online error from the analyzer (last drift interval).",
            registry=registry,
        )
