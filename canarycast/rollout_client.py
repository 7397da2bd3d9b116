"""A typed client of `RolloutControl` and the human-readable rendering of a status."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from types import TracebackType

import grpc
from google.protobuf.json_format import MessageToDict

from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc

FINAL = (rpb.PROMOTED, rpb.ROLLED_BACK)


class RolloutClient:
    def __init__(
        self,
        target: str,
        token: str | None,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.channel = (
            grpc.secure_channel(target, credentials)
            if credentials is not None
            else grpc.insecure_channel(target)
        )
        self.stub = rpb_grpc.RolloutControlStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _call(self, method: str, request: object) -> rpb.RolloutStatus:
        rpc = getattr(self.stub, method)
        status: rpb.RolloutStatus = rpc(request, timeout=self.timeout, metadata=self.metadata)
        return status

    def start(self, candidate: str, actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("StartRollout", rpb.StartRolloutRequest(candidate=candidate, actor=actor))

    def status(self) -> rpb.RolloutStatus:
        return self._call("GetStatus", rpb.GetStatusRequest())

    def watch(self) -> Iterator[rpb.RolloutStatus]:
        yield from self.stub.WatchStatus(rpb.GetStatusRequest(), metadata=self.metadata)

    def promote(self, full: bool = False, actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("Promote", rpb.PromoteRequest(full=full, actor=actor))

    def rollback(self, reason: str = "", actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("Rollback", rpb.RollbackRequest(reason=reason, actor=actor))

    def pause(self, actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("Pause", rpb.PauseRequest(actor=actor))

    def resume(self, actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("Resume", rpb.ResumeRequest(actor=actor))

    def set_weight(self, weight: float, actor: str = "cli") -> rpb.RolloutStatus:
        return self._call("SetWeight", rpb.SetWeightRequest(weight=weight, actor=actor))

    def history(self, limit: int = 20) -> list[rpb.RolloutStatus]:
        response = self.stub.ListHistory(
            rpb.ListHistoryRequest(limit=limit), timeout=self.timeout, metadata=self.metadata
        )
        return list(response.rollouts)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RolloutClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def phase_name(phase: int) -> str:
    return rpb.Phase.Name(phase).lower()


def status_dict(status: rpb.RolloutStatus) -> dict[str, object]:
    """JSON-ready status for pipelines (`status --json`)."""
    data = MessageToDict(status, preserving_proto_field_name=True)
    data["phase"] = phase_name(status.phase)
    return data


def _ratio(j: rpb.Judgement | rpb.MetricJudgement) -> str:
    if not j.has_ratio:
        return "-"
    upper = "inf" if math.isinf(j.upper) else f"{j.upper:.3f}"
    return f"{j.ratio:.3f} [{j.lower:.3f}, {upper}]"


_LABELS = {"point": "error ratio", "interval": "interval ratio"}


def _samples(s: rpb.RolloutStatus) -> str:
    """Pairs and the effective units the judge counts ("pairs 1,240, effective units 62")."""
    j = s.judgement
    calls = (
        f"stable calls {s.stable.calls} (errors {s.stable.errors}), "
        f"canary calls {s.canary.calls} (errors {s.canary.errors})"
    )
    if j.method == "paired":
        return f"pairs {j.pairs:,}, effective units {j.samples:,}; {calls}"
    if j.method == "series":
        return f"no pairs, {j.samples} series on the smaller variant; {calls}"
    return f"pairs 0; {calls}"


def _ratios(j: rpb.Judgement, method: str) -> list[tuple[str, str]]:
    """One row per judged metric (the error ratio alone for a judgement without metrics)."""
    if not j.metrics:
        return [("error ratio", f"{_ratio(j)}  canary/stable, {method}")]
    rows = []
    for m in j.metrics:
        blocks = f", blocks of {m.block_horizons:g} horizons" if m.block_horizons else ""
        detail = f"{m.verdict}, {m.units:,} units{blocks}"
        if m.note:
            detail = m.note
        rows.append(
            (_LABELS.get(m.metric, m.metric), f"{_ratio(m)}  canary/stable, {method}: {detail}")
        )
    return rows


def _sample(s: rpb.RolloutStatus) -> list[tuple[str, str]]:
    """The analysis sample's row, when the controller reports one."""
    if not s.HasField("sample"):
        return []
    a = s.sample
    seen = (
        f"{a.share:.1%} of answered calls ({a.recorded_calls:,} of {a.answered_calls:,})"
        if a.answered_calls
        else "no calls yet"
    )
    return [("analysis sample", f"{a.fraction:g} of series; analysed {seen}")]


def format_status(s: rpb.RolloutStatus) -> str:
    """The readable table of `canarycast rollout status`."""
    if s.phase in (rpb.IDLE, rpb.PHASE_UNSPECIFIED):
        return "no rollout has run yet"
    j = s.judgement
    method = j.method or "-"
    if j.weaker:
        method += " (weaker: no pairs, series as the unit)"
    rows = [
        ("rollout", f"{s.rollout_id}  {s.model}: {s.stable_version} -> {s.candidate_version}"),
        ("phase", phase_name(s.phase)),
        ("step", f"{s.step}/{len(s.steps)}  ({', '.join(f'{w:g}' for w in s.steps)})"),
        ("canary weight", f"{s.canary_weight:g}"),
        ("time in step", f"{s.seconds_in_step:.0f} s"),
        ("samples", _samples(s)),
        *_sample(s),
        *_ratios(j, method),
        (
            "guardrails",
            f"breached: {j.guardrail}"
            if j.guardrail
            else f"ok (p99 stable {s.stable.p99_latency_seconds * 1e3:.1f} ms, "
            f"canary {s.canary.p99_latency_seconds * 1e3:.1f} ms)",
        ),
        ("judgement", f"{j.verdict or '-'}: {j.reason or '-'}"),
    ]
    if s.HasField("last_decision"):
        d = s.last_decision
        at = d.at.ToDatetime(dt.UTC).strftime("%H:%M:%S")
        rows.append(("last decision", f"{d.action} by {d.actor} at {at}: {d.reason}"))
    if s.outcome_reason:
        rows.append(("outcome", s.outcome_reason))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
