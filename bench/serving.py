"""Sections 1 and 5 (server part): the model server against its compute limit, and how its
cost grows with the history length, the horizon and the series per call.

The roofline is the bare torch forward pass of the served model, in this process, at
the server's batch sizes. Then real `canarycast serve` processes (dynamic batching off:
`--max-batch-size 1 --max-queue-delay-ms 0`; on: the defaults, 256 series / 2 ms) take
load from the load generator's process. Each of those is one process (`--workers 1`); the
scaling rows then run the same load against `--workers 1` and `--workers 2`, one after the
other in the same run, spread as a router spreads it: over each worker's own port.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from bench.common import (
    BenchModel,
    combine_loadgens,
    ratio,
    run_loadgen,
    start_servers,
    stop_all,
)
from server.lifecycle.model import scale_windows
from server.lifecycle.registry import Registry
from server.serving.loader import load_model

BATCH_SIZES = (1, 4, 16, 64, 256, 1024)
#: Series per call of the multi-series scenarios (batching on; 64 with batching off too).
MULTI_SERIES = (64, 256, 1024)
ONE_PROCESS = ["--workers", "1"]
BATCHING = {
    "off": ["--max-batch-size", "1", "--max-queue-delay-ms", "0", *ONE_PROCESS],
    "on": ONE_PROCESS,
}
#: Worker processes compared by the scaling rows.
WORKERS = (1, 2)
#: Load generator processes of a scaling row, each on one channel (one connection): as
#: many as the most workers, so that with 1 worker and with 2 the client side is the same.
LOADGENS = max(WORKERS)


def _time_call(fn: Any, min_seconds: float) -> float:
    """Median seconds per call of fn() over at least `min_seconds` (and >= 5 calls)."""
    fn()
    times: list[float] = []
    spent = 0.0
    while spent < min_seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        times.append(dt)
        spent += dt
    return float(np.median(times))


def roofline(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    """Forecasts/s of the bare forward pass (and of the whole `predict`) per batch size."""
    loaded = load_model(Registry(model.registry), model.ref)
    net, lookback = loaded.net, loaded.config.lookback
    from bench.loadgen import histories

    rows = []
    for b in BATCH_SIZES[:3] if smoke else BATCH_SIZES:
        windows = np.stack([h[-lookback:] for h in histories(b, lookback)])
        x = torch.from_numpy(scale_windows(windows)[0].astype(np.float32))

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                net(x)

        def whole(w: np.ndarray = windows) -> None:
            loaded.predict(w)

        fwd = _time_call(forward, 0.05 if smoke else 0.5)
        pred = _time_call(whole, 0.05 if smoke else 0.5)
        rows.append(
            {
                "batch": b,
                "forward_ms": fwd * 1000,
                "forward_forecasts_per_s": b / fwd,
                "predict_ms": pred * 1000,
                "predict_forecasts_per_s": b / pred,
            }
        )
    return {
        "model": model.ref,
        "config": loaded.config.to_dict(),
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
    }


def _scenario(
    name: str, target: str, pids: list[int], smoke: bool, horizon: int, history: int, **kw: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "grpc",
        "target": target,
        "server_pids": pids,
        "warmup": 0.2 if smoke else 1.0,
        "duration": 0.3 if smoke else 4.0,
        "concurrency": 1,
        "series_per_call": 1,
        "history": history,
        "horizon": horizon,
        "quantiles": [0.1, 0.9],
        **kw,
    }


def serving_section(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    roof = roofline(model, smoke=smoke)
    horizon, lookback = model.horizon, model.lookback
    servers = start_servers(model, BATCHING)
    try:
        scenarios = []
        for mode, server in servers.items():
            for c in (1, 16) if smoke else (1, 16, 64):
                scenarios.append(
                    _scenario(
                        f"batching {mode}, concurrency {c}",
                        server.target,
                        [server.process.pid],
                        smoke,
                        horizon,
                        lookback,
                        concurrency=c,
                        batching=mode,
                    )
                )
            for k in MULTI_SERIES[:1] if smoke or mode == "off" else MULTI_SERIES:
                scenarios.append(
                    _scenario(
                        f"batching {mode}, {k} series per call, concurrency 4",
                        server.target,
                        [server.process.pid],
                        smoke,
                        horizon,
                        lookback,
                        concurrency=4,
                        series_per_call=k,
                        batching=mode,
                    )
                )
        runs = run_loadgen(scenarios, progress="serving")
    finally:
        stop_all(servers)
    for s, r in zip(scenarios, runs, strict=True):
        r["batching"] = s["batching"]

    def get(mode: str, c: int, k: int = 1) -> dict[str, Any]:
        c = min(c, 16) if smoke else c  # smoke runs stop at concurrency 16
        return next(
            r
            for r in runs
            if r["batching"] == mode and r["concurrency"] == c and r["series_per_call"] == k
        )

    best_roof = max(row["forward_forecasts_per_s"] for row in roof["rows"])
    fwd1 = next(row["forward_ms"] for row in roof["rows"] if row["batch"] == 1)
    multi = max(get("on", 4, 64)["forecasts_per_s"], get("off", 4, 64)["forecasts_per_s"])
    ratios = {
        "batching_on_over_off_at_c64": ratio(
            get("on", 64)["forecasts_per_s"], get("off", 64)["forecasts_per_s"]
        ),
        "multi_series_over_roofline": ratio(multi, best_roof),
        "p50_c1_over_bare_forward_b1": ratio(get("off", 1)["p50_ms"], fwd1),
    }
    for k in MULTI_SERIES[1:]:
        if not smoke:
            ratios[f"{k}_series_per_call_over_roofline"] = ratio(
                get("on", 4, k)["forecasts_per_s"], best_roof
            )
    scaling = workers_rows(model, smoke=smoke)
    ratios.update(scaling["ratios"])
    return {"roofline": roof, "runs": runs, "ratios": ratios, "workers": scaling["rows"]}


def workers_rows(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    """The same load against `serve --workers 1` and `--workers 2` (batching on), one
    server at a time: LOADGENS load-generator processes side by side, the i-th on worker
    i's own port (i modulo the workers), each with its share of the callers. Forecasts/s
    are summed over them, p99 is the worst of them, server CPU is the whole process tree."""
    horizon, lookback = model.horizon, model.lookback
    loads = [(16, 1)] if smoke else [(16, 1), (64, 1), (4, 64)]  # (callers, series per call)
    rows: list[dict[str, Any]] = []
    for n in WORKERS:
        servers = start_servers(model, {f"{n} workers": ["--workers", str(n)]})
        server = servers[f"{n} workers"]
        targets = server.worker_targets
        try:
            per_loadgen: list[list[dict[str, Any]]] = [[] for _ in range(LOADGENS)]
            for callers, k in loads:
                for g in range(LOADGENS):
                    per_loadgen[g].append(
                        _scenario(
                            f"{n} workers, {k} series per call, concurrency {callers}",
                            targets[g % len(targets)],
                            [server.process.pid] if g == 0 else [],
                            smoke,
                            horizon,
                            lookback,
                            concurrency=max(1, callers // LOADGENS),
                            series_per_call=k,
                            # both generators import and connect before either counts
                            warmup=1.0 if smoke else 2.0,
                        )
                    )
            with ThreadPoolExecutor(LOADGENS) as pool:
                results = list(pool.map(run_loadgen, per_loadgen))
        finally:
            stop_all(servers)
        for i, (callers, k) in enumerate(loads):
            parts = [results[g][i] for g in range(LOADGENS)]
            rows.append(
                {
                    "workers": n,
                    "concurrency": callers,
                    "series_per_call": k,
                    **combine_loadgens(parts),
                }
            )

    def row(n: int, c: int, k: int) -> dict[str, Any]:
        return next(
            r
            for r in rows
            if r["workers"] == n and r["concurrency"] == c and r["series_per_call"] == k
        )

    ratios: dict[str, float] = {}
    for callers, k in loads:
        one, two = row(1, callers, k), row(2, callers, k)
        name = f"2_workers_over_1_{k}_series_c{callers}"
        ratios[f"{name}_forecasts_per_s"] = ratio(two["forecasts_per_s"], one["forecasts_per_s"])
        ratios[f"{name}_p99"] = ratio(two["p99_ms"], one["p99_ms"])
    return {"rows": rows, "ratios": ratios}


#: History lengths are multiples of the model's lookback (the shortest history it accepts).
GROWTH = {
    "history": (1, 4, 16, 64),
    "horizon": (1, 6, 12, 24),
    "series_per_call": (1, 8, 64, 256, 1024),
}


def growth_section(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    """Throughput and latency of a batching server as one dimension of the call grows."""
    max_horizon, lookback = model.horizon, model.lookback
    servers = start_servers(model, {"on": ONE_PROCESS})
    server = servers["on"]
    try:
        scenarios = []
        for dim, values in GROWTH.items():
            chosen = [v for v in values if dim != "horizon" or v <= max_horizon]
            if dim == "history":
                chosen = [v * lookback for v in values]
            if dim == "horizon" and max_horizon not in chosen:
                chosen.append(max_horizon)
            for v in (chosen[-1:] if dim == "horizon" else chosen[:2]) if smoke else chosen:
                kw: dict[str, Any] = {"history": lookback, dim: v, "concurrency": 16}
                if dim == "series_per_call":
                    kw["concurrency"] = 4
                kw.setdefault("horizon", max_horizon)
                h, n = kw.pop("horizon"), kw.pop("history")
                s = _scenario(
                    f"{dim}={v}",
                    server.target,
                    [server.process.pid],
                    smoke,
                    h,
                    n,
                    dimension=dim,
                    **kw,
                )
                scenarios.append(s)
        runs = run_loadgen(scenarios, progress="growth")
    finally:
        stop_all(servers)
    curves: dict[str, list[dict[str, Any]]] = {dim: [] for dim in GROWTH}
    for s, r in zip(scenarios, runs, strict=True):
        curves[s["dimension"]].append({"value": s[s["dimension"]], **r})
    ratios = {
        f"{dim}_last_over_first_forecasts_per_s": ratio(
            rows[-1]["forecasts_per_s"], rows[0]["forecasts_per_s"]
        )
        for dim, rows in curves.items()
    }
    return {"curves": curves, "ratios": ratios}
