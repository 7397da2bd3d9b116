"""The request path of a router: route, forward raw bytes, fail over, mirror, record.

`Router` knows nothing of the gRPC server it sits behind (`router.app` does the
wiring): it takes the bytes a client sent, decides where they go
(`router.routing.decide`), forwards them unchanged to a replica of that
variant, and returns the replica's bytes unchanged. It decodes the request
only for the routing key and the series' histories, and the answer only for
the model version and the forecasts; the per-forecast spans are written just
after the answer is returned, and the copy for the other variant (dual-run,
shadow) goes through a bounded queue off the request path.

Failover: when the chosen replica is unreachable (UNAVAILABLE) or no replica
of the chosen variant is SERVING, the call is retried once on the other
variant; Forecast is a pure function of its input, so this is always safe.
A call whose variant was forced by the caller's header is never failed over.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
import numpy as np
import structlog
from opentelemetry import propagate, trace

from canarycast import spans
from canarycast.errors import CanarycastError, FailedPrecondition, Unavailable
from canarycast.headers import VARIANT_HEADER, requested_variant
from canarycast.interceptors import decode_request
from canarycast.messages import NS_PER_S, observations_from_proto
from canarycast.v1 import forecast_pb2 as pb
from canarycast.validation import Limits, history_scale, validate_observations
from router.backends import BackendPool, Metadata, Replica
from router.metrics import RouterMetrics
from router.mirror import MirrorJob, MirrorQueue
from router.routing import CANARY, STABLE, Decision, Mode, Reason, RoutingPolicy, decide
from server.observations import ObservationStore, StoreError

log = structlog.get_logger("canarycast.router")


class PassThrough(CanarycastError):
    """A backend's error status, passed on to the client as it was."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.status_code = code  # type: ignore[misc]  # per instance: whatever the backend said


