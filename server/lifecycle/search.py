"""A validation-driven choice among a few recipes within a time budget.

`train --search-budget SECONDS` trains the recipe as given first (always, whatever the
budget), then each variant of :data:`CANDIDATES` whose expected cost (its factor times
the first training's seconds) still fits in what is left of the budget, and keeps the
one with the lowest validation MASE (the validation windows of every series, scored on
the served network's median; the test split is not looked at). A variant has to beat the
recipe as given to be chosen; a tie keeps it. What was tried, skipped and chosen, with
each figure, goes into the registered version's metadata (``recipe_search``) and the
command's output.

The variants are the levers the study in ``bench/levers.py`` found to pay on some data
and not on the rest: every training window each epoch, twice the epochs, three seed
members. neuralforecast's ``AutoLSTM`` searches a space with Ray or Optuna; this needs
only the clock.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from server.lifecycle.data import Dataset
from server.lifecycle.model import ModelConfig, build_model, predict
from server.lifecycle.recipe import TrainParams
from server.lifecycle.scoring import offline_scores
from server.lifecycle.training import TrainResult, _build_windows, train

#: A variant's recipe and its expected cost as a multiple of the first training's seconds.
Made = tuple[ModelConfig, TrainParams, float]
#: A variant: (config, params, training windows) -> Made, or None where it would train
#: the recipe as given.
Variant = Callable[[ModelConfig, TrainParams, int], Made | None]


def _all_windows(c: ModelConfig, p: TrainParams, n: int) -> Made | None:
    per_epoch = p.max_windows_per_epoch
    if per_epoch is None or n <= per_epoch:
        return None
    return c, replace(p, max_windows_per_epoch=None), n / per_epoch


def _more_epochs(c: ModelConfig, p: TrainParams, n: int) -> Made | None:
    return c, replace(p, epochs=2 * p.epochs, patience=max(p.patience, 15)), 2.0


def _members(c: ModelConfig, p: TrainParams, n: int) -> Made | None:
    if c.members >= 3:
        return None
    return replace(c, members=3), p, 3.0 / c.members


#: In the order they are tried: the cheaper first.
CANDIDATES: tuple[tuple[str, Variant], ...] = (
    ("all-windows", _all_windows),
    ("epochs-x2", _more_epochs),
    ("members-3", _members),
)


@dataclass(frozen=True)
class SearchResult:
    result: TrainResult  # the chosen recipe's training (its test scores)
    chosen: str
    budget_seconds: float
    tried: tuple[dict[str, Any], ...]  # name, status, val_mase, train_seconds

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_seconds": self.budget_seconds,
            "chosen": self.chosen,
            "candidates": [dict(t) for t in self.tried],
        }


def validation_mase(dataset: Dataset, result: TrainResult) -> float:
    """MASE of the served network's median on the validation windows of every series."""
    _, val_w, _ = _build_windows(
        dataset, result.config, result.params.series_ids, result.params.holdout_points
    )
    forecasts = predict(build_model(result.config, result.state_dict), val_w.inputs())
    scores = offline_scores(
        val_w.targets(),
        forecasts,
        result.config.quantiles,
        insample_scale=val_w.insample_scale,
        snaive=val_w.snaive(),
    )
    return float(scores["mase"])


def search_recipe(
    dataset: Dataset,
    config: ModelConfig,
    params: TrainParams,
    budget_seconds: float,
    *,
    progress: bool = True,
) -> SearchResult:
    """Train the recipe as given, then the variants that fit in the budget; keep the best
    on validation (see the module docstring)."""
    if not (isinstance(budget_seconds, int | float) and math.isfinite(budget_seconds)):
        raise ValueError(f"search budget must be a number of seconds, got {budget_seconds!r}")
    if budget_seconds <= 0:
        raise ValueError(f"search budget must be > 0 seconds, got {budget_seconds!r}")
    started = time.monotonic()
    best = train(dataset, config, params, progress=progress)
    first = time.monotonic() - started
    best_mase = validation_mase(dataset, best)
    chosen = "as given"
    tried: list[dict[str, Any]] = [
        {"name": chosen, "status": "trained", "val_mase": best_mase, "train_seconds": first}
    ]
    n_train = len(_build_windows(dataset, config, params.series_ids, params.holdout_points)[0])
    for name, variant in CANDIDATES:
        made = variant(config, params, n_train)
        if made is None:
            tried.append({"name": name, "status": "same as given"})
            continue
        c, p, factor = made
        expected = factor * first
        left = budget_seconds - (time.monotonic() - started)
        if expected > left:
            tried.append(
                {
                    "name": name,
                    "status": f"skipped: needs about {expected:.0f} s, {max(left, 0):.0f} s left",
                }
            )
            continue
        if progress:
            print(f"recipe search: {name} (about {expected:.0f} s)", file=sys.stderr)
        t = time.monotonic()
        result = train(dataset, c, p, progress=progress)
        seconds = time.monotonic() - t
        mase = validation_mase(dataset, result)
        tried.append(
            {"name": name, "status": "trained", "val_mase": mase, "train_seconds": seconds}
        )
        if mase < best_mase:
            best, best_mase, chosen = result, mase, name
    return SearchResult(best, chosen, float(budget_seconds), tuple(tried))
