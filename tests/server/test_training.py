"""Training: windows, reproducibility, early stopping and the default recipe on real data."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from server.lifecycle.data import DataError, Dataset, Series, load_dataset
from server.lifecycle.model import (
    EnsembleForecaster,
    LSTMForecaster,
    ModelConfig,
    build_model,
    predict,
)
from server.lifecycle.pipeline import config_for
from server.lifecycle.scoring import offline_scores
from server.lifecycle.training import (
    TrainParams,
    TrainResult,
    _build_windows,
    _val_loss,
    calibrate,
    conformal_quantile,
    interval_pairs,
    train,
)

TINY = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1)
QUICK = TrainParams(epochs=2, batch_size=64, max_windows_per_epoch=256)


def _synthetic(n: int = 600, n_series: int = 2) -> Dataset:
    rng = np.random.default_rng(42)
    ts = np.datetime64("2024-01-01T00:00", "ns") + np.arange(n) * np.timedelta64(1, "h")
    t = np.arange(n)
    series = tuple(
        Series(
            f"s{i}",
            ts,
            10 * (i + 1) + (3 + i) * np.sin(2 * np.pi * t / 24) + 0.01 * t + rng.normal(0, 0.3, n),
        )
        for i in range(n_series)
    )
    return Dataset(
        name="synthetic",
        series=series,
        step=np.timedelta64(3600, "s").astype("timedelta64[ns]"),
        season_length=24,
        source="test",
        content_hash="0",
        freq="h",
    )


def test_params_validation_and_dict() -> None:
    p = TrainParams(series_ids=("a", "b"))
    assert p.to_dict()["series_ids"] == ["a", "b"]
    assert TrainParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="colour"):
        TrainParams.from_dict({"colour": 1})
    assert TrainParams().to_dict()["series_ids"] is None
    assert TrainParams().to_dict()["calibrate"] is True  # in the recipe key and the lineage
    assert TrainParams.from_dict({"calibrate": False}).calibrate is False
    for bad in (
        {"calibrate": 1},
        {"epochs": 0},
        {"batch_size": 1.5},
        {"learning_rate": 0},
        {"learning_rate": math.nan},
        {"patience": 0},
        {"seed": -1},
        {"max_windows_per_epoch": 0},
        {"series_ids": ()},
    ):
        (name,) = bad
        with pytest.raises(ValueError, match=name):
            TrainParams(**bad)


def test_windows_lie_in_their_split() -> None:
    ds = _synthetic()
    train_w, val_w, test_w = _build_windows(ds, TINY, None)
    # n=600: train [0, 420), val [420, 510), test [510, 600); origins from 36 resp. the split
    assert len(train_w) == 2 * (420 - 6 - 36 + 1)
    assert len(val_w) == 2 * (510 - 6 - 420 + 1)
    assert len(test_w) == 2 * (600 - 6 - 510 + 1)
    y0, y1 = ds.series[0].values, ds.series[1].values
    np.testing.assert_array_equal(test_w.targets()[0], y0[510:516])
    np.testing.assert_array_equal(test_w.inputs()[0], y0[510 - 36 : 510])
    np.testing.assert_array_equal(test_w.snaive()[0], y0[510 - 24 : 510 - 18])
    np.testing.assert_array_equal(train_w.targets()[0], y0[36:42])
    np.testing.assert_array_equal(test_w.targets()[-1], y1[594:600])  # second series pooled
    np.testing.assert_array_equal(val_w.inputs()[-1], y1[504 - 36 : 504])
    assert test_w.insample_scale[0] == pytest.approx(np.abs(y0[24:420] - y0[:396]).mean())


def test_tiny_training_result() -> None:
    ds = _synthetic()
    r = train(ds, TINY, QUICK, progress=False)
    assert isinstance(r, TrainResult)
    assert r.epochs_run == 2 and not r.stopped_early
    assert [h["epoch"] for h in r.history] == [1.0, 2.0]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in r.history)
    assert r.scores["test_windows"] == 2 * 85
    assert set(r.state_dict) == set(build_model(TINY).state_dict())
    assert all(v.device.type == "cpu" and v.is_contiguous() for v in r.state_dict.values())

    # the returned weights are the ones the scores were computed with
    _, _, test_w = _build_windows(ds, TINY, None)
    forecasts = predict(build_model(TINY, r.state_dict), test_w.inputs())
    again = offline_scores(
        test_w.targets(),
        forecasts,
        TINY.quantiles,
        insample_scale=test_w.insample_scale,
        snaive=test_w.snaive(),
    )
    calibration = {k: v for k, v in r.scores.items() if k.startswith("calibration_")}
    assert again == {k: v for k, v in r.scores.items() if k not in calibration}
    assert calibration == {
        "calibration_windows": float(
            sum(len(w) for w in _build_windows(ds, TINY, None)[:2])
        ),  # train + val
        "calibration_delta_0.1_0.9": pytest.approx(
            float(r.state_dict["interval_offset"][:, 2].double().mean())
        ),
    }


def test_training_is_reproducible_and_leaves_global_rng_alone() -> None:
    ds = _synthetic()
    before = torch.get_rng_state()
    a = train(ds, TINY, QUICK, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    b = train(ds, TINY, QUICK, progress=False)
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.history == b.history and a.scores == b.scores
    c = train(ds, TINY, replace(QUICK, seed=1), progress=False)
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def test_early_stopping_restores_best() -> None:
    params = TrainParams(
        epochs=60, batch_size=64, learning_rate=0.03, max_windows_per_epoch=None, patience=1
    )
    ds = _synthetic()
    r = train(ds, TINY, params, progress=False)
    assert r.stopped_early and r.epochs_run < 60
    assert len(r.history) == r.epochs_run
    losses = [h["val_loss"] for h in r.history]
    assert losses[-1] >= min(losses[:-1])  # stopped on the first epoch that did not improve
    # the weights returned are those of the best epoch, not the last
    _, val_w, _ = _build_windows(ds, TINY, None)
    q = torch.tensor(TINY.quantiles)
    # (without the conformal offset fitted after training, which moves the pinball loss)
    weights = {k: v for k, v in r.state_dict.items() if k != "interval_offset"}
    best = _val_loss(build_model(TINY, weights), val_w, np.arange(len(val_w)), q)
    assert best == pytest.approx(min(losses), rel=1e-6)
    assert best < losses[-1]


def test_series_ids_select_series() -> None:
    ds = _synthetic()
    r = train(ds, TINY, TrainParams(epochs=1, series_ids=("s1",)), progress=False)
    assert r.scores["test_windows"] == 85
    with pytest.raises(KeyError, match="nope"):
        train(ds, TINY, TrainParams(epochs=1, series_ids=("nope",)), progress=False)


def test_rejects_unusable_inputs() -> None:
    ds = _synthetic()
    with pytest.raises(ValueError, match="freq"):
        train(ds, ModelConfig(lookback=36, hidden=8, freq="D"), QUICK, progress=False)
    with pytest.raises(DataError, match="too short"):
        train(_synthetic(n=50), TINY, QUICK, progress=False)
    flat = _synthetic()
    const = Series("flat", flat.series[0].timestamps, np.full(600, 3.0))
    with pytest.raises(DataError, match="no seasonal variation"):
        train(replace(flat, series=(const,)), TINY, QUICK, progress=False)


def test_progress_bar_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    train(_synthetic(), TINY, TrainParams(epochs=1), progress=True)
    captured = capsys.readouterr()
    assert "epoch" in captured.err and "val=" in captured.err
    assert captured.out == ""


def test_members_train_from_successive_seeds_and_serve_as_their_mean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ds = _synthetic()
    pair = replace(TINY, members=2)
    params = replace(QUICK, seed=3)
    r = train(ds, pair, params, progress=True)
    err = capsys.readouterr().err
    assert "member 1/2" in err and "member 2/2" in err
    # history: every member's epochs in turn, each with its member; epochs_run their total
    assert [(h["member"], h["epoch"]) for h in r.history] == [
        (0.0, 1.0),
        (0.0, 2.0),
        (1.0, 1.0),
        (1.0, 2.0),
    ]
    assert r.epochs_run == 4 and not r.stopped_early
    assert r.config.members == 2
    net = build_model(pair, r.state_dict)
    assert isinstance(net, EnsembleForecaster)
    assert set(r.state_dict) == set(net.state_dict())
    # each member is the network one-member training gives from seed 3 + i
    singles = [train(ds, TINY, replace(params, seed=3 + i), progress=False) for i in (0, 1)]
    raw = []
    for i, single in enumerate(singles):
        weights = {k: v for k, v in single.state_dict.items() if k != "interval_offset"}
        mine = {
            k.removeprefix(f"members.{i}."): v
            for k, v in r.state_dict.items()
            if k.startswith(f"members.{i}.")
        }
        assert mine.keys() == weights.keys()
        assert all(torch.equal(mine[k], weights[k]) for k in mine)
        member = build_model(TINY, weights)  # its own offset left at zero: the raw output
        assert isinstance(member, LSTMForecaster)
        raw.append(member)
    # the forecast is the mean of the members' raw outputs plus the one calibrated offset
    _, _, test_w = _build_windows(ds, pair, None)
    x, _ = test_w.tensors(np.arange(len(test_w)))
    offset = r.state_dict["interval_offset"]
    assert offset[:, [0, 2]].abs().min() > 0 and not offset[:, 1].any()
    with torch.inference_mode():
        mean = torch.stack([m(x) for m in raw]).mean(dim=0)
        expected = mean + raw[0].seasonal_scale(x).unsqueeze(-1) * offset
        torch.testing.assert_close(net(x), expected)
    # and the scores are those of the served ensemble
    again = offline_scores(
        test_w.targets(),
        predict(net, test_w.inputs()),
        pair.quantiles,
        insample_scale=test_w.insample_scale,
        snaive=test_w.snaive(),
    )
    assert again == {k: v for k, v in r.scores.items() if not k.startswith("calibration_")}


@pytest.fixture(scope="module")
def seattle() -> TrainResult:
    """The default recipe (config from the data: seasons 24 and 168, lookback 192) on the
    real bundled seattle-temps, trained once, from seed 1: that seed once stopped early at
    epoch 9 with MASE 1.83 (patience 5), so the tests below also keep the recipe from being
    at the mercy of its seed."""
    dataset = load_dataset("seattle-temps")
    return train(dataset, config_for(dataset), TrainParams(seed=1), progress=False)


@pytest.mark.slow
def test_default_recipe_beats_seasonal_naive(seattle: TrainResult) -> None:
    s = seattle.scores
    assert s["mase"] < 1.0
    assert s["relmae_snaive"] < 1.0
    assert 0.5 < s["coverage_0.1_0.9"] <= 1.0
    assert s["test_windows"] == 1314 - 24 + 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sf-temps", "seattle-weather", "us-employment"])
def test_default_recipe_beats_seasonal_naive_on_each_bundled_dataset(name: str) -> None:
    # seattle-temps is the fixture above; hourly-temps is it and sf-temps pooled. A recipe
    # change that makes the default no better than "last season's value" fails here.
    dataset = load_dataset(name)
    s = train(dataset, config_for(dataset), TrainParams(), progress=False).scores
    assert s["relmae_snaive"] < 1.0, s  # MAE below seasonal naive's on the test windows
    assert 0.6 < s["coverage_0.1_0.9"] < 0.97, s


@pytest.mark.slow
def test_default_recipe_weights_serve(seattle: TrainResult) -> None:
    net = build_model(seattle.config, seattle.state_dict)
    y = load_dataset("seattle-temps").series[0].values
    out = predict(net, y[None, -seattle.config.lookback :])
    assert out.shape == (1, 24, 3)
    assert np.isfinite(out).all()
    assert 20 < out[0, 0, 1] < 70  # Fahrenheit in late December


@pytest.mark.parametrize(
    ("coverage", "expected"),
    [(0.8, 8.0), (0.9 - 0.1, 8.0), (0.5, 5.0), (0.1, 1.0), (0.95, 9.0), (0.05, 1.0)],
)
def test_conformal_quantile_is_the_ceil_n_plus_1_c_th_smallest(
    coverage: float, expected: float
) -> None:
    # n = 9 scores 1..9: k = ceil(10 c), the k-th smallest; k > n gives the largest.
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 10.0))
    assert conformal_quantile(scores, coverage) == expected
    # column-wise on (n, horizon), negative scores included
    two = np.stack([scores, -scores, 10 * scores], axis=1)
    got = conformal_quantile(two, coverage)
    np.testing.assert_array_equal(got, [expected, -(10 - expected), 10 * expected])


def test_conformal_quantile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="scores"):
        conformal_quantile(np.empty((0, 3)), 0.8)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="coverage"):
            conformal_quantile(np.ones(5), bad)


def test_interval_pairs_never_include_the_median() -> None:
    assert interval_pairs((0.1, 0.5, 0.9)) == [(0, 2)]
    assert interval_pairs((0.05, 0.25, 0.5, 0.75, 0.95)) == [(0, 4), (1, 3)]
    assert interval_pairs((0.1, 0.2, 0.5)) == []
    assert interval_pairs((0.5,)) == []
    assert interval_pairs((0.1, 0.5, 0.95)) == [(0, 2)]


def test_calibrate_covers_the_calibration_windows() -> None:
    ds = _synthetic()
    r = train(ds, TINY, replace(QUICK, calibrate=False), progress=False)
    assert "calibration_windows" not in r.scores
    assert not r.state_dict["interval_offset"].any()
    net = build_model(TINY, r.state_dict)
    _, val_w, _ = _build_windows(ds, TINY, None)
    figures = calibrate(net, val_w)
    offset = net.interval_offset
    assert figures["calibration_windows"] == len(val_w)
    assert not offset[:, 1].any()  # the median stays
    torch.testing.assert_close(offset[:, 0], -offset[:, 2])
    # in-sample CQR guarantee: on the calibration windows every step covers >= 80 %
    forecasts = predict(net, val_w.inputs())
    y = val_w.targets()
    inside = (y >= forecasts[..., 0]) & (y <= forecasts[..., 2])
    assert (inside.mean(axis=0) >= 0.8).all()
    # idempotent: it replaces, never adds to, an earlier offset
    before = offset.clone()
    assert calibrate(net, val_w) == figures
    torch.testing.assert_close(net.interval_offset, before)
    # train calibrates on the training and validation windows together (the year, not
    # the few weeks before test): the same offsets as calibrate on both
    train_w, val_w2, _ = _build_windows(ds, TINY, None)
    pooled = train_w + val_w2
    assert len(pooled) == len(train_w) + len(val_w2)
    on = train(ds, TINY, QUICK, progress=False)
    assert on.scores["calibration_windows"] == len(pooled)
    calibrate(net, pooled)
    torch.testing.assert_close(on.state_dict["interval_offset"], net.interval_offset)
    with pytest.raises(ValueError, match="same values"):
        _ = val_w + _build_windows(_synthetic(n_series=1), TINY, None)[1]


@pytest.mark.slow
def test_calibration_brings_test_coverage_to_nominal_on_real_data() -> None:
    # sf-temps: the raw quantile head covers about 15 % of the test actuals with its 80 %
    # interval (it is overconfident out of sample); a cheap recipe, trained once each way.
    ds = load_dataset("sf-temps")
    config = config_for(ds, hidden=8, layers=1, horizon=12)
    params = TrainParams(epochs=3, max_windows_per_epoch=512)
    raw = train(ds, config, replace(params, calibrate=False), progress=False)
    cal = train(ds, config, params, progress=False)
    key = "coverage_0.1_0.9"
    assert abs(cal.scores[key] - 0.8) < abs(raw.scores[key] - 0.8)
    assert cal.scores[key] > 0.7
    offset = cal.state_dict["interval_offset"]
    assert offset[:, [0, 2]].abs().min() > 0 and not offset[:, 1].any()
    assert cal.scores["calibration_delta_0.1_0.9"] > 0  # overconfident: intervals widen
    # calibration comes after training: the weights are the same, and so is the point
    # forecast but where the raw head's quantiles crossed the median (predict sorts them)
    assert cal.scores["mase"] == pytest.approx(raw.scores["mase"], rel=1e-3)
    assert all(
        torch.equal(cal.state_dict[k], raw.state_dict[k])
        for k in cal.state_dict
        if k != "interval_offset"
    )
