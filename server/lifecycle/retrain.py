"""Retraining: training data plus stored observations → a candidate, judged before any canary.

1. **prepare**: each series of the base dataset, continued by its stored observations
   (they win where both have a point), on its regular grid (gaps filled linearly, counted);
   stored series the base dataset does not know are left out (named in the result).
2. **train**: a chronological split of every series: the most recent ``holdout`` points
   (by default one week of seasons: 7 x season length) are held out and never trained on;
   early stopping reads the ``holdout`` points before them; everything older, stored
   observations included, is trained on.
3. **compare**: the candidate and the current stable model forecast every window of the
   held-out period (stride 1, the shorter of their horizons) and are scored with MASE.
   The candidate must not be worse: ``candidate <= stable * (1 + tolerance)``.
4. **register** only a candidate that passed, with lineage naming the base dataset, the
   content hash of the observations used, the data actually trained on and every
   parameter; a rejected candidate is not registered (the registry holds only models that
   may be rolled out). Starting the canary is the caller's part (`canarycast retrain`).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from canarycast import __version__
from server.lifecycle.data import Dataset, load_dataset, read_long_format, split_points
from server.lifecycle.drift import combine
from server.lifecycle.model import Forecaster, ModelConfig, build_model, predict
from server.lifecycle.observations import ObservationStore, observations_hash
from server.lifecycle.pipeline import config_for, recipe_key
from server.lifecycle.registry import ModelVersion, Registry
from server.lifecycle.scoring import insample_seasonal_mae
from server.lifecycle.training import TrainParams, TrainResult, train

__all__ = [
    "Comparison",
    "Prepared",
    "compare_on_holdout",
    "holdout_mase",
    "prepare_data",
    "register_candidate",
]


@dataclass(frozen=True)
class Prepared:
    """The data a candidate trains on and where it came from."""

    path: Path  # long-format Parquet (unique_id, ds, y)
    dataset: Dataset  # read back from `path`: its content hash names the data
    lineage: dict[str, Any]


def prepare_data(base: str, observations: Path | None, out: Path) -> Prepared:
    """Base dataset + stored observations → ``out`` (Parquet), read back as a Dataset."""
    dataset = load_dataset(base)
    store = ObservationStore(observations, readonly=True) if observations else None
    used = pd.DataFrame(columns=["unique_id", "ds", "y"])
    left_out: list[str] = []
    parts: list[pd.DataFrame] = []
    filled = 0
    try:
        if store is not None:
            known = set(dataset.series_ids)
            left_out = [s.series_id for s in store.series() if s.series_id not in known]
            used = store.frame(list(dataset.series_ids))
        for series in dataset.series:
            mine = used[used["unique_id"] == series.series_id]
            combined = combine(
                series.series_id,
                series,
                mine["ds"].to_numpy(dtype="datetime64[ns]"),
                mine["y"].to_numpy(dtype=np.float64),
                dataset.freq,
            )
            filled += combined.filled
            parts.append(
                pd.DataFrame(
                    {"unique_id": series.series_id, "ds": combined.timestamps, "y": combined.values}
                )
            )
    finally:
        if store is not None:
            store.close()
    frame = pd.concat(parts, ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    prepared = read_long_format(out)
    obs_info: dict[str, Any] = {"points": 0, "hash": None}
    if len(used):
        obs_info = {
            "points": len(used),
            "hash": observations_hash(used),
            "series": sorted(used["unique_id"].unique().tolist()),
            "first": str(used["ds"].min()),
            "last": str(used["ds"].max()),
        }
    lineage = {
        "base_dataset": dataset.name,
        "base_dataset_hash": dataset.content_hash,
        "observations": obs_info,
        "observations_left_out": left_out,
        "filled_points": filled,
        "data_hash": prepared.content_hash,
    }
    return Prepared(out, prepared, lineage)


def holdout_mase(
    net: Forecaster,
    dataset: Dataset,
    horizon: int,
    series_ids: list[str] | None = None,
    holdout: int | None = None,
) -> tuple[float, int]:
    """MASE of ``net`` on every window whose targets lie in the test split (the last
    ``holdout`` points, or 15 %) of each series, as training splits it; returns
    (MASE, windows)."""
    config = net.config
    lookback, m = config.lookback, config.season_length
    errors, windows = [], 0
    for s in dataset.series:
        if series_ids is not None and s.series_id not in series_ids:
            continue
        n = len(s)
        train_end, val_end = split_points(n, holdout=holdout)
        origins = np.arange(max(val_end, lookback), n - horizon + 1)
        if not len(origins) or train_end <= m:
            continue
        scale = insample_seasonal_mae(s.values[:train_end], m)
        x = s.values[origins[:, None] + np.arange(-lookback, 0)]
        y = s.values[origins[:, None] + np.arange(horizon)]
        point = predict(net, x)[:, :horizon, config.point_index]
        errors.append((np.abs(y - point) / scale).ravel())
        windows += len(origins)
    if not errors:
        raise ValueError(f"dataset {dataset.name!r} has no hold-out windows of horizon {horizon}")
    return float(np.concatenate(errors).mean()), windows


@dataclass(frozen=True)
class Comparison:
    candidate_mase: float
    stable_mase: float | None
    stable_version: str | None
    windows: int
    horizon: int
    tolerance: float

    @property
    def ratio(self) -> float | None:
        if self.stable_mase is None or self.stable_mase <= 0:
            return None
        return self.candidate_mase / self.stable_mase

    @property
    def not_worse(self) -> bool:
        return self.ratio is None or self.ratio <= 1.0 + self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_mase": self.candidate_mase,
            "stable_mase": self.stable_mase,
            "stable_version": self.stable_version,
            "ratio": self.ratio,
            "not_worse": self.not_worse,
            "holdout_windows": self.windows,
            "horizon": self.horizon,
            "tolerance": self.tolerance,
        }

    def format(self) -> str:
        if self.stable_mase is None:
            return (
                f"hold-out MASE {self.candidate_mase:.3f} on {self.windows} windows "
                "(no stable model to compare with)"
            )
        verdict = "not worse" if self.not_worse else "WORSE"
        return (
            f"hold-out ({self.windows} windows, horizon {self.horizon}): candidate MASE "
            f"{self.candidate_mase:.3f} vs stable {self.stable_version} {self.stable_mase:.3f}: "
            f"ratio {self.ratio:.3f} ({verdict}; tolerance {self.tolerance:g})"
        )


def compare_on_holdout(
    candidate: Forecaster,
    stable: tuple[str, Forecaster] | None,
    dataset: Dataset,
    tolerance: float = 0.0,
    holdout: int | None = None,
) -> Comparison:
    """Both models on the same held-out windows (the shorter of their horizons)."""
    horizon = candidate.config.horizon
    if stable is not None:
        horizon = min(horizon, stable[1].config.horizon)
    mase, windows = holdout_mase(candidate, dataset, horizon, holdout=holdout)
    stable_mase = None
    if stable is not None:
        stable_mase, _ = holdout_mase(stable[1], dataset, horizon, holdout=holdout)
    return Comparison(mase, stable_mase, stable[0] if stable else None, windows, horizon, tolerance)


def load_net(registry: Registry, name: str, version: str) -> Forecaster:
    mv, state = registry.load(name, version)
    return build_model(ModelConfig.from_dict(mv.config), state)


def train_candidate(
    prepared: Prepared,
    overrides: dict[str, Any],
    params: TrainParams,
    *,
    progress: bool = True,
) -> tuple[TrainResult, float]:
    """Train on the prepared data; returns the result and the seconds it took."""
    config = config_for(prepared.dataset, **overrides)
    started = time.monotonic()
    result = train(prepared.dataset, config, params, progress=progress)
    return result, time.monotonic() - started


def register_candidate(
    registry: Registry,
    name: str,
    prepared: Prepared,
    result: TrainResult,
    seconds: float,
    comparison: Comparison | None,
) -> ModelVersion:
    """Register with the lineage of a retrained model (data, observations, parameters)."""
    dataset = prepared.dataset
    metadata = {
        "dataset": prepared.lineage["base_dataset"],
        "dataset_source": f"{dataset.source} (base {prepared.lineage['base_dataset']} "
        "+ stored observations)",
        "dataset_hash": dataset.content_hash,
        "series": list(dataset.series_ids),
        "parameters": {**result.config.to_dict(), **result.params.to_dict()},
        "scores": result.scores,
        "training": {
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds": round(seconds, 2),
            "history": result.history,
        },
        "retrain": {
            **prepared.lineage,
            "holdout": comparison.to_dict() if comparison else None,
        },
        "recipe_key": recipe_key(dataset, result.config, result.params),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
    }
    return registry.register(name, result.state_dict, result.config.to_dict(), metadata)
