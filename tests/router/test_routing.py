"""router.traffic.routing.decide: a pure function, driven here by the thousand."""

from __future__ import annotations

import math
import random

import pytest

from router.traffic.routing import (
    CANARY,
    STABLE,
    Mode,
    Reason,
    RoutingPolicy,
    StickyKey,
    decide,
    key_position,
)

KEYS = [f"series-{i}" for i in range(20_000)]


def within_binomial(successes: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(successes - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_sticky_share_matches_the_weight() -> None:
    policy = RoutingPolicy(canary_weight=0.2)
    canary = sum(decide(policy, k, None, 0.99, 1.0).variant == CANARY for k in KEYS)
    assert within_binomial(canary, len(KEYS), 0.2), canary


def test_random_share_matches_the_weight_without_a_sticky_key() -> None:
    rng = random.Random(7)
    policy = RoutingPolicy(canary_weight=0.2, sticky_key=StickyKey.NONE)
    decisions = [decide(policy, "same-key", None, rng.random(), 1.0) for _ in range(20_000)]
    assert {d.reason for d in decisions} == {Reason.WEIGHT}
    canary = sum(d.variant == CANARY for d in decisions)
    assert within_binomial(canary, 20_000, 0.2), canary


def test_sticky_is_stable_and_ignores_the_draw() -> None:
    policy = RoutingPolicy(canary_weight=0.3)
    for key in KEYS[:500]:
        first = decide(policy, key, None, 0.0, 1.0)
        again = decide(policy, key, None, 0.999, 1.0)
        assert first.variant == again.variant and first.reason is Reason.STICKY


def test_raising_the_weight_only_moves_series_into_the_canary() -> None:
    weights = [0.0, 0.05, 0.2, 0.5, 0.8, 1.0]
    previous: set[str] = set()
    for w in weights:
        policy = RoutingPolicy(canary_weight=w)
        in_canary = {k for k in KEYS[:5000] if decide(policy, k, None, 0.5, 1.0).variant == CANARY}
        assert previous <= in_canary
        previous = in_canary
    assert len(previous) == 5000


def test_key_position_is_uniform_and_deterministic() -> None:
    positions = [key_position(k) for k in KEYS]
    assert all(0.0 <= u < 1.0 for u in positions)
    assert positions == [key_position(k) for k in KEYS]
    below_half = sum(u < 0.5 for u in positions)
    assert within_binomial(below_half, len(KEYS), 0.5)


def test_header_forces_the_variant_and_the_other_gets_the_copy() -> None:
    policy = RoutingPolicy(canary_weight=0.0)
    d = decide(policy, "k", CANARY, 0.5, 0.0)
    assert (d.variant, d.reason, d.mirror) == (CANARY, Reason.HEADER, STABLE)


def test_shadow_mode_answers_with_stable_and_mirrors_to_canary() -> None:
    policy = RoutingPolicy(canary_weight=0.9, mode=Mode.SHADOW)
    for key in KEYS[:200]:
        d = decide(policy, key, None, 0.0, 0.5)
        assert (d.variant, d.reason, d.mirror) == (STABLE, Reason.SHADOW, CANARY)
    assert policy.effective_weight == 0.0


def test_dual_run_mirrors_the_variant_not_chosen_for_the_sampled_fraction() -> None:
    policy = RoutingPolicy(canary_weight=0.5, mirror_fraction=0.25)
    rng = random.Random(3)
    decisions = [decide(policy, k, None, 0.0, rng.random()) for k in KEYS[:8000]]
    mirrored = [d for d in decisions if d.mirror is not None]
    assert all(d.mirror == d.other for d in mirrored)
    assert within_binomial(len(mirrored), 8000, 0.25)
    none = RoutingPolicy(canary_weight=0.5, mirror_fraction=0.0)
    assert all(decide(none, k, None, 0.0, 0.0).mirror is None for k in KEYS[:100])


def test_without_a_canary_everything_goes_to_stable_uncopied() -> None:
    policy = RoutingPolicy(canary_weight=1.0, has_canary=False)
    d = decide(policy, "k", None, 0.0, 0.0)
    assert (d.variant, d.reason, d.mirror) == (STABLE, Reason.ONLY_STABLE, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"canary_weight": 1.5}, "canary_weight"),
        ({"canary_weight": -0.1}, "canary_weight"),
        ({"canary_weight": float("nan")}, "canary_weight"),
        ({"mirror_fraction": 2}, "mirror_fraction"),
        ({"mode": "blue-green"}, "blue-green"),
        ({"sticky_key": "tenant"}, "tenant"),
    ],
)
def test_bad_policies_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RoutingPolicy(**kwargs)  # type: ignore[arg-type]  # wrong types, on purpose
