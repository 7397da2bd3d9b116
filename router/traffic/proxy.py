"""The request path of a router: route, forward raw bytes, fail over, mirror, record.

`Router` knows nothing of the gRPC server it sits behind (`router.app` does the
wiring): it takes the bytes a client sent, decides where they go
(`router.traffic.routing.decide`), forwards them unchanged to a replica of that
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
import collections
import contextlib
import contextvars
import random
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import grpc
import numpy as np
import structlog
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from canarycast import spans
from canarycast.errors import CanarycastError, FailedPrecondition, Unavailable
from canarycast.headers import VARIANT_HEADER, requested_variant
from canarycast.interceptors import decode_request
from canarycast.messages import NS_PER_S, observations_from_proto
from canarycast.v1 import forecast_pb2 as pb
from canarycast.validation import Limits, history_scales, validate_observations
from router.metrics import RouterMetrics
from router.traffic import wire
from router.traffic.backends import BackendPool, Metadata, Replica
from router.traffic.mirror import MirrorQueue, take_batch
from router.traffic.routing import (
    CANARY,
    STABLE,
    Decision,
    Mode,
    Reason,
    RoutingPolicy,
    decide,
    in_sample,
)
from server.lifecycle.observations import ObservationStore, StoreError

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
        mirror: MirrorQueue[Copy],
        metrics: RouterMetrics,
        tracer: trace.Tracer,
        limits: Limits | None = None,
        mirror_timeout: float = 5.0,
        rng: random.Random | None = None,
        observations: ObservationStore | None = None,
        join_after: int = 0,
        join_max: int = 64,
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
        # Joining (see `_joined`): calls in flight per serving replica before further calls
        # wait to be joined (0: never), and the most series a joined call carries.
        self.join_after = join_after
        self.join_max = join_max
        self._lanes = {variant: _Lane() for variant in self.pools}
        self._joins: set[asyncio.Task[None]] = set()
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
            analysis_fraction=self._policy.analysis_fraction,
        )

    def set_weight(self, weight: float) -> None:
        self.set_policy(replace(self._policy, canary_weight=weight))

    def set_mode(self, mode: Mode | str) -> None:
        self.set_policy(replace(self._policy, mode=Mode(mode)))

    def describe_backends(self) -> str:
        return "; ".join(pool.describe() for pool in self.pools.values())

    # -- Forecaster --

    async def forecast(self, raw: bytes, metadata: Metadata, remaining: float | None) -> bytes:
        """Route and forward; only the routing key is read from the request (decoding it
        and writing the forecast spans happen after the answer has left, in `record`)."""
        key = wire.first_series_id(raw)
        forced = self._forced(metadata)
        decision = decide(self._policy, key, forced, self._rng.random(), self._rng.random())
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        trace_md = list(carrier.items())
        deadline = None if remaining is None else time.monotonic() + remaining
        if self.join_after and forced is None:
            variant, replica, response, answer = await self._joined(
                raw, decision, trace_md, deadline
            )
        else:
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
        self.metrics.sampled_calls.labels("yes" if decision.sampled else "no").inc()
        if not decision.sampled:  # routed and counted only
            return response
        call_id = secrets.token_hex(8)
        context = contextvars.copy_context()
        asyncio.get_running_loop().call_soon(
            self._record_raw, raw, answer, variant, call_id, False, context=context
        )
        if decision.mirror is not None and decision.mirror != variant:
            self._mirror(decision.mirror, raw, trace_md, call_id, context)
        return response

    async def _joined(
        self,
        raw: bytes,
        decision: Decision,
        trace_md: list[tuple[str, str]],
        deadline: float | None,
    ) -> tuple[str, Replica, bytes, pb.ForecastResponse]:
        """Forward a call, joined with others when its variant is busy.

        While fewer than `join_after` calls per serving replica of the variant are in
        flight, the call goes alone, as it came. Beyond that it waits, and whenever a
        call in flight comes back the waiting calls leave together: those with the same
        options (horizon, quantiles) and routing reason whose series ids differ, up to
        `join_max` series, as one multi-series call (`take_batch`). Each caller gets the
        answer to its own series, as a call of its own would have: the model server's
        forecast of a series does not depend on the other series of its call or batch.
        Nothing waits to fill a batch, and a joined call that the server refuses for
        a reason of one call's own (a bad series) is sent again call by call, so each
        caller gets its own answer or error. The one server call saves the server and
        the router the work of a call per caller (under load, most of their cost).
        """
        lane = self._lanes[decision.variant]
        replicas = max(1, len(self.pools[decision.variant].replicas))
        if lane.in_flight < self.join_after * replicas:
            lane.in_flight += 1
            try:
                variant, replica, response = await self._call(
                    "Forecast", raw, decision, False, trace_md, deadline
                )
            finally:
                lane.in_flight -= 1
                self._flush(decision.variant)
            return variant, replica, response, pb.ForecastResponse.FromString(response)
        waiting = _Waiting(raw, decision, trace_md, deadline, asyncio.get_running_loop())
        waiting.split()  # a request that is not well-formed is refused here, not joined
        lane.waiting.append(waiting)
        try:
            return await waiting.future
        except CanarycastError:
            if waiting.attempt is not None:
                variant, address = waiting.attempt
                trace.get_current_span().set_attributes(
                    {spans.VARIANT: variant, spans.BACKEND: address}
                )
            raise
        finally:
            if waiting.joined is not None:  # the server call that carried this one
                trace.get_current_span().add_link(waiting.joined)

    def _flush(self, variant: str) -> None:
        """Send the waiting calls of `variant` while it has room for calls in flight."""
        lane = self._lanes[variant]
        limit = self.join_after * max(1, len(self.pools[variant].replicas))
        while lane.waiting and lane.in_flight < limit:
            batch = [w for w in take_batch(lane.waiting, self.join_max) if not w.future.done()]
            if not batch:
                continue
            lane.in_flight += 1
            # A context of its own: the spans of the callers are each set by their own call.
            task = asyncio.get_running_loop().create_task(
                self._send_joined(variant, batch), context=contextvars.Context()
            )
            self._joins.add(task)
            task.add_done_callback(self._joins.discard)

    async def _send_joined(self, variant: str, batch: list[_Waiting]) -> None:
        lane = self._lanes[variant]
        try:
            await self._send_batch(batch)
        finally:
            lane.in_flight -= 1
            self._flush(variant)

    async def _send_batch(self, batch: list[_Waiting]) -> None:
        first = batch[0]
        joined, trace_md = None, first.trace_md
        if len(batch) > 1:
            joined, trace_md = _joined_span(self.tracer, [w.trace_md for w in batch])
            for w in batch:
                w.joined = joined.get_span_context()

        def attempted(variant: str, address: str) -> None:
            for w in batch:
                w.attempt = (variant, address)
            if joined is not None:
                joined.set_attributes({spans.VARIANT: variant, spans.BACKEND: address})

        deadlines = [w.deadline for w in batch if w.deadline is not None]
        if len(batch) == 1:
            raw = first.raw
        else:
            raw = first.split()[2] + b"".join(s for w in batch for s in w.split()[0])
        try:
            with _current(joined):
                variant, replica, response = await self._call(
                    "Forecast",
                    raw,
                    first.decision,
                    False,
                    trace_md,
                    min(deadlines) if deadlines else None,
                    calls=len(batch),
                    on_attempt=attempted,
                )
        except PassThrough as exc:
            if len(batch) > 1 and exc.status_code not in _SHARED_FATE:
                self.metrics.joined_resent.inc()
                await asyncio.gather(*(self._send_batch([w]) for w in batch))
                return
            for w in batch:
                w.fail(PassThrough(exc.status_code, str(exc)))
            return
        except CanarycastError as exc:  # no replica serving: every caller's fate
            for w in batch:
                w.fail(exc)
            return
        except Exception as exc:  # each caller's interceptor answers INTERNAL
            log.exception("joined_call_failed", calls=len(batch))
            for w in batch:
                w.fail(exc)
            return
        answer = pb.ForecastResponse.FromString(response)
        if len(batch) == 1:
            first.succeed((variant, replica, response, answer))
            return
        forecasts = answer.forecasts
        if len(forecasts) != sum(w.size for w in batch):
            for w in batch:
                w.fail(Unavailable("a joined answer did not hold one forecast per series"))
            return
        self.metrics.joined.observe(len(batch))
        at = 0
        for w in batch:
            own = pb.ForecastResponse(model=answer.model, forecasts=forecasts[at : at + w.size])
            at += w.size
            w.succeed((variant, replica, own.SerializeToString(), own))

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
        fraction = self._policy.analysis_fraction
        analysed = [o for o in observations if in_sample(fraction, o.series_id)]
        if analysed:
            spans.record_observed(self.tracer, analysed)
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
        *,
        calls: int = 1,
        on_attempt: Callable[[str, str], None] | None = None,
    ) -> tuple[str, Replica, bytes]:
        """Send to a replica of the decided variant, failing over once (unless forced).
        `calls`: how many client calls the bytes carry (a joined call counts for each);
        `on_attempt(variant, address)` is told of each attempt (default: the attributes of
        the current span, so that a failure counts against the variant that failed)."""
        attempts = [decision.variant]
        if not forced and decision.other in self.pools:
            attempts.append(decision.other)
        for i, variant in enumerate(attempts):
            reason = decision.reason if i == 0 else Reason.FAILOVER
            last = i == len(attempts) - 1
            replica = self.pools[variant].pick()
            if replica is None:
                # One failed attempt per caller: the analyzer counts each as an error.
                for _ in range(calls):
                    spans.record_failed_attempt(
                        self.tracer,
                        variant,
                        "",
                        grpc.StatusCode.UNAVAILABLE.value[0],
                        "none serving",
                    )
                if not last:
                    self.metrics.failovers.labels(variant).inc(calls)
                continue
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            metadata = [*trace_md, (VARIANT_HEADER, variant)]
            # Before the call: a failure must count against the variant that failed.
            if on_attempt is not None:
                on_attempt(variant, replica.address)
            else:
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
                    for _ in range(calls):
                        spans.record_failed_attempt(
                            self.tracer, variant, replica.address, code.value[0], "unreachable"
                        )
                    if not last:
                        self.metrics.failovers.labels(variant).inc(calls)
                        log.warning("failover", variant=variant, backend=replica.address)
                        continue
                if method == "Forecast":
                    self.metrics.routed.labels(variant, str(reason), code.name).inc(calls)
                raise PassThrough(code, exc.details() or code.name) from exc
            if method == "Forecast":
                self.metrics.backend_latency.labels(variant).observe(time.perf_counter() - started)
                self.metrics.routed.labels(variant, str(reason), "OK").inc(calls)
            return variant, replica, response
        raise Unavailable(f"no backend is serving: {self.describe_backends()}")

    def _mirror(
        self,
        variant: str,
        raw: bytes,
        trace_md: list[tuple[str, str]],
        call_id: str,
        context: contextvars.Context,
    ) -> None:
        self.mirror.offer(Copy(variant, raw, trace_md, call_id, context))
        self.metrics.mirror_queue.set(self.mirror.depth)

    async def send_copies(self, batch: list[Copy]) -> None:
        """Send a batch of copies (`MirrorQueue.take`) to a replica of their variant as one
        call, and record each copy's forecasts under its own call id. A batch the replica
        refuses for any reason but UNAVAILABLE is sent again copy by copy, so that one
        copy's refusal does not lose the others'."""
        variant = batch[0].variant
        self.metrics.mirror_queue.set(self.mirror.depth)
        replica = self.pools[variant].pick()
        if replica is None:
            self.metrics.mirror_dropped.labels(variant).inc(len(batch))
            return
        self.metrics.mirror_batch.observe(len(batch))
        joined, trace_md = None, batch[0].trace_md
        if len(batch) == 1:
            raw = batch[0].raw
        else:
            raw = batch[0].split()[2] + b"".join(s for c in batch for s in c.split()[0])
            joined, trace_md = _joined_span(self.tracer, [c.trace_md for c in batch])
            joined.set_attributes(
                {spans.VARIANT: variant, spans.BACKEND: replica.address, spans.SHADOW: True}
            )
        try:
            with _current(joined):
                response = await replica.forecast(
                    raw, self.mirror_timeout, [*trace_md, (VARIANT_HEADER, variant)]
                )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE or len(batch) == 1:
                self.metrics.mirrored.labels(variant, exc.code().name).inc(len(batch))
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    replica.mark_down()
                return
            for copy in batch:
                await self.send_copies([copy])
            return
        self.metrics.mirrored.labels(variant, "OK").inc(len(batch))
        answer = pb.ForecastResponse.FromString(response)
        if len(batch) == 1:
            c = batch[0]
            c.context.run(self._record_raw, c.raw, answer, variant, c.call_id, True)
            return
        forecasts = answer.forecasts
        if len(forecasts) != sum(c.size for c in batch):
            log.warning("mirror_answer_mismatch", variant=variant, copies=len(batch))
            return
        at = 0
        for c in batch:
            part = pb.ForecastResponse(model=answer.model, forecasts=forecasts[at : at + c.size])
            at += c.size
            c.context.run(self._record_raw, c.raw, part, variant, c.call_id, True)

    def _record_raw(
        self, raw: bytes, answer: pb.ForecastResponse, variant: str, call_id: str, mirrored: bool
    ) -> None:
        """`record` from the request's bytes; off the answer's path, so it never raises."""
        try:
            request = pb.ForecastRequest.FromString(raw)
            fraction = self._policy.analysis_fraction
            self.record(request, answer, variant, call_id, mirrored, fraction)
        except Exception:  # a span that cannot be written must not fail a delivered call
            log.exception("forecast_record_failed", variant=variant, call_id=call_id)

    def record(
        self,
        request: pb.ForecastRequest,
        answer: pb.ForecastResponse,
        variant: str,
        call_id: str,
        mirrored: bool,
        fraction: float = 1.0,
    ) -> None:
        """The `forecast` spans of an answer (one per call, its series as arrays): of
        the call's series in the analysis sample of `fraction` (all of them at 1)."""
        forecasts: Sequence[pb.SeriesForecast] = answer.forecasts
        if fraction < 1.0:
            forecasts = [f for f in forecasts if in_sample(fraction, f.series_id)]
        k = len(forecasts)
        if not k:
            return
        h = len(forecasts[0].point)
        ids = [f.series_id for f in forecasts]
        points = np.array([f.point for f in forecasts], dtype=np.float64).reshape(k, h)
        counts = np.fromiter((len(f.timestamps) for f in forecasts), dtype=np.int64, count=k)
        timed = counts > 0
        if not np.isin(counts, (0, h)).all():
            raise ValueError("an answer's forecasts disagree on their number of timestamps")
        times = np.zeros((k, h), dtype=np.int64)
        if timed.any():
            flat = [t.seconds * NS_PER_S + t.nanos for f in forecasts for t in f.timestamps]
            times[timed] = np.array(flat, dtype=np.int64).reshape(-1, h)
        # Each answered series' history, by id (the answer keeps the request's order).
        position = {s.series_id: i for i, s in enumerate(request.series)}
        inputs = [request.series[position[x]] if x in position else None for x in ids]
        histories = [
            np.asarray(s.history if s is not None else (), dtype=np.float64) for s in inputs
        ]
        values = np.concatenate(histories)
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=k)
        levels = [q.quantile for q in forecasts[0].quantiles]
        quantiles = None
        if levels:
            quantiles = np.array(
                [[q.values for q in f.quantiles] for f in forecasts], dtype=np.float64
            ).reshape(k, len(levels), h)
        recent: dict[str, np.ndarray] = {}
        if not mirrored:
            recent = _recent_history(inputs, values, lengths, times, timed)
        spans.record_forecasts(
            self.tracer,
            series_ids=ids,
            forecast_ids=[f.forecast_id for f in forecasts],
            model_name=answer.model.name,
            model_version=answer.model.version,
            variant=variant,
            points=points,
            timestamps=times if timed.any() else None,
            timed=timed,
            scales=history_scales(values, lengths),
            extra={spans.CALL_ID: call_id, spans.SHADOW: mirrored},
            quantile_levels=levels,
            quantiles=quantiles,
            history_counts=recent.get("counts"),
            history_times=recent.get("times"),
            history_values=recent.get("values"),
        )


