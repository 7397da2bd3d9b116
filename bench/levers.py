"""The recipe's levers, each measured on the validation split (never on test).

    python -m bench.levers [--datasets a,b] [--levers default,x] [--out bench/results/levers.json]

For each bundled dataset the default recipe (`config_for(dataset)`, `TrainParams()`) is
trained, then one lever at a time is changed and trained again. Each variant is scored on
the validation windows of every series (the split early stopping reads; the test split is
not looked at): MASE, MAE over seasonal naive's, and the training seconds, so a lever's
gain can be set against its cost. The levers:

- ``members-1`` (or ``members-3`` while the default has one member): the other number of
  seed members, served as one network (`server.lifecycle.model.EnsembleForecaster`: the members'
  quantiles averaged, calibrated once on the combined output), at about three times the
  training and forward cost of one network;
- ``all-windows``: every training window each epoch instead of at most 2,048;
- ``epochs-60``: twice the epochs, patience 15;
- ``hidden-32``: half the LSTM's units (32, the default until the study's first run showed
  that 64 paid on every dataset);
- ``short-window``: lookback of the primary season plus the horizon, without the longer
  seasons (the default's window holds the longest season; this measures what that brings);
- ``per-series``: one model per series instead of one pooled over the dataset's series
  (multi-series datasets only).

Calendar covariates are not a lever here: the network reads values only, and the
seasonal differences of every season of the data carry the hour-of-day / day-of-week
position (see the README's model section).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS
from server.lifecycle.data import Dataset, load_dataset
from server.lifecycle.model import ModelConfig, build_model, predict
from server.lifecycle.pipeline import config_for
from server.lifecycle.recipe import DEFAULT_MEMBERS
from server.lifecycle.scoring import offline_scores
from server.lifecycle.training import TrainParams, _build_windows, train

DATASETS = ("seattle-temps", "sf-temps", "hourly-temps", "seattle-weather", "us-employment")
#: The members lever: one network against the default's ensemble, or the other way round.
MEMBERS_LEVER = f"members-{1 if DEFAULT_MEMBERS > 1 else 3}"
LEVERS = (
    "default",
    MEMBERS_LEVER,
    "all-windows",
    "epochs-60",
    "hidden-32",
    "short-window",
    "per-series",
)


def _val_forecasts(dataset: Dataset, config: ModelConfig, state: Any) -> dict[str, Any]:
    """Validation windows of every series and the served network's quantile forecasts."""
    _, val_w, _ = _build_windows(dataset, config, None)
    f = predict(build_model(config, state), val_w.inputs())
    return {
        "y": val_w.targets(),
        "f": f,
        "scale": val_w.insample_scale,
        "snaive": val_w.snaive(),
        "quantiles": config.quantiles,
    }


def _score(parts: list[dict[str, Any]]) -> dict[str, float]:
    y = np.concatenate([p["y"] for p in parts])
    f = np.concatenate([p["f"] for p in parts])
    scale = np.concatenate([p["scale"] for p in parts])
    snaive = np.concatenate([p["snaive"] for p in parts])
    s = offline_scores(y, f, parts[0]["quantiles"], insample_scale=scale, snaive=snaive)
    return {"val_mase": s["mase"], "val_relmae_snaive": s["relmae_snaive"]}


def _train(dataset: Dataset, config: ModelConfig, params: TrainParams) -> tuple[Any, float]:
    t = time.perf_counter()
    result = train(dataset, config, params, progress=False)
    return result.state_dict, time.perf_counter() - t


def lever(dataset: Dataset, name: str) -> dict[str, Any] | None:
    """One variant on one dataset: validation scores and training seconds (None where the
    lever does not apply)."""
    config, params = config_for(dataset), TrainParams()
    if name == "per-series":
        if len(dataset.series) < 2:
            return None
        parts, seconds = [], 0.0
        for s in dataset.series:
            one = replace(dataset, series=(s,))
            state, sec = _train(one, config, params)
            parts.append(_val_forecasts(one, config, state))
            seconds += sec
        return {**_score(parts), "train_seconds": seconds}
    if name == "short-window":
        short = config.season_length + config.horizon
        if config.lookback == short:
            return None
        config = replace(config, lookback=short, extra_seasons=(), encoder_steps=0)
    elif name == "all-windows":
        params = replace(params, max_windows_per_epoch=None)
    elif name == "epochs-60":
        params = replace(params, epochs=60, patience=15)
    elif name == "hidden-32":
        config = replace(config, hidden=32)
    elif name == MEMBERS_LEVER:
        config = replace(config, members=int(name.removeprefix("members-")))
    state, seconds = _train(dataset, config, params)
    return {**_score([_val_forecasts(dataset, config, state)]), "train_seconds": seconds}


def levers_section(
    datasets: tuple[str, ...] = DATASETS, levers: tuple[str, ...] = LEVERS
) -> dict[str, Any]:
    if "default" not in levers:
        raise ValueError("the levers are measured against the default: name it too")
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        raise ValueError(f"unknown lever(s) {', '.join(unknown)}; known: {', '.join(LEVERS)}")
    rows: list[dict[str, Any]] = []
    bar = tqdm(
        [(d, n) for d in datasets for n in levers], desc="levers", unit="fit", file=sys.stderr
    )
    loaded: dict[str, Dataset] = {}
    for ds_name, name in bar:
        bar.set_postfix(dataset=ds_name, lever=name)
        dataset = loaded.setdefault(ds_name, load_dataset(ds_name))
        got = lever(dataset, name)
        if got is not None:
            rows.append({"dataset": ds_name, "lever": name, **got})
    by = {(r["dataset"], r["lever"]): r for r in rows}
    for r in rows:
        base = by[(r["dataset"], "default")]
        r["val_mase_vs_default"] = r["val_mase"] / base["val_mase"]
        r["cost_vs_default"] = r["train_seconds"] / base["train_seconds"]
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--levers", default=",".join(LEVERS), help="default and others")
    parser.add_argument("--out", type=Path, default=RESULTS / "levers.json")
    args = parser.parse_args(argv)
    result = levers_section(tuple(args.datasets.split(",")), tuple(args.levers.split(",")))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["rows"]:
        print(
            f"{r['dataset']:<16} {r['lever']:<13} val MASE {r['val_mase']:.3f} "
            f"({r['val_mase_vs_default']:.3f}x default), "
            f"{r['train_seconds']:.1f} s ({r['cost_vs_default']:.1f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
