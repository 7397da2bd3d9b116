"""`make demo`: train an LSTM on real data, serve it, forecast, compare with the truth.

Everything on one machine, on loopback, through the production code path: the
model is trained on seattle-temps (hourly temperatures of 2010, shipped inside
the vega_datasets wheel), registered, served by a `canarycast serve` child
process, and called with the generated client on days of the test period the
model never saw. A second run reuses the registered model (same data, recipe
and code → same recipe key) instead of retraining.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from urllib.request import urlopen

import numpy as np

from canarycast.client import ForecastClient, SeriesData
from canarycast.processes import ProcessFailed, start_component
from server.data import Series, load_dataset, split_points
from server.pipeline import config_for, find_by_recipe, recipe_key, train_and_register
from server.registry import Registry
from server.scoring import seasonal_naive_forecast
from server.training import TrainParams

DATASET = "seattle-temps"
MODEL = "seattle-temps"
SHOW_STEPS = (1, 6, 12, 24)


def say(text: str = "") -> None:
    print(text, flush=True)


def run_demo(workdir: Path, *, quick: bool = False) -> int:
    registry_dir = workdir / "registry"
    registry = Registry(registry_dir)
    dataset = load_dataset(DATASET)
    series = dataset.series[0]
    config = config_for(dataset)
    if quick:
        config = replace(config, hidden=16, layers=1, lookback=48)
    params = TrainParams(epochs=2, max_windows_per_epoch=1024) if quick else TrainParams()

    say(f"== 1. Train an LSTM on real data: {dataset.source}")
    say(
        f"   {len(series)} hourly values, {str(series.timestamps[0])[:16]} .. "
        f"{str(series.timestamps[-1])[:16]} (smooth, like climate normals, so"
    )
    say("   errors are tenths of a degree and yesterday-same-hour is a strong baseline)")
    key = recipe_key(dataset, config, params)
    version = find_by_recipe(registry, MODEL, key)
    if version is not None:
        say(f"   reusing {MODEL}:{version.version} (same data, recipe and code as before)")
    else:
        started = time.monotonic()
        version = train_and_register(dataset, config, params, registry, MODEL, progress=True)
        say(f"   trained in {time.monotonic() - started:.1f} s")
    registry.set_alias(MODEL, "stable", version.version)
    scores = version.metadata["scores"]
    say(f"   registered {MODEL}:{version.version}, alias stable -> {version.version}")
    say(
        f"   offline test scores: MAE {scores['mae']:.2f} °F, RMSE {scores['rmse']:.2f}, "
        f"sMAPE {scores['smape']:.1f} %, MASE {scores['mase']:.3f}, "
        f"MAE / seasonal-naive MAE {scores['relmae_snaive']:.3f}"
    )
    verdict = "beats" if scores["relmae_snaive"] < 1 and scores["mase"] < 1 else "does NOT beat"
    say(f"   -> the model {verdict} the seasonal-naive forecast (yesterday, same hour)")

    say("\n== 2. Start the model server (a real gRPC server on loopback)")
    try:
        server = start_component(
            "server",
            [
                "serve",
                "--registry",
                str(registry_dir),
                "--model",
                f"{MODEL}@stable",
                "--port",
                "0",
                "--metrics-port",
                "0",
            ],
        )
    except ProcessFailed as exc:
        say(f"   the server did not start: {exc}")
        return 1
    say(f"   serving on {server.target}, metrics on http://127.0.0.1:{server.metrics_port}/metrics")
    try:
        code = _forecast_calls(server.target, series, dataset.season_length)
        if server.metrics_port is not None:
            body = urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read()
            batches = [
                line
                for line in body.decode().splitlines()
                if line.startswith(
                    ("canarycast_server_batch_size_count", "canarycast_server_calls_total")
                )
            ]
            say("\n== 4. A few Prometheus metrics of the server")
            for line in batches:
                say(f"   {line}")
    finally:
        say("\n== 5. Stop the server (SIGTERM: NOT_SERVING, drain, exit)")
        exit_code = server.stop()
        say(f"   server exited with code {exit_code}")
    return code if exit_code == 0 else 1


def _forecast_calls(target: str, series: Series, season_length: int) -> int:
    with ForecastClient(target) as client:
        info = client.model_info()
        lookback, horizon = info.lookback, info.max_horizon
        say(
            f"   model {info.model.name}:{info.model.version}, lookback {lookback}, "
            f"max horizon {horizon}, quantiles {list(info.quantiles)}"
        )
        _, val_end = split_points(len(series))
        origins = np.linspace(val_end + lookback, len(series) - horizon, 4).astype(int)
        say(f"\n== 3. Forecast {horizon} hours ahead on test days the model never saw")
        model_errors, naive_errors = [], []
        for origin in origins:
            start = origin - lookback
            history = series.values[start:origin]
            [f] = client.forecast(
                [SeriesData(series.series_id, history, start=series.timestamps[start])],
                horizon,
                quantiles=(0.1, 0.9),
            )
            actual = series.values[origin : origin + horizon]
            naive = seasonal_naive_forecast(series.values[:origin], horizon, season_length)
            model_errors.append(np.abs(f.point - actual))
            naive_errors.append(np.abs(naive - actual))
            assert f.timestamps is not None
            say(
                f"\n   {horizon} h after {str(series.timestamps[origin - 1])[:16]} "
                f"(forecast id {f.forecast_id[:8]}…)"
            )
            say("     ahead   time               forecast  80% interval      actual")
            for step in SHOW_STEPS:
                i = step - 1
                say(
                    f"     +{step:>2}h    {str(f.timestamps[i])[:16]}   {f.point[i]:6.1f}"
                    f"    [{f.quantiles[0.1][i]:5.1f}, {f.quantiles[0.9][i]:5.1f}]"
                    f"     {actual[i]:5.1f}"
                )
            accepted = client.observe(series.series_id, f.timestamps, actual)
            say(
                f"     MAE {np.mean(model_errors[-1]):.2f} °F (seasonal naive "
                f"{np.mean(naive_errors[-1]):.2f}); Observe accepted {accepted} actual values"
            )
        # One call, several series: sf-temps was never trained on (per-window scaling).
        sf = load_dataset("sf-temps").series[0]
        origin = int(origins[-1])
        both = client.forecast(
            [
                SeriesData(series.series_id, series.values[origin - lookback : origin]),
                SeriesData(sf.series_id, sf.values[origin - lookback : origin]),
            ],
            horizon,
        )
        say("\n   one call with two series (sf-temps was never seen in training):")
        for f, s in zip(both, (series, sf), strict=True):
            mae = np.mean(np.abs(f.point - s.values[origin : origin + horizon]))
            say(f"     {f.series_id:<14} MAE over {horizon} h: {mae:.2f} °F")
        model_mae = float(np.mean(model_errors))
        naive_mae = float(np.mean(naive_errors))
        say(
            f"\n   over these {len(origins)} days: model MAE {model_mae:.2f} °F, "
            f"seasonal naive {naive_mae:.2f} °F"
        )
    return 0


def main() -> None:
    sys.exit(run_demo(Path(".cache/demo")))
