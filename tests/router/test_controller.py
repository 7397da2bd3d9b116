"""The rollout controller's state machine, driven tick by tick with an injected clock.

Fakes here stand in for the router (a weight recorder) and the analyzer (evidence we
choose); the registry and the SQLite store are the real ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from canarycast.errors import FailedPrecondition, InvalidArgument, NotFound
from router.rollout.controller import Controller, Phase, RolloutPolicy
from router.rollout.judge import Evidence, JudgePolicy, VariantStats
from router.rollout.store import DecisionRow, RolloutRecord, RolloutStore, StateError
from tests.conftest import MODEL, TrainedRegistry

RNG = np.random.default_rng(0)
BASE = RNG.lognormal(0.0, 0.5, 400)


def paired(multiplier: float, n: int = 400) -> Evidence:
    stable = BASE[:n]
    canary = stable * multiplier * RNG.lognormal(0.0, 0.05, n)
    return Evidence.of_units(np.column_stack([stable, canary]))


GOOD = paired(0.95)
BAD = paired(1.5)
FAILING = Evidence.of_units(
    np.empty((0, 2)),
    stable=VariantStats(calls=500, errors=0, p99_latency=0.02),
    canary=VariantStats(calls=100, errors=40, p99_latency=0.02),
)


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Traffic:
    weights: list[float] = field(default_factory=list)

    def set_weight(self, weight: float) -> None:
        self.weights.append(weight)


@dataclass
class Analyzer:
    clock: Clock
    current: Evidence = field(default_factory=Evidence.empty)
    silent: bool = False
    asked: tuple[str | None, str | None] = (None, None)

    @property
    def last_span_at(self) -> float | None:
        return None if self.silent else self.clock.now

    def evidence(
        self,
        since: float,
        *,
        stable_version: str | None = None,
        canary_version: str | None = None,
    ) -> Evidence:
        self.asked = (stable_version, canary_version)
        return self.current


@dataclass
class World:
    controller: Controller
    traffic: Traffic
    analyzer: Analyzer
    clock: Clock
    trained: TrainedRegistry

    @property
    def record(self) -> RolloutRecord:
        """The controller's rollout, which every test that reads it has started."""
        record = self.controller.record
        assert record is not None, "no rollout"
        return record

    @property
    def decision(self) -> DecisionRow:
        """The controller's last decision, which every test that reads it has caused."""
        decision = self.controller.last_decision
        assert decision is not None, "no decision yet"
        return decision

    async def tick(self, seconds: float = 1.0, times: int = 1) -> None:
        for _ in range(times):
            self.clock.now += seconds
            await self.controller.tick()


POLICY = RolloutPolicy(
    steps=(0.1, 0.5, 1.0),
    min_step_seconds=10,
    max_step_seconds=60,
    stall_hold_seconds=20,
    stall_rollback_seconds=40,
    judge=JudgePolicy(min_pairs=30),
)


def make_world(trained: TrainedRegistry, policy: RolloutPolicy = POLICY) -> World:
    from prometheus_client import CollectorRegistry

    from router.metrics import RolloutMetrics

    clock = Clock()
    traffic = Traffic()
    analyzer = Analyzer(clock)
    controller = Controller(
        model=MODEL,
        registry=trained.registry,
        traffic=traffic,
        # EvidenceSource declares last_span_at a plain (settable) attribute, but the controller
        # only reads it; this fake derives it from the clock, read-only. Declaring it a
        # read-only property in router/rollout/controller.py's Protocol would make this
        # ignore unused.
        analyzer=analyzer,  # type: ignore[arg-type]
        store=RolloutStore(trained.root / "rollouts.db"),
        policy=policy,
        clock=clock,
        metrics=RolloutMetrics(CollectorRegistry()),
    )
    return World(controller, traffic, analyzer, clock, trained)


@pytest.fixture
def world(registry_copy: TrainedRegistry) -> World:
    return make_world(registry_copy)


async def test_a_good_canary_steps_through_and_is_promoted(world: World) -> None:
    r = await world.controller.start(f"{MODEL}:{world.trained.v2.version}", "tester")
    assert world.trained.registry.get_alias(MODEL, "canary") == world.trained.v2.version
    assert (r.phase, r.step, r.weight) == (Phase.PROGRESSING, 0, 0.1)
    world.analyzer.current = GOOD
    await world.tick(5)  # verdict promote, but under the 10 s minimum: hold
    assert world.analyzer.asked == (world.trained.v1.version, world.trained.v2.version)
    assert world.record.step == 0
    assert "minimum" in world.decision.reason
    await world.tick(6)
    assert world.record.step == 1 and world.traffic.weights[-1] == 0.5
    await world.tick(11)
    assert world.record.step == 2 and world.traffic.weights[-1] == 1.0
    await world.tick(11)
    r = world.record
    assert r.phase == Phase.PROMOTED
    assert world.trained.registry.get_alias(MODEL, "stable") == world.trained.v2.version
    assert world.traffic.weights[-1] == 0.0 and r.weight == 0.0
    actions = [d.action for d in world.controller.store.decisions(r.rollout_id)]
    assert actions[0] == "start" and actions[-1] == "promote" and actions.count("step") == 2
    metrics = world.controller.metrics
    assert metrics is not None
    assert metrics.phase.labels("promoted")._value.get() == 1
    assert metrics.phase.labels("progressing")._value.get() == 0
    assert metrics.decisions.labels("step", "controller")._value.get() == 2
    assert metrics.samples.labels("pairs")._value.get() == 400
    assert metrics.ratio.labels("upper")._value.get() < 1.05


