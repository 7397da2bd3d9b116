"""The Kayenta-style baseline judge the canary judge is measured against (bench section 7).

Kayenta's canary analysis runs a two-sided Mann-Whitney U test of the canary's metric
against the baseline's, re-run every interval. Not used in production: the router
judges with ``router.rollout.judge.judge``.
"""

from __future__ import annotations

import math

import numpy as np

from router.rollout.judge import Verdict

__all__ = ["mann_whitney_baseline", "mann_whitney_z"]


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
