"""Defaults from the data: season lengths from the frequency, lookback and horizon from them.

The weekly and half-hourly series are built from the bundled real ones (weekly means of
Seattle's daily maximum temperature, Seattle's hourly temperatures interpolated to half
hours), written as users' long-format files and read back as a user's would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from server.lifecycle.data import load_dataset, read_long_format, season_length_for
from server.lifecycle.model import ModelConfig
from server.lifecycle.pipeline import config_for, explain_defaults
from server.lifecycle.seasons import MAX_SEASON, derive, natural_seasons, primary_season


@pytest.mark.parametrize(
    ("freq", "seasons"),
    [
        ("h", (24, 168)),
        ("30min", (48, 336)),
        ("15min", (96, 672)),
        ("2h", (12, 84)),
        ("min", (60, 1440, 10080)),
        ("D", (7, 365)),
        ("B", (5,)),
        ("W-SUN", (52,)),
        ("W-MON", (52,)),
        ("MS", (12,)),
        ("ME", (12,)),
        ("QS-OCT", (4,)),
        ("QE-DEC", (4,)),
        ("YS-JAN", ()),
    ],
)
def test_natural_seasons_of_each_frequency(freq: str, seasons: tuple[int, ...]) -> None:
    assert tuple(s.length for s in natural_seasons(freq)) == seasons


@pytest.mark.parametrize(
    ("freq", "primary"),
    [
        ("h", 24),
        ("30min", 48),
        ("15min", 96),
        ("min", 60),  # a day of minutes (1440) is longer than a window holds
        ("D", 7),
        ("B", 5),
        ("W-SUN", 52),
        ("MS", 12),
        ("QS-OCT", 4),
        ("YS-JAN", 1),
    ],
)
def test_primary_season(freq: str, primary: int) -> None:
    assert primary_season(freq) == primary == season_length_for(freq)
    assert primary <= MAX_SEASON


@pytest.mark.parametrize(
    ("freq", "n", "season", "extra", "lookback", "horizon", "encoder"),
    [
        ("h", 8760, 24, (168,), 192, 24, 48),
        ("30min", 17520, 48, (336,), 384, 48, 96),
        ("15min", 35040, 96, (), 192, 96, 0),
        ("D", 1461, 7, (365,), 379, 14, 28),
        ("D", 400, 7, (), 21, 14, 0),  # too short to learn a year: 365 left out
        ("B", 1000, 5, (), 15, 10, 0),
        ("W-SUN", 208, 52, (), 104, 13, 0),
        ("MS", 120, 12, (), 24, 12, 0),
        ("QS-OCT", 80, 4, (), 12, 8, 0),
        ("YS-JAN", 60, 1, (), 12, 6, 0),
    ],
)
def test_derived_defaults(
    freq: str,
    n: int,
    season: int,
    extra: tuple[int, ...],
    lookback: int,
    horizon: int,
    encoder: int,
) -> None:
    d = derive(freq, [n, n + 10])
    assert d.fields == {
        "season_length": season,
        "extra_seasons": extra,
        "lookback": lookback,
        "horizon": horizon,
        "encoder_steps": encoder,  # 0: the LSTM reads the whole window
    }
    # A valid config, and every choice is explained.
    ModelConfig(freq=freq, **d.fields)
    assert set(d.reasons) == set(d.fields)
    assert all(d.reasons.values())


def test_a_short_series_caps_the_horizon_and_says_why() -> None:
    d = derive("MS", [60])  # a test part of 9 months cannot hold a 12-month horizon
    assert d.fields["horizon"] == 6
    assert "test part of 9" in d.reasons["horizon"]


def test_reasons_name_the_seasons_left_out() -> None:
    d = derive("15min", [35040])
    assert "672 (weekly) is longer than a window holds" in d.reasons["season_length"]
    d = derive("D", [400])
    assert "365 (yearly) needs training parts" in d.reasons["season_length"]


def test_flags_override_and_seasons_fit_a_given_lookback() -> None:
    d = derive("h", [8760], {"lookback": 48, "horizon": 12})
    assert d.fields == {
        "season_length": 24,
        "extra_seasons": (),
        "lookback": 48,
        "horizon": 12,
        "encoder_steps": 0,
    }
    assert "168 (weekly) does not fit the given lookback" in d.reasons["season_length"]
    assert d.reasons["lookback"] == d.reasons["horizon"] == "given"
    d = derive("h", [8760], {"season_length": 12})
    assert d.fields["season_length"] == 12 and d.fields["extra_seasons"] == ()
    assert d.fields["lookback"] == 12 + 24
    # The primary season is never dropped for a lookback: the config names the conflict.
    d = derive("W-SUN", [208], {"lookback": 48})
    with pytest.raises(ValueError, match=r"lookback \(48\) must be > season_length \(52\)"):
        ModelConfig(freq="W-SUN", **d.fields)


def test_extra_seasons_are_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="extra_seasons"):
        ModelConfig(lookback=100, season_length=24, extra_seasons=(168,))
    with pytest.raises(ValueError, match="extra_seasons"):
        ModelConfig(lookback=200, season_length=24, extra_seasons=(12,))
    config = ModelConfig(lookback=200, season_length=24, extra_seasons=(168,))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.seasons == (24, 168)
    # Absent when empty: the configs (so version ids) of earlier models are unchanged.
    assert "extra_seasons" not in ModelConfig().to_dict()


def _write_long(path: Path, series: dict[str, pd.Series]) -> Path:
    frames = [
        pd.DataFrame({"unique_id": sid, "ds": s.index.strftime("%Y-%m-%d %H:%M:%S"), "y": s})
        for sid, s in series.items()
    ]
    pd.concat(frames).to_csv(path, index=False)
    return path


def weekly_file(tmp_path: Path) -> Path:
    """Weekly means of Seattle's daily maximum temperature, 2012-2015 (208 weeks)."""
    weather = load_dataset("seattle-weather").get("seattle-weather/temp_max")
    daily = pd.Series(weather.values, index=pd.DatetimeIndex(weather.timestamps))
    weekly = daily.resample("W-SUN").mean().iloc[1:-1]
    return _write_long(tmp_path / "weekly.csv", {"seattle-tmax": weekly})