async def test_a_worse_canary_is_rolled_back_with_weight_zero_first(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    world.analyzer.current = BAD
    await world.tick(1)
    r = world.record
    assert r.phase == Phase.ROLLED_BACK
    assert world.controller.evidence is not None
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")  # a new rollout
    assert world.controller.evidence is None and world.controller.judgement is None
    await world.controller.rollback("done with this test")
    assert world.traffic.weights[-1] == 0.0
    assert "ratio" in r.outcome_reason
    assert world.trained.registry.get_alias(MODEL, "stable") == world.trained.v1.version
    stored = world.controller.store.latest()
    assert stored is not None and stored.phase == Phase.ROLLED_BACK


async def test_a_guardrail_breach_rolls_back_at_once(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    world.analyzer.current = FAILING
    await world.tick(1)
    assert world.record.phase == Phase.ROLLED_BACK
    assert world.controller.judgement is not None and world.controller.judgement.guardrail


async def test_no_data_holds_and_never_passes_then_the_budget_pauses(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    await world.tick(5, times=11)
    r = world.record
    assert r.phase == Phase.PROGRESSING and r.step == 0
    assert world.decision.action == "hold"
    await world.tick(10)  # past the 60 s budget
    assert world.record.phase == Phase.PAUSED
    assert "budget" in world.decision.reason


async def test_budget_can_roll_back_instead(registry_copy: TrainedRegistry) -> None:
    from dataclasses import replace

    w = make_world(registry_copy, replace(POLICY, on_budget="rollback"))
    await w.controller.start(f"{MODEL}:{registry_copy.v2.version}")
    await w.tick(61)
    assert w.record.phase == Phase.ROLLED_BACK


async def test_silent_analyzer_holds_then_rolls_back(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    world.analyzer.current = GOOD
    world.analyzer.silent = True
    await world.tick(25)
    assert world.record.phase == Phase.PROGRESSING
    assert "no spans" in world.decision.reason
    await world.tick(20)
    assert world.record.phase == Phase.ROLLED_BACK
    assert "no spans" in world.record.outcome_reason


async def test_manual_commands_take_effect_and_are_recorded(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}", "alice")
    await world.controller.pause("bob")
    world.analyzer.current = GOOD
    await world.tick(30)
    assert world.record.phase == Phase.PAUSED and world.record.step == 0
    await world.controller.resume("bob")
    await world.controller.set_weight(0.3, "carol")
    assert world.traffic.weights[-1] == 0.3 and world.record.phase == Phase.PAUSED
    await world.controller.promote(actor="dave")
    assert world.record.step == 1
    await world.controller.promote(full=True, actor="erin")
    assert world.record.phase == Phase.PROMOTED
    actors = [
        (d.action, d.actor) for d in world.controller.store.decisions(world.record.rollout_id)
    ]
    assert ("pause", "bob") in actors and ("set-weight", "carol") in actors
    assert actors[-1] == ("promote", "erin")
    with pytest.raises(FailedPrecondition):
        await world.controller.rollback("too late", "frank")


async def test_bad_starts_are_refused(world: World) -> None:
    with pytest.raises(FailedPrecondition, match="already the stable"):
        await world.controller.start(f"{MODEL}:{world.trained.v1.version}")
    with pytest.raises(InvalidArgument, match="candidate"):
        await world.controller.start(f"{MODEL}@canary")
    with pytest.raises(NotFound):
        await world.controller.start(f"{MODEL}:abcdef123456")
    with pytest.raises(InvalidArgument):
        await world.controller.set_weight(1.5)
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    with pytest.raises(FailedPrecondition, match="rollout"):
        await world.controller.start(f"{MODEL}:{world.trained.v2.version}")


async def test_final_step_waits_for_a_manual_promote_when_asked(
    registry_copy: TrainedRegistry,
) -> None:
    from dataclasses import replace

    w = make_world(registry_copy, replace(POLICY, confirm_final_step=True))
    await w.controller.start(f"{MODEL}:{registry_copy.v2.version}")
    w.analyzer.current = GOOD
    await w.tick(11)
    await w.tick(11)
    r = w.record
    assert r.phase == Phase.PAUSED and r.awaiting_confirmation and r.step == 1
    await w.controller.promote(actor="release-manager")
    assert w.record.step == 2 and w.traffic.weights[-1] == 1.0


async def test_a_restarted_controller_resumes_the_same_rollout(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    world.analyzer.current = GOOD
    await world.tick(11)
    before = world.record
    assert before.step == 1
    world.controller.store.close()
    again = make_world(world.trained)
    again.clock.now = world.clock.now + 100
    await again.controller.resume_after_restart()
    r = again.record
    assert (r.rollout_id, r.step, r.weight, r.phase) == (
        before.rollout_id,
        1,
        0.5,
        Phase.PROGRESSING,
    )
    assert again.traffic.weights == [0.5]
    assert r.step_started_at == again.clock.now  # the interrupted step starts over
    again.analyzer.current = GOOD
    await again.tick(5)
    assert again.record.step == 1  # nothing unearned


def test_a_corrupt_state_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="not usable"):
        RolloutStore(path)
    path.write_bytes(b"")  # emptied: not the same as no file, which starts a new history
    with pytest.raises(StateError, match="empty"):
        RolloutStore(path)
    path.unlink()
    RolloutStore(path).close()
    assert path.stat().st_size > 0  # created whole, never left empty
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


async def test_decisions_reach_the_webhook(registry_copy: TrainedRegistry) -> None:
    from dataclasses import replace

    from tests.router.test_webhook import receiver

    with receiver([]) as (url, received):
        w = make_world(registry_copy, replace(POLICY, webhook_url=url))
        await w.controller.start(f"{MODEL}:{registry_copy.v2.version}")
        w.analyzer.current = BAD
        await w.tick(1)
        await w.controller.stop()  # waits for the deliveries queued so far
    assert [r["decision"]["action"] for r in received] == ["start", "rollback"]
    assert received[1]["rollout"]["phase"] == "rolled_back"


def test_policy_validation_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps"):
        RolloutPolicy(steps=(0.5, 0.1))
    with pytest.raises(ValueError, match="on_budget"):
        RolloutPolicy(on_budget="shrug")
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"steps": [0.2, 1.0], "judge": {"tolerance": 0.1}}))
    policy = RolloutPolicy.from_file(path)
    assert policy.steps == (0.2, 1.0) and policy.judge.tolerance == 0.1
    path.write_text(json.dumps({"stpes": [0.2]}))
    with pytest.raises(ValueError, match="unknown fields"):
        RolloutPolicy.from_file(path)


async def test_repeated_holds_are_recorded_once_per_kind_and_every_30_s(world: World) -> None:
    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")

    def actions() -> list[str]:
        return [d.action for d in world.controller.store.decisions(world.record.rollout_id)]

    world.analyzer.current = paired(0.95, n=10)  # too few pairs: inconclusive
    await world.tick(1, times=5)
    assert actions() == ["start", "hold"]
    world.analyzer.current = GOOD  # a new kind: promote verdict, held by the 10 s minimum
    await world.tick(1, times=3)
    assert actions() == ["start", "hold", "hold"]
    assert "minimum" in world.decision.reason
    world.record.step_started_at = world.clock.now  # keep it under the minimum
    world.analyzer.current = paired(0.95, n=10)
    await world.tick(1, times=35)  # the same kind for 35 s: recorded again after 30 s
    assert actions() == ["start", "hold", "hold", "hold", "hold"]


async def test_status_shows_pairs_effective_units_and_each_judged_metric(world: World) -> None:
    """`rollout status` and the metrics show both counts and every judged metric."""
    from canarycast.rollout_client import format_status
    from router.rollout.control import record_to_proto, status_to_proto
    from router.rollout.judge import COUNT, COUNT_INTERVAL

    await world.controller.start(f"{MODEL}:{world.trained.v2.version}")
    # 400 units, each of 3 paired steps; intervals served on every step
    rng = np.random.default_rng(2)
    s = rng.lognormal(0.0, 0.3, 400)
    evidence = Evidence.of_units(np.column_stack([s, 0.9 * s]), np.column_stack([s, 0.95 * s]))
    evidence.steps[:, COUNT] = evidence.steps[:, COUNT_INTERVAL] = 3.0
    world.analyzer.current = evidence
    await world.tick(1)
    status = status_to_proto(world.controller.status())
    assert status.judgement.pairs == 1200 and status.judgement.samples == 400
    assert [m.metric for m in status.judgement.metrics] == ["point", "interval"]
    text = format_status(status)
    assert "pairs 1,200, effective units 400" in text
    assert "error ratio" in text and "interval ratio" in text
    # the stored judgement (the decision record's evidence) has the same fields
    stored = record_to_proto(world.record, world.controller.policy.steps)
    assert stored.judgement.pairs == 1200 and len(stored.judgement.metrics) == 2
    metrics = world.controller.metrics
    assert metrics is not None
    assert metrics.samples.labels("effective_units")._value.get() == 400
    assert metrics.score_ratio.labels("interval", "upper")._value.get() < 1.05
