"""Section 6: forecast accuracy of the default LSTM recipe against statistical baselines.

On the bundled real series, with a rolling origin over each series' test period (the
last 15 %, which no model saw in training): the LSTM trained with the default recipe
(`TrainParams()`, `config_for(dataset)`; us-employment is too short for a 24-step
horizon, so there lookback 24 / horizon 12), seasonal naive, and AutoETS / AutoARIMA
from statsforecast (run in their own venv, see bench/stats_baselines.py). Scores per
dataset: MASE (scaled by the in-sample seasonal-naive MAE of each series' training
part), sMAPE (0..200) and the coverage of the 80 % interval (the LSTM's 0.1..0.9
quantiles, the baselines' level-80 intervals). Honest numbers: no tuning per dataset.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, ROOT
from server.data import load_dataset, split_points
from server.model import predict
from server.pipeline import config_for
from server.scoring import insample_seasonal_mae, seasonal_naive_forecast
from server.training import TrainParams, train

STATS_VENV = CACHE / "stats-venv"
STATS_SCRIPT = ROOT / "bench" / "stats_baselines.py"


@dataclass(frozen=True)
class Case:
    dataset: str
    overrides: dict[str, Any]
    stride: int  # steps between origins
    max_origins: int  # per series, evenly spread over the test period
    stats_window: int | None  # history the statistical models fit on (None: all of it)


# AutoARIMA with a 24-hour season is the slow part (minutes per hourly dataset on 2 loaded
# cores with 12 origins of 4 weeks); 8 origins of 2 weeks keep `make bench` near 20 min.
CASES = (
    Case("seattle-temps", {}, 24, 8, 24 * 14),
    Case("sf-temps", {}, 24, 8, 24 * 14),
    Case("seattle-weather", {}, 7, 12, None),
    Case("us-employment", {"lookback": 24, "horizon": 12}, 1, 7, None),
)
SMOKE_CASES = (Case("seattle-temps", {"hidden": 8, "layers": 1, "horizon": 12}, 24, 3, 24 * 7),)


def ensure_stats_venv() -> Path:
    """The statsforecast venv (its own: statsforecast pins pandas<3); its python."""
    python = STATS_VENV / "bin" / "python"
    check = [str(python), "-c", "import statsforecast"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(STATS_VENV)], check=True, capture_output=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "statsforecast"],
        check=True,
        capture_output=True,
        text=True,
    )
    return python


def _origins(n: int, lookback: int, horizon: int, case: Case) -> np.ndarray:
    _, val_end = split_points(n)
    candidates = np.arange(max(val_end, lookback), n - horizon + 1, case.stride)
    if candidates.size > case.max_origins:
        pick = np.linspace(0, candidates.size - 1, case.max_origins).round().astype(int)
        candidates = candidates[pick]
    return candidates


def _scores(
    y: np.ndarray,
    point: np.ndarray,
    lo: np.ndarray | None,
    hi: np.ndarray | None,
    scale: np.ndarray,
) -> dict[str, float]:
    err = np.abs(y - point)
    denom = np.abs(y) + np.abs(point)
    smape = np.divide(200.0 * err, denom, out=np.zeros_like(denom), where=denom > 0)
    out = {"mase": float((err / scale[:, None]).mean()), "smape": float(smape.mean())}
    out["coverage_80"] = (
        float(((y >= lo) & (y <= hi)).mean()) if lo is not None and hi is not None else float("nan")
    )
    return out


def run_stats(
    python: Path, histories: list[np.ndarray], season: int, horizon: int
) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(
            src,
            lengths=np.array([h.size for h in histories]),
            values=np.concatenate(histories),
            season_length=season,
            horizon=horizon,
        )
        proc = subprocess.run(
            [str(python), str(STATS_SCRIPT), str(src), str(dst)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"statsforecast failed:\n{proc.stderr[-3000:]}")
        with np.load(dst) as data:
            return {k: data[k] for k in data.files}


def accuracy_section(*, smoke: bool = False, with_stats: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    stats_python: Path | None = None
    stats_error = ""
    if with_stats:
        try:
            stats_python = ensure_stats_venv()
        except (OSError, subprocess.CalledProcessError) as exc:
            stats_error = f"{type(exc).__name__}: {exc} {getattr(exc, 'stderr', '')}"[-3000:]
    cases = SMOKE_CASES if smoke else CASES
    params = TrainParams(epochs=1, max_windows_per_epoch=256) if smoke else TrainParams()
    rows = []
    for case in tqdm(cases, desc="accuracy", leave=False, file=sys.stderr):
        dataset = load_dataset(case.dataset)
        config = config_for(dataset, **case.overrides)
        t = time.perf_counter()
        result = train(dataset, config, params, progress=False)
        train_seconds = time.perf_counter() - t
        from server.model import build_model

        net = build_model(result.config, result.state_dict)
        lb, h, m = config.lookback, config.horizon, config.season_length
        windows, targets, scales, stat_hist, naive = [], [], [], [], []
        for s in dataset.series:
            n = len(s)
            train_end, _ = split_points(n)
            scale = insample_seasonal_mae(s.values[:train_end], m)
            for t0 in _origins(n, lb, h, case):
                windows.append(s.values[t0 - lb : t0])
                targets.append(s.values[t0 : t0 + h])
                scales.append(scale)
                first = 0 if case.stats_window is None else max(0, t0 - case.stats_window)
                stat_hist.append(s.values[first:t0])
                naive.append(seasonal_naive_forecast(s.values[:t0], h, m))
        y, scale_arr = np.stack(targets), np.asarray(scales)
        q = predict(net, np.stack(windows))
        qs = list(config.quantiles)
        models: dict[str, dict[str, float]] = {
            "LSTM": _scores(y, q[:, :, qs.index(0.5)], q[:, :, 0], q[:, :, -1], scale_arr),
        }
        row: dict[str, Any] = {
            "dataset": case.dataset,
            "series": len(dataset.series),
            "forecasts": int(y.shape[0]),
            "horizon": h,
            "lookback": lb,
            "season_length": m,
            "stride": case.stride,
            "stats_window": case.stats_window,
            "lstm_train_seconds": train_seconds,
            "lstm_epochs": result.epochs_run,
            "lstm_quantiles": [qs[0], qs[-1]],
        }
        if stats_python is not None:
            try:
                out = run_stats(stats_python, stat_hist, m, h)
                row["stats_seconds"] = float(out["seconds"])
                for name, label in (
                    ("SeasonalNaive", "seasonal naive"),
                    ("AutoETS", "AutoETS"),
                    ("AutoARIMA", "AutoARIMA"),
                ):
                    models[label] = _scores(
                        y, out[name], out[f"{name}-lo-80"], out[f"{name}-hi-80"], scale_arr
                    )
            except RuntimeError as exc:
                stats_error = str(exc)
        if "seasonal naive" not in models:  # point only, no interval without statsforecast
            models["seasonal naive"] = _scores(y, np.stack(naive), None, None, scale_arr)
        row["models"] = models
        row["lstm_mase_over_snaive"] = models["LSTM"]["mase"] / models["seasonal naive"]["mase"]
        best = min(
            (k for k in models if k != "LSTM"), key=lambda k: models[k]["mase"], default=None
        )
        if best is not None:
            row["best_baseline"] = best
            row["lstm_mase_over_best_baseline"] = models["LSTM"]["mase"] / models[best]["mase"]
        rows.append(row)
    return {
        "rows": rows,
        "stats_error": stats_error,
        "train_params": params.to_dict(),
        "ratios": {
            f"{r['dataset']}: LSTM MASE / best baseline ({r.get('best_baseline', '-')})": r.get(
                "lstm_mase_over_best_baseline", float("nan")
            )
            for r in rows
        },
    }