class Router:
    def __init__(
        self,
        stable: BackendPool,
        canary: BackendPool | None,
        policy: RoutingPolicy,
        *,
        mirror: MirrorQueue,
        metrics: RouterMetrics,
        tracer: trace.Tracer,
        limits: Limits | None = None,
        mirror_timeout: float = 5.0,
        rng: random.Random | None = None,
        observations: ObservationStore | None = None,
    ) -> None:
        self.pools: dict[str, BackendPool] = {STABLE: stable}
        if canary is not None:
            self.pools[CANARY] = canary
        self._policy = replace(policy, has_canary=canary is not None)
        self.mirror = mirror
        self.metrics = metrics
        self.tracer = tracer
        self.limits = limits or Limits()
        self.mirror_timeout = mirror_timeout
        self._rng = rng or random.Random()
        self.observations = observations  # durable store of accepted Observe points, if any
        metrics.canary_weight.set(self._policy.effective_weight)

    # -- the in-process control API (the controller of the canary analysis uses it) --

    @property
    def policy(self) -> RoutingPolicy:
        return self._policy

    def set_policy(self, policy: RoutingPolicy) -> None:
        """Swap the routing policy; calls already routed are not affected."""
        self._policy = replace(policy, has_canary=CANARY in self.pools)
        self.metrics.canary_weight.set(self._policy.effective_weight)
        log.info(
            "routing_policy",
            canary_weight=self._policy.canary_weight,
            mode=str(self._policy.mode),
            mirror_fraction=self._policy.mirror_fraction,
        )

    def set_weight(self, weight: float) -> None:
        self.set_policy(replace(self._policy, canary_weight=weight))

    def set_mode(self, mode: Mode | str) -> None:
        self.set_policy(replace(self._policy, mode=Mode(mode)))

    def describe_backends(self) -> str:
        return "; ".join(pool.describe() for pool in self.pools.values())

    # -- Forecaster --

    async def forecast(self, raw: bytes, metadata: Metadata, remaining: float | None) -> bytes:
        request = decode_request(pb.ForecastRequest.FromString, raw)
        forced = self._forced(metadata)
        key = request.series[0].series_id if request.series else None
        decision = decide(self._policy, key, forced, self._rng.random(), self._rng.random())
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        trace_md = list(carrier.items())
        deadline = None if remaining is None else time.monotonic() + remaining
        variant, replica, response = await self._call(
            "Forecast", raw, decision, forced is not None, trace_md, deadline
        )
        answer = pb.ForecastResponse.FromString(response)
        trace.get_current_span().set_attributes(
            {
                spans.VARIANT: variant,
                spans.BACKEND: replica.address,
                spans.MODEL_VERSION: answer.model.version,
                spans.ROUTING_REASON: str(
                    decision.reason if variant == decision.variant else Reason.FAILOVER
                ),
            }
        )
        call_id = secrets.token_hex(8)
        context = contextvars.copy_context()
        asyncio.get_running_loop().call_soon(
            self.record, request, answer, variant, call_id, False, context=context
        )
        if decision.mirror is not None and decision.mirror != variant:
            self._mirror(decision.mirror, raw, request, trace_md, call_id, context)
        return response

    async def get_model(self, raw: bytes, metadata: Metadata, remaining: float | None) -> bytes:
        forced = self._forced(metadata)
        decision = Decision(forced or STABLE, Reason.HEADER if forced else Reason.WEIGHT, None)
        deadline = None if remaining is None else time.monotonic() + remaining
        _, _, response = await self._call(
            "GetModel", raw, decision, forced is not None, [], deadline
        )
        return response

    async def observe(self, raw: bytes) -> bytes:
        """Validate and record observed values; no backend is needed, so none is lost.
        With an observation store, the points are committed to it before the answer."""
        request = decode_request(pb.ObserveRequest.FromString, raw)
        observations = observations_from_proto(request)
        total = validate_observations(observations, self.limits)
        if self.observations is not None:
            try:
                await self.observations.append_async(observations)
            except StoreError as exc:
                raise Unavailable(f"observations not stored: {exc}") from exc
        for o in observations:
            spans.record_observation(self.tracer, o.series_id, o.timestamps, o.values)
        self.metrics.observed_points.inc(total)
        return bytes(pb.ObserveResponse(accepted_points=total).SerializeToString())

    # -- internals --

    def _forced(self, metadata: Metadata) -> str | None:
        forced = requested_variant(metadata)
        if forced is not None and forced not in self.pools:
            raise FailedPrecondition(
                f"metadata {VARIANT_HEADER} asks for {forced!r}, but this router has no "
                f"{forced} backend"
            )
        return forced

    async def _call(
        self,
        method: str,
        raw: bytes,
        decision: Decision,
        forced: bool,
        trace_md: list[tuple[str, str]],
        deadline: float | None,
    ) -> tuple[str, Replica, bytes]:
        attempts = [decision.variant]
        if not forced and decision.other in self.pools:
            attempts.append(decision.other)
        for i, variant in enumerate(attempts):
            reason = decision.reason if i == 0 else Reason.FAILOVER
            last = i == len(attempts) - 1
            replica = self.pools[variant].pick()
            if replica is None:
                spans.record_failed_attempt(
                    self.tracer, variant, "", grpc.StatusCode.UNAVAILABLE.value[0], "none serving"
                )
                if not last:
                    self.metrics.failovers.labels(variant).inc()
                continue
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            metadata = [*trace_md, (VARIANT_HEADER, variant)]
            # Before the call: a failure must count against the variant that failed.
            trace.get_current_span().set_attributes(
                {spans.VARIANT: variant, spans.BACKEND: replica.address}
            )
            started = time.perf_counter()
            try:
                if method == "Forecast":
                    response = await replica.forecast(raw, remaining, metadata)
                else:
                    response = await replica.get_model(raw, remaining, metadata)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self.metrics.backend_failures.labels(variant, code.name).inc()
                if code == grpc.StatusCode.UNAVAILABLE:
                    replica.mark_down()
                    spans.record_failed_attempt(
                        self.tracer, variant, replica.address, code.value[0], "unreachable"
                    )
                    if not last:
                        self.metrics.failovers.labels(variant).inc()
                        log.warning("failover", variant=variant, backend=replica.address)
                        continue
                if method == "Forecast":
                    self.metrics.routed.labels(variant, str(reason), code.name).inc()
                raise PassThrough(code, exc.details() or code.name) from exc
            if method == "Forecast":
                self.metrics.backend_latency.labels(variant).observe(time.perf_counter() - started)
                self.metrics.routed.labels(variant, str(reason), "OK").inc()
            return variant, replica, response
        raise Unavailable(f"no backend is serving: {self.describe_backends()}")

    def _mirror(
        self,
        variant: str,
        raw: bytes,
        request: pb.ForecastRequest,
        trace_md: list[tuple[str, str]],
        call_id: str,
        context: contextvars.Context,
    ) -> None:
        async def run() -> None:
            replica = self.pools[variant].pick()
            if replica is None:
                self.metrics.mirror_dropped.labels(variant).inc()
                return
            try:
                response = await replica.forecast(
                    raw, self.mirror_timeout, [*trace_md, (VARIANT_HEADER, variant)]
                )
            except grpc.aio.AioRpcError as exc:
                self.metrics.mirrored.labels(variant, exc.code().name).inc()
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    replica.mark_down()
                return
            self.metrics.mirrored.labels(variant, "OK").inc()
            answer = pb.ForecastResponse.FromString(response)
            context.run(self.record, request, answer, variant, call_id, True)

        self.mirror.offer(MirrorJob(variant, run))
        self.metrics.mirror_queue.set(self.mirror.depth)

    def record(
        self,
        request: pb.ForecastRequest,
        answer: pb.ForecastResponse,
        variant: str,
        call_id: str,
        mirrored: bool,
    ) -> None:
        """One `forecast` span per series of an answer, for the canary analysis."""
        inputs = {s.series_id: s for s in request.series}
        for f in answer.forecasts:
            series = inputs.get(f.series_id)
            history = np.asarray(series.history if series else (), dtype=np.float64)
            targets = [t.seconds * NS_PER_S + t.nanos for t in f.timestamps]
            extra: dict[str, Any] = {spans.CALL_ID: call_id, spans.SHADOW: mirrored}
            if not mirrored and series is not None:
                extra.update(_recent_history(series, history, targets))
            spans.record_forecast(
                self.tracer,
                series_id=f.series_id,
                forecast_id=f.forecast_id,
                model_name=answer.model.name,
                model_version=answer.model.version,
                variant=variant,
                point=f.point,
                timestamps=targets,
                scale=history_scale(history),
                extra=extra,
                quantile_levels=[q.quantile for q in f.quantiles],
                quantiles=np.asarray([q.values for q in f.quantiles], dtype=np.float64),
            )


#: How many of the latest history values a forecast span carries as implicit actuals.
RECENT_HISTORY = 48


def _recent_history(
    series: pb.SeriesInput, history: np.ndarray, targets: Sequence[int]
) -> dict[str, Any]:
    """The last values of a history with their times, when those times are known exactly:
    a start was given and the answer's targets continue the history at a fixed step."""
    n = history.size
    if not series.HasField("start") or not targets or n == 0:
        return {}
    start = series.start.seconds * NS_PER_S + series.start.nanos
    step, remainder = divmod(targets[0] - start, n)
    fixed = len(targets) < 2 or targets[1] - targets[0] == step
    if step <= 0 or remainder or not fixed:
        return {}  # a calendar step (months): times are not evenly spaced
    k = min(n, RECENT_HISTORY)
    first = n - k
    return {
        spans.HISTORY_TIMESTAMPS: [start + (first + i) * step for i in range(k)],
        spans.HISTORY_VALUES: [float(v) for v in history[first:]],
    }
