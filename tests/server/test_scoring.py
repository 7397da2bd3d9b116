"""Offline scores against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.lifecycle.scoring import (
    coverage_key,
    insample_seasonal_mae,
    offline_scores,
    pinball_loss,
    seasonal_naive_forecast,
)

QUANTILES = (0.1, 0.5, 0.9)


def _example() -> dict[str, np.ndarray]:
    y = np.array([[10.0, 20.0], [30.0, 40.0]])
    lo = np.array([[9.0, 17.0], [31.0, 39.0]])
    med = np.array([[12.0, 18.0], [30.0, 44.0]])
    hi = np.array([[13.0, 19.0], [33.0, 45.0]])
    return {
        "y": y,
        "f": np.stack([lo, med, hi], axis=-1),
        "scale": np.array([1.0, 4.0]),
        "snaive": np.array([[11.0, 21.0], [28.0, 40.0]]),
    }


def test_seasonal_naive_repeats_last_season() -> None:
    out = seasonal_naive_forecast(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 5, 2)
    np.testing.assert_array_equal(out, [4.0, 5.0, 4.0, 5.0, 4.0])
    np.testing.assert_array_equal(seasonal_naive_forecast(np.array([7.0, 8.0]), 3, 1), [8, 8, 8])


def test_seasonal_naive_batched_last_axis() -> None:
    hist = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    np.testing.assert_array_equal(
        seasonal_naive_forecast(hist, 4, 3), [[1, 2, 3, 1], [10, 20, 30, 10]]
    )


def test_seasonal_naive_needs_a_season() -> None:
    with pytest.raises(ValueError, match="season_length=3"):
        seasonal_naive_forecast(np.array([1.0, 2.0]), 2, 3)


def test_insample_seasonal_mae() -> None:
    assert insample_seasonal_mae(np.array([1.0, 2.0, 4.0, 7.0]), 1) == 2.0
    assert insample_seasonal_mae(np.array([1.0, 2.0, 4.0, 7.0]), 2) == 4.0
    with pytest.raises(ValueError, match="longer than season_length"):
        insample_seasonal_mae(np.array([1.0, 2.0]), 2)


def test_offline_scores_hand_computed() -> None:
    ex = _example()
    s = offline_scores(ex["y"], ex["f"], QUANTILES, insample_scale=ex["scale"], snaive=ex["snaive"])
    # median errors 2, 2, 0, 4; scaled by (1, 1, 4, 4): 2, 2, 0, 1
    assert s["mae"] == pytest.approx(2.0)
    assert s["rmse"] == pytest.approx(math.sqrt(6.0))
    assert s["smape"] == pytest.approx((400 / 22 + 400 / 38 + 0 + 800 / 84) / 4)
    assert s["mase"] == pytest.approx(1.25)
    assert s["snaive_mae"] == pytest.approx(1.0)
    assert s["relmae_snaive"] == pytest.approx(2.0)
    assert s["coverage_0.1_0.9"] == pytest.approx(0.5)
    # per entry (sum over the three quantiles): 1.4, 2.2, 1.2, 2.6 -> 7.4 / 12
    assert s["pinball"] == pytest.approx(7.4 / 12)
    assert s["test_windows"] == 2.0
    assert set(s) == {
        "mae", "rmse", "smape", "mase", "snaive_mae", "relmae_snaive",
        "pinball", "test_windows", "coverage_0.1_0.9",
    }  # fmt: skip


def test_pinball_loss_single_quantile() -> None:
    assert pinball_loss(np.array([1.0, 3.0]), np.array([[2.0], [2.0]]), [0.25]) == pytest.approx(
        (0.75 * 1 + 0.25 * 1) / 2
    )


def test_smape_zero_over_zero_and_single_quantile() -> None:
    y = np.array([[0.0, 2.0]])
    f = np.array([[[0.0], [0.0]]])
    s = offline_scores(y, f, (0.5,), insample_scale=np.array([1.0]), snaive=y.copy())
    assert s["smape"] == pytest.approx(100.0)  # 0 for the 0/0 entry, 200 for the other
    assert s["relmae_snaive"] == math.inf  # baseline exact, model not
    assert not any(k.startswith("coverage") for k in s)


def test_relmae_is_one_when_both_exact() -> None:
    y = np.array([[1.0, 2.0]])
    f = np.repeat(y[..., None], 3, axis=-1)
    s = offline_scores(y, f, QUANTILES, insample_scale=np.array([1.0]), snaive=y.copy())
    assert s["relmae_snaive"] == 1.0
    assert s["mae"] == 0.0
    assert s["coverage_0.1_0.9"] == 1.0


def test_coverage_key() -> None:
    assert coverage_key(0.1, 0.9) == "coverage_0.1_0.9"
    assert coverage_key(0.05, 0.95) == "coverage_0.05_0.95"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"scale": np.array([1.0, 0.0])}, "insample_scale"),
        ({"scale": np.array([1.0])}, "insample_scale"),
        ({"snaive": np.zeros((2, 3))}, "snaive"),
        ({"f": np.zeros((2, 2, 2))}, "forecasts"),
        ({"y": np.zeros(2)}, "y_true"),
    ],
)
def test_offline_scores_rejects_bad_shapes(change: dict[str, np.ndarray], match: str) -> None:
    ex = _example() | change
    with pytest.raises(ValueError, match=match):
        offline_scores(ex["y"], ex["f"], QUANTILES, insample_scale=ex["scale"], snaive=ex["snaive"])


def test_offline_scores_needs_median() -> None:
    ex = _example()
    with pytest.raises(ValueError, match=r"contain 0\.5"):
        offline_scores(
            ex["y"], ex["f"], (0.1, 0.4, 0.9), insample_scale=ex["scale"], snaive=ex["snaive"]
        )
