"""What seed members cost: training time of the default recipe and the served forward pass.

    python -m bench.members_cost [--out bench/results/members-cost.json] [--no-train]

1. The default recipe (`config_for(dataset)`, `TrainParams()`, three members) trained on
   hourly-temps, the largest bundled dataset, with its progress bar: wall and CPU seconds
   and the load average before and after (the target is at most 2 minutes on 2 cores).
2. `server.lifecycle.model.predict` on a batch of 256 real hourly windows (the default config of
   seattle-temps: lookback 192, 64 units), one network against the three-member ensemble,
   at one and two torch threads: forecasts/s, median of 7 interleaved rounds of 5 calls.
   Cost does not depend on the weights, so the networks are untrained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS
from server.lifecycle.data import load_dataset
from server.lifecycle.model import build_model, predict
from server.lifecycle.pipeline import config_for
from server.lifecycle.training import TrainParams, train

BATCH = 256


def training_time() -> dict[str, Any]:
    dataset = load_dataset("hourly-temps")
    config = config_for(dataset)
    load_before = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(dataset, config, TrainParams(), progress=True)
    return {
        "dataset": dataset.name,
        "members": config.members,
        "torch_threads": torch.get_num_threads(),
        "wall_seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "epochs_run": result.epochs_run,
        "test_mase": result.scores["mase"],
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def forward_cost(rounds: int = 7, calls: int = 5) -> dict[str, Any]:
    dataset = load_dataset("seattle-temps")
    base = config_for(dataset)
    y = dataset.series[0].values
    starts = np.random.default_rng(0).integers(0, len(y) - base.lookback, BATCH)
    windows = np.stack([y[s : s + base.lookback] for s in starts])
    saved = torch.get_num_threads()
    rows = []
    load_before = os.getloadavg()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            nets = {k: build_model(replace(base, members=k)) for k in (1, base.members)}
            for net in nets.values():
                predict(net, windows)  # warm-up
            seconds: dict[int, list[float]] = {k: [] for k in nets}
            for _ in range(rounds):
                for k, net in nets.items():
                    t = time.perf_counter()
                    for _ in range(calls):
                        predict(net, windows)
                    seconds[k].append((time.perf_counter() - t) / calls)
            for k, s in seconds.items():
                median = float(np.median(s))
                rows.append(
                    {
                        "torch_threads": threads,
                        "members": k,
                        "seconds_per_batch": median,
                        "forecasts_per_s": BATCH / median,
                    }
                )
    finally:
        torch.set_num_threads(saved)
    return {
        "batch": BATCH,
        "lookback": base.lookback,
        "hidden": base.hidden,
        "rows": rows,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "members-cost.json")
    parser.add_argument("--no-train", action="store_true", help="the forward pass only")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"forward": forward_cost()}
    if not args.no_train:
        result["training"] = training_time()
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["forward"]["rows"]:
        print(
            f"predict, batch {BATCH}, {r['torch_threads']} thread(s), {r['members']} member(s): "
            f"{r['forecasts_per_s']:.0f} forecasts/s"
        )
    if "training" in result:
        t = result["training"]
        print(
            f"default recipe on {t['dataset']} ({t['members']} members): "
            f"{t['wall_seconds']:.1f} s wall, {t['cpu_seconds']:.1f} s CPU, load "
            f"{t['loadavg_before'][0]:.2f} -> {t['loadavg_after'][0]:.2f}",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
