"""`canarycast train` with default flags on weekly, half-hourly and business-day files (built
from the bundled real series), and `models show` / `GetModel` saying what was chosen."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from server.lifecycle.registry import Registry
from server.serving.servicer import lineage_to_proto
from tests.canarycast.test_cli import canarycast
from tests.server.test_seasons import business_daily_file, half_hourly_file, weekly_file

SMALL = ("--hidden", "4", "--layers", "1", "--epochs", "1", "--max-windows-per-epoch", "64")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "season", "extra", "horizon"),
    [
        (weekly_file, 52, [], 13),
        (half_hourly_file, 48, [336], 48),
        (business_daily_file, 5, [], 10),
    ],
)
def test_train_with_default_flags_on_any_frequency(
    tmp_path: Path, build: Callable[[Path], Path], season: int, extra: list[int], horizon: int
) -> None:
    data = build(tmp_path)
    registry = tmp_path / "registry"
    out = canarycast(
        "train", "--dataset", str(data), "--registry", str(registry), "--name", "m",
        "--alias", "stable", "--no-progress", "--json", *SMALL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    params = record["parameters"]
    assert params["season_length"] == season and params.get("extra_seasons", []) == extra
    assert params["horizon"] == horizon and params["lookback"] > max([season, *extra])
    chosen = record["defaults"]
    assert chosen["season_length"]["value"] == season
    assert chosen["lookback"]["why"].startswith("the longest season")
    assert {"mase", "relmae_snaive"} <= set(record["scores"])

    show = json.loads(canarycast("models", "--registry", str(registry), "show", "m@stable").stdout)
    assert show["metadata"]["defaults"] == chosen
    lineage = lineage_to_proto(Registry(registry).resolve("m@stable").metadata)
    assert lineage.defaults["horizon"] == f"{horizon}: {chosen['horizon']['why']}"
    assert lineage.defaults["season_length"].startswith(f"{season}: frequency")


def test_a_flag_overrides_the_default_and_says_given(tmp_path: Path) -> None:
    data = weekly_file(tmp_path)
    out = canarycast(
        "train", "--dataset", str(data), "--registry", str(tmp_path / "r"), "--name", "m",
        "--lookback", "60", "--horizon", "4", "--no-progress", "--json", *SMALL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["parameters"]["lookback"] == 60 and record["parameters"]["horizon"] == 4
    assert record["defaults"]["lookback"] == {"value": 60, "why": "given"}
    assert record["defaults"]["season_length"]["value"] == 52


def test_a_lookback_shorter_than_the_season_is_refused_naming_it(tmp_path: Path) -> None:
    out = canarycast(
        "train", "--dataset", str(weekly_file(tmp_path)), "--registry", str(tmp_path / "r"),
        "--name", "m", "--lookback", "48", "--no-progress", *SMALL,
    )  # fmt: skip
    assert out.returncode == 2
    assert "lookback (48) must be > season_length (52)" in out.stderr
