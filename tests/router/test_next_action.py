"""router.rollout.controller.next_action: the rollout's step decision, driven directly (no I/O).

`test_controller.py` checks that the controller carries these actions out; here each
branch of the decision is pinned, with its boundaries and its order of precedence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import pytest

from router.rollout.controller import (
    Hold,
    Pause,
    Phase,
    Promote,
    Rollback,
    RolloutPolicy,
    Step,
    advance,
    next_action,
)
from router.rollout.judge import Judgement, Verdict
from router.rollout.store import RolloutRecord

T0 = 1_000.0  # when the step began
POLICY = RolloutPolicy(
    steps=(0.1, 0.5, 1.0),
    min_step_seconds=30.0,
    max_step_seconds=600.0,
    stall_hold_seconds=30.0,
    stall_rollback_seconds=300.0,
)


def rollout(step: int = 0) -> RolloutRecord:
    return RolloutRecord(
        rollout_id="r1",
        model="m",
        stable_version="v1",
        candidate_version="v2",
        phase=Phase.PROGRESSING,
        step=step,
        weight=POLICY.steps[step],
        step_started_at=T0,
        started_at=T0,
    )


def verdict(v: Verdict, reason: str = "why") -> Judgement:
    return Judgement(v, reason, "paired", False, 100, 1.0, 0.9, 1.1, None)


PROMOTE, ROLLBACK, INCONCLUSIVE = (verdict(v) for v in Verdict)


def at(seconds_in_step: float, *, silent: float = 0.0) -> tuple[float, float]:
    """(now, last_span_at) for a step that has run this long, spans `silent` seconds ago."""
    now = T0 + seconds_in_step
    return now, now - silent


# --- stalls ------------------------------------------------------------------------


@pytest.mark.parametrize("judgement", [PROMOTE, ROLLBACK, INCONCLUSIVE])
def test_a_long_silence_rolls_back_whatever_the_verdict(judgement: Judgement) -> None:
    now, last = at(400, silent=300)
    assert next_action(POLICY, rollout(), judgement, now, last) == Rollback(
        "the analyzer received no spans for 300 s"
    )


def test_without_any_span_the_silence_counts_from_the_start_of_the_step() -> None:
    assert next_action(POLICY, rollout(), PROMOTE, T0 + 29, None) == Hold(
        "min-time", "holding: why, but only 29 s of the 30 s minimum in this step"
    )
    assert next_action(POLICY, rollout(), PROMOTE, T0 + 30, None) == Hold(
        "no-spans", "holding: the analyzer received no spans for 30 s"
    )
    assert next_action(POLICY, rollout(), PROMOTE, T0 + 300, None) == Rollback(
        "the analyzer received no spans for 300 s"
    )


def test_a_short_silence_holds_even_a_promote_but_not_a_rollback() -> None:
    now, last = at(100, silent=30)
    hold = Hold("no-spans", "holding: the analyzer received no spans for 30 s")
    assert next_action(POLICY, rollout(), PROMOTE, now, last) == hold
    assert next_action(POLICY, rollout(), INCONCLUSIVE, now, last) == hold
    assert next_action(POLICY, rollout(), ROLLBACK, now, last) == Rollback("why")
    now, last = at(100, silent=29.9)
    assert next_action(POLICY, rollout(), PROMOTE, now, last) == Step(
        1, 0.5, "step 2: weight 0.5 (why)"
    )


# --- the judge's verdict -----------------------------------------------------------


def test_a_rollback_verdict_rolls_back_at_once_with_the_judges_reason() -> None:
    now, last = at(0)
    assert next_action(POLICY, rollout(), verdict(Verdict.ROLLBACK, "p99 x3"), now, last) == (
        Rollback("p99 x3")
    )


def test_a_promote_before_the_minimum_time_holds_and_says_how_long() -> None:
    now, last = at(12.4)
    assert next_action(POLICY, rollout(), verdict(Verdict.PROMOTE, "R < 1.05"), now, last) == Hold(
        "min-time", "holding: R < 1.05, but only 12 s of the 30 s minimum in this step"
    )


def test_a_promote_at_the_minimum_time_takes_the_next_step() -> None:
    now, last = at(30)
    action = next_action(POLICY, rollout(0), verdict(Verdict.PROMOTE, "R < 1.05"), now, last)
    assert action == Step(1, 0.5, "step 2: weight 0.5 (R < 1.05)")
    assert next_action(POLICY, rollout(1), PROMOTE, now, last) == Step(
        2, 1.0, "step 3: weight 1 (why)"
    )


def test_a_promote_on_the_last_step_promotes_the_candidate() -> None:
    now, last = at(30)
    assert next_action(POLICY, rollout(2), PROMOTE, now, last) == Promote("why")


def test_the_final_step_waits_for_confirmation_when_the_policy_asks() -> None:
    policy = replace(POLICY, confirm_final_step=True)
    now, last = at(30)
    assert next_action(policy, rollout(0), PROMOTE, now, last) == Step(
        1, 0.5, "step 2: weight 0.5 (why)"
    )
    assert next_action(policy, rollout(1), PROMOTE, now, last) == Pause(
        "why; waiting for a manual promote before the final step", awaiting_confirmation=True
    )
    # a person promoting by hand is the confirmation
    assert advance(policy, rollout(1), "by hand", automatic=False) == Step(
        2, 1.0, "step 3: weight 1 (by hand)"
    )
    assert advance(policy, rollout(2), "by hand", automatic=False) == Promote("by hand")


def test_an_inconclusive_step_within_its_budget_holds_by_its_verdict() -> None:
    now, last = at(599)
    assert next_action(
        POLICY, rollout(), verdict(Verdict.INCONCLUSIVE, "3 of 30 units"), now, last
    ) == (Hold("inconclusive", "holding: 3 of 30 units"))


def test_an_inconclusive_step_past_its_budget_pauses_or_rolls_back() -> None:
    now, last = at(600)
    reason = "step budget of 600 s ran out: why"
    assert next_action(POLICY, rollout(), INCONCLUSIVE, now, last) == Pause(reason)
    assert not Pause(reason).awaiting_confirmation
    on_rollback = replace(POLICY, on_budget="rollback")
    assert next_action(on_rollback, rollout(), INCONCLUSIVE, now, last) == Rollback(reason)
    # a conclusive verdict is acted on past the budget as before it
    assert next_action(POLICY, rollout(), PROMOTE, now, last) == Step(
        1, 0.5, "step 2: weight 0.5 (why)"
    )


# --- purity ------------------------------------------------------------------------


def test_the_decision_changes_nothing_and_its_actions_are_frozen() -> None:
    record = rollout(1)
    before = replace(record)
    now, last = at(30)
    first = next_action(POLICY, record, PROMOTE, now, last)
    assert next_action(POLICY, record, PROMOTE, now, last) == first
    assert record == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.reason = "changed"  # type: ignore[misc]  # a frozen field, on purpose


def test_a_simulated_rollout_is_driven_by_the_decision_alone() -> None:
    """A rollout simulated tick by tick without a controller: an always-better canary
    takes each step after its minimum time and is promoted after the last."""
    record = rollout(0)
    promoted_at = None
    for tick in range(1, 200):
        now = T0 + tick
        action = next_action(POLICY, record, PROMOTE, now, now)
        if isinstance(action, Step):
            record = replace(record, step=action.step, weight=action.weight, step_started_at=now)
        elif isinstance(action, Promote):
            promoted_at = tick
            break
        else:
            assert action == Hold("min-time", action.reason)
    assert promoted_at == 3 * 30  # three steps of 30 s each