def half_hourly_file(tmp_path: Path) -> Path:
    """Seattle's hourly temperatures, January to April, interpolated to half hours."""
    temps = load_dataset("seattle-temps").series[0]
    hourly = pd.Series(temps.values, index=pd.DatetimeIndex(temps.timestamps)).iloc[: 24 * 120]
    half = hourly.resample("30min").interpolate()
    return _write_long(tmp_path / "half-hourly.csv", {"seattle-30min": half})


def business_daily_file(tmp_path: Path) -> Path:
    """Seattle's daily maximum temperature on working days only, 2012-2015."""
    weather = load_dataset("seattle-weather").get("seattle-weather/temp_max")
    daily = pd.Series(weather.values, index=pd.DatetimeIndex(weather.timestamps))
    return _write_long(tmp_path / "business.csv", {"seattle-b": daily[daily.index.day_of_week < 5]})


def test_weekly_series_gets_a_yearly_season(tmp_path: Path) -> None:
    dataset = read_long_format(weekly_file(tmp_path))
    assert dataset.freq == "W-SUN" and len(dataset.series[0]) == 208
    config = config_for(dataset)
    assert (config.season_length, config.extra_seasons) == (52, ())
    assert config.lookback > config.season_length
    assert config.horizon == 13
    why = explain_defaults(dataset, config)
    assert why["season_length"]["value"] == 52
    assert "52 (yearly)" in why["season_length"]["why"]


def test_half_hourly_series_gets_a_day_and_a_week(tmp_path: Path) -> None:
    dataset = read_long_format(half_hourly_file(tmp_path))
    assert dataset.freq == "30min"
    config = config_for(dataset)
    assert config.seasons == (48, 336)
    assert (config.lookback, config.horizon) == (384, 48)
    assert np.all(np.diff(dataset.series[0].timestamps) == np.timedelta64(30, "m"))


def test_business_daily_series_gets_a_working_week(tmp_path: Path) -> None:
    dataset = read_long_format(business_daily_file(tmp_path))
    assert dataset.freq == "B"
    config = config_for(dataset)
    assert (config.season_length, config.horizon) == (5, 10)


def test_bundled_datasets_take_their_defaults_from_the_data() -> None:
    hourly = config_for(load_dataset("hourly-temps"))
    assert (hourly.seasons, hourly.lookback, hourly.horizon) == ((24, 168), 192, 24)
    daily = config_for(load_dataset("seattle-weather"))
    assert daily.seasons == (7, 365)
    monthly = config_for(load_dataset("us-employment"))
    assert (monthly.seasons, monthly.lookback, monthly.horizon) == ((12,), 24, 12)


def test_a_network_with_a_longer_season_starts_as_seasonal_naive() -> None:
    from server.lifecycle.model import LSTMForecaster, build_model, predict
    from server.lifecycle.scoring import seasonal_naive_forecast

    config = config_for(load_dataset("seattle-temps"), hidden=4, layers=1)
    assert config.seasons == (24, 168) and config.encoder_steps == 48
    net = build_model(config)
    assert isinstance(net, LSTMForecaster)
    assert net.lstm.input_size == 3  # value, daily and weekly differences
    assert net.head.in_features == 4 + config.horizon  # plus the weekly naive forecast
    y = load_dataset("seattle-temps").series[0].values
    windows = np.stack([y[i : i + config.lookback] for i in (0, 500, 4000)])
    out = predict(net, windows)
    np.testing.assert_allclose(
        out[..., config.point_index], seasonal_naive_forecast(windows, config.horizon, 24), 1e-4
    )
