"""router.rollout.judge: unit tests of the policy, the interval, the effective units and the
verdict.

The acceptance tests are elsewhere: `test_judge_world.py` runs a world with
dependent errors through the analyzer, `test_judge_replay.py` replays real
forecasts of real models.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from router.rollout.confidence import (
    boundary_factor,
    optimal_rho,
    ratio_bounds,
    ratio_confidence_sequence,
    series_ratio_interval,
)
from router.rollout.judge import (
    BLOCK,
    CANARY_SCORE,
    COUNT,
    COUNT_INTERVAL,
    SERIES,
    STABLE_SCORE,
    STEP_COLUMNS,
    TARGET,
    Evidence,
    JudgePolicy,
    VariantStats,
    Verdict,
    effective_units,
    judge,
)
from tests.router.confidence_path import ratio_confidence_path

CALLS = VariantStats(calls=500, errors=0, p99_latency=0.02)


def evidence(
    pairs: np.ndarray | None = None,
    stable_series: np.ndarray | None = None,
    canary_series: np.ndarray | None = None,
    stable: VariantStats = CALLS,
    canary: VariantStats = CALLS,
) -> Evidence:
    """Hand-built evidence: every pair its own (independent) unit."""
    units = Evidence.of_units(np.empty((0, 2)) if pairs is None else pairs)
    return replace(
        units,
        stable_series=np.empty(0) if stable_series is None else stable_series,
        canary_series=np.empty(0) if canary_series is None else canary_series,
        stable=stable,
        canary=canary,
    )


def paired(multiplier: float, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.lognormal(0.0, 0.5, n)
    return np.column_stack([s, s * multiplier * rng.lognormal(-0.02, 0.2, n)])


# --- policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tolerance", -0.1),
        ("alpha", 0.0),
        ("alpha", 1.0),
        ("min_pairs", 1),
        ("min_pairs", 2.5),
        ("min_series", 0),
        ("max_error_rate_increase", -0.01),
        ("max_latency_ratio", 0.5),
        ("min_guardrail_calls", 1),
        ("block_horizons", 0.0),
        ("metrics", ()),
        ("metrics", ("point", "median")),
        ("metrics", "point"),
        ("metrics", ("point", "point")),
        ("tolerance", math.nan),
        ("alpha", "0.05"),
    ],
)
def test_policy_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        JudgePolicy(**{field: value})  # type: ignore[arg-type]  # wrong types, on purpose


def test_default_policy_is_valid() -> None:
    p = JudgePolicy()
    assert (p.tolerance, p.alpha, p.min_pairs, p.min_series) == (0.05, 0.05, 30, 8)


# --- guardrails ----------------------------------------------------------------------


def test_error_rate_breach_rolls_back_at_once() -> None:
    ev = evidence(
        pairs=paired(0.8, 1000),
        canary=VariantStats(calls=100, errors=40, p99_latency=0.02),
    )
    j = judge(JudgePolicy(), ev)
    assert j.verdict is Verdict.ROLLBACK
    assert j.guardrail == "error_rate"
    assert "40.0%" in j.reason and "40/100" in j.reason


def test_error_rate_within_margin_is_no_breach() -> None:
    ev = evidence(
        pairs=paired(0.8, 1000),
        stable=VariantStats(calls=1000, errors=10, p99_latency=0.02),
        canary=VariantStats(calls=100, errors=2, p99_latency=0.02),
    )
    j = judge(JudgePolicy(), ev)
    assert j.guardrail is None and j.verdict is Verdict.PROMOTE


def test_latency_breach_rolls_back() -> None:
    ev = evidence(
        pairs=paired(0.8, 1000),
        canary=VariantStats(calls=100, errors=0, p99_latency=0.05),
    )
    j = judge(JudgePolicy(), ev)
    assert j.verdict is Verdict.ROLLBACK
    assert j.guardrail == "latency_p99"
    assert "50.0 ms" in j.reason and "20.0 ms" in j.reason


def test_too_few_calls_is_no_breach() -> None:
    few = VariantStats(calls=19, errors=19, p99_latency=9.0)
    j = judge(JudgePolicy(), evidence(canary=few))
    assert j.guardrail is None and j.verdict is Verdict.INCONCLUSIVE
    # latency needs both variants to have enough calls
    slow = VariantStats(calls=100, errors=0, p99_latency=9.0)
    j = judge(JudgePolicy(), evidence(canary=slow, stable=VariantStats(calls=5, p99_latency=0.01)))
    assert j.guardrail is None


# --- too few samples ---------------------------------------------------------------


def test_empty_evidence_is_inconclusive_never_a_pass() -> None:
    j = judge(JudgePolicy(), Evidence.empty())
    assert j.verdict is Verdict.INCONCLUSIVE
    assert "too few" in j.reason
    assert j.method == "none" and j.samples == 0 and j.guardrail is None


def test_fewer_than_min_pairs_is_inconclusive() -> None:
    j = judge(JudgePolicy(min_pairs=30), evidence(pairs=paired(0.5, 29)))
    assert j.verdict is Verdict.INCONCLUSIVE
    assert "too few" in j.reason and "29" in j.reason and "30" in j.reason
    assert j.method == "paired" and j.samples == 29 and not j.weaker
    assert j.lower is None and j.upper is None


# --- accuracy ------------------------------------------------------------------------


def test_a_clearly_better_canary_is_promoted_with_the_ratio_in_the_reason() -> None:
    j = judge(JudgePolicy(), evidence(pairs=paired(0.9, 400)))
    assert j.verdict is Verdict.PROMOTE and j.method == "paired" and not j.weaker
    assert j.samples == 400 and "ratio" in j.reason and "400 effective units" in j.reason
    assert j.ratio is not None and j.lower is not None and j.upper is not None
    assert j.lower < j.ratio < j.upper < 1.05


def test_a_clearly_worse_canary_is_rolled_back() -> None:
    j = judge(JudgePolicy(), evidence(pairs=paired(1.5, 400)))
    assert j.verdict is Verdict.ROLLBACK and j.guardrail is None
    assert j.lower is not None and j.lower > 1.05 and "ratio" in j.reason


def test_a_close_canary_with_few_pairs_is_inconclusive() -> None:
    j = judge(JudgePolicy(), evidence(pairs=paired(1.0, 40)))
    assert j.verdict is Verdict.INCONCLUSIVE
    assert j.lower is not None and j.upper is not None and j.lower < 1.05 < j.upper


def test_non_finite_pairs_are_dropped() -> None:
    p = paired(0.9, 400)
    p[::10, 1] = np.nan
    j = judge(JudgePolicy(), evidence(pairs=p))
    assert j.samples == 360 and j.verdict is Verdict.PROMOTE


def test_unbounded_interval_reports_inf() -> None:
    stable = np.zeros(40)
    stable[0] = 10.0  # stable's mean error is not distinguishable from zero
    pairs = np.column_stack([stable, np.full(40, 0.5)])
    est, lo, hi = ratio_confidence_sequence(pairs, 0.05)
    assert math.isinf(hi) and lo >= 0 and est == pytest.approx(0.5 / 0.25)
    j = judge(JudgePolicy(), evidence(pairs=pairs))
    assert j.verdict is Verdict.INCONCLUSIVE and "inf" in j.reason


def test_sequence_matches_the_last_point_of_the_path() -> None:
    p = paired(1.1, 500, seed=3)
    est, lo, hi = ratio_confidence_sequence(p, 0.05)
    pe, pl, ph = ratio_confidence_path(p, 0.05)
    assert (est, lo, hi) == pytest.approx((pe[-1], pl[-1], ph[-1]))
    assert est == pytest.approx(p[:, 1].mean() / p[:, 0].mean())


def test_the_interval_solves_the_confidence_sequence_at_its_bounds() -> None:
    """At each bound, 0 sits exactly on the edge of the CS for mean(c - r s)."""
    p = paired(0.95, 300, seed=4)
    _, lo, hi = ratio_confidence_sequence(p, 0.05)
    k = float(boundary_factor(300, 0.05, optimal_rho(0.05)))
    for r in (lo, hi):
        d = p[:, 1] - r * p[:, 0]
        assert abs(d.mean()) == pytest.approx(k * d.std(), rel=1e-9)


@pytest.mark.parametrize("ratio", [1.0, 0.8])
def test_coverage_under_continuous_monitoring(ratio: float) -> None:
    """Checked at every t >= 30: the running intersection misses the truth in <= ~alpha."""
    reps, n, alpha = 300, 2000, 0.05
    rng = np.random.default_rng(11)
    misses = 0
    for _ in range(reps):
        s = rng.gamma(2.0, 0.5, n)
        c = ratio * (0.6 * s + 0.4 * rng.gamma(2.0, 0.5, n))
        _, lo, hi = ratio_confidence_path(np.column_stack([s, c]), alpha)
        lo, hi = lo[29:], hi[29:]
        misses += bool(np.any((lo > ratio) | (hi < ratio)))
    assert misses / reps <= alpha + 0.02


def test_ratio_bounds_is_elementwise() -> None:
    est, lo, hi = ratio_bounds(
        np.array([1.0, 1.0]), np.array([0.9, 1.2]), 0.01, 0.01, 0.005, np.array([0.5, 0.5])
    )
    assert est == pytest.approx([0.9, 1.2])
    assert np.all(lo < est) and np.all(est < hi)


# --- the series fallback -------------------------------------------------------------


def test_fallback_without_pairs_uses_series_and_is_weaker() -> None:
    rng = np.random.default_rng(5)
    st = rng.lognormal(0.0, 0.1, 30)
    ca = 0.7 * rng.lognormal(0.0, 0.1, 10)
    j = judge(JudgePolicy(), evidence(stable_series=st, canary_series=ca))
    assert j.method == "series" and j.weaker is True
    assert j.samples == 10 and j.verdict is Verdict.PROMOTE and "weaker" in j.reason
    j = judge(JudgePolicy(), evidence(stable_series=st, canary_series=1.5 * st[:10]))
    assert j.method == "series" and j.verdict is Verdict.ROLLBACK


def test_fallback_with_too_few_series_is_inconclusive() -> None:
    j = judge(
        JudgePolicy(min_series=8), evidence(stable_series=np.ones(30), canary_series=np.ones(1))
    )
    assert j.verdict is Verdict.INCONCLUSIVE and j.method == "series" and j.weaker
    assert "too few" in j.reason


def test_series_interval_contains_the_estimate() -> None:
    est, lo, hi = series_ratio_interval(np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0]), 0.05)
    assert est == pytest.approx(1.5) and lo < est < hi


# --- effective units ----------------------------------------------------------------

H = 24 * 3600 * 10**9  # a day-ahead horizon, ns


def steps_of(
    series: np.ndarray,
    target: np.ndarray,
    stable: np.ndarray,
    canary: np.ndarray,
    horizon: float = H,
) -> np.ndarray:
    """Evidence rows of one paired step each."""
    rows = np.zeros((len(series), STEP_COLUMNS))
    rows[:, SERIES], rows[:, TARGET], rows[:, BLOCK] = series, target, horizon
    rows[:, STABLE_SCORE], rows[:, CANARY_SCORE], rows[:, COUNT] = stable, canary, 1.0
    return rows


def test_a_unit_is_one_series_over_a_block_of_horizons() -> None:
    # 3 series, 5 days of hourly targets each: blocks of 2 days -> 3 units per series
    hours = np.arange(5 * 24)
    series = np.repeat([0, 1, 2], hours.size)
    target = np.tile(1e18 + hours * 3600e9, 3)
    rows = steps_of(series, target, np.ones(series.size), np.ones(series.size))
    u = effective_units(rows, "point", 2.0)
    assert u.n == 9 and u.pairs == 360 and u.n_series == 3
    assert sorted(u.count.tolist()) == [24.0] * 3 + [48.0] * 6
    # the horizon comes from the analyzer's column; without it, from the gaps between targets
    rows[:, BLOCK] = 0.0
    u = effective_units(rows, "point", 2.0 * 24)
    assert u.n == 9


def test_the_block_doubles_while_neighbouring_units_are_correlated() -> None:
    rng = np.random.default_rng(3)
    n_series, days = 20, 60
    hours = days * 24
    # a regime with a correlation time of about 10 days (phi per hour)
    phi = math.exp(-1 / (10 * 24))
    regime = np.zeros((n_series, hours))
    for t in range(1, hours):
        regime[:, t] = phi * regime[:, t - 1] + math.sqrt(1 - phi**2) * rng.normal(size=n_series)
    series = np.repeat(np.arange(n_series), hours)
    target = np.tile(1e18 + np.arange(hours) * 3600e9, n_series)
    stable = np.exp(0.3 * rng.normal(size=series.size))
    canary = stable * np.exp(0.3 * regime.ravel())
    u = effective_units(steps_of(series, target, stable, canary), "point", 1.0)
    assert u.block_horizons > 1.0 and u.n < n_series * days
    # independent days: no doubling
    iid = stable * np.exp(0.3 * rng.normal(size=series.size))
    u = effective_units(steps_of(series, target, stable, iid), "point", 1.0)
    assert u.block_horizons == 1.0 and u.n == n_series * days
    assert u.autocorrelation is not None and abs(u.autocorrelation) < 0.1


def test_rows_of_one_series_are_one_unit_until_its_block_ends() -> None:
    """1,000 dependent steps of 5 series are 5 units, and 5 < min_pairs: inconclusive."""
    series = np.repeat(np.arange(5), 200)
    target = np.tile(1e18 + np.arange(200) * 60e9, 5)  # 200 minutes, a 1-day horizon
    rows = steps_of(series, target, np.ones(1000), np.full(1000, 0.5))
    ev = replace(Evidence.empty(), steps=rows, stable=CALLS, canary=CALLS)
    j = judge(JudgePolicy(), ev)
    assert j.verdict is Verdict.INCONCLUSIVE and j.samples == 5 and j.pairs == 1000
    assert "too few effective units: 5 of 30 (pairs 1,000 from 5 series" in j.reason
    assert "2.0 d of data, so 30 need about 10.0 d more at this traffic" in j.reason


# --- two metrics ---------------------------------------------------------------------


def test_a_canary_with_the_same_median_and_narrow_intervals_is_rolled_back() -> None:
    point = paired(1.0, 400)
    point[:, 1] = point[:, 0]  # the same median
    rng = np.random.default_rng(9)
    s = rng.lognormal(0.0, 0.3, 400)
    interval = np.column_stack([s, 1.25 * s * rng.lognormal(0.0, 0.1, 400)])
    j = judge(JudgePolicy(), Evidence.of_units(point, interval))
    assert j.verdict is Verdict.ROLLBACK and "interval score ratio" in j.reason
    assert [m.metric for m in j.metrics] == ["point", "interval"]
    assert j.metrics[0].verdict is Verdict.PROMOTE  # the median alone would pass
    assert j.metrics[1].verdict is Verdict.ROLLBACK
    # the interval turned off: the median alone decides, as before this judge
    j = judge(JudgePolicy(metrics=("point",)), Evidence.of_units(point, interval))
    assert j.verdict is Verdict.PROMOTE and len(j.metrics) == 1


def test_better_calibrated_intervals_and_an_equal_median_are_promoted() -> None:
    rng = np.random.default_rng(10)
    s = rng.lognormal(0.0, 0.3, 400)
    point = np.column_stack([s, s * rng.lognormal(-0.08, 0.05, 400)])
    interval = np.column_stack([s, 0.8 * s * rng.lognormal(0.0, 0.1, 400)])
    j = judge(JudgePolicy(), Evidence.of_units(point, interval))
    assert j.verdict is Verdict.PROMOTE
    assert "point error ratio" in j.reason and "interval score ratio" in j.reason


def test_without_quantiles_the_interval_is_not_judged_and_says_so() -> None:
    j = judge(JudgePolicy(), evidence(pairs=paired(0.9, 400)))
    assert j.verdict is Verdict.PROMOTE
    assert "interval score not judged: no forecast carried quantiles" in j.reason
    assert j.metrics[1].units == 0


def test_the_fallback_judges_both_metrics_per_series() -> None:
    rng = np.random.default_rng(12)
    st = rng.lognormal(0.0, 0.1, 30)
    ca = st[:10] * 1.0
    ev = replace(
        evidence(stable_series=st, canary_series=ca),
        stable_series_interval=st.copy(),
        canary_series_interval=1.6 * st[:10],
    )
    j = judge(JudgePolicy(), ev)
    assert j.method == "series" and j.verdict is Verdict.ROLLBACK
    assert "interval score ratio" in j.reason


def test_the_reason_and_samples_are_those_of_the_metric_that_decided() -> None:
    rng = np.random.default_rng(13)
    s = rng.lognormal(0.0, 0.3, 400)
    ev = Evidence.of_units(np.column_stack([s, s]), np.column_stack([s, 1.5 * s]))
    ev.steps[::2, COUNT_INTERVAL] = 0.0  # quantiles served on half the calls only
    j = judge(JudgePolicy(), ev)
    assert j.verdict is Verdict.ROLLBACK and j.samples == 200
    assert "interval score ratio 1.500" in j.reason and "after 200 effective units" in j.reason
    assert j.metrics[0].units == 400 and j.metrics[1].units == 200
