"""Anytime-valid confidence sequences for a ratio of means: pure numpy, no policy.

The asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
(2021, arXiv 2103.06476; Robbins' normal-mixture boundary) for the mean of t samples,
``mean_t +- s_t * k_t``, turned into an interval for R = E[canary] / E[stable] by
Fieller's construction (the set of r for which 0 is inside the CS of c - r s, a
quadratic in r, so the bounds are closed form and an unbounded set is ``inf``). How the
judge applies it to effective units is in `router.rollout.judge`.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "TARGET_PAIRS",
    "boundary_factor",
    "optimal_rho",
    "ratio_bounds",
    "ratio_confidence_sequence",
    "series_ratio_interval",
]

FloatArray = npt.NDArray[np.float64]

#: the default sample count the mixing scale is tuned for (the judge passes its own)
TARGET_PAIRS = 500


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
