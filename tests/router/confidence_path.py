"""The ratio confidence sequence at every prefix of a stream of pairs, for the judge's tests.

The judge computes the interval once per tick
(``router.rollout.confidence.ratio_confidence_sequence``); the tests check its anytime
validity by computing it at every t of a run in one pass.
"""

from __future__ import annotations

import numpy as np

from router.rollout.confidence import FloatArray, boundary_factor, optimal_rho, ratio_bounds


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
