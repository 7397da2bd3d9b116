"""`RolloutControl` gRPC service over the controller, behind an admin-token check.

`AdminAuth` guards only the RolloutControl methods: a request without
`authorization: Bearer <token>`, or with a token it does not know (compared in
constant time), is refused with UNAUTHENTICATED; the Forecast path is
untouched. The admin token may call everything; the optional viewer token may
only read (`READ_METHODS`: GetStatus, WatchStatus, ListHistory) and gets
PERMISSION_DENIED on anything that steers. With no token configured, the
control API refuses every call rather than run open. Tokens are never logged.
The refusals are domain errors (`Unauthenticated`, `PermissionDenied`) that the
shared interceptor (`canarycast.interceptors`) maps to status codes, as it maps
every other; `make_server` runs the guards inside it.
The tokens themselves (`Token`, which follows its file so that a rotated Secret takes
effect within a second, and the loaders) live in `canarycast.tokens`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any

import grpc
import numpy as np
import structlog
from google.protobuf.timestamp_pb2 import Timestamp

from canarycast.errors import CanarycastError, PermissionDenied, Unauthenticated
from canarycast.headers import metadata_value
from canarycast.tokens import (  # noqa: F401  (re-exported: cli.py and router.app import them here)
    CANARYCAST_ADMIN_TOKEN,
    CANARYCAST_VIEWER_TOKEN,
    Token,
    TokenLike,
    as_token,
    load_admin_token,
    load_viewer_token,
)
from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from router.rollout.analysis import AnalyzerStats
from router.rollout.controller import Controller, Phase, Status
from router.rollout.judge import CANARY_SCORE, STABLE_SCORE
from router.rollout.store import DecisionRow, RolloutRecord

log = structlog.get_logger("canarycast.router.control")
CONTROL_SERVICE = rpb.DESCRIPTOR.services_by_name["RolloutControl"].full_name
#: What the viewer token may call: reading, never steering.
READ_METHODS = frozenset(
    f"/{CONTROL_SERVICE}/{m}" for m in ("GetStatus", "WatchStatus", "ListHistory")
)

PHASES = {
    Phase.IDLE: rpb.IDLE,
    Phase.PROGRESSING: rpb.PROGRESSING,
    Phase.PAUSED: rpb.PAUSED,
    Phase.PROMOTED: rpb.PROMOTED,
    Phase.ROLLED_BACK: rpb.ROLLED_BACK,
}


class AdminAuth(grpc.aio.ServerInterceptor):
    def __init__(self, token: TokenLike, viewer_token: TokenLike = None) -> None:
        self._token, self._viewer = as_token(token), as_token(viewer_token)
        admin, viewer = self._tokens()
        if admin and viewer and hmac.compare_digest(admin, viewer):
            raise ValueError("the viewer token must differ from the admin token")

    def _tokens(self) -> tuple[bytes | None, bytes | None]:
        return (
            self._token.current().encode() if self._token is not None else None,
            self._viewer.current().encode() if self._viewer is not None else None,
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if not details.method.startswith(f"/{CONTROL_SERVICE}/") or handler is None:
            return handler
        refusal = self._check(
            metadata_value(details.invocation_metadata, "authorization"), details.method
        )
        if refusal is None:
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            raise refusal

        if handler.unary_stream is not None:

            async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                raise refusal
                yield  # pragma: no cover  (makes this an async generator)

            # No request deserializer: a refused call's bytes are never decoded, so even
            # undecodable ones get UNAUTHENTICATED / PERMISSION_DENIED, not INVALID_ARGUMENT.
            return grpc.unary_stream_rpc_method_handler(
                refuse_stream, response_serializer=handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(
            refuse, response_serializer=handler.response_serializer
        )

    def _check(self, header: str | None, method: str) -> CanarycastError | None:
        """None when the call may go on, else the refusal and why (never the token)."""
        admin, viewer = self._tokens()
        if admin is None and viewer is None:
            return Unauthenticated(
                "the control API is disabled: no admin token is configured on the router"
            )
        if header is None:
            return Unauthenticated("missing authorization metadata (expected 'Bearer <token>')")
        scheme, _, token = header.partition(" ")
        presented = token.strip().encode()
        # Both comparisons always run, in constant time: the answer's timing tells nothing.
        is_admin = admin is not None and hmac.compare_digest(presented, admin)
        # A rotation that made both tokens equal gives that token the viewer's rights only.
        is_viewer = viewer is not None and hmac.compare_digest(presented, viewer)
        is_admin = is_admin and not is_viewer
        if scheme.lower() != "bearer" or not (is_admin or is_viewer):
            return Unauthenticated("invalid token")
        if is_admin or method in READ_METHODS:
            return None
        return PermissionDenied(
            "the viewer token may only read "
            f"({', '.join(sorted(m.rpartition('/')[2] for m in READ_METHODS))}); "
            f"{method.rpartition('/')[2]} needs the admin token"
        )


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.fromtimestamp(seconds, dt.UTC))
    return ts


def _decision(row: DecisionRow | None) -> rpb.DecisionRecord | None:
    if row is None:
        return None
    return rpb.DecisionRecord(
        at=_timestamp(row.at),
        action=row.action,
        reason=row.reason,
        actor=row.actor,
        weight=row.weight,
    )


def record_to_proto(record: RolloutRecord | None, steps: tuple[float, ...]) -> rpb.RolloutStatus:
    if record is None:
        return rpb.RolloutStatus(phase=rpb.IDLE, steps=list(steps))
    status = rpb.RolloutStatus(
        rollout_id=record.rollout_id,
        phase=PHASES[Phase(record.phase)],
        model=record.model,
        stable_version=record.stable_version,
        candidate_version=record.candidate_version,
        step=record.step + 1,
        steps=list(steps),
        canary_weight=record.weight,
        outcome_reason=record.outcome_reason,
        started_at=_timestamp(record.started_at),
    )
    if record.ended_at is not None:
        status.ended_at.CopyFrom(_timestamp(record.ended_at))
    stored = json.loads(record.judgement or "{}")
    if stored:
        status.judgement.CopyFrom(_judgement(stored))
    return status


def _judgement(j: dict[str, Any]) -> rpb.Judgement:
    out = rpb.Judgement(
        verdict=str(j.get("verdict", "")),
        reason=str(j.get("reason", "")),
        method=str(j.get("method", "")),
        weaker=bool(j.get("weaker", False)),
        samples=int(j.get("samples") or 0),
        guardrail=str(j.get("guardrail") or ""),
        pairs=int(j.get("pairs") or 0),
    )
    _ratio_into(out, j)
    for m in j.get("metrics") or ():
        metric = rpb.MetricJudgement(
            metric=str(m.get("metric", "")),
            verdict=str(m.get("verdict", "")),
            units=int(m.get("units") or 0),
            pairs=int(m.get("pairs") or 0),
            block_horizons=float(m.get("block_horizons") or 0.0),
            note=str(m.get("note") or ""),
        )
        _ratio_into(metric, m)
        out.metrics.append(metric)
    return out


def _ratio_into(out: rpb.Judgement | rpb.MetricJudgement, j: dict[str, Any]) -> None:
    """Ratio and bounds of a stored judgement (or one metric's), when it has a ratio."""
    if j.get("ratio") is not None:
        out.has_ratio = True
        out.ratio = float(j["ratio"])
        out.lower = float(j["lower"]) if j.get("lower") is not None else 0.0
        out.upper = float(j["upper"]) if j.get("upper") is not None else float("inf")


def status_to_proto(status: Status) -> rpb.RolloutStatus:
    out = record_to_proto(status.record, status.steps)
    out.seconds_in_step = status.seconds_in_step
    if status.judgement is not None:
        out.judgement.CopyFrom(_judgement(asdict(status.judgement)))
    decision = _decision(status.last_decision)
    if decision is not None:
        out.last_decision.CopyFrom(decision)
    if status.evidence is not None:
        e = status.evidence
        steps = e.steps
        paired = e.pairs > 0
        for variant, stats, series, column in (
            ("stable", e.stable, e.stable_series, STABLE_SCORE),
            ("canary", e.canary, e.canary_series, CANARY_SCORE),
        ):
            # paired: the mean over paired steps; else the mean of per-series means
            if paired:
                scored, mean = e.pairs, float(steps[:, column].sum()) / e.pairs
            else:
                scored = len(series)
                mean = float(np.mean(series)) if len(series) else 0.0
            getattr(out, variant).CopyFrom(
                rpb.VariantSamples(
                    calls=stats.calls,
                    errors=stats.errors,
                    p99_latency_seconds=stats.p99_latency or 0.0,
                    scored_forecasts=scored,
                    mean_scaled_error=mean,
                )
            )
    return out


def sample_to_proto(fraction: float, stats: AnalyzerStats) -> rpb.AnalysisSample:
    return rpb.AnalysisSample(
        fraction=fraction,
        answered_calls=stats.answered_calls,
        recorded_calls=stats.recorded_calls,
        share=stats.sampled_share or 0.0,
    )


class RolloutControlServicer(rpb_grpc.RolloutControlServicer):
    def __init__(
        self,
        controller: Controller,
        sample: Callable[[], tuple[float, AnalyzerStats]] | None = None,
    ) -> None:
        self.controller = controller
        #: The configured analysis fraction and the analyzer's counts, for the status.
        self.sample = sample

    def _status(self) -> rpb.RolloutStatus:
        out = status_to_proto(self.controller.status())
        if self.sample is not None:
            out.sample.CopyFrom(sample_to_proto(*self.sample()))
        return out

    async def StartRollout(
        self, request: rpb.StartRolloutRequest, context: Any
    ) -> rpb.RolloutStatus:
        await self.controller.start(request.candidate, request.actor)
        return self._status()

    async def GetStatus(self, request: rpb.GetStatusRequest, context: Any) -> rpb.RolloutStatus:
        return self._status()

    async def WatchStatus(
        self, request: rpb.GetStatusRequest, context: Any
    ) -> AsyncIterator[rpb.RolloutStatus]:
        while True:
            yield self._status()
            await self.controller.wait_for_change()

    async def Promote(self, request: rpb.PromoteRequest, context: Any) -> rpb.RolloutStatus:
        await self.controller.promote(request.full, request.actor)
        return self._status()

    async def Rollback(self, request: rpb.RollbackRequest, context: Any) -> rpb.RolloutStatus:
        await self.controller.rollback(request.reason, request.actor)
        return self._status()

    async def Pause(self, request: rpb.PauseRequest, context: Any) -> rpb.RolloutStatus:
        await self.controller.pause(request.actor)
        return self._status()

    async def Resume(self, request: rpb.ResumeRequest, context: Any) -> rpb.RolloutStatus:
        await self.controller.resume(request.actor)
        return self._status()

    async def SetWeight(self, request: rpb.SetWeightRequest, context: Any) -> rpb.RolloutStatus:
        await self.controller.set_weight(request.weight, request.actor)
        return self._status()

    async def ListHistory(
        self, request: rpb.ListHistoryRequest, context: Any
    ) -> rpb.ListHistoryResponse:
        limit = request.limit or 20
        return rpb.ListHistoryResponse(
            rollouts=[
                record_to_proto(r, self.controller.policy.steps)
                for r in self.controller.history(limit)
            ]
        )
