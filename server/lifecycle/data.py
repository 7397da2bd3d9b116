"""Time-series datasets: the bundled real series and users' long-format files.

Bundled datasets are CSV files shipped inside the ``vega_datasets`` wheel (read from the
installed package, never downloaded). Users' files are long format, as statsforecast and
neuralforecast use: columns ``unique_id``, ``ds``, ``y``, in CSV or Parquet.

Every :class:`Dataset` carries ``freq``, a pandas offset alias ("h", "D", "W-SUN", "MS", ...),
which is the source of truth for timestamps: use :func:`future_timestamps` to extend a series.
``step`` is the exact spacing for fixed-length frequencies (hours, days, weeks, ...) and, for
calendar frequencies (months, quarters, years, business days), the mean length of one period
over the 400-year Gregorian cycle (30.436875 days for a month), for display and rough
arithmetic only.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import itertools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from server.lifecycle.seasons import primary_season

__all__ = [
    "BUNDLED_DATASETS",
    "DataError",
    "Dataset",
    "Series",
    "future_timestamps",
    "load_dataset",
    "read_long_format",
    "season_length_for",
    "split_points",
]

BUNDLED_DATASETS: tuple[str, ...] = (
    "seattle-temps",
    "sf-temps",
    "seattle-weather",
    "hourly-temps",
    "us-employment",
)
LONG_FORMAT_COLUMNS: tuple[str, str, str] = ("unique_id", "ds", "y")
MIN_SERIES_LENGTH = 3
_CSV_SUFFIXES = frozenset({".csv"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
_MISSING_TOKENS = frozenset({"nan", "na", "n/a", "null", "none", "<na>"})


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, row and column."""


@dataclass(frozen=True, eq=False)
class Series:
    """One series: strictly increasing datetime64[ns] timestamps and finite float64 values.

    The arrays are made read-only; copy them before changing them.
    """

    series_id: str
    timestamps: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        ts = np.array(self.timestamps, dtype="datetime64[ns]")
        vals = np.array(self.values, dtype=np.float64)
        if ts.ndim != 1 or vals.shape != ts.shape:
            raise DataError(
                f"series {self.series_id!r}: timestamps {ts.shape} and values {vals.shape} "
                "must be 1-D arrays of equal length"
            )
        if len(ts) == 0:
            raise DataError(f"series {self.series_id!r} is empty")
        if np.isnat(ts).any() or (len(ts) > 1 and not (np.diff(ts) > np.timedelta64(0)).all()):
            raise DataError(f"series {self.series_id!r}: timestamps must be strictly increasing")
        if not np.isfinite(vals).all():
            bad = int(np.flatnonzero(~np.isfinite(vals))[0])
            raise DataError(f"series {self.series_id!r}: value at index {bad} is not finite")
        ts.flags.writeable = False
        vals.flags.writeable = False
        object.__setattr__(self, "timestamps", ts)
        object.__setattr__(self, "values", vals)

    @property
    def step(self) -> np.timedelta64:
        """Spacing of the first two timestamps (varies for calendar frequencies)."""
        if len(self.timestamps) < 2:
            raise DataError(f"series {self.series_id!r} has one point and no step")
        return np.timedelta64(self.timestamps[1] - self.timestamps[0], "ns")

    def __len__(self) -> int:
        return len(self.timestamps)


@dataclass(frozen=True)
class Dataset:
    """Series sharing one frequency.

    ``content_hash`` is the sha256 hex digest, over the series in order, of: the id in
    UTF-8, a NUL byte, the length as int64 little-endian, the timestamps as int64
    nanoseconds little-endian and the values as float64 little-endian.
    ``filled_points``/``merged_points`` count the timestamps (per series) that loading
    added by linear interpolation or merged from duplicates; only bundled data is repaired.
    """

    name: str
    series: tuple[Series, ...]
    step: np.timedelta64
    season_length: int
    source: str
    content_hash: str
    freq: str
    filled_points: int = 0
    merged_points: int = 0
    notes: str = ""

    def get(self, series_id: str) -> Series:
        """The series with this id; KeyError listing the known ids if absent."""
        for s in self.series:
            if s.series_id == series_id:
                return s
        known = ", ".join(repr(s.series_id) for s in self.series)
        raise KeyError(f"dataset {self.name!r} has no series {series_id!r}; known: {known}")

    @property
    def series_ids(self) -> tuple[str, ...]:
        """The ids of the series, in order."""
        return tuple(s.series_id for s in self.series)


