"""The recipe search: the recipe as given and its variants within a time budget, the best
on validation kept (server.lifecycle.search), through the pipeline and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.lifecycle.model import ModelConfig
from server.lifecycle.pipeline import train_and_register
from server.lifecycle.registry import Registry
from server.lifecycle.search import search_recipe, validation_mase
from server.lifecycle.training import TrainParams
from tests.canarycast.test_cli import canarycast
from tests.server.test_training import _synthetic

TINY = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1)
QUICK = TrainParams(epochs=2, batch_size=64, max_windows_per_epoch=256)


def test_every_variant_in_budget_is_trained_and_the_best_on_validation_is_kept() -> None:
    ds = _synthetic(n=700, n_series=2)
    found = search_recipe(ds, TINY, QUICK, 600.0, progress=False)
    trained = [t for t in found.tried if t["status"] == "trained"]
    assert [t["name"] for t in found.tried] == ["as given", "all-windows", "epochs-x2", "members-3"]
    assert len(trained) == 4  # a generous budget leaves nothing out
    best = min(trained, key=lambda t: t["val_mase"])
    assert found.chosen == best["name"]
    # the kept training is the chosen candidate's, and its figure is what was compared
    assert validation_mase(ds, found.result) == pytest.approx(best["val_mase"])
    by_name = {t["name"]: t for t in found.tried}
    assert by_name["as given"]["val_mase"] >= best["val_mase"]
    if found.chosen == "members-3":
        assert found.result.config.members == 3
    if found.chosen == "epochs-x2":
        assert found.result.params.epochs == 2 * QUICK.epochs


def test_a_small_budget_trains_the_recipe_as_given_and_says_why_the_rest_were_not() -> None:
    ds = _synthetic(n=700, n_series=2)
    found = search_recipe(ds, TINY, QUICK, 0.001, progress=False)
    assert found.chosen == "as given" and found.result.config == TINY
    statuses = {t["name"]: t["status"] for t in found.tried}
    assert statuses["as given"] == "trained"
    for name in ("all-windows", "epochs-x2", "members-3"):
        assert statuses[name].startswith("skipped: needs about"), statuses
    # a variant that would train the same recipe is not trained again
    same = search_recipe(ds, TINY, TrainParams(epochs=1, max_windows_per_epoch=None), 0.001)
    assert {t["name"]: t["status"] for t in same.tried}["all-windows"] == "same as given"


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget: float) -> None:
    with pytest.raises(ValueError, match="search budget"):
        search_recipe(_synthetic(n=200, n_series=1), TINY, QUICK, budget, progress=False)


def test_the_search_is_recorded_with_the_registered_version(tmp_path: Path) -> None:
    ds = _synthetic(n=700, n_series=2)
    version = train_and_register(
        ds, TINY, QUICK, Registry(tmp_path), "m", progress=False, search_budget=600.0
    )
    search = version.metadata["recipe_search"]
    assert search["budget_seconds"] == 600.0
    assert search["chosen"] in {c["name"] for c in search["candidates"]}
    # the parameters recorded are the chosen recipe's, which the registry serves
    chosen = version.metadata["parameters"]
    assert chosen.get("members", 1) == (3 if search["chosen"] == "members-3" else 1)
    assert chosen["epochs"] == (4 if search["chosen"] == "epochs-x2" else 2)
    plain = train_and_register(ds, TINY, QUICK, Registry(tmp_path), "n", progress=False)
    assert "recipe_search" not in plain.metadata


def test_train_command_searches_and_refuses_a_bad_budget(tmp_path: Path) -> None:
    base = [
        "train",
        *("--dataset", "seattle-weather", "--series", "seattle-weather/temp_max"),
        *("--registry", str(tmp_path), "--name", "w", "--lookback", "28", "--horizon", "7"),
        *("--hidden", "8", "--layers", "1", "--epochs", "1", "--no-progress"),
    ]
    bad = canarycast(*base, "--search-budget", "0")
    assert bad.returncode == 2 and "--search-budget" in bad.stderr
    out = canarycast(*base, "--search-budget", "0.001")
    assert out.returncode == 0, out.stderr
    assert "recipe search within 0.001 s: kept 'as given'" in out.stdout
    assert "skipped: needs about" in out.stdout
    shown = canarycast("models", "--registry", str(tmp_path), "show", "w:" + _only(tmp_path))
    assert json.loads(shown.stdout)["metadata"]["recipe_search"]["chosen"] == "as given"


def _only(root: Path) -> str:
    [v] = Registry(root).versions("w")
    return v.version
