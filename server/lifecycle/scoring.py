"""Offline scores of quantile forecasts against actuals, and the seasonal-naive baseline.

Point metrics use the median (quantile 0.5). MASE follows Hyndman & Koehler (2006): each
absolute error is divided by the in-sample seasonal-naive MAE of its series' training part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "coverage_key",
    "insample_seasonal_mae",
    "offline_scores",
    "pinball_loss",
    "seasonal_naive_forecast",
]


def seasonal_naive_forecast(history: np.ndarray, horizon: int, season_length: int) -> np.ndarray:
    """Step h (1-based) repeats the value at ``t + h - m * ceil(h / m)``, t the last index.

    Works along the last axis, so a (batch, n) history gives (batch, horizon).
    ValueError if the history is shorter than one season.
    """
    if horizon < 0 or season_length < 1:
        raise ValueError(
            f"need horizon >= 0 and season_length >= 1, got {horizon}, {season_length}"
        )
    h = np.asarray(history, dtype=np.float64)
    if h.ndim == 0 or h.shape[-1] < season_length:
        raise ValueError(
            f"history needs at least season_length={season_length} values, got shape {h.shape}"
        )
    idx = np.arange(horizon) % season_length - season_length
    return h[..., idx]


def insample_seasonal_mae(values: np.ndarray, season_length: int) -> float:
    """Mean absolute seasonal difference ``mean |y[t] - y[t-m]|`` (the MASE denominator).

    ValueError if the series has no more than ``season_length`` values.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or season_length < 1 or v.size <= season_length:
        raise ValueError(
            f"need a 1-D series longer than season_length={season_length}, got shape {v.shape}"
        )
    return float(np.abs(v[season_length:] - v[:-season_length]).mean())


def pinball_loss(y_true: np.ndarray, forecasts: np.ndarray, quantiles: Sequence[float]) -> float:
    """Mean quantile loss over all entries; ``forecasts`` has a trailing quantile axis."""
    q = np.asarray(quantiles, dtype=np.float64)
    err = np.asarray(y_true, dtype=np.float64)[..., None] - np.asarray(forecasts, np.float64)
    return float(np.maximum(q * err, (q - 1.0) * err).mean())


def coverage_key(lo: float, hi: float) -> str:
    """``coverage_0.1_0.9`` for the interval from quantile 0.1 to 0.9."""
    return f"coverage_{lo:g}_{hi:g}"


def offline_scores(
    y_true: np.ndarray,
    forecasts: np.ndarray,
    quantiles: Sequence[float],
    *,
    insample_scale: np.ndarray,
    snaive: np.ndarray,
) -> dict[str, float]:
    """Scores of N forecast windows.

    ``y_true`` (N, H) actuals; ``forecasts`` (N, H, Q) quantiles; ``insample_scale`` (N,)
    the training-part seasonal-naive MAE of each window's series (must be > 0); ``snaive``
    (N, H) the seasonal-naive forecast of the same windows. Keys: mae, rmse, smape (percent,
    0..200, 0 where actual and forecast are both 0), mase, snaive_mae, relmae_snaive (inf when
    the baseline is exact and the model is not), pinball, test_windows and, with two or more
    quantiles, ``coverage_<lo>_<hi>`` (share of actuals within the outermost quantiles).
    """
    y = np.asarray(y_true, dtype=np.float64)
    f = np.asarray(forecasts, dtype=np.float64)
    qs = [float(q) for q in quantiles]
    base = np.asarray(snaive, dtype=np.float64)
    scale = np.asarray(insample_scale, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"y_true must be shaped (N, H) with N, H >= 1, got {y.shape}")
    if f.shape != (*y.shape, len(qs)):
        raise ValueError(f"forecasts must be shaped {(*y.shape, len(qs))}, got {f.shape}")
    if base.shape != y.shape:
        raise ValueError(f"snaive must be shaped {y.shape}, got {base.shape}")
    if scale.shape != (y.shape[0],):
        raise ValueError(f"insample_scale must be shaped {(y.shape[0],)}, got {scale.shape}")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("insample_scale must be finite and > 0 (MASE is undefined otherwise)")
    if 0.5 not in qs:
        raise ValueError(f"quantiles must contain 0.5, got {qs}")

    point = f[..., qs.index(0.5)]
    abs_err = np.abs(y - point)
    mae = float(abs_err.mean())
    denom = np.abs(y) + np.abs(point)
    smape_terms = np.divide(200.0 * abs_err, denom, out=np.zeros_like(denom), where=denom > 0)
    snaive_mae = float(np.abs(y - base).mean())
    relmae = mae / snaive_mae if snaive_mae > 0 else (1.0 if mae == 0 else math.inf)
    scores = {
        "mae": mae,
        "rmse": float(np.sqrt(np.mean((y - point) ** 2))),
        "smape": float(smape_terms.mean()),
        "mase": float((abs_err / scale[:, None]).mean()),
        "snaive_mae": snaive_mae,
        "relmae_snaive": relmae,
        "pinball": pinball_loss(y, f, qs),
        "test_windows": float(y.shape[0]),
    }
    if len(qs) >= 2:
        inside = (y >= f[..., 0]) & (y <= f[..., -1])
        scores[coverage_key(qs[0], qs[-1])] = float(inside.mean())
    return scores