# --------------------------------------------------------------------------- frequencies


def _infer_freq(index: pd.DatetimeIndex) -> str | None:
    """pd.infer_freq as an alias string, on pandas 2 and 3 alike."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infer_freq.*")
        inferred = pd.infer_freq(index)
    if inferred is None:
        return None
    return str(getattr(inferred, "freqstr", inferred))


def season_length_for(freq: str) -> int:
    """The primary season of ``freq`` (:func:`server.lifecycle.seasons.primary_season`): 24 hourly,
    48 half-hourly, 96 every 15 minutes, 7 daily, 5 business-daily, 52 weekly, 12 monthly,
    4 quarterly, 1 yearly."""
    return primary_season(freq)


def _step_for(freq: str) -> np.timedelta64:
    """Exact step of a fixed-length frequency, else the mean period over 400 years."""
    off = to_offset(freq)
    if isinstance(off, pd.offsets.Tick | pd.offsets.Day):
        return np.timedelta64(pd.Timedelta(off).value, "ns")
    if isinstance(off, pd.offsets.Week):
        return np.timedelta64(7 * off.n, "D").astype("timedelta64[ns]")
    start = pd.Timestamp("2000-01-01")
    grid = pd.date_range(start, start + pd.DateOffset(years=400), freq=off, inclusive="left")
    cycle_ns = 146_097 * 86_400 * 10**9  # 400 Gregorian years; too long for a ns Timedelta
    return np.timedelta64((2 * cycle_ns + len(grid)) // (2 * len(grid)), "ns")


def future_timestamps(last: np.datetime64, freq: str, horizon: int) -> np.ndarray:
    """The ``horizon`` timestamps (datetime64[ns]) that follow ``last`` at frequency ``freq``."""
    if horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    off = to_offset(freq)
    first = pd.Timestamp(last) + off
    return pd.date_range(first, periods=horizon, freq=off).to_numpy(dtype="datetime64[ns]")


# --------------------------------------------------------------------------- building


def _content_hash(series: Sequence[Series]) -> str:
    digest = hashlib.sha256()
    for s in series:
        digest.update(s.series_id.encode("utf-8") + b"\0")
        digest.update(np.int64(len(s)).astype("<i8").tobytes())
        digest.update(s.timestamps.view(np.int64).astype("<i8").tobytes())
        digest.update(s.values.astype("<f8").tobytes())
    return digest.hexdigest()


def _make_dataset(
    name: str,
    series: Sequence[Series],
    freq: str,
    source: str,
    *,
    filled: int = 0,
    merged: int = 0,
    notes: str = "",
) -> Dataset:
    return Dataset(
        name=name,
        series=tuple(series),
        step=_step_for(freq),
        season_length=season_length_for(freq),
        source=source,
        content_hash=_content_hash(series),
        freq=freq,
        filled_points=filled,
        merged_points=merged,
        notes=notes,
    )


# --------------------------------------------------------------------------- bundled data


@dataclass(frozen=True)
class _Bundled:
    file: str
    time_column: str
    time_format: str
    freq: str
    value_columns: tuple[str, ...] = field(default=())  # empty: every numeric column


_BUNDLED: dict[str, _Bundled] = {
    "seattle-temps": _Bundled("seattle-temps.csv", "date", "%Y/%m/%d %H:%M", "h", ("temp",)),
    "sf-temps": _Bundled("sf-temps.csv", "date", "%Y/%m/%d %H:%M:%S", "h", ("temp",)),
    "seattle-weather": _Bundled("seattle-weather.csv", "date", "%Y/%m/%d", "D"),
    "us-employment": _Bundled("us-employment.csv", "month", "%Y-%m-%d", "MS"),
}


#: Bundled datasets made of several of the files above (same frequency, same period).
_COMBINED: dict[str, tuple[str, ...]] = {
    "hourly-temps": ("seattle-temps", "sf-temps"),
}


@cache
def _load_combined(name: str) -> Dataset:
    """Several bundled files as one dataset of several series (their repairs add up)."""
    parts = [_load_bundled(part) for part in _COMBINED[name]]
    return _make_dataset(
        name,
        [series for part in parts for series in part.series],
        parts[0].freq,
        " + ".join(part.source for part in parts),
        filled=sum(part.filled_points for part in parts),
        merged=sum(part.merged_points for part in parts),
        notes="; ".join(f"{part.name}: {part.notes}" for part in parts),
    )


def _fmt_times(times: Sequence[pd.Timestamp], limit: int = 5) -> str:
    shown = ", ".join(str(t) for t in times[:limit])
    return shown + (f" and {len(times) - limit} more" if len(times) > limit else "")


@cache
def _load_bundled(name: str) -> Dataset:
    """Read a bundled file and make it regular.

    Duplicate timestamps are averaged and missing ones (or missing values) filled by linear
    interpolation in time; the counts go to ``filled_points``/``merged_points`` and ``notes``.
    In vega_datasets 0.9.0 seattle-temps and sf-temps each lack the hour 2010-03-14 03:00
    (the day US daylight saving time began): 1 point filled each, nothing else repaired.
    """
    spec = _BUNDLED[name]
    resource = importlib.resources.files("vega_datasets").joinpath("_data", spec.file)
    source = f"vega_datasets {importlib.metadata.version('vega_datasets')}: {spec.file}"
    try:
        with resource.open("rb") as fh:
            frame = pd.read_csv(fh)
        times = pd.to_datetime(frame[spec.time_column], format=spec.time_format)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"bundled dataset {name!r} ({source}) cannot be read: {exc}") from exc
    columns = spec.value_columns or tuple(
        c
        for c in frame.columns
        if c != spec.time_column and pd.api.types.is_numeric_dtype(frame[c])
    )
    values = frame.loc[:, list(columns)].astype(np.float64)
    values.index = pd.DatetimeIndex(times).as_unit("ns")
    values = values.sort_index()

    duplicated = values.index[values.index.duplicated()].unique()
    merged = int(values.index.duplicated().sum())
    values = values.groupby(level=0).mean()
    grid = pd.date_range(values.index[0], values.index[-1], freq=spec.freq).as_unit("ns")
    off_grid = values.index.difference(grid)
    if len(off_grid):
        raise DataError(
            f"bundled dataset {name!r} ({source}): timestamps off the {spec.freq!r} grid: "
            f"{_fmt_times(list(off_grid))}"
        )
    missing = grid.difference(values.index)
    nan_rows = values.index[values.isna().any(axis=1)]
    values = values.reindex(grid).interpolate(method="time", limit_direction="both")
    filled = len(missing) + len(nan_rows)

    parts = []
    if len(missing):
        parts.append(
            f"{len(missing)} missing timestamp(s) filled by linear interpolation: "
            f"{_fmt_times(list(missing))}"
        )
    if len(nan_rows):
        parts.append(f"{len(nan_rows)} row(s) with missing values interpolated")
    if merged:
        parts.append(f"{merged} duplicate row(s) averaged at {_fmt_times(list(duplicated))}")
    notes = "; ".join(parts) or "no repairs needed"

    ts = grid.to_numpy(dtype="datetime64[ns]")
    if spec.value_columns:
        series = [Series(name, ts, values[columns[0]].to_numpy())]
    else:
        series = [Series(f"{name}/{c}", ts, values[c].to_numpy()) for c in columns]
    return _make_dataset(name, series, spec.freq, source, filled=filled, merged=merged, notes=notes)


# --------------------------------------------------------------------------- users' files


def load_dataset(name_or_path: str | os.PathLike[str]) -> Dataset:
    """A bundled name, or a path to a CSV or Parquet file in long format."""
    if isinstance(name_or_path, str) and name_or_path in _BUNDLED:
        return _load_bundled(name_or_path)
    if isinstance(name_or_path, str) and name_or_path in _COMBINED:
        return _load_combined(name_or_path)
    path = Path(name_or_path)
    if path.suffix or path.exists() or len(path.parts) > 1:
        return read_long_format(path)
    raise DataError(
        f"unknown dataset {str(name_or_path)!r}: bundled datasets are "
        f"{', '.join(BUNDLED_DATASETS)}; or give the path of a .csv or .parquet file"
    )


@dataclass
class _Table:
    """Raw columns of a user's file and how to name a row in messages."""

    file: str
    columns: dict[str, pd.Series]
    where: Callable[[int], str]


