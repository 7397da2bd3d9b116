"""router.judge: unit tests, and the simulation study that is its acceptance test.

The simulation (``test_simulation_paired_judge_beats_kayenta``) is a hard world:
40 series, each with a lognormal difficulty level (sd 0.6) shared by all its
errors, a per-series canary interaction (sd 0.1, normalised so the true ratio
over the 40 series is exactly m), and a per-call shock (sd 0.5) that both models
face, plus model-specific noise (sd 0.3). Every tick each series gets one call;
with dual-run each call yields a pair. Without dual-run a quarter of the series
(10) is routed to the canary. The canary's multiplier m is 1.10, 1.00 or 0.90;
the budget is 150 ticks (6000 pairs); every method is re-run at every tick and
the rollout ends at its first PROMOTE or ROLLBACK (Kayenta: fails at the first
significant increase, passes if none by the end of the budget).
Run with ``-s`` to see the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import pytest

from router.judge import (
    Evidence,
    JudgePolicy,
    VariantStats,
    Verdict,
    boundary_factor,
    judge,
    mann_whitney_baseline,
    mann_whitney_z,
    optimal_rho,
    ratio_bounds,
    ratio_confidence_path,
    ratio_confidence_sequence,
    series_ratio_interval,
)

CALLS = VariantStats(calls=500, errors=0, p99_latency=0.02)


def evidence(
    pairs: np.ndarray | None = None,
    stable_series: np.ndarray | None = None,
    canary_series: np.ndarray | None = None,
    stable: VariantStats = CALLS,
    canary: VariantStats = CALLS,
) -> Evidence:
    return Evidence(
        pairs=np.empty((0, 2)) if pairs is None else pairs,
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
        ("tolerance", math.nan),
        ("alpha", "0.05"),
    ],
)
def test_policy_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        JudgePolicy(**{field: value})  # type: ignore[arg-type]


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
    assert j.samples == 400 and "ratio" in j.reason and "400 pairs" in j.reason
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


# --- the Kayenta-style baseline ------------------------------------------------------


def _reference_z(stable: np.ndarray, canary: np.ndarray) -> float:
    """U by counting pairs, variance with the textbook tie correction."""
    u = sum(float(c > s) + 0.5 * float(c == s) for c in canary for s in stable)
    n1, n2 = len(canary), len(stable)
    n = n1 + n2
    _, counts = np.unique(np.concatenate([canary, stable]), return_counts=True)
    ties = float(np.sum(counts**3 - counts))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    return (u - n1 * n2 / 2) / math.sqrt(var)


def test_mann_whitney_z_with_ties_matches_a_reference() -> None:
    rng = np.random.default_rng(6)
    s = rng.integers(0, 5, 23).astype(float)
    c = rng.integers(1, 6, 17).astype(float)
    assert mann_whitney_z(s, c) == pytest.approx(_reference_z(s, c))
    assert mann_whitney_z(np.array([1.0, 2, 3]), np.array([4.0, 5, 6])) == pytest.approx(
        4.5 / math.sqrt(5.25)
    )


def test_mann_whitney_baseline_obvious_cases() -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(1.0, 0.1, 50)
    assert mann_whitney_baseline(s, rng.normal(2.0, 0.1, 50)) is Verdict.ROLLBACK
    assert mann_whitney_baseline(s, rng.normal(1.0, 0.1, 50)) is Verdict.PROMOTE
    assert mann_whitney_baseline(s, rng.normal(0.5, 0.1, 50)) is Verdict.PROMOTE
    assert mann_whitney_baseline(s, np.empty(0)) is Verdict.INCONCLUSIVE
    assert mann_whitney_baseline(np.ones(10), np.ones(10)) is Verdict.PROMOTE


# --- the simulation study ------------------------------------------------------------

SERIES, CANARY_SERIES, TICKS, REPS = 40, 10, 150, 300
ALPHA, TOLERANCE = 0.05, 0.05


def simulate_world(
    rng: np.random.Generator, m: float, reps: int, ticks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Errors (stable, canary) of shape (reps, ticks, series) for every call of every series."""
    shape = (reps, ticks, SERIES)
    level = rng.lognormal(0.0, 0.6, (reps, 1, SERIES))
    inter = np.exp(rng.normal(0.0, 0.1, (reps, 1, SERIES)))
    # normalised so that E[canary] / E[stable] over these 40 series is exactly m
    mult = m * inter / ((level * inter).sum(-1, keepdims=True) / level.sum(-1, keepdims=True))
    shock = rng.lognormal(-(0.5**2) / 2, 0.5, shape)
    stable = level * shock * rng.lognormal(-(0.3**2) / 2, 0.3, shape)
    canary = mult * level * shock * rng.lognormal(-(0.3**2) / 2, 0.3, shape)
    return stable, canary


