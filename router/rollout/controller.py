"""The rollout controller: the state machine that moves a candidate from canary to
stable, step by step, on the judge's verdicts — or rolls it back.

Only the controller changes a rollout's phase. Each tick it asks the analyzer
for the evidence gathered since the step began, asks the (pure) judge for a
verdict, asks the (pure) `next_action` what the step does with it (stalls,
minimum time, budget), and carries that out: next step, promotion, rollback,
pause or hold. Manual commands
take effect at once and are recorded with their actor. Every transition is
persisted (`router.rollout.store`) before the next tick, so a restarted controller
resumes the same rollout at the same step and weight; the analysis samples
of the interrupted step are not kept, so the step restarts its clock and
nothing unearned is promoted.

Rollback order (as Flagger's): traffic to stable first, then the record, then
metrics and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, assert_never

import structlog

from canarycast.errors import CanarycastError, FailedPrecondition, InvalidArgument, NotFound
from canarycast.periodic import Periodic
from canarycast.variants import Variant
from router.metrics import RolloutMetrics
from router.rollout.judge import Evidence, Judgement, JudgePolicy, Verdict, judge
from router.rollout.store import DecisionRow, RolloutRecord, RolloutStore
from router.rollout.webhook import Webhook
from server.lifecycle.registry import CorruptAliasError, ModelRef, Registry, RegistryError

log = structlog.get_logger("canarycast.controller")


class Phase(StrEnum):
    IDLE = "idle"  #: no rollout has run yet
    PROGRESSING = "progressing"  #: stepping through the weights, judged automatically
    PAUSED = "paused"  #: weight held; no automatic decision until resumed
    PROMOTED = "promoted"  #: the candidate is the stable version now
    ROLLED_BACK = "rolled_back"  #: the candidate takes no traffic; the reason says why


ACTIVE = (Phase.PROGRESSING, Phase.PAUSED)


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout proceeds; `RolloutPolicy.from_file` reads the same fields from JSON."""

    steps: tuple[float, ...] = (0.05, 0.10, 0.25, 0.50, 1.0)
    min_step_seconds: float = 30.0  #: no promotion of a step before this
    max_step_seconds: float = 600.0  #: the step's budget for a conclusive verdict
    on_budget: str = "pause"  #: when the budget ends inconclusive: "pause" or "rollback"
    confirm_final_step: bool = False  #: a manual `promote` is needed before the last step
    webhook_url: str | None = None  #: POSTed every decision with its evidence
    stall_hold_seconds: float = 30.0  #: no spans for this long: hold the step
    stall_rollback_seconds: float = 300.0  #: no spans for this long: roll back
    promote_timeout: float = 30.0  #: wait this long for stable servers to serve the candidate
    tick_seconds: float = 1.0
    judge: JudgePolicy = field(default_factory=JudgePolicy)

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps or any(not 0 < s <= 1 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must be increasing weights in (0, 1], got {list(steps)}")
        if self.on_budget not in ("pause", "rollback"):
            raise ValueError(f"on_budget must be 'pause' or 'rollback', got {self.on_budget!r}")
        for name in ("min_step_seconds", "max_step_seconds", "tick_seconds", "promote_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_step_seconds < self.min_step_seconds:
            raise ValueError("max_step_seconds must be >= min_step_seconds")

    @classmethod
    def from_file(cls, path: str | Path) -> RolloutPolicy:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"rollout policy {path}: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"rollout policy {path}: unknown fields {sorted(unknown)}")
        if "judge" in data:
            data["judge"] = JudgePolicy(**data["judge"])
        return cls(**data)


# -- the step decision: pure, no I/O, no clock --


@dataclass(frozen=True)
class Hold:
    """Keep the step and its weight; a change of `kind` is recorded, a repeat only notified."""

    kind: str  #: "no-spans", "min-time", or the judge's verdict ("inconclusive")
    reason: str


@dataclass(frozen=True)
class Step:
    """Move to the policy's step `step` (0-based) at `weight`; the step's clock restarts."""

    step: int
    weight: float
    reason: str  #: as recorded: "step N: weight W (why)"


@dataclass(frozen=True)
class Promote:
    """The candidate becomes the stable version: the last step passed."""

    reason: str


@dataclass(frozen=True)
class Pause:
    """Hold the weight and judge nothing until resumed (or, awaiting confirmation, promoted)."""

    reason: str
    awaiting_confirmation: bool = False  #: a manual `promote` is wanted before the final step


@dataclass(frozen=True)
class Rollback:
    """The candidate takes no traffic; `reason` says why."""

    reason: str


#: What one tick of a progressing rollout does.
Action = Hold | Step | Promote | Pause | Rollback


def advance(
    policy: RolloutPolicy, rollout: RolloutRecord, reason: str, *, automatic: bool
) -> Step | Promote | Pause:
    """The step after `rollout`'s: the next weight, the promotion after the last step, or,
    when the policy asks for confirmation and the judge (`automatic`) would take the final
    step, a pause until a manual `promote`."""
    last = len(policy.steps) - 1
    if rollout.step >= last:
        return Promote(reason)
    step = rollout.step + 1
    if step == last and policy.confirm_final_step and automatic:
        return Pause(
            f"{reason}; waiting for a manual promote before the final step",
            awaiting_confirmation=True,
        )
    weight = policy.steps[step]
    return Step(step, weight, f"step {step + 1}: weight {weight:g} ({reason})")


def next_action(
    policy: RolloutPolicy,
    rollout: RolloutRecord,
    judgement: Judgement,
    now: float,
    last_span_at: float | None,
) -> Action:
    """What a progressing `rollout` does at `now` given the judge's `judgement` on its step.

    `last_span_at` is when the analyzer last received a span (None: not yet; the silence
    is then counted from the start of the step). In order: a long silence rolls back; a
    ROLLBACK verdict rolls back; a shorter silence holds; PROMOTE advances once the step
    has lasted `min_step_seconds` and holds before; an inconclusive step whose budget
    `max_step_seconds` ran out pauses or rolls back (`on_budget`); otherwise it holds.
    """
    in_step = now - rollout.step_started_at
    silent = now - (last_span_at if last_span_at is not None else rollout.step_started_at)
    verdict = judgement.verdict
    if silent >= policy.stall_rollback_seconds:
        return Rollback(f"the analyzer received no spans for {silent:.0f} s")
    if verdict is Verdict.ROLLBACK:
        return Rollback(judgement.reason)
    if silent >= policy.stall_hold_seconds:
        return Hold("no-spans", f"holding: the analyzer received no spans for {silent:.0f} s")
    if verdict is Verdict.PROMOTE and in_step >= policy.min_step_seconds:
        return advance(policy, rollout, judgement.reason, automatic=True)
    if verdict is Verdict.PROMOTE:
        return Hold(
            "min-time",
            f"holding: {judgement.reason}, but only {in_step:.0f} s of the "
            f"{policy.min_step_seconds:.0f} s minimum in this step",
        )
    if in_step >= policy.max_step_seconds:
        reason = f"step budget of {policy.max_step_seconds:.0f} s ran out: {judgement.reason}"
        return Rollback(reason) if policy.on_budget == "rollback" else Pause(reason)
    return Hold(str(verdict), f"holding: {judgement.reason}")


class Traffic(Protocol):
    """What the controller needs of the router: the canary weight."""

    def set_weight(self, weight: float) -> None: ...


class EvidenceSource(Protocol):
    """What the controller needs of the analyzer."""

    last_span_at: float | None

    def evidence(
        self,
        since: float,
        *,
        stable_version: str | None = None,
        canary_version: str | None = None,
    ) -> Evidence: ...


#: Asks the stable servers which version they serve (None: unknown).
StableProbe = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class DesiredCanaryAction:
    """What the controller does about the version a desired-canary file names."""

    action: str  #: "start" a rollout now, "wait" for the active one to end, or "none"
    reason: str

    @property
    def start(self) -> bool:
        return self.action == "start"


def desired_canary_action(
    version: str,
    *,
    stable: str | None,
    latest: RolloutRecord | None,
    concluded: Sequence[RolloutRecord],
) -> DesiredCanaryAction:
    """Start a rollout of `version` only when nothing has been or is being done about it.

    A pure decision (the chart's `canary.model.version`, declarative as in GitOps): not
    when it is the stable version, nor the candidate of `latest` (whatever its phase), nor
    when an earlier rollout of it already concluded (promoted or rolled back: trying it
    again is a deliberate `rollout start`); while another rollout is active it waits.
    """
    if version == stable:
        return DesiredCanaryAction("none", f"{version} is the stable version")
    if latest is not None and latest.candidate_version == version:
        return DesiredCanaryAction(
            "none", f"{version} is the candidate of rollout {latest.rollout_id} ({latest.phase})"
        )
    for record in concluded:
        if record.candidate_version == version:
            return DesiredCanaryAction(
                "none",
                f"rollout {record.rollout_id} of {version} already ended {record.phase}; "
                "use `canarycast rollout start` to roll it out again",
            )
    if latest is not None and latest.phase in ACTIVE:
        return DesiredCanaryAction(
            "wait",
            f"waiting: rollout {latest.rollout_id} of {latest.candidate_version} is {latest.phase}",
        )
    return DesiredCanaryAction("start", f"{version} is desired as canary")


@dataclass(frozen=True)
class Status:
    record: RolloutRecord | None
    judgement: Judgement | None
    evidence: Evidence | None
    seconds_in_step: float
    last_decision: DecisionRow | None
    steps: tuple[float, ...]


class Controller:
    def __init__(
        self,
        *,
        model: str,
        registry: Registry,
        traffic: Traffic,
        analyzer: EvidenceSource,
        store: RolloutStore,
        policy: RolloutPolicy | None = None,
        clock: Callable[[], float] = time.time,
        stable_probe: StableProbe | None = None,
        metrics: RolloutMetrics | None = None,
        desired_canary: Path | None = None,
    ) -> None:
        self.model = model
        #: A file naming the version that should be the canary (VERSION or NAME:VERSION),
        #: re-read every tick; the Helm chart mounts it from `canary.model.version`.
        self.desired_canary = desired_canary
        self._desired_note: tuple[str, str] | None = None
        self.metrics = metrics
        self.registry = registry
        self.traffic = traffic
        self.analyzer = analyzer
        self.store = store
        self.policy = policy or RolloutPolicy()
        self.clock = clock
        self.stable_probe = stable_probe
        self.record: RolloutRecord | None = store.latest()
        self.judgement: Judgement | None = None
        self.evidence: Evidence | None = None
        self.last_decision: DecisionRow | None = None
        self._changed = asyncio.Condition()
        self._ticker = Periodic("controller", self.policy.tick_seconds, self.tick)
        self._hold_kind: str | None = None
        self._lock = asyncio.Lock()
        self.on_decision: Callable[[DecisionRow, RolloutRecord], None] | None = None
        self._webhook = Webhook(self.policy.webhook_url) if self.policy.webhook_url else None

    # -- lifecycle --

    async def resume_after_restart(self) -> None:
        """Re-apply a persisted active rollout's weight; its step restarts its clock."""
        record = self.record
        if record is None:
            return
        if record.phase in ACTIVE:
            self.traffic.set_weight(record.weight)
            record.step_started_at = self.clock()
            await self._commit(
                "resume", "controller restarted: weight re-applied, step restarted", "controller"
            )
        else:
            self.traffic.set_weight(0.0)

    def start_loop(self) -> None:
        self._ticker.start()

    async def stop(self) -> None:
        await self._ticker.stop()
        if self._webhook is not None:
            await asyncio.to_thread(self._webhook.close)

    # -- commands --

    async def start(self, candidate: str, actor: str = "") -> RolloutRecord:
        async with self._lock:
            if self.record is not None and self.record.phase in ACTIVE:
                raise FailedPrecondition(
                    f"rollout {self.record.rollout_id} of {self.record.candidate_version} is "
                    f"{self.record.phase}; roll it back or promote it first"
                )
            try:
                ref = ModelRef.parse(candidate)
                if ref.version is None:
                    raise InvalidArgument("candidate", "must be NAME:VERSION, not an alias")
                version = self.registry.resolve(ref)
                stable = self.registry.get_alias(self.model, Variant.STABLE)
            except CorruptAliasError as exc:  # the registry is damaged, not the request
                raise FailedPrecondition(str(exc)) from exc
            except RegistryError as exc:
                raise NotFound(str(exc)) from exc
            if ref.name != self.model:
                raise InvalidArgument(
                    "candidate", f"this controller rolls out {self.model!r}, not {ref.name!r}"
                )
            if stable is None:
                raise FailedPrecondition(f"{self.model} has no stable alias to compare against")
            if version.version == stable:
                raise FailedPrecondition(f"{version.version} is already the stable version")
            try:
                self.registry.set_alias(self.model, Variant.CANARY, version.version)
            except RegistryError as exc:
                raise FailedPrecondition(f"cannot start the rollout: {exc}") from exc
            now = self.clock()
            first = self.policy.steps[0]
            self.record = RolloutRecord(
                rollout_id=secrets.token_hex(6),
                model=self.model,
                stable_version=stable,
                candidate_version=version.version,
                phase=Phase.PROGRESSING,
                step=0,
                weight=first,
                step_started_at=now,
                started_at=now,
            )
            self.judgement = None
            self.evidence = None  # the last rollout's evidence is not this one's
            self.traffic.set_weight(first)
            await self._commit("start", f"rollout of {version.version} started", actor or "cli")
            return self.record

    async def promote(self, full: bool = False, actor: str = "") -> RolloutRecord:
        async with self._lock:
            record = self._active()
            if full or record.step >= len(self.policy.steps) - 1:
                await self._promote_full(f"promoted by hand ({actor or 'cli'})", actor or "cli")
            else:
                record.awaiting_confirmation = False
                record.phase = Phase.PROGRESSING
                await self._next_step(f"next step by hand ({actor or 'cli'})", actor or "cli")
            return record

    async def rollback(self, reason: str = "", actor: str = "") -> RolloutRecord:
        async with self._lock:
            self._active()
            await self._rollback(reason or "rolled back by hand", actor or "cli")
            assert self.record is not None
            return self.record

    async def pause(self, actor: str = "") -> RolloutRecord:
        async with self._lock:
            record = self._active()
            record.phase = Phase.PAUSED
            await self._commit("pause", "paused by hand", actor or "cli")
            return record

    async def resume(self, actor: str = "") -> RolloutRecord:
        async with self._lock:
            record = self._active()
            record.phase = Phase.PROGRESSING
            record.awaiting_confirmation = False
            record.step_started_at = self.clock()
            await self._commit("resume", "resumed by hand; the step restarts", actor or "cli")
            return record

    async def set_weight(self, weight: float, actor: str = "") -> RolloutRecord:
        if not 0 <= weight <= 1:
            raise InvalidArgument("weight", f"must be in [0, 1], got {weight}")
        async with self._lock:
            record = self._active()
            record.weight = weight
            record.phase = Phase.PAUSED
            self.traffic.set_weight(weight)
            await self._commit(
                "set-weight", f"weight set to {weight:g} by hand; paused", actor or "cli"
            )
            return record

    # -- the automatic part --

    async def follow_desired_canary(self) -> None:
        """Start a rollout of the desired canary when `desired_canary_action` says so."""
        if self.desired_canary is None:
            return
        try:
            text = self.desired_canary.read_text().strip()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            self._note_desired("", "refused", f"cannot read {self.desired_canary}: {exc}")
            return
        if not text:
            return
        try:
            bare = ":" not in text and "@" not in text
            ref = ModelRef.parse(f"{self.model}:{text}" if bare else text)
            if ref.name != self.model or ref.version is None:
                raise InvalidArgument(
                    "desired canary", f"must be {self.model}:VERSION or VERSION, got {text!r}"
                )
            version = self.registry.resolve(ref).version
            stable = self.registry.get_alias(self.model, Variant.STABLE)
        except (RegistryError, InvalidArgument) as exc:
            self._note_desired(text, "refused", str(exc))
            return
        concluded: Sequence[RolloutRecord] = []
        latest = self.record
        if version != stable and (latest is None or latest.candidate_version != version):
            rollouts = await asyncio.to_thread(self.store.rollouts, self.HISTORY_LIMIT)
            concluded = [r for r in rollouts if r.phase in (Phase.PROMOTED, Phase.ROLLED_BACK)]
        decision = desired_canary_action(version, stable=stable, latest=latest, concluded=concluded)
        self._note_desired(text, decision.action, decision.reason)
        if not decision.start:
            return
        try:
            await self.start(f"{self.model}:{version}", actor="desired-canary")
        except (CanarycastError, RegistryError) as exc:  # e.g. a read-only registry
            self._note_desired(text, "refused", str(exc))

    #: Past rollouts read to find whether a desired canary has already been rolled out.
    HISTORY_LIMIT = 10_000

    def _note_desired(self, desired: str, action: str, reason: str) -> None:
        """Log what became of the desired canary, once per change (it is read every tick)."""
        if self._desired_note == (desired, reason):
            return
        self._desired_note = (desired, reason)
        level = log.warning if action == "refused" else log.info
        level("desired_canary", desired=desired, action=action, reason=reason)

    def _judge(self, record: RolloutRecord) -> tuple[Evidence, Judgement]:
        evidence = self.analyzer.evidence(
            since=record.step_started_at,
            stable_version=record.stable_version,
            canary_version=record.candidate_version,
        )
        return evidence, judge(self.policy.judge, evidence)

    async def tick(self) -> None:
        await self.follow_desired_canary()
        async with self._lock:
            record = self.record
            if record is None or record.phase != Phase.PROGRESSING:
                return
            now = self.clock()
            # off the event loop: on a long step the judge reads ~10^6 rows (about 0.5 s)
            evidence, verdict = await asyncio.to_thread(self._judge, record)
            self.evidence, self.judgement = evidence, verdict
            self._observe_evidence(evidence, verdict)
            record.judgement = json.dumps(asdict(verdict), default=str)
            action = next_action(self.policy, record, verdict, now, self.analyzer.last_span_at)
            await self._carry_out(action, "controller")

    async def _carry_out(self, action: Action, actor: str) -> None:
        """Do what `next_action` (or `advance`) decided: the only place a step's decision acts."""
        record = self.record
        assert record is not None
        match action:
            case Rollback(reason):
                await self._rollback(reason, actor)
            case Hold(kind, reason):
                await self._hold(kind, reason)
            case Promote(reason):
                await self._promote_full(reason, actor)
            case Pause(reason, awaiting_confirmation):
                if awaiting_confirmation:
                    record.awaiting_confirmation = True
                record.phase = Phase.PAUSED
                await self._commit("pause", reason, actor)
            case Step(step, weight, reason):
                record.step = step
                record.weight = weight
                record.step_started_at = self.clock()
                self.traffic.set_weight(weight)
                await self._commit("step", reason, actor)
            case _:
                assert_never(action)

    #: A hold of the same kind is recorded again at most this often (its reason text
    #: carries live numbers that change every tick).
    HOLD_RECORD_SECONDS = 30.0

    async def _hold(self, kind: str, reason: str) -> None:
        """Keep the step; record it when the kind of hold changes, else just notify."""
        last = self.last_decision
        fresh = (
            last is None
            or last.action != "hold"
            or self._hold_kind != kind
            or self.clock() - last.at >= self.HOLD_RECORD_SECONDS
        )
        self._hold_kind = kind
        if fresh:
            await self._commit("hold", reason, "controller")
        else:
            await self._notify()

    async def _next_step(self, reason: str, actor: str) -> None:
        record = self.record
        assert record is not None
        action = advance(self.policy, record, reason, automatic=actor == "controller")
        await self._carry_out(action, actor)

    async def _promote_full(self, reason: str, actor: str) -> None:
        record = self.record
        assert record is not None
        try:  # nothing changes unless the alias moved: never promote from a corrupt registry
            self.registry.set_alias(record.model, Variant.STABLE, record.candidate_version)
        except RegistryError as exc:
            raise FailedPrecondition(f"cannot promote {record.candidate_version}: {exc}") from exc
        await self._wait_for_stable(record.candidate_version)
        self.traffic.set_weight(0.0)
        record.weight = 0.0
        record.phase = Phase.PROMOTED
        record.ended_at = self.clock()
        record.outcome_reason = reason
        await self._commit("promote", reason, actor)

    async def _wait_for_stable(self, version: str) -> None:
        if self.stable_probe is None:
            return
        deadline = time.monotonic() + self.policy.promote_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if await self.stable_probe() == version:
                    return
            await asyncio.sleep(0.2)
        log.warning("stable_not_reloaded", version=version, waited=self.policy.promote_timeout)

    async def _rollback(self, reason: str, actor: str) -> None:
        record = self.record
        assert record is not None
        self.traffic.set_weight(0.0)  # users first
        record.weight = 0.0
        record.phase = Phase.ROLLED_BACK
        record.ended_at = self.clock()
        record.outcome_reason = reason
        record.awaiting_confirmation = False
        await self._commit("rollback", reason, actor)

    def _active(self) -> RolloutRecord:
        if self.record is None or self.record.phase not in ACTIVE:
            raise FailedPrecondition("no rollout is in progress")
        return self.record

    async def _commit(self, action: str, reason: str, actor: str) -> None:
        record = self.record
        assert record is not None
        evidence: dict[str, Any] = {}
        if self.judgement is not None:
            evidence = asdict(self.judgement)
        decision = DecisionRow(
            record.rollout_id, self.clock(), action, reason, actor, record.weight, evidence
        )
        await asyncio.to_thread(self.store.save, record, decision)
        self.last_decision = decision
        if self.metrics is not None:
            self.metrics.decisions.labels(
                action, "controller" if actor == "controller" else "human"
            ).inc()
            self.metrics.set_phase(str(record.phase))
            self.metrics.step.set(record.step + 1)
            self.metrics.weight.set(record.weight)
        log.info(
            "rollout_decision",
            rollout_id=record.rollout_id,
            action=action,
            reason=reason,
            actor=actor,
            phase=str(record.phase),
            step=record.step + 1,
            weight=record.weight,
            evidence=evidence,
        )
        if self.on_decision is not None:
            self.on_decision(decision, record)
        if self._webhook is not None and action != "hold":
            self._webhook.send(decision, replace(record))
        await self._notify()

    def _observe_evidence(self, evidence: Evidence, verdict: Judgement) -> None:
        if self.metrics is None:
            return
        self.metrics.samples.labels("pairs").set(evidence.pairs)
        self.metrics.samples.labels("effective_units").set(verdict.samples)
        self.metrics.samples.labels("stable_calls").set(evidence.stable.calls)
        self.metrics.samples.labels("canary_calls").set(evidence.canary.calls)
        for bound, value in (
            ("estimate", verdict.ratio),
            ("lower", verdict.lower),
            ("upper", verdict.upper),
        ):
            if value is not None:
                self.metrics.ratio.labels(bound).set(value)
        for m in verdict.metrics:
            for bound, value in (("estimate", m.ratio), ("lower", m.lower), ("upper", m.upper)):
                if value is not None:
                    self.metrics.score_ratio.labels(m.metric, bound).set(value)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_change(self) -> None:
        async with self._changed:
            await self._changed.wait()

    # -- reading --

    def status(self) -> Status:
        record = self.record
        in_step = 0.0
        if record is not None and record.phase in ACTIVE:
            in_step = max(0.0, self.clock() - record.step_started_at)
        return Status(
            record, self.judgement, self.evidence, in_step, self.last_decision, self.policy.steps
        )

    def history(self, limit: int = 20) -> Sequence[RolloutRecord]:
        return self.store.rollouts(limit)
