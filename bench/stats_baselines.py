"""SeasonalNaive, AutoETS, AutoARIMA and MSTL from statsforecast, fitted once per series and
applied at many forecast origins.

Runs in its own virtual environment (.cache/bench/stats-venv): statsforecast pins
pandas<3, and the project runs on pandas 3, so it cannot share the project's venv.
Standalone on purpose (numpy, statsforecast; no project import):

    python bench/stats_baselines.py IN.npz OUT.npz

Each model is fitted once per series on the history before its test period (as the LSTM
is trained once), then applied with ``forward`` to the history before each origin: the
fitted parameters are kept and the state is filtered through the new history (AutoARIMA,
AutoETS), or the decomposition is redone on it (MSTL, whose trend model keeps its
parameters). That is what makes 50+ origins per series affordable: a seasonal AutoARIMA
fit takes tens of seconds, a forward pass milliseconds.

IN holds `fit_lengths` (S,) and `fit_values` (the S fitting histories concatenated),
`lengths` (n,), `values` (the n origin histories concatenated), `series` (n,) the
fitting history each origin belongs to, `season_lengths` (every season of the data,
shortest first) and `horizon`. OUT holds, per model, `<model>` (n, horizon) point
forecasts, `<model>-lo-80` / `<model>-hi-80` the 80 % interval, `seconds-<model>` and
`error-<model>` (empty when every series worked; NaN forecasts where one failed).
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any

import numpy as np
from statsforecast.models import MSTL, AutoARIMA, AutoETS, SeasonalNaive

MODELS = ("SeasonalNaive", "AutoETS", "AutoARIMA", "MSTL")
ETS_MAX_SEASON = 24  # statsforecast's ETS refuses longer seasons


def _make(name: str, seasons: list[int]) -> Any:
    m = seasons[0]
    if name == "SeasonalNaive":
        return SeasonalNaive(m)
    if name == "AutoETS":
        return AutoETS(season_length=m if m <= ETS_MAX_SEASON else 1)
    if name == "AutoARIMA":
        return AutoARIMA(season_length=m)
    return MSTL(season_length=seasons, trend_forecaster=AutoETS(model="ZZN"))


def _split(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1])


def main(argv: list[str]) -> int:
    source, target = argv
    data = np.load(source)
    fits = _split(data["fit_values"].astype(np.float64), data["fit_lengths"].astype(int))
    hists = _split(data["values"].astype(np.float64), data["lengths"].astype(int))
    owner = data["series"].astype(int)
    seasons = [int(m) for m in data["season_lengths"]]
    h = int(data["horizon"])
    out: dict[str, np.ndarray] = {}
    for name in MODELS:
        point = np.full((len(hists), h), np.nan)
        lo, hi = point.copy(), point.copy()
        errors: list[str] = []
        started = time.perf_counter()
        for s, fit_y in enumerate(fits):
            rows = np.flatnonzero(owner == s)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = _make(name, seasons).fit(fit_y)
                    for i in rows:
                        f = model.forward(y=hists[i], h=h, level=[80])
                        point[i], lo[i], hi[i] = f["mean"], f["lo-80"], f["hi-80"]
            except Exception as exc:  # a model that cannot fit a series is reported
                errors.append(f"series {s}: {type(exc).__name__}: {exc}"[:300])
        out[name], out[f"{name}-lo-80"], out[f"{name}-hi-80"] = point, lo, hi
        out[f"seconds-{name}"] = np.array(time.perf_counter() - started)
        out[f"error-{name}"] = np.array("; ".join(errors))
    np.savez(target, **out)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