#: How many of the latest history values a forecast span carries as implicit actuals.
RECENT_HISTORY = 48


def _recent_history(
    inputs: Sequence[pb.SeriesInput | None],
    values: np.ndarray,
    lengths: np.ndarray,
    targets: np.ndarray,
    timed: np.ndarray,
) -> dict[str, np.ndarray]:
    """The last values of each history with their times, where those times are known
    exactly: a start was given and the answer's targets continue the history at a fixed
    step (a calendar step, months, is not evenly spaced: no times for that series)."""
    k, h = targets.shape
    starts = np.zeros(k, dtype=np.int64)
    has_start = np.zeros(k, dtype=bool)
    for i, s in enumerate(inputs):
        if s is not None and s.HasField("start"):
            has_start[i] = True
            starts[i] = s.start.seconds * NS_PER_S + s.start.nanos
    n = np.maximum(lengths, 1)
    step, remainder = np.divmod(targets[:, 0] - starts, n)
    fixed = targets[:, 1] - targets[:, 0] == step if h >= 2 else np.ones(k, dtype=bool)
    ok = has_start & timed & (lengths > 0) & (step > 0) & (remainder == 0) & fixed
    counts = np.where(ok, np.minimum(lengths, RECENT_HISTORY), 0)
    total = int(counts.sum())
    owner = np.repeat(np.arange(k), counts)
    # j-th recent value of a series: history index n - count + j
    j = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    index = lengths[owner] - counts[owner] + j
    ends = np.cumsum(lengths)
    return {
        "counts": counts,
        "times": starts[owner] + index * step[owner],
        "values": values[ends[owner] - lengths[owner] + index],
    }


