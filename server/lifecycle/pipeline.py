"""Train → register, with lineage: the one path from data to a registry version.

`recipe_key` names the inputs of a training run (data content, model config,
training parameters, code version); a version registered from the same
inputs can be reused instead of retrained (the demo's cache).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

import numpy as np

from canarycast import __version__
from server.lifecycle.data import Dataset
from server.lifecycle.model import ModelConfig
from server.lifecycle.recipe import DEFAULT_MEMBERS
from server.lifecycle.registry import ModelVersion, Registry
from server.lifecycle.seasons import Defaults, derive
from server.lifecycle.training import TrainParams, train

#: The config fields chosen from the data unless given (see server.lifecycle.seasons).
DERIVED_FIELDS = ("season_length", "extra_seasons", "lookback", "horizon", "encoder_steps")


def defaults_for(dataset: Dataset, **overrides: Any) -> Defaults:
    """Season lengths, lookback and horizon chosen from `dataset` (its frequency and the
    length of its shortest series) around the fields in `overrides`, with the reasons."""
    given = {k: v for k, v in overrides.items() if k in DERIVED_FIELDS}
    return derive(dataset.freq, [len(s) for s in dataset.series], given)


def config_for(dataset: Dataset, **overrides: Any) -> ModelConfig:
    """The default ModelConfig for `dataset` (its frequency, step, seasons, lookback and
    horizon from :func:`defaults_for`; ``DEFAULT_MEMBERS`` seed members), with overrides."""
    fields = {
        "freq": dataset.freq,
        "step_seconds": int(dataset.step / np.timedelta64(1, "s")),
        "members": DEFAULT_MEMBERS,
        **defaults_for(dataset, **overrides).fields,
    }
    return ModelConfig(**{**fields, **overrides})


def explain_defaults(dataset: Dataset, config: ModelConfig) -> dict[str, dict[str, Any]]:
    """What `config` took from the data and why (``{field: {"value", "why"}}``); a field
    that differs from what the data gives says ``"given"``."""
    pure = defaults_for(dataset).fields
    given = {k: getattr(config, k) for k in DERIVED_FIELDS if getattr(config, k) != pure[k]}
    if "extra_seasons" in given and "season_length" not in given and config.extra_seasons:
        given["season_length"] = config.season_length
    chosen = defaults_for(dataset, **given)
    out = chosen.metadata()
    for k in DERIVED_FIELDS:
        value = getattr(config, k)
        if k in given or chosen.fields[k] != value:
            out[k] = {"value": list(value) if isinstance(value, tuple) else value, "why": "given"}
    return out


def recipe_key(dataset: Dataset, config: ModelConfig, params: TrainParams) -> str:
    recipe = {
        "dataset_hash": dataset.content_hash,
        "config": config.to_dict(),
        "params": params.to_dict(),
        "code_version": __version__,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def find_by_recipe(registry: Registry, name: str, key: str) -> ModelVersion | None:
    if name not in registry.models():
        return None
    for version in registry.versions(name):
        if version.metadata.get("recipe_key") == key:
            return version
    return None


def train_and_register(
    dataset: Dataset,
    config: ModelConfig,
    params: TrainParams,
    registry: Registry,
    name: str,
    *,
    progress: bool = True,
    search_budget: float | None = None,
) -> ModelVersion:
    """Train on `dataset` and register the result with its lineage and offline scores.
    With `search_budget` (seconds), the recipe as given and the variants that fit in the
    budget are trained and the best on validation is kept (`server.lifecycle.search`);
    the choice is recorded as ``recipe_search``."""
    started = time.monotonic()
    search: dict[str, Any] | None = None
    if search_budget:
        from server.lifecycle.search import search_recipe

        found = search_recipe(dataset, config, params, search_budget, progress=progress)
        result, search = found.result, found.to_dict()
    else:
        result = train(dataset, config, params, progress=progress)
    series = [s.series_id for s in dataset.series]
    metadata = {
        "dataset": dataset.name,
        "dataset_source": dataset.source,
        "dataset_hash": dataset.content_hash,
        "series": list(params.series_ids) if params.series_ids else series,
        "parameters": {**result.config.to_dict(), **result.params.to_dict()},
        "defaults": explain_defaults(dataset, result.config),
        "scores": result.scores,
        "training": {
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "seconds": round(time.monotonic() - started, 2),
            "history": result.history,
        },
        # The inputs of the training that made these weights (searched: the chosen one's).
        "recipe_key": (
            recipe_key(dataset, result.config, result.params)
            if search is not None
            else recipe_key(dataset, config, params)
        ),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
    }
    if search is not None:
        metadata["recipe_search"] = search
    return registry.register(name, result.state_dict, result.config.to_dict(), metadata)
