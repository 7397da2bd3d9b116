"""The canary judge: pure functions from evidence to a verdict (no I/O, no clock).

Order of checks:

1. guardrails (error rate, p99 latency, canary against stable): a breach rolls
   back at once;
2. accuracy on *paired* errors (both variants forecast the same call, so both
   are scored on the same actuals): an anytime-valid confidence sequence for
   the ratio R = E[canary error] / E[stable error]; PROMOTE when its upper
   bound is below ``1 + tolerance``, ROLLBACK when its lower bound is above,
   otherwise INCONCLUSIVE (keep collecting);
3. without pairs (dual-run off): the same kind of interval on per-series mean
   errors of the series routed to each variant (``method="series"``,
   ``weaker=True``).

Too few samples is always INCONCLUSIVE with a reason saying so: no data never
means pass.

The confidence sequence is the asymptotic CS of Waudby-Smith, Arbour, Sinha,
Kennedy and Ramdas (2021, arXiv 2103.06476, Robbins' normal-mixture boundary):
for the mean of x_1..x_t with sample variance s_t^2,

    mean_t +- s_t * k_t,  k_t = sqrt(2 (t tau^2 + 1) / (t^2 tau^2) * log(sqrt(t tau^2 + 1) / alpha))

where ``tau = rho * s_t`` is the mixing scale in units of the data's standard
deviation (the paper writes ``rho`` with ``s_t`` inside; fixing ``tau`` makes
the boundary scale-free). It is applied to d_i(r) = c_i - r s_i for each
candidate ratio r; the set of r with 0 inside the CS solves a quadratic in r
(Fieller's construction), so bounds are closed form and the unbounded case is
reported as ``inf``. ``tau`` is the paper's optimum for a target sample size
``t*`` (``TARGET_PAIRS`` = 500 pairs: tight from a few hundred to several
thousand pairs, the range in which a 5 % tolerance is decided).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "TARGET_PAIRS",
    "Evidence",
    "JudgePolicy",
    "Judgement",
    "VariantStats",
    "Verdict",
    "boundary_factor",
    "judge",
    "mann_whitney_baseline",
    "mann_whitney_z",
    "optimal_rho",
    "ratio_bounds",
    "ratio_confidence_path",
    "ratio_confidence_sequence",
    "series_ratio_interval",
]

FloatArray = npt.NDArray[np.float64]

#: the sample size the boundary is tuned to be tightest at (pairs)
TARGET_PAIRS = 500


class Verdict(StrEnum):
    """What the judge says about the current step."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class JudgePolicy:
    """Thresholds of the judge; validated on construction."""

    tolerance: float = 0.05
    alpha: float = 0.05
    min_pairs: int = 30
    min_series: int = 8  # fallback method: per variant
    max_error_rate_increase: float = 0.02
    max_latency_ratio: float = 2.0
    min_guardrail_calls: int = 20

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("min_pairs", "min_series", "min_guardrail_calls"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        if self.max_error_rate_increase < 0:
            raise ValueError(
                f"max_error_rate_increase must be >= 0, got {self.max_error_rate_increase}"
            )
        if self.max_latency_ratio < 1:
            raise ValueError(f"max_latency_ratio must be >= 1, got {self.max_latency_ratio}")


@dataclass(frozen=True)
class VariantStats:
    """Guardrail inputs for one variant over the step."""

    calls: int = 0
    errors: int = 0
    p99_latency: float | None = None  # seconds


@dataclass(frozen=True)
class Evidence:
    """Everything the judge looks at, gathered since the step began."""

    pairs: np.ndarray  # (n, 2): per-forecast mean scaled errors (stable, canary)
    stable_series: np.ndarray  # fallback: per-series mean scaled errors, stable
    canary_series: np.ndarray  # fallback: per-series mean scaled errors, canary
    stable: VariantStats
    canary: VariantStats

    @classmethod
    def empty(cls) -> Evidence:
        """No evidence at all."""
        return cls(
            pairs=np.empty((0, 2)),
            stable_series=np.empty(0),
            canary_series=np.empty(0),
            stable=VariantStats(),
            canary=VariantStats(),
        )


@dataclass(frozen=True)
class Judgement:
    """A verdict with its reason and the interval behind it."""

    verdict: Verdict
    reason: str
    method: str  # "paired" | "series" | "none"
    weaker: bool
    samples: int
    ratio: float | None
    lower: float | None
    upper: float | None
    guardrail: str | None


# --- the confidence sequence ------------------------------------------------------


def optimal_rho(alpha: float, target: float = TARGET_PAIRS) -> float:
    """Mixing scale (in standard deviations) tightest at ``target`` samples (the paper's)."""
    two_log = -2.0 * math.log(alpha)
    return math.sqrt((two_log + math.log(two_log + 1.0)) / target)


def boundary_factor(t: npt.ArrayLike, alpha: float, rho: float) -> FloatArray:
    """k_t: the CS half-width for a mean of t samples, in units of their standard deviation."""
    tt = np.maximum(np.asarray(t, dtype=np.float64), 1.0)
    v = tt * rho * rho + 1.0
    return np.asarray(np.sqrt(2.0 * v / (tt * tt * rho * rho) * np.log(np.sqrt(v) / alpha)))


def ratio_bounds(
    mean_s: npt.ArrayLike,
    mean_c: npt.ArrayLike,
    var_s: npt.ArrayLike,
    var_c: npt.ArrayLike,
    cov: npt.ArrayLike,
    k: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Fieller set {r >= 0 : (mc - r ms)^2 <= k^2 (vc - 2 r cov + r^2 vs)}, elementwise.

    Returns (estimate, lower, upper); ``upper`` is ``inf`` when the set is unbounded
    (the stable mean is not distinguishable from zero), estimate is ``nan`` when
    stable's mean is 0.
    """
    ms, mc = np.asarray(mean_s, dtype=np.float64), np.asarray(mean_c, dtype=np.float64)
    k2 = np.asarray(k, dtype=np.float64) ** 2
    a = ms * ms - k2 * np.asarray(var_s, dtype=np.float64)
    b = ms * mc - k2 * np.asarray(cov, dtype=np.float64)
    c = mc * mc - k2 * np.asarray(var_c, dtype=np.float64)
    disc = np.maximum(b * b - a * c, 0.0)
    root = np.sqrt(disc)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = np.where(ms > 0, mc / np.where(ms > 0, ms, 1.0), np.nan)
        safe_a = np.where(a > 0, a, 1.0)
        r1 = (b - root) / safe_a
        r2 = (b + root) / safe_a
        # a < 0: the set is everything outside (r1', r2'), roots of the same quadratic
        neg_a = np.where(a < 0, a, -1.0)
        n1 = (b + root) / neg_a  # smaller root when a < 0
        n2 = (b - root) / neg_a
    bounded = a > 0
    # unbounded case: hull of the set within [0, inf) is [max(0, n2), inf) when the gap
    # around zero excludes 0, else [0, inf)
    gap_excludes_zero = (a < 0) & (disc > 0) & (n1 < 0) & (n2 > 0)
    lower = np.where(bounded, np.maximum(r1, 0.0), np.where(gap_excludes_zero, n2, 0.0))
    upper = np.where(bounded, np.maximum(r2, 0.0), np.inf)
    return est, lower, upper


def _prefix_moments(
    pairs: np.ndarray,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """For every prefix t = 1..n: (t, mean_s, mean_c, var_s, var_c, cov), population form."""
    p = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    t = np.arange(1, p.shape[0] + 1, dtype=np.float64)
    # centre on the overall mean for numerical stability of the running sums
    centre = p.mean(axis=0) if p.shape[0] else np.zeros(2)
    x = p - centre
    s1 = np.cumsum(x, axis=0)
    ms, mc = s1[:, 0] / t, s1[:, 1] / t
    var_s = np.maximum(np.cumsum(x[:, 0] ** 2) / t - ms * ms, 0.0)
    var_c = np.maximum(np.cumsum(x[:, 1] ** 2) / t - mc * mc, 0.0)
    cov = np.cumsum(x[:, 0] * x[:, 1]) / t - ms * mc
    return t, ms + centre[0], mc + centre[1], var_s, var_c, cov


def ratio_confidence_path(
    pairs: np.ndarray, alpha: float, rho: float | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """The ratio CS at every prefix t = 1..n of ``pairs`` (columns stable, canary).

    The intervals are valid simultaneously over t, so their running intersection
    (``np.maximum.accumulate(lower)``, ``np.minimum.accumulate(upper)``) is too.
    """
    tau = optimal_rho(alpha) if rho is None else rho
    t, ms, mc, vs, vc, cov = _prefix_moments(pairs)
    return ratio_bounds(ms, mc, vs, vc, cov, boundary_factor(t, alpha, tau))


def ratio_confidence_sequence(
    pairs: np.ndarray, alpha: float, rho: float | None = None
) -> tuple[float, float, float]:
    """(estimate, lower, upper) of canary/stable mean error after all ``pairs``.

    ``rho`` is the mixing scale in standard deviations of d(r) (default: tightest
    at ``TARGET_PAIRS``). Anytime-valid: re-running this as pairs arrive keeps the
    two-sided miscoverage at most ``alpha`` (asymptotically).
    """
    p = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    n = p.shape[0]
    if n < 2:
        return math.nan, 0.0, math.inf
    tau = optimal_rho(alpha) if rho is None else rho
    ms, mc = p.mean(axis=0)
    d = p - (ms, mc)
    vs, vc = float(np.mean(d[:, 0] ** 2)), float(np.mean(d[:, 1] ** 2))
    cov = float(np.mean(d[:, 0] * d[:, 1]))
    k = boundary_factor(n, alpha, tau)
    est, lo, hi = ratio_bounds(ms, mc, vs, vc, cov, k)
    return float(est), float(lo), float(hi)


def series_ratio_interval(
    stable: np.ndarray, canary: np.ndarray, alpha: float, rho: float | None = None
) -> tuple[float, float, float]:
    """(estimate, lower, upper) of the ratio of mean per-series errors, two independent samples.

    The boundary of the paired CS with t = the smaller group size (mixing scale tuned
    for 4 t), applied to the standard error of c_bar - r s_bar (independent means):
    conservative, and it barely shrinks with time because the series, not the calls,
    are the unit.
    """
    s = np.asarray(stable, dtype=np.float64).ravel()
    c = np.asarray(canary, dtype=np.float64).ravel()
    n, m = s.size, c.size
    if n < 2 or m < 2:
        return math.nan, 0.0, math.inf
    t = min(n, m)
    tau = optimal_rho(alpha, 4 * t) if rho is None else rho
    big_k = float(boundary_factor(t, alpha, tau)) * math.sqrt(t)
    vs, vc = float(s.var(ddof=1)) / n, float(c.var(ddof=1)) / m
    est, lo, hi = ratio_bounds(float(s.mean()), float(c.mean()), vs, vc, 0.0, big_k)
    return float(est), float(lo), float(hi)


# --- Kayenta-style baseline ---------------------------------------------------------


def mann_whitney_z(stable: np.ndarray, canary: np.ndarray) -> float:
    """Normal-approximation z of the Mann-Whitney U for canary > stable, tie-corrected."""
    s = np.asarray(stable, dtype=np.float64).ravel()
    c = np.asarray(canary, dtype=np.float64).ravel()
    n1, n2 = c.size, s.size
    if n1 == 0 or n2 == 0:
        return 0.0
    both = np.concatenate([c, s])
    order = np.argsort(both, kind="mergesort")
    sorted_ = both[order]
    n = both.size
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_[1:] != sorted_[:-1]])
    counts = np.diff(np.r_[starts, n])
    avg_rank = starts + (counts + 1) / 2.0  # 1-based average rank of each tie group
    ranks = np.empty(n)
    ranks[order] = np.repeat(avg_rank, counts)
    u = float(ranks[:n1].sum()) - n1 * (n1 + 1) / 2.0
    ties = float(np.sum(counts.astype(np.float64) ** 3 - counts))
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 0.0
    return (u - n1 * n2 / 2.0) / math.sqrt(var)


def mann_whitney_baseline(
    stable: np.ndarray, canary: np.ndarray, confidence: float = 0.98
) -> Verdict:
    """Kayenta-style judge: two-sided Mann-Whitney U; significantly higher canary fails.

    A canary not significantly different (or significantly lower) passes, as in
    Kayenta; empty input is INCONCLUSIVE.
    """
    if np.size(stable) == 0 or np.size(canary) == 0:
        return Verdict.INCONCLUSIVE
    z = mann_whitney_z(stable, canary)
    p = math.erfc(abs(z) / math.sqrt(2.0))
    if p < 1.0 - confidence and z > 0:
        return Verdict.ROLLBACK
    return Verdict.PROMOTE


# --- the judge ---------------------------------------------------------------------


def _rate(stats: VariantStats) -> float:
    return stats.errors / stats.calls if stats.calls > 0 else 0.0


def _guardrails(policy: JudgePolicy, ev: Evidence) -> Judgement | None:
    st, ca = ev.stable, ev.canary
    if ca.calls >= policy.min_guardrail_calls:
        cr, sr = _rate(ca), _rate(st)
        if cr - sr > policy.max_error_rate_increase:
            return _breach(
                "error_rate",
                f"canary error rate {cr:.1%} ({ca.errors}/{ca.calls}) exceeds stable's "
                f"{sr:.1%} ({st.errors}/{st.calls}) by more than "
                f"{policy.max_error_rate_increase:.1%}",
            )
    if (
        ca.calls >= policy.min_guardrail_calls
        and st.calls >= policy.min_guardrail_calls
        and ca.p99_latency is not None
        and st.p99_latency is not None
        and ca.p99_latency > policy.max_latency_ratio * st.p99_latency
    ):
        return _breach(
            "latency_p99",
            f"canary p99 latency {ca.p99_latency * 1e3:.1f} ms is more than "
            f"{policy.max_latency_ratio:g}x stable's {st.p99_latency * 1e3:.1f} ms",
        )
    return None


def _breach(name: str, reason: str) -> Judgement:
    return Judgement(Verdict.ROLLBACK, reason, "none", False, 0, None, None, None, name)


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}"


def _decide(
    policy: JudgePolicy, method: str, n: int, unit: str, est: float, lo: float, hi: float
) -> Judgement:
    bar = 1.0 + policy.tolerance
    interval = f"ratio {_fmt(est)} [{_fmt(lo)}, {_fmt(hi)}]"
    weaker = method == "series"
    note = " (series-level, weaker)" if weaker else ""
    if hi < bar:
        verdict, reason = Verdict.PROMOTE, f"{interval} < {bar:g} after {n} {unit}{note}"
    elif lo > bar:
        verdict, reason = Verdict.ROLLBACK, f"{interval} > {bar:g} after {n} {unit}{note}"
    else:
        verdict = Verdict.INCONCLUSIVE
        reason = f"{interval} still contains {bar:g} after {n} {unit}{note}"
    ratio = None if math.isnan(est) else est
    return Judgement(verdict, reason, method, weaker, n, ratio, lo, hi, None)


def _too_few(method: str, n: int, need: int, unit: str, est: float | None) -> Judgement:
    weaker = method == "series"
    reason = f"too few samples: {n} {unit}, need at least {need}"
    ratio = None if est is None or math.isnan(est) else est
    return Judgement(Verdict.INCONCLUSIVE, reason, method, weaker, n, ratio, None, None, None)


def judge(policy: JudgePolicy, evidence: Evidence) -> Judgement:
    """The verdict for the current step: guardrails, then paired accuracy, else series."""
    breach = _guardrails(policy, evidence)
    if breach is not None:
        return breach
    pairs = np.asarray(evidence.pairs, dtype=np.float64).reshape(-1, 2)
    pairs = pairs[np.isfinite(pairs).all(axis=1)]
    n = pairs.shape[0]
    if n > 0:
        if n < policy.min_pairs:
            s = float(pairs[:, 0].mean())
            est = float(pairs[:, 1].mean()) / s if s > 0 else None
            return _too_few("paired", n, policy.min_pairs, "pairs", est)
        est, lo, hi = ratio_confidence_sequence(pairs, policy.alpha)
        return _decide(policy, "paired", n, "pairs", est, lo, hi)
    st = np.asarray(evidence.stable_series, dtype=np.float64).ravel()
    ca = np.asarray(evidence.canary_series, dtype=np.float64).ravel()
    st, ca = st[np.isfinite(st)], ca[np.isfinite(ca)]
    if st.size == 0 and ca.size == 0:
        return Judgement(
            Verdict.INCONCLUSIVE,
            "too few samples: no pairs and no per-series errors yet",
            "none",
            False,
            0,
            None,
            None,
            None,
            None,
        )
    k = min(st.size, ca.size)
    if k < policy.min_series:
        return _too_few(
            "series", k, policy.min_series, "series on the smaller variant (no pairs)", None
        )
    est, lo, hi = series_ratio_interval(st, ca, policy.alpha)
    return _decide(policy, "series", k, "series per variant", est, lo, hi)
