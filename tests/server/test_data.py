"""Tests for server.lifecycle.data: bundled real datasets, users' long-format files, splits."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from server.lifecycle.data import (
    BUNDLED_DATASETS,
    DataError,
    Dataset,
    Series,
    future_timestamps,
    load_dataset,
    read_long_format,
    split_points,
)

DAY = np.timedelta64(1, "D")
HOUR = np.timedelta64(1, "h")


def _first_line(file: str) -> list[str]:
    """The first data row of a bundled CSV, read straight from the packaged file."""
    resource = importlib.resources.files("vega_datasets").joinpath("_data", file)
    return resource.read_text(encoding="utf-8").splitlines()[1].split(",")


def _check_regular(ds: Dataset) -> None:
    for s in ds.series:
        assert s.timestamps.dtype == np.dtype("datetime64[ns]")
        assert s.values.dtype == np.float64
        assert np.isfinite(s.values).all()
        assert (np.diff(s.timestamps) > np.timedelta64(0)).all()
        expected = pd.date_range(s.timestamps[0], periods=len(s), freq=ds.freq)
        np.testing.assert_array_equal(s.timestamps, expected.to_numpy("datetime64[ns]"))


# --------------------------------------------------------------------------- bundled


def test_bundled_names() -> None:
    assert BUNDLED_DATASETS == (
        "seattle-temps",
        "sf-temps",
        "seattle-weather",
        "hourly-temps",
        "us-employment",
    )


@pytest.mark.parametrize(
    ("name", "sid", "first_value"),
    [("seattle-temps", "seattle-temps", 39.4), ("sf-temps", "sf-temps", 47.8)],
)
def test_hourly_temps(name: str, sid: str, first_value: float) -> None:
    ds = load_dataset(name)
    assert ds.name == name
    assert ds.source == f"vega_datasets 0.9.0: {name}.csv"
    assert ds.series_ids == (sid,)
    assert ds.freq == "h"
    assert ds.step == HOUR
    assert ds.season_length == 24
    _check_regular(ds)
    s = ds.get(sid)
    assert len(s) == 8760  # 365 days of 24 hours after repair
    assert s.step == HOUR
    assert s.timestamps[0] == np.datetime64("2010-01-01T00:00")
    assert s.timestamps[-1] == np.datetime64("2010-12-31T23:00")
    assert s.values[0] == first_value
    # The file has 8759 rows: 2010-03-14 03:00 (US DST start) is absent; nothing duplicated.
    assert ds.filled_points == 1
    assert ds.merged_points == 0
    assert "2010-03-14 03:00:00" in ds.notes


def test_seattle_temps_gap_is_interpolated() -> None:
    s = load_dataset("seattle-temps").series[0]
    i = int(np.searchsorted(s.timestamps, np.datetime64("2010-03-14T03:00")))
    assert s.timestamps[i] == np.datetime64("2010-03-14T03:00")
    assert s.values[i - 1] == 43.0 and s.values[i + 1] == 42.2  # 02:00 and 04:00 in the file
    assert s.values[i] == pytest.approx(42.6)


def test_seattle_weather() -> None:
    ds = load_dataset("seattle-weather")
    assert ds.series_ids == tuple(
        f"seattle-weather/{c}" for c in ("precipitation", "temp_max", "temp_min", "wind")
    )
    assert (ds.freq, ds.step, ds.season_length) == ("D", DAY, 7)
    assert (ds.filled_points, ds.merged_points, ds.notes) == (0, 0, "no repairs needed")
    _check_regular(ds)
    date, precipitation, temp_max, temp_min, wind, _ = _first_line("seattle-weather.csv")
    assert date == "2012/01/01"
    for s, raw in zip(ds.series, (precipitation, temp_max, temp_min, wind), strict=True):
        assert len(s) == 1461  # 2012-01-01 .. 2015-12-31
        assert s.timestamps[0] == np.datetime64("2012-01-01")
        assert s.timestamps[-1] == np.datetime64("2015-12-31")
        assert s.values[0] == float(raw)


def test_us_employment() -> None:
    ds = load_dataset("us-employment")
    resource = importlib.resources.files("vega_datasets").joinpath("_data", "us-employment.csv")
    header = resource.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[0] == "month"
    assert ds.series_ids == tuple(f"us-employment/{c}" for c in header[1:])
    assert len(ds.series) == 23
    assert (ds.freq, ds.season_length) == ("MS", 12)
    assert ds.step == np.timedelta64(2_629_746, "s")  # mean Gregorian month, nominal only
    assert (ds.filled_points, ds.merged_points) == (0, 0)
    _check_regular(ds)
    first = _first_line("us-employment.csv")
    nonfarm = ds.get("us-employment/nonfarm")
    assert len(nonfarm) == 120
    assert nonfarm.timestamps[0] == np.datetime64("2006-01-01")
    assert nonfarm.timestamps[-1] == np.datetime64("2015-12-01")
    assert nonfarm.values[0] == float(first[1]) == 135450.0
    assert nonfarm.step == np.timedelta64(31, "D")


def test_content_hash_stable_and_distinct() -> None:
    hashes = {name: load_dataset(name).content_hash for name in BUNDLED_DATASETS}
    assert len(set(hashes.values())) == len(BUNDLED_DATASETS)
    for h in hashes.values():
        assert len(h) == 64 and int(h, 16) >= 0
    # A fresh parse (not the cache) gives the same digest.
    from server.lifecycle import data

    data._load_bundled.cache_clear()
    assert load_dataset("seattle-temps").content_hash == hashes["seattle-temps"]


def test_series_is_read_only_and_get_lists_ids() -> None:
    ds = load_dataset("seattle-weather")
    with pytest.raises(ValueError):
        ds.series[0].values[0] = 1.0
    with pytest.raises(KeyError, match=r"seattle-weather/wind"):
        ds.get("nope")


def test_unknown_name_lists_bundled() -> None:
    with pytest.raises(
        DataError, match=r"seattle-temps, sf-temps, seattle-weather, hourly-temps, us-employment"
    ):
        load_dataset("seattle")


# --------------------------------------------------------------------------- splits and time


def test_split_points() -> None:
    assert split_points(100) == (70, 85)
    assert split_points(8760) == (6132, 7446)
    assert split_points(20, 0.1, 0.2) == (14, 16)
    assert split_points(7) == (7 - 2, 6)  # floor(1.05) = 1 each
    with pytest.raises(DataError, match=r"val and test"):
        split_points(6)
    with pytest.raises(DataError, match=r"train and val and test"):
        split_points(0)
    with pytest.raises(DataError, match=r"test"):
        split_points(100, 0.2, 0.0)
    with pytest.raises(ValueError, match=r"val_fraction"):
        split_points(100, -0.1, 0.1)
    with pytest.raises(ValueError, match=r"< 1"):
        split_points(100, 0.5, 0.5)


def test_future_timestamps() -> None:
    hourly = future_timestamps(np.datetime64("2010-12-31T23:00"), "h", 3)
    assert hourly.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(
        hourly, np.array(["2011-01-01T00", "2011-01-01T01", "2011-01-01T02"], "datetime64[ns]")
    )
    daily = future_timestamps(np.datetime64("2015-12-31"), "D", 2)
    np.testing.assert_array_equal(daily, np.array(["2016-01-01", "2016-01-02"], "datetime64[ns]"))
    monthly = future_timestamps(np.datetime64("2015-12-01"), "MS", 3)
    np.testing.assert_array_equal(
        monthly, np.array(["2016-01-01", "2016-02-01", "2016-03-01"], "datetime64[ns]")
    )
    assert len(future_timestamps(np.datetime64("2015-12-01"), "MS", 0)) == 0
    with pytest.raises(ValueError):
        future_timestamps(np.datetime64("2015-12-01"), "MS", -1)


def test_series_validates() -> None:
    s = Series("a", np.array(["2020-01-01", "2020-01-02"], "datetime64[D]"), np.array([1, 2]))
    assert s.timestamps.dtype == np.dtype("datetime64[ns]") and s.values.dtype == np.float64
    assert s.step == DAY and len(s) == 2
    with pytest.raises(DataError, match=r"increasing"):
        Series("a", np.array(["2020-01-02", "2020-01-01"], "datetime64[ns]"), np.zeros(2))
    with pytest.raises(DataError, match=r"index 1"):
        Series(
            "a", np.array(["2020-01-01", "2020-01-02"], "datetime64[ns]"), np.array([0.0, np.inf])
        )


# --------------------------------------------------------------------------- users' files


def _write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD_CSV = """unique_id,ds,y,extra
b,2020-01-01 02:00,5.5,x
a,2020-01-01 01:00,2,x
a,2020-01-01 00:00,1,x
b,2020-01-01 00:00,3.5,x
a,2020-01-01 02:00,3,x
b,2020-01-01 01:00,4.5,x
a,2020-01-01 03:00,4,x
"""


def test_good_csv_unsorted(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD_CSV)
    ds = load_dataset(path)
    assert ds.name == ds.source == "data.csv"
    assert ds.series_ids == ("a", "b")
    assert (ds.freq, ds.step, ds.season_length) == ("h", HOUR, 24)
    a, b = ds.series
    np.testing.assert_array_equal(a.values, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_array_equal(b.values, [3.5, 4.5, 5.5])
    assert a.timestamps[0] == np.datetime64("2020-01-01T00:00")
    assert (ds.filled_points, ds.merged_points) == (0, 0)
    assert read_long_format(str(path)).content_hash == ds.content_hash


def test_good_parquet_matches_csv(tmp_path: Path) -> None:
    csv_ds = read_long_format(_write(tmp_path, GOOD_CSV))
    frame = pd.read_csv(tmp_path / "data.csv")
    frame["ds"] = pd.to_datetime(frame["ds"])
    for name in ("data.parquet", "data.pq"):
        frame.to_parquet(tmp_path / name)
        ds = load_dataset(tmp_path / name)
        assert ds.name == name
        assert ds.series_ids == ("a", "b")
        assert ds.content_hash == csv_ds.content_hash


def test_monthly_and_daily_files(tmp_path: Path) -> None:
    monthly = "unique_id,ds,y\n" + "".join(f"m,2020-{m:02d}-01,{m}\n" for m in range(1, 13))
    ds = read_long_format(_write(tmp_path, monthly))
    assert (ds.freq, ds.season_length, len(ds.series[0])) == ("MS", 12, 12)
    daily = "unique_id,ds,y\n" + "".join(f"d,2020-03-{d:02d},{d}\n" for d in range(1, 11))
    ds = read_long_format(_write(tmp_path, daily))
    assert (ds.freq, ds.step, ds.season_length) == ("D", DAY, 7)


@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        ("unique_id,y\na,1\n", ["missing column(s) 'ds'", "present: 'unique_id', 'y'"]),
        ("", ["empty"]),
        ("unique_id,ds,y\n", ["no data rows"]),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,yesterday,3\n",
            ["line 4", "'ds'", "'yesterday'", "timestamp"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,abc\na,2020-01-03,3\n",
            ["line 3", "'y'", "'abc'", "not a number"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,\na,2020-01-03,3\n",
            ["line 3", "'y'", "empty"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-03,NaN\n",
            ["line 4", "'y'", "missing"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,inf\na,2020-01-02,2\na,2020-01-03,3\n",
            ["line 2", "'y'", "not finite"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\n,2020-01-02,2\n",
            ["line 3", "'unique_id'", "empty series id"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-01,3\n",
            ["series 'a'", "2020-01-01", "line 2 and line 4"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-03,3\n"
            "a,2020-01-04,4\na,2020-01-06,6\na,2020-01-07,7\n",
            ["series 'a'", "not evenly spaced", "1 days", "2 days", "2020-01-06", "line 6"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-03,3\n"
            "b,2020-01-01 00:00,1\nb,2020-01-01 01:00,2\nb,2020-01-01 02:00,3\n",
            ["different steps", "'D' for 'a'", "'h' for 'b'"],
        ),
        (
            "unique_id,ds,y\na,2020-01-01,1\na,2020-01-02,2\na,2020-01-03,3\n"
            "b,2020-01-01,1\nb,2020-01-02,2\n",
            ["series 'b'", "2 point(s)", "at least 3"],
        ),
        ("unique_id,ds,y\na,2020-01-01,1,9\n", ["line 2", "4 fields"]),
    ],
    ids=[
        "missing-column",
        "empty-file",
        "header-only",
        "bad-timestamp",
        "non-numeric-y",
        "empty-y",
        "nan-y",
        "inf-y",
        "empty-id",
        "duplicate",
        "irregular",
        "mixed-steps",
        "too-short",
        "ragged-row",
    ],
)
def test_bad_csv(tmp_path: Path, text: str, patterns: list[str]) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "data.csv" in message
    for pattern in patterns:
        assert pattern in message, message


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    text = "unique_id,ds,y\n\na,2020-01-01,1\n\na,2020-01-02,oops\n"
    with pytest.raises(DataError, match=r"line 5, column 'y'"):
        read_long_format(_write(tmp_path, text))


def test_irregular_monthly_names_the_gap(tmp_path: Path) -> None:
    months = [1, 2, 3, 4, 6, 7]
    text = "unique_id,ds,y\n" + "".join(f"m,2020-{m:02d}-01,{m}\n" for m in months)
    with pytest.raises(DataError) as info:
        read_long_format(_write(tmp_path, text))
    message = str(info.value)
    for pattern in ("'MS'", "31 days", "61 days", "2020-04-01", "2020-06-01", "line 6"):
        assert pattern in message, message


def test_bad_parquet(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "unique_id": ["a", "a", "a"],
            "ds": pd.date_range("2020-01-01", periods=3, freq="D"),
            "y": [1.0, np.nan, 3.0],
        }
    )
    frame.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row index 1, column 'y'"):
        load_dataset(tmp_path / "bad.parquet")
    frame.drop(columns="y").to_parquet(tmp_path / "noy.parquet")
    with pytest.raises(DataError, match=r"missing column\(s\) 'y'"):
        load_dataset(tmp_path / "noy.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot read"):
        load_dataset(tmp_path / "junk.parquet")


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv: no such file"):
        load_dataset(tmp_path / "missing.csv")
    (tmp_path / "data.txt").write_text("unique_id,ds,y\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_dataset(tmp_path / "data.txt")


def test_hourly_temps_pools_the_two_real_hourly_series() -> None:
    combined = load_dataset("hourly-temps")
    seattle, sf = load_dataset("seattle-temps"), load_dataset("sf-temps")
    assert [s.series_id for s in combined.series] == ["seattle-temps", "sf-temps"]
    assert combined.freq == "h" and combined.season_length == 24
    np.testing.assert_array_equal(combined.series[0].values, seattle.series[0].values)
    np.testing.assert_array_equal(combined.series[1].timestamps, sf.series[0].timestamps)
    assert combined.filled_points == 2
    assert combined.content_hash not in (seattle.content_hash, sf.content_hash)