def first_decision(promote: np.ndarray, rollback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outcome per rollout (+1 promote, -1 rollback, 0 undecided) and the tick it happened."""
    decided = promote | rollback
    tick = np.where(decided.any(1), decided.argmax(1), -1)
    rows = np.arange(len(tick))
    out = np.zeros(len(tick), dtype=int)
    ok = tick >= 0
    out[ok] = np.where(promote[rows[ok], tick[ok]], 1, -1)
    return out, tick


def paired_path(stable: np.ndarray, canary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The judge's paired interval after every tick, vectorised with cumulative sums."""
    t = SERIES * np.arange(1, stable.shape[1] + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return np.cumsum(x.sum(-1), 1) / t

    ms, mc = mean(stable), mean(canary)
    vs, vc = mean(stable**2) - ms**2, mean(canary**2) - mc**2
    cov = mean(stable * canary) - ms * mc
    k = boundary_factor(t, ALPHA, optimal_rho(ALPHA))
    _, lo, hi = ratio_bounds(ms, mc, vs, vc, cov, k)
    return lo, hi


def run_paired(stable: np.ndarray, canary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = paired_path(stable, canary)
    return first_decision(hi < 1 + TOLERANCE, lo > 1 + TOLERANCE)


def run_series(stable: np.ndarray, canary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fallback: per-series mean errors, canary's quarter against stable's series."""
    n = np.arange(1, stable.shape[1] + 1)[None, :, None]
    st = np.cumsum(stable[:, :, CANARY_SERIES:], 1) / n
    ca = np.cumsum(canary[:, :, :CANARY_SERIES], 1) / n
    t = CANARY_SERIES
    big_k = float(boundary_factor(t, ALPHA, optimal_rho(ALPHA, 4 * t))) * math.sqrt(t)
    _, lo, hi = ratio_bounds(
        st.mean(-1),
        ca.mean(-1),
        st.var(-1, ddof=1) / (SERIES - CANARY_SERIES),
        ca.var(-1, ddof=1) / CANARY_SERIES,
        0.0,
        big_k,
    )
    return first_decision(hi < 1 + TOLERANCE, lo > 1 + TOLERANCE)


def kayenta_z_path(stable: np.ndarray, canary: np.ndarray) -> np.ndarray:
    """Mann-Whitney z (canary > stable) on all unpaired per-call errors so far, every tick.

    U is updated incrementally: new canary errors against all stable errors so far,
    plus old canary errors against the new stable ones (continuous data: no ties).
    """
    reps, ticks, _ = stable.shape
    ca, st = canary[:, :, :CANARY_SERIES], stable[:, :, CANARY_SERIES:]
    u = np.zeros(reps)
    z = np.empty((reps, ticks))
    for k in range(ticks):
        new_c, new_s = ca[:, k], st[:, k]
        old_c = ca[:, :k].reshape(reps, -1)
        all_s = st[:, : k + 1].reshape(reps, -1)
        u += (new_c[:, :, None] > all_s[:, None, :]).sum((1, 2))
        u += (old_c[:, :, None] > new_s[:, None, :]).sum((1, 2))
        n1, n2 = CANARY_SERIES * (k + 1), (SERIES - CANARY_SERIES) * (k + 1)
        z[:, k] = (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return z


def run_kayenta(stable: np.ndarray, canary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fails at the first interval with a significant increase (98 %); passes at the end."""
    critical = NormalDist().inv_cdf(1 - (1 - 0.98) / 2)
    fail = kayenta_z_path(stable, canary) > critical
    out, tick = first_decision(np.zeros_like(fail), fail)
    out[out == 0] = 1
    return out, tick


def test_vectorised_simulation_agrees_with_the_judge() -> None:
    stable, canary = simulate_world(np.random.default_rng(8), 1.0, 3, 40)
    lo, hi = paired_path(stable, canary)
    z = kayenta_z_path(stable, canary)
    for rep in range(3):
        for tick in (0, 9, 39):
            pairs = np.column_stack(
                [stable[rep, : tick + 1].ravel(), canary[rep, : tick + 1].ravel()]
            )
            j = judge(JudgePolicy(), evidence(pairs=pairs))
            assert (j.lower, j.upper) == pytest.approx((lo[rep, tick], hi[rep, tick]))
            s = stable[rep, : tick + 1, CANARY_SERIES:].ravel()
            c = canary[rep, : tick + 1, :CANARY_SERIES].ravel()
            assert z[rep, tick] == pytest.approx(mann_whitney_z(s, c))
            st = stable[rep, : tick + 1, CANARY_SERIES:].mean(0)
            ca = canary[rep, : tick + 1, :CANARY_SERIES].mean(0)
            j = judge(JudgePolicy(), evidence(stable_series=st, canary_series=ca))
            assert j.method == "series"


@dataclass(frozen=True)
class Rates:
    promoted: float
    rolled_back: float
    undecided: float
    median_tick: float


def rates(out: np.ndarray, tick: np.ndarray) -> Rates:
    done = tick[tick >= 0]
    median = float(np.median(done)) + 1 if done.size else math.nan
    return Rates(
        float(np.mean(out == 1)), float(np.mean(out == -1)), float(np.mean(out == 0)), median
    )


def test_simulation_paired_judge_beats_kayenta() -> None:
    methods = {"paired CS": run_paired, "series CS": run_series, "Kayenta MWU": run_kayenta}
    table: dict[tuple[str, float], Rates] = {}
    for seed, m in enumerate((1.10, 1.00, 0.90)):
        stable, canary = simulate_world(np.random.default_rng(100 + seed), m, REPS, TICKS)
        for name, run in methods.items():
            table[name, m] = rates(*run(stable, canary))

    print(f"\n{REPS} rollouts per scenario, {TICKS} ticks x {SERIES} series, judged every tick")
    print(f"{'method':12s} {'m':>5s} {'promoted':>9s} {'rolled back':>12s} {'undecided':>10s}")
    for (name, m), r in table.items():
        print(
            f"{name:12s} {m:5.2f} {r.promoted:9.1%} {r.rolled_back:12.1%} {r.undecided:10.1%}"
            f"   (median decision tick {r.median_tick:g})"
        )

    ours, kayenta = "paired CS", "Kayenta MWU"
    assert table[ours, 1.10].promoted <= 0.05
    assert table[ours, 1.00].promoted >= 0.90
    assert table[ours, 0.90].promoted >= 0.90
    # better than the baseline on both errors
    assert table[ours, 1.10].promoted < table[kayenta, 1.10].promoted
    assert table[ours, 1.00].promoted > table[kayenta, 1.00].promoted + 0.05
    # the weaker fallback still does not promote a worse canary
    assert table["series CS", 1.10].promoted <= 0.05
