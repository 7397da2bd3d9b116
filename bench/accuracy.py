"""Section 6: forecast accuracy of the default LSTM recipe against statistical baselines.

On the bundled real series, with a rolling origin over each series' test period (the
last 15 %, which no model saw in training): the LSTM trained with the default recipe
(`TrainParams()`, `config_for(dataset)`: seasons, lookback and horizon from the data,
`DEFAULT_MEMBERS` seed members served as one network, no tuning per dataset), and
seasonal naive, AutoETS, AutoARIMA and MSTL (every season of the data) from
statsforecast, each fitted once per series on the history before its test period and
applied at every origin (see bench/stats_baselines.py; its own venv).

At least 50 origins per series where the test period allows (hourly: candidates every 6
hours, less than the 24-hour horizon; us-employment's 18 test months hold 7 per series).
Per dataset and method: MASE (scaled by the in-sample seasonal-naive MAE of each series'
training part), MAE over seasonal naive's MAE on the same windows, sMAPE (0..200), the
scaled pinball loss of the 0.1 / 0.5 / 0.9 quantiles (the baselines' level-80 bounds as
their 0.1 and 0.9 quantiles) and the coverage of the 80 % interval; the LSTM's coverage
without calibration beside it; the paired MASE difference LSTM minus AutoETS / AutoARIMA /
MSTL per forecast window, with a 95 % bootstrap interval (series drawn with replacement, and
within each, blocks of windows as long as a horizon: overlapping windows are not
independent);
training seconds. Hourly datasets also keep one week of day-ahead forecasts for a plot.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, ROOT
from server.lifecycle.data import load_dataset, split_points
from server.lifecycle.model import build_model, predict
from server.lifecycle.pipeline import config_for
from server.lifecycle.scoring import insample_seasonal_mae, seasonal_naive_forecast
from server.lifecycle.search import search_recipe
from server.lifecycle.training import TrainParams, train

STATS_VENV = CACHE / "stats-venv"
STATS_SCRIPT = ROOT / "bench" / "stats_baselines.py"
BASELINES = ("SeasonalNaive", "AutoETS", "AutoARIMA", "MSTL")
LABELS = {"SeasonalNaive": "seasonal naive"}
PAIRED = ("AutoETS", "AutoARIMA", "MSTL")
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Case:
    dataset: str
    stride: int  # steps between candidate origins
    max_origins: int  # per series, evenly spread over the candidates
    stats_window: int | None  # history the baselines see at each origin (None: all of it)
    fit_window: int | None  # history before the test period they are fitted on
    week_plot: bool = False


HOURS_4W, HOURS_8W = 24 * 28, 24 * 56
CASES = (
    Case("seattle-temps", 6, 60, HOURS_4W, HOURS_8W, week_plot=True),
    Case("sf-temps", 6, 60, HOURS_4W, HOURS_8W, week_plot=True),
    Case("seattle-weather", 1, 60, None, None),
    Case("us-employment", 1, 60, None, None),
)
SMOKE_CASES = (Case("seattle-temps", 24, 3, 24 * 14, 24 * 14, week_plot=True),)


def ensure_stats_venv() -> Path:
    """The statsforecast venv (its own: statsforecast pins pandas<3); its python."""
    python = STATS_VENV / "bin" / "python"
    check = [str(python), "-c", "import statsforecast"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(STATS_VENV)], check=True, capture_output=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "statsforecast==2.1.1"],
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
        candidates = np.unique(candidates[pick])
    return candidates


def _scores(
    y: np.ndarray, q: np.ndarray, scale: np.ndarray, snaive_mae: float
) -> tuple[dict[str, float], np.ndarray]:
    """Scores of (N, H, 3) quantiles (0.1, 0.5, 0.9); and the per-window MASE (N,)."""
    point = q[..., 1]
    err = np.abs(y - point)
    denom = np.abs(y) + np.abs(point)
    smape = np.divide(200.0 * err, denom, out=np.zeros_like(denom), where=denom > 0)
    levels = np.array([0.1, 0.5, 0.9])
    e = y[..., None] - q
    pinball = np.maximum(levels * e, (levels - 1.0) * e).mean(axis=(1, 2)) / scale
    window_mase = (err / scale[:, None]).mean(axis=1)
    return {
        "mase": float(window_mase.mean()),
        "relmae_snaive": float(err.mean() / snaive_mae),
        "smape": float(smape.mean()),
        "pinball_scaled": float(pinball.mean()),
        "coverage_80": float(((y >= q[..., 0]) & (y <= q[..., 2])).mean()),
    }, window_mase


def paired_difference(
    diff: np.ndarray, groups: np.ndarray, block: int, *, seed: int = 0
) -> dict[str, float]:
    """Mean of ``diff`` with a 95 % bootstrap interval: the series (``groups``) are drawn
    with replacement when there are several, and within each drawn series blocks of
    ``block`` consecutive windows (moving-block bootstrap) until its size is reached, so
    neither overlapping windows nor windows of one series count as independent."""
    rng = np.random.default_rng(seed)
    parts = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    means = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        drawn = [parts[i] for i in rng.integers(0, len(parts), len(parts))]
        picked = []
        for idx in drawn if len(parts) > 1 else parts:
            n = idx.size
            k = max(1, min(block, n))
            starts = rng.integers(0, n - k + 1, size=math.ceil(n / k))
            picked.append(idx[(starts[:, None] + np.arange(k)).ravel()[:n]])
        means[b] = diff[np.concatenate(picked)].mean()
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "lower": float(lo), "upper": float(hi)}


def run_stats(python: Path, request: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, **request)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
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


def _lstm_quantiles(net: Any, windows: np.ndarray, *, raw: bool = False) -> np.ndarray:
    if not raw:
        return predict(net, windows)
    import torch

    saved = net.interval_offset.clone()
    with torch.no_grad():
        net.interval_offset.zero_()
    try:
        return predict(net, windows)
    finally:
        with torch.no_grad():
            net.interval_offset.copy_(saved)


def _case(
    case: Case,
    params: TrainParams,
    stats_python: Path | None,
    search_budget: float | None = None,
) -> tuple[dict[str, Any], str]:
    dataset = load_dataset(case.dataset)
    config = config_for(dataset)
    t = time.perf_counter()
    search: dict[str, Any] | None = None
    if search_budget:
        found = search_recipe(dataset, config, params, search_budget, progress=False)
        result, search = found.result, found.to_dict()
    else:
        result = train(dataset, config, params, progress=False)
    train_seconds = time.perf_counter() - t
    net = build_model(result.config, result.state_dict)
    lb, h, m = config.lookback, config.horizon, config.season_length
    windows: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    naive: list[np.ndarray] = []
    scales: list[float] = []
    groups: list[int] = []
    fit_values, hist_values, hist_series = [], [], []
    week: list[tuple[int, int]] = []  # (row, origin) of the plotted day-ahead forecasts
    for k, s in enumerate(dataset.series):
        n = len(s)
        train_end, val_end = split_points(n)
        scale = insample_seasonal_mae(s.values[:train_end], m)
        first_fit = 0 if case.fit_window is None else max(0, val_end - case.fit_window)
        fit_values.append(s.values[first_fit:val_end])
        origins = [(t0, k) for t0 in _origins(n, lb, h, case)]
        if case.week_plot and k == 0:  # scored apart (group -1): the plotted week
            origins += [(val_end + 24 * d, -1) for d in range(7)]
        for t0, group in origins:
            if group < 0:
                week.append((len(windows), t0))
            windows.append(s.values[t0 - lb : t0])
            targets.append(s.values[t0 : t0 + h])
            scales.append(scale)
            groups.append(group)
            first = 0 if case.stats_window is None else max(0, t0 - case.stats_window)
            hist_values.append(s.values[first:t0])
            hist_series.append(k)
            naive.append(seasonal_naive_forecast(s.values[:t0], h, m))
    y, scale_arr, group_arr = np.stack(targets), np.asarray(scales), np.asarray(groups)
    scored = group_arr >= 0
    q = _lstm_quantiles(net, np.stack(windows))
    q_raw = _lstm_quantiles(net, np.stack(windows), raw=True)
    naive_arr = np.stack(naive)
    snaive_mae = float(np.abs(y[scored] - naive_arr[scored]).mean())
    models: dict[str, dict[str, float]] = {}
    per_window: dict[str, np.ndarray] = {}
    ys, scales_s = y[scored], scale_arr[scored]
    models["LSTM"], per_window["LSTM"] = _scores(ys, q[scored], scales_s, snaive_mae)
    models["LSTM"]["coverage_80_uncalibrated"] = float(
        ((y[scored] >= q_raw[scored][..., 0]) & (y[scored] <= q_raw[scored][..., 2])).mean()
    )
    stats_error = ""
    stats_seconds: dict[str, float] = {}
    forecasts: dict[str, np.ndarray] = {"LSTM": q}
    if stats_python is not None:
        request = {
            "fit_lengths": np.array([v.size for v in fit_values]),
            "fit_values": np.concatenate(fit_values),
            "lengths": np.array([v.size for v in hist_values]),
            "values": np.concatenate(hist_values),
            "series": np.array(hist_series),
            "season_lengths": np.array(config.seasons),
            "horizon": np.array(h),
        }
        try:
            out = run_stats(stats_python, request)
        except RuntimeError as exc:
            stats_error = str(exc)
        else:
            for name in BASELINES:
                bq = np.stack([out[f"{name}-lo-80"], out[name], out[f"{name}-hi-80"]], axis=-1)
                stats_seconds[name] = float(out[f"seconds-{name}"])
                error = str(out[f"error-{name}"])
                if error:
                    stats_error += f"{name}: {error}\n"
                if not np.isfinite(bq[scored]).all():
                    continue
                label = LABELS.get(name, name)
                forecasts[label] = bq
                models[label], per_window[label] = _scores(
                    y[scored], bq[scored], scale_arr[scored], snaive_mae
                )
    if "seasonal naive" not in models:  # point only without statsforecast
        nq = np.repeat(naive_arr[..., None], 3, axis=-1)
        models["seasonal naive"], per_window["seasonal naive"] = _scores(
            y[scored], nq[scored], scale_arr[scored], snaive_mae
        )
        models["seasonal naive"]["coverage_80"] = float("nan")
    origins_per_series = np.bincount(group_arr[scored])
    spacing = [float(np.diff(_origins(len(s), lb, h, case)).mean()) for s in dataset.series]
    block = max(1, math.ceil(h / min(spacing)))  # windows that share a target with the first
    paired = {
        name: paired_difference(
            per_window["LSTM"] - per_window[name], group_arr[scored], block, seed=1
        )
        for name in PAIRED
        if name in per_window
    }
    row: dict[str, Any] = {
        "dataset": case.dataset,
        "series": len(dataset.series),
        "forecasts": int(scored.sum()),
        "origins_per_series": int(origins_per_series.min()),
        "origin_spacing": min(spacing),
        "horizon": h,
        "lookback": lb,
        "seasons": list(config.seasons),
        "encoder_steps": config.encoder_steps,
        "bootstrap_block": block,
        "lstm_members": result.config.members,
        "lstm_search": search,
        "lstm_train_seconds": train_seconds,
        "lstm_epochs": result.epochs_run,  # summed over the members
        "stats_seconds": stats_seconds,
        "models": models,
        "paired_mase_difference": paired,
    }
    row["lstm_mase_over_snaive"] = models["LSTM"]["mase"] / models["seasonal naive"]["mase"]
    best = min((k for k in models if k != "LSTM"), key=lambda k: models[k]["mase"])
    row["best_baseline"] = best
    row["lstm_mase_over_best_baseline"] = models["LSTM"]["mase"] / models[best]["mase"]
    if week:
        s = dataset.series[0]
        t0 = week[0][1]
        row["week"] = {
            "start": str(s.timestamps[t0]),
            "actual": s.values[t0 : t0 + 24 * 7].tolist(),
            "forecasts": {
                name: {
                    key: np.concatenate([f[r, :24, j] for r, _ in week]).tolist()
                    for j, key in enumerate(("lo", "point", "hi"))
                }
                for name, f in forecasts.items()
                if name in ("LSTM", "AutoARIMA", "MSTL")
            },
        }
    return row, stats_error


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
        row, error = _case(case, params, stats_python)
        rows.append(row)
        if error:
            stats_error += f"{case.dataset}: {error}"
    return {
        "rows": rows,
        "stats_error": stats_error,
        "train_params": params.to_dict(),
        "ratios": {
            f"{r['dataset']}: LSTM MASE / best baseline ({r['best_baseline']})": r[
                "lstm_mase_over_best_baseline"
            ]
            for r in rows
        },
    }


def search_comparison(budget: float) -> dict[str, Any]:
    """The LSTM's test scores with the default recipe and with `train --search-budget`,
    on the same origins in one run (no statsforecast: its baselines do not change)."""
    from tqdm import tqdm

    params = TrainParams()
    rows = []
    for case in tqdm(CASES, desc="search", file=sys.stderr):
        default, _ = _case(case, params, None)
        searched, _ = _case(case, params, None, budget)
        rows.append(
            {
                "dataset": case.dataset,
                "default": {
                    "train_seconds": default["lstm_train_seconds"],
                    **default["models"]["LSTM"],
                },
                "searched": {
                    "train_seconds": searched["lstm_train_seconds"],
                    "search": searched["lstm_search"],
                    **searched["models"]["LSTM"],
                },
                "seasonal_naive_mase": default["models"]["seasonal naive"]["mase"],
            }
        )
    return {"budget_seconds": budget, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="the recipe search against the default")
    parser.add_argument("--search-budget", type=float, required=True, metavar="SECONDS")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/accuracy-search.json")
    args = parser.parse_args(argv)
    result = search_comparison(args.search_budget)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["rows"]:
        d, x = r["default"], r["searched"]
        print(
            f"{r['dataset']:<16} default MASE {d['mase']:.3f} cov {d['coverage_80']:.3f} "
            f"({d['train_seconds']:.0f} s); searched {x['search']['chosen']!r} MASE "
            f"{x['mase']:.3f} cov {x['coverage_80']:.3f} ({x['train_seconds']:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