@dataclass
class Copy:
    """A call's copy for the other variant (a `MirrorJob`): the request's bytes, the trace
    context of the call it copies and that call's id, under which its forecasts are
    recorded. Two copies may share a call when their options (horizon, quantiles) are the
    same bytes and their series ids differ; a request that cannot be split goes alone."""

    variant: str
    raw: bytes
    trace_md: list[tuple[str, str]]
    call_id: str
    context: contextvars.Context
    _split: tuple[list[bytes], list[str], bytes] | None = field(default=None, repr=False)

    def split(self) -> tuple[list[bytes], list[str], bytes]:
        """(series fields, series ids, other fields) of the request; ([raw], [], b"") when
        it cannot be split (then it is never batched)."""
        if self._split is None:
            try:
                self._split = wire.split_request(self.raw)
            except CanarycastError:
                self._split = ([self.raw], [], b"")
        return self._split

    def batch_key(self) -> tuple[str, bytes] | None:
        series, ids, rest = self.split()
        return (self.variant, rest) if len(ids) == len(series) else None

    def series_ids(self) -> frozenset[str]:
        return frozenset(self.split()[1])

    @property
    def size(self) -> int:
        return len(self.split()[0])


def _joined_span(
    tracer: trace.Tracer, trace_mds: Sequence[list[tuple[str, str]]]
) -> tuple[trace.Span, list[tuple[str, str]]]:
    """Start the span of one server call that carries several callers' calls (or copies),
    and the trace metadata that makes it the parent of the model server's span. It is in
    no caller's trace (a server call has one parent): it links to each caller's span."""
    links = []
    for md in trace_mds:
        caller = trace.get_current_span(propagate.extract(dict(md))).get_span_context()
        if caller.is_valid:
            links.append(trace.Link(caller))
    span = tracer.start_span(
        spans.JOINED_CALL_SPAN,
        context=otel_context.Context(),
        kind=trace.SpanKind.CLIENT,
        links=links,
        attributes={spans.JOINED_CALLS: len(trace_mds)},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return span, list(carrier.items())


@contextlib.contextmanager
def _current(span: trace.Span | None) -> Iterator[None]:
    """`span` (if any) as the current span, ended (with the error, if one is raised) on exit."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=True):
        yield


#: Refusals of a joined call that every caller in it would have had alone.
_SHARED_FATE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


class _Lane:
    """A variant's calls in flight and the calls waiting to be joined."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.waiting: collections.deque[_Waiting] = collections.deque()


class _Waiting:
    """A call waiting to be joined (a `MirrorJob` for `take_batch`)."""

    def __init__(
        self,
        raw: bytes,
        decision: Decision,
        trace_md: list[tuple[str, str]],
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.raw = raw
        self.decision = decision
        self.trace_md = trace_md
        self.deadline = deadline
        self.future: asyncio.Future[tuple[str, Replica, bytes, pb.ForecastResponse]] = (
            loop.create_future()
        )
        self.attempt: tuple[str, str] | None = None
        self.joined: trace.SpanContext | None = None  # the joined call that carried it
        self._split: tuple[list[bytes], list[str], bytes] | None = None

    @property
    def variant(self) -> str:
        return self.decision.variant

    def split(self) -> tuple[list[bytes], list[str], bytes]:
        if self._split is None:
            self._split = wire.split_request(self.raw)
        return self._split

    def batch_key(self) -> tuple[bytes, str]:
        return (self.split()[2], str(self.decision.reason))

    def series_ids(self) -> frozenset[str]:
        return frozenset(self.split()[1])

    @property
    def size(self) -> int:
        return len(self.split()[0])

    def succeed(self, result: tuple[str, Replica, bytes, pb.ForecastResponse]) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)
