"""AutoETS, AutoARIMA and SeasonalNaive from statsforecast on given histories.

Runs in its own virtual environment (.cache/bench/stats-venv): statsforecast pins
pandas<3, and the project runs on pandas 3, so it cannot share the project's venv.
Standalone on purpose (numpy, pandas, statsforecast; no project import):

    python bench/stats_baselines.py IN.npz OUT.npz

IN holds `lengths` (n,), `values` (the n histories concatenated), `season_length`,
`horizon`; OUT holds, per model, `<model>` (n, horizon) point forecasts and
`<model>-lo-80` / `<model>-hi-80` the 80 % interval, plus `seconds`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import AutoARIMA, AutoETS, SeasonalNaive

MODELS = ("AutoETS", "AutoARIMA", "SeasonalNaive")


def main(argv: list[str]) -> int:
    source, target = argv
    data = np.load(source)
    lengths = data["lengths"].astype(int)
    values = data["values"].astype(np.float64)
    m, h = int(data["season_length"]), int(data["horizon"])
    ids = np.repeat(np.arange(lengths.size), lengths)
    ds = np.concatenate([np.arange(1, n + 1) for n in lengths])
    frame = pd.DataFrame({"unique_id": ids, "ds": ds, "y": values})
    sf = StatsForecast(
        models=[AutoETS(season_length=m), AutoARIMA(season_length=m), SeasonalNaive(m)],
        freq=1,
        n_jobs=-1,
    )
    started = time.perf_counter()
    forecast = sf.forecast(df=frame, h=h, level=[80])
    seconds = time.perf_counter() - started
    forecast = forecast.sort_values(["unique_id", "ds"])
    out: dict[str, np.ndarray] = {"seconds": np.array(seconds)}
    for model in MODELS:
        for column in (model, f"{model}-lo-80", f"{model}-hi-80"):
            out[column] = forecast[column].to_numpy(np.float64).reshape(lengths.size, h)
    np.savez(target, **out)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
