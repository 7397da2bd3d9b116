"""The DVC pipeline's stages (`dvc.yaml`: prepare → train → evaluate), runnable without DVC.

Each stage reads ``params.yaml`` and writes its outputs under one folder (default
``pipeline-out/``)::

    canarycast pipeline prepare   data.parquet (base dataset + stored observations), data.json
    canarycast pipeline train     model/{weights.pt,config.json}, train.json (registered version)
    canarycast pipeline evaluate  metrics.json (hold-out MASE against the stable model)

``train`` registers the model, and the version id it writes is the content hash of the
weights and config it also writes under ``model/``: ``evaluate`` recomputes that hash from
the files and checks that the registry holds the same version, so a pipeline output and
a registry entry name the same model. Training is seeded, so ``dvc repro`` on the same
data and parameters gives the same version id (on the same machine and thread count).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from server.lifecycle.registry import Registry, content_digest
from server.lifecycle.retrain import (
    Prepared,
    compare_on_holdout,
    load_net,
    prepare_data,
    register_candidate,
    train_candidate,
)
from server.lifecycle.training import TrainParams

__all__ = ["StageError", "evaluate", "load_params", "prepare", "train"]

DEFAULT_OUT = Path("pipeline-out")
SECTIONS = ("data", "model", "train", "registry", "evaluate")


class StageError(ValueError):
    """Bad parameters or missing inputs of a stage; the message names them."""


def load_params(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise StageError(f"params file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise StageError(f"params file {path}: expected a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise StageError(f"params file {path}: unknown section(s) {unknown}; known: {SECTIONS}")
    params = {name: dict(raw.get(name) or {}) for name in SECTIONS}
    if "base" not in params["data"]:
        raise StageError(f"params file {path}: data.base (a dataset name or file) is required")
    return params


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"{path} (from the {stage} stage) is missing or unreadable") from exc
    return value


def _prepared(out: Path) -> Prepared:
    from server.lifecycle.data import read_long_format

    lineage = _read_json(out / "data.json", "prepare")
    dataset = read_long_format(out / "data.parquet")
    if dataset.content_hash != lineage.get("data_hash"):
        raise StageError(f"{out / 'data.parquet'} does not match data.json; re-run prepare")
    return Prepared(out / "data.parquet", dataset, lineage)


def prepare(params: dict[str, dict[str, Any]], out: Path = DEFAULT_OUT) -> dict[str, Any]:
    data = params["data"]
    observations = data.get("observations")
    prepared = prepare_data(
        str(data["base"]), Path(observations) if observations else None, out / "data.parquet"
    )
    _write_json(out / "data.json", prepared.lineage)
    return prepared.lineage


def train(
    params: dict[str, dict[str, Any]], out: Path = DEFAULT_OUT, *, progress: bool = True
) -> dict[str, Any]:
    prepared = _prepared(out)
    try:
        train_params = TrainParams.from_dict(params["train"])
    except (TypeError, ValueError) as exc:
        raise StageError(f"params train: {exc}") from exc
    try:
        result, seconds = train_candidate(
            prepared, params["model"], train_params, progress=progress
        )
    except TypeError as exc:
        raise StageError(f"params model: {exc}") from exc
    registry = Registry(params["registry"].get("root", "registry"))
    name = str(params["registry"].get("name", "model"))
    version = register_candidate(registry, name, prepared, result, seconds, None)
    model_dir = out / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(result.state_dict, model_dir / "weights.pt")
    _write_json(model_dir / "config.json", result.config.to_dict())
    summary = {
        "name": name,
        "version": version.version,
        "digest": version.digest,
        "recipe_key": version.metadata["recipe_key"],
        "data_hash": prepared.dataset.content_hash,
        "scores": result.scores,
    }
    _write_json(out / "train.json", summary)
    return summary


def evaluate(params: dict[str, dict[str, Any]], out: Path = DEFAULT_OUT) -> dict[str, Any]:
    prepared = _prepared(out)
    trained = _read_json(out / "train.json", "train")
    state = torch.load(out / "model" / "weights.pt", map_location="cpu", weights_only=True)
    config = json.loads((out / "model" / "config.json").read_text())
    digest = content_digest(state, config)
    if digest != trained["digest"]:
        raise StageError(f"{out / 'model'} does not hash to the version in train.json")
    registry = Registry(params["registry"].get("root", "registry"))
    name = trained["name"]
    registered = registry.get(name, trained["version"])  # NotFound if the registry lacks it
    candidate = load_net(registry, name, registered.version)  # verifies the stored hash
    stable_version = registry.get_alias(name, "stable")
    stable = None
    if stable_version is not None and stable_version != registered.version:
        stable = (stable_version, load_net(registry, name, stable_version))
    tolerance = float(params["evaluate"].get("tolerance", 0.0))
    comparison = compare_on_holdout(candidate, stable, prepared.dataset, tolerance)
    metrics = {
        "version": registered.version,
        "digest_matches_registry": registered.digest == digest,
        **comparison.to_dict(),
    }
    _write_json(out / "metrics.json", metrics)
    return metrics