def _csv_table(path: Path) -> _Table:
    """Read a CSV as strings, remembering each record's 1-based line number."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header: list[str] | None = None
            rows: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not record or all(not cell.strip() for cell in record):
                    continue
                if header is None:
                    header = [cell.strip() for cell in record]
                    continue
                if len(record) != len(header):
                    raise DataError(
                        f"{path.name}: line {reader.line_num} has {len(record)} fields, "
                        f"the header has {len(header)}"
                    )
                rows.append(record)
                lines.append(reader.line_num)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path.name}: cannot read the file: {exc}") from exc
    if header is None:
        raise DataError(f"{path.name}: the file is empty (no header, no rows)")
    columns = {name: pd.Series([r[i] for r in rows], dtype=object) for i, name in enumerate(header)}
    return _Table(path.name, columns, lambda i: f"line {lines[i]}")


def _parquet_table(path: Path) -> _Table:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise DataError(f"{path.name}: cannot read the Parquet file: {exc}") from exc
    frame = frame.reset_index(drop=True)
    columns = {str(c): frame[c] for c in frame.columns}
    return _Table(path.name, columns, lambda i: f"row index {i}")


def _fail_rows(table: _Table, bad: np.ndarray, what: str, column: str, raw: pd.Series) -> None:
    """Raise for the first True in ``bad``, naming row, column and value."""
    hits = np.flatnonzero(bad)
    if not len(hits):
        return
    first = int(hits[0])
    more = f" ({len(hits) - 1} more row(s) like it)" if len(hits) > 1 else ""
    raise DataError(
        f"{table.file}: {table.where(first)}, column {column!r}: {what} "
        f"(value {raw.iloc[first]!r}){more}"
    )


def _is_blank(raw: pd.Series) -> np.ndarray:
    blank = np.array([isinstance(v, str) and not v.strip() for v in raw], dtype=bool)
    return blank | np.asarray(pd.isna(raw), dtype=bool)


def _parse_ids(table: _Table) -> np.ndarray:
    raw = table.columns["unique_id"]
    _fail_rows(table, _is_blank(raw), "empty series id", "unique_id", raw)
    return np.array([v.strip() if isinstance(v, str) else str(v) for v in raw], dtype=object)


def _parse_ds(table: _Table) -> np.ndarray:
    raw = table.columns["ds"]
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        raise DataError(
            f"{table.file}: column 'ds' holds numbers ({raw.dtype}); timestamps are needed"
        )
    _fail_rows(table, _is_blank(raw), "empty timestamp", "ds", raw)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        parsed = raw.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(raw):
        parsed = raw
    else:
        text = raw.astype(str).str.strip()
        best: pd.Series | None = None
        for fmt in ("ISO8601", None):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    attempt = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
            except (ValueError, TypeError):
                continue
            if best is None or attempt.isna().sum() < best.isna().sum():
                best = attempt
        if best is None:
            best = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        _fail_rows(table, best.isna().to_numpy(), "cannot parse as a timestamp", "ds", raw)
        parsed = best.dt.tz_localize(None)
    return pd.DatetimeIndex(parsed).as_unit("ns").to_numpy(dtype="datetime64[ns]")


def _parse_y(table: _Table) -> np.ndarray:
    raw = table.columns["y"]
    if pd.api.types.is_bool_dtype(raw):
        raise DataError(f"{table.file}: column 'y' holds booleans; numbers are needed")
    blank = _is_blank(raw)
    _fail_rows(table, blank, "empty value", "y", raw)
    if pd.api.types.is_numeric_dtype(raw):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = raw.astype(str).str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        missing = text.str.lower().isin(_MISSING_TOKENS).to_numpy()
        _fail_rows(table, missing, "missing value", "y", raw)
        _fail_rows(table, np.isnan(values), "not a number", "y", raw)
    _fail_rows(table, np.isnan(values), "missing value (NaN)", "y", raw)
    _fail_rows(table, np.isinf(values), "value is not finite", "y", raw)
    return values


def _check_regular(
    file: str, sid: str, ts: np.ndarray, where: Callable[[int], str], offset: int
) -> str:
    """The inferred freq of ``ts``; DataError naming where the spacing changes.

    ``where(offset + i)`` names the row of ``ts[i]`` in messages.
    """
    index = pd.DatetimeIndex(ts)
    freq = _infer_freq(index)
    if freq is not None:
        return freq
    head = _infer_freq(index[:3])
    if head is None:
        i = 2
    else:
        expected = pd.date_range(index[0], periods=len(index), freq=head)
        i = int(np.flatnonzero(expected != index)[0])
    before = pd.Timedelta(ts[i - 1] - ts[i - 2])
    after = pd.Timedelta(ts[i] - ts[i - 1])
    expect = f" (expected steps of {head!r})" if head else ""
    raise DataError(
        f"{file}: series {sid!r} is not evenly spaced{expect}: the spacing is {before} "
        f"up to {index[i - 1]} ({where(offset + i - 1)}) but {after} from there to {index[i]} "
        f"({where(offset + i)}); gaps are not filled in users' files"
    )


def read_long_format(path: str | os.PathLike[str]) -> Dataset:
    """Load a long-format CSV or Parquet file (``unique_id``, ``ds``, ``y``; others ignored).

    Rows may come in any order; series are sorted by id, points by time. Timestamps with a
    UTC offset are converted to UTC and kept naive. CSV rows are named by 1-based line
    number (the header is line 1), Parquet rows by 0-based row index.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _CSV_SUFFIXES | _PARQUET_SUFFIXES:
        raise DataError(
            f"{path.name}: unsupported file type {suffix or '(none)'!r}; use .csv, .parquet or .pq"
        )
    if not path.is_file():
        raise DataError(f"{path.name}: no such file ({path})")
    table = _csv_table(path) if suffix in _CSV_SUFFIXES else _parquet_table(path)

    absent = [c for c in LONG_FORMAT_COLUMNS if c not in table.columns]
    if absent:
        present = ", ".join(repr(c) for c in table.columns) or "none"
        raise DataError(
            f"{table.file}: missing column(s) {', '.join(repr(c) for c in absent)}; "
            f"present: {present}; long format needs unique_id, ds, y"
        )
    n_rows = len(table.columns["y"])
    if n_rows == 0:
        raise DataError(f"{table.file}: the file has a header but no data rows")

    ids = _parse_ids(table)
    ds = _parse_ds(table)
    y = _parse_y(table)

    order = np.lexsort((ds.view(np.int64), ids.astype(str)))
    ids, ds, y = ids[order], ds[order], y[order]

    def where(i: int) -> str:
        return table.where(int(order[i]))

    dup = np.flatnonzero((ids[1:] == ids[:-1]) & (ds[1:] == ds[:-1]))
    if len(dup):
        i = int(dup[0])
        raise DataError(
            f"{table.file}: series {ids[i]!r} has two rows for {pd.Timestamp(ds[i])} "
            f"({where(i)} and {where(i + 1)}); each (unique_id, ds) must appear once"
        )

    bounds = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True])
    series: list[Series] = []
    freqs: dict[str, list[str]] = {}
    for start, stop in itertools.pairwise(bounds):
        sid = str(ids[start])
        if stop - start < MIN_SERIES_LENGTH:
            raise DataError(
                f"{table.file}: series {sid!r} has {stop - start} point(s); "
                f"at least {MIN_SERIES_LENGTH} are needed"
            )
        freq = _check_regular(table.file, sid, ds[start:stop], where, int(start))
        freqs.setdefault(freq, []).append(sid)
        series.append(Series(sid, ds[start:stop], y[start:stop]))

    if len(freqs) > 1:
        listing = "; ".join(
            f"{freq!r} for {', '.join(repr(s) for s in sids[:5])}"
            + (f" and {len(sids) - 5} more" if len(sids) > 5 else "")
            for freq, sids in freqs.items()
        )
        raise DataError(f"{table.file}: series have different steps: {listing}")
    (freq,) = freqs
    return _make_dataset(path.name, series, freq, path.name)


# --------------------------------------------------------------------------- splits


def split_points(
    n: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    holdout: int | None = None,
) -> tuple[int, int]:
    """Chronological split of a series of length ``n``: returns ``(train_end, val_end)``.

    train = [0, train_end), val = [train_end, val_end), test = [val_end, n); the val and
    test sizes are ``floor(n * fraction)``, or ``holdout`` points each when it is given
    (retraining holds out the most recent period, so that everything older, the newest
    observations included, is trained on). DataError if any part would be empty.
    """
    for label, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:  # also rejects NaN
            raise ValueError(f"{label} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}"
        )
    if holdout is not None and (isinstance(holdout, bool) or holdout < 1):
        raise ValueError(f"holdout must be None or an integer >= 1, got {holdout!r}")
    n_val = math.floor(n * val_fraction + 1e-9) if holdout is None else holdout
    n_test = math.floor(n * test_fraction + 1e-9) if holdout is None else holdout
    n_train = n - n_val - n_test
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    empty = [part for part, size in sizes.items() if size <= 0]
    if empty:
        raise DataError(
            f"a series of {n} point(s) split with val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} leaves the {' and '.join(empty)} part(s) empty"
        )
    return n_train, n_train + n_val
