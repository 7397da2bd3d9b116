"""TorchServe handler serving canarycast's trained LSTM (TorchScript), for the peer benchmark.

The archive holds `model.pt` (the served network traced with torch.jit, same weights: one
LSTMForecaster, or a seed ensemble whose members' quantiles the traced graph averages) and
`config.json` (its ModelConfig). Each request body is JSON `{"history": [...], "horizon": h}`;
the answer is `{"quantiles": [...], "point": [...], "lower": [...], "upper": [...]}`. The
pre- and post-processing is `server.lifecycle.model.predict` step for step: per-window scaling by
mean and mean absolute deviation, forward pass, quantiles sorted, unscaled. TorchServe
batches requests (batchSize / maxBatchDelay in its config) and calls `handle` with the
list; one forward pass answers them all.

No TorchServe import: a class with `initialize(context)` and `handle(data, context)` is a
valid TorchServe entry point, and the smoke test drives it in process.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

SCALE_FLOOR = 1e-8  # as server.lifecycle.model.SCALE_FLOOR


class LSTMHandler:
    def __init__(self) -> None:
        self.net: Any = None
        self.config: dict[str, Any] = {}
        self.initialized = False

    def initialize(self, context: Any) -> None:
        model_dir = str(context.system_properties["model_dir"])
        with open(os.path.join(model_dir, "config.json")) as fh:
            self.config = json.load(fh)
        threads = os.environ.get("BENCH_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        self.net = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        lookback, horizon = int(self.config["lookback"]), int(self.config["horizon"])
        windows, horizons = [], []
        for row in data:
            raw = row.get("body") if row.get("body") is not None else row.get("data")
            body: dict[str, Any] = (
                json.loads(raw) if isinstance(raw, bytes | bytearray) else dict(raw or {})
            )
            history = np.asarray(body["history"], dtype=np.float64)
            if history.size < lookback:
                raise ValueError(f"history has {history.size} values; the model needs {lookback}")
            windows.append(history[-lookback:])
            horizons.append(min(int(body.get("horizon", horizon)), horizon))
        w = np.stack(windows)
        loc = w.mean(axis=1, keepdims=True)
        scale = np.abs(w - loc).mean(axis=1, keepdims=True)
        scale = np.maximum(scale, SCALE_FLOOR * np.maximum(1.0, np.abs(loc)))
        x = torch.from_numpy(((w - loc) / scale).astype(np.float32))
        with torch.inference_mode():
            out = self.net(x)
        q = np.sort(out.numpy().astype(np.float64), axis=-1)
        q = loc[:, :, None] + scale[:, :, None] * q
        quantiles = [float(v) for v in self.config["quantiles"]]
        mid = quantiles.index(0.5)
        answers = []
        for i, h in enumerate(horizons):
            answers.append(
                json.dumps(
                    {
                        "quantiles": quantiles,
                        "point": q[i, :h, mid].tolist(),
                        "lower": q[i, :h, 0].tolist(),
                        "upper": q[i, :h, -1].tolist(),
                    }
                )
            )
        return answers
