"""The spans that carry forecasts and observations, written by servers and routers.

The canary analysis reads these attributes to score forecasts once the actual
values arrive, so their names are defined once, here.

Two shapes share the span names `forecast` and `observe` (so a Collector's filter on
names keeps both):

- **one series per span** (`record_forecast`, `record_observation`): the original shape,
  still read, e.g. from routers of an older release sending through a Collector;
- **many series per span** (`record_forecasts`, `record_observations`), what servers and
  routers write now: one span per call (a span per `SERIES_PER_SPAN` series for larger
  calls), its per-series values as arrays. `SERIES_IDS` marks this shape. Numeric arrays
  are *packed*: base64 of the little-endian int64/float64 values, one string attribute
  each, because the SDK checks a list attribute element by element (that check was a
  seventh of a server's time under 64-series calls). `read_forecasts` and
  `read_observations` turn either shape back into one row per series.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry import trace

from canarycast.validation import Observation

FORECAST_SPAN = "forecast"
OBSERVE_SPAN = "observe"
#: A routed call's attempt on a variant that failed (unreachable, or none serving) before
#: the router failed over: the client never sees it, the canary's guardrail must.
FAILED_ATTEMPT_SPAN = "failed_attempt"
#: A router's one call to a model server that carries several callers' calls (joined calls,
#: or dual-run copies sent together). It is the parent of the model server's span for that
#: call; it is no caller's child but links to each caller's span, and each joined caller's
#: span links back to it, so every caller's trace leads to the server work done for it.
JOINED_CALL_SPAN = "joined_call"
JOINED_CALLS = "canarycast.joined_calls"  # how many callers' calls (or copies) it carries

SERIES_ID = "canarycast.series_id"
FORECAST_ID = "canarycast.forecast_id"
MODEL_NAME = "canarycast.model.name"
MODEL_VERSION = "canarycast.model.version"
VARIANT = "canarycast.variant"
HORIZON = "canarycast.horizon"
BATCH_SIZE = "canarycast.batch_size"
POINT = "canarycast.point"
# The quantiles the forecast served, for the interval score: their levels, and their
# values level by level (len(levels) * horizon values, the first level's steps first).
QUANTILE_LEVELS = "canarycast.quantile_levels"
QUANTILES = "canarycast.quantiles"
SCALE = "canarycast.scale"
TARGET_TIMESTAMPS = "canarycast.target_timestamps"  # int64 ns since the epoch
TIMESTAMPS = "canarycast.timestamps"  # observed, int64 ns
# The most recent values of the call's history with their times: implicit actuals that
# score earlier forecasts of the same series (only on the answered forecast, never a copy).
HISTORY_TIMESTAMPS = "canarycast.history_timestamps"
HISTORY_VALUES = "canarycast.history_values"
VALUES = "canarycast.values"  # observed
CALL_ID = "canarycast.call_id"  # one per routed call, shared by its primary and mirrored forecasts
SHADOW = "canarycast.shadow"  # True: a dual-run/shadow copy, never returned to the client
ROUTING_REASON = "canarycast.routing_reason"
BACKEND = "canarycast.backend"

# -- many series per span: lists of strings, and packed numeric arrays (see the module doc) --
SERIES_IDS = "canarycast.series_ids"  # list of str, one per series
FORECAST_IDS = "canarycast.forecast_ids"  # list of str, one per series
POINTS = "canarycast.points"  # packed f64, series x horizon
SCALES = "canarycast.scales"  # packed f64, one per series
TIMED = "canarycast.timed"  # packed i64, 1 where the series has target times
TARGET_TIMES = "canarycast.target_times"  # packed i64 ns, series x horizon (0 where untimed)
QUANTILE_VALUES = "canarycast.quantile_values"  # packed f64, series x levels x horizon
HISTORY_COUNTS = "canarycast.history_counts"  # packed i64, recent history values per series
HISTORY_TIMES = "canarycast.history_times"  # packed i64 ns, all series' recent values, in order
HISTORY_VALUES_PACKED = "canarycast.history_values_packed"  # packed f64, as HISTORY_TIMES
OBSERVED_COUNTS = "canarycast.observed_counts"  # packed i64, observed points per series
OBSERVED_TIMES = "canarycast.observed_times"  # packed i64 ns, every series' points, in order
OBSERVED_VALUES = "canarycast.observed_values"  # packed f64, as OBSERVED_TIMES

#: Series in one many-series span at most: a call of more series writes several spans,
#: so that a span stays ~20 KB and an export batch (`EXPORT_BATCH_SPANS`) well under the
#: 4 MiB a Collector's OTLP receiver takes by default.
SERIES_PER_SPAN = 16
#: Spans per OTLP export from a canarycast process (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` wins).
EXPORT_BATCH_SPANS = 64


def pack(values: np.ndarray, dtype: str) -> str:
    """A numeric array as one span attribute: base64 of its little-endian values."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def unpack(text: Any, dtype: str) -> np.ndarray:
    """The array `pack` wrote (`dtype` "<f8" or "<i8"); ValueError when it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"a packed array is a string, not {type(text).__name__}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not base64: {exc}") from exc
    if len(raw) % 8:
        raise ValueError(f"{len(raw)} bytes is not a whole number of 8-byte values")
    return np.frombuffer(raw, dtype=dtype)


def new_ids(n: int) -> list[str]:
    """`n` random 24-hex-digit ids (what `secrets.token_hex(12)` gives), in one draw."""
    text = os.urandom(12 * n).hex()
    return [text[i : i + 24] for i in range(0, 24 * n, 24)]


@dataclass(frozen=True)
class ForecastRow:
    """One series' forecast as a span carried it, in either shape."""

    series_id: str
    forecast_id: str
    timestamps: tuple[int, ...]  # ns; empty without target times
    point: tuple[float, ...]
    scale: float
    quantile_levels: tuple[float, ...]  # empty when the span carried none (or bad ones)
    quantiles: tuple[tuple[float, ...], ...]  # one row per level
    history_timestamps: tuple[int, ...] | None  # implicit actuals, None when not carried
    history_values: tuple[float, ...] | None


def record_forecasts(
    tracer: trace.Tracer,
    *,
    series_ids: Sequence[str],
    forecast_ids: Sequence[str],
    model_name: str,
    model_version: str,
    variant: str,
    points: np.ndarray,
    timestamps: np.ndarray | None,
    scales: np.ndarray,
    timed: np.ndarray | None = None,
    start_time: int | None = None,
    extra: Mapping[str, str | int | float | bool] | None = None,
    quantile_levels: Sequence[float] | None = None,
    quantiles: np.ndarray | None = None,
    history_counts: np.ndarray | None = None,
    history_times: np.ndarray | None = None,
    history_values: np.ndarray | None = None,
) -> None:
    """Finished `forecast` spans (children of the current span) for a call's series.

    ``points`` (series, horizon); ``timestamps`` (series, horizon) ns or None when no
    series has times, ``timed`` (series,) bool saying which have them (default: all);
    ``quantiles`` (series, levels, horizon); ``history_*``: each series' most recent
    values with their times, ``history_counts[i]`` of them for series i, concatenated.
    """
    n = len(series_ids)
    points = np.asarray(points, dtype=np.float64).reshape(n, -1)
    horizon = points.shape[1]
    scales = np.asarray(scales, dtype=np.float64)
    has_times = timestamps is not None and horizon > 0
    if has_times:
        timestamps = np.asarray(timestamps, dtype=np.int64).reshape(n, horizon)
        flags = np.ones(n, dtype=np.int64) if timed is None else np.asarray(timed, dtype=np.int64)
    levels = [float(q) for q in quantile_levels or ()]
    if levels and quantiles is not None:
        quantiles = np.asarray(quantiles, dtype=np.float64).reshape(n, len(levels), horizon)
    else:
        levels = []
    history_ends = None
    if history_counts is not None and history_times is not None and history_values is not None:
        history_counts = np.asarray(history_counts, dtype=np.int64)
        history_ends = np.concatenate([[0], np.cumsum(history_counts)])
    common: dict[str, Any] = {
        MODEL_NAME: model_name,
        MODEL_VERSION: model_version,
        VARIANT: variant,
        HORIZON: horizon,
    }
    if levels:
        common[QUANTILE_LEVELS] = levels
    if extra:
        common.update(extra)
    for lo in range(0, n, SERIES_PER_SPAN):
        hi = min(lo + SERIES_PER_SPAN, n)
        attributes = dict(common)
        attributes[SERIES_IDS] = list(series_ids[lo:hi])
        attributes[FORECAST_IDS] = list(forecast_ids[lo:hi])
        attributes[POINTS] = pack(points[lo:hi], "<f8")
        attributes[SCALES] = pack(scales[lo:hi], "<f8")
        if has_times:
            assert timestamps is not None
            attributes[TIMED] = pack(flags[lo:hi], "<i8")
            attributes[TARGET_TIMES] = pack(timestamps[lo:hi], "<i8")
        if levels:
            assert quantiles is not None
            attributes[QUANTILE_VALUES] = pack(quantiles[lo:hi], "<f8")
        if history_ends is not None:
            assert history_counts is not None and history_times is not None
            assert history_values is not None
            a, b = int(history_ends[lo]), int(history_ends[hi])
            attributes[HISTORY_COUNTS] = pack(history_counts[lo:hi], "<i8")
            attributes[HISTORY_TIMES] = pack(history_times[a:b], "<i8")
            attributes[HISTORY_VALUES_PACKED] = pack(history_values[a:b], "<f8")
        tracer.start_span(FORECAST_SPAN, start_time=start_time, attributes=attributes).end()


def read_forecasts(attributes: Mapping[str, Any]) -> list[ForecastRow]:
    """The rows a `forecast` span of either shape carries. KeyError, TypeError or
    ValueError when it is malformed (a required attribute missing, sizes that disagree)."""
    if SERIES_IDS not in attributes:
        return [_single_row(attributes)]
    ids = [str(s) for s in attributes[SERIES_IDS]]
    forecast_ids = [str(s) for s in attributes[FORECAST_IDS]]
    n = len(ids)
    if len(forecast_ids) != n:
        raise ValueError(f"{len(forecast_ids)} forecast ids for {n} series")
    horizon = int(attributes[HORIZON])
    points = _shaped(unpack(attributes[POINTS], "<f8"), (n, horizon), POINTS)
    scales = _shaped(unpack(attributes[SCALES], "<f8"), (n,), SCALES)
    if TARGET_TIMES in attributes:
        times = _shaped(unpack(attributes[TARGET_TIMES], "<i8"), (n, horizon), TARGET_TIMES)
        timed = _shaped(unpack(attributes[TIMED], "<i8"), (n,), TIMED).astype(bool)
    else:
        times, timed = np.zeros((n, horizon), dtype=np.int64), np.zeros(n, dtype=bool)
    levels = tuple(float(q) for q in attributes.get(QUANTILE_LEVELS, ()))
    quantiles = None
    if levels and QUANTILE_VALUES in attributes:
        shape = (n, len(levels), horizon)
        quantiles = _shaped(unpack(attributes[QUANTILE_VALUES], "<f8"), shape, QUANTILE_VALUES)
    # None: no recent history carried for that series (a count of 0 too)
    history: Iterator[tuple[tuple[int, ...], tuple[float, ...]] | None] = iter([None] * n)
    if HISTORY_COUNTS in attributes:
        counts = _shaped(unpack(attributes[HISTORY_COUNTS], "<i8"), (n,), HISTORY_COUNTS)
        h_times = unpack(attributes[HISTORY_TIMES], "<i8")
        h_values = unpack(attributes[HISTORY_VALUES_PACKED], "<f8")
        if (counts < 0).any() or h_times.size != counts.sum() or h_values.size != h_times.size:
            raise ValueError("history counts disagree with the history carried")
        ends = np.cumsum(counts).tolist()
        t_list, v_list = h_times.tolist(), h_values.tolist()
        history = iter(
            [
                (tuple(t_list[e - c : e]), tuple(v_list[e - c : e])) if c else None
                for c, e in zip(counts.tolist(), ends, strict=True)
            ]
        )
    point_rows, time_rows, scale_list = points.tolist(), times.tolist(), scales.tolist()
    timed_list = timed.tolist()
    quantile_rows = quantiles.tolist() if quantiles is not None else None
    rows = []
    for i in range(n):
        recent = next(history)
        rows.append(
            ForecastRow(
                series_id=ids[i],
                forecast_id=forecast_ids[i],
                timestamps=tuple(time_rows[i]) if timed_list[i] else (),
                point=tuple(point_rows[i]),
                scale=scale_list[i],
                quantile_levels=levels if quantile_rows is not None else (),
                quantiles=tuple(tuple(r) for r in quantile_rows[i])
                if quantile_rows is not None
                else (),
                history_timestamps=None if recent is None else recent[0],
                history_values=None if recent is None else recent[1],
            )
        )
    return rows


def _shaped(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{name} has {values.size} values, expected {shape}")
    return values.reshape(shape)


def _single_row(attributes: Mapping[str, Any]) -> ForecastRow:
    """A one-series `forecast` span (the original shape)."""
    point = tuple(float(v) for v in attributes[POINT])
    horizon = len(point)
    levels = tuple(float(q) for q in attributes.get(QUANTILE_LEVELS, ()))
    values = [float(v) for v in attributes.get(QUANTILES, ())]
    quantiles: tuple[tuple[float, ...], ...] = ()
    if levels and len(values) == len(levels) * horizon:
        quantiles = tuple(
            tuple(values[i * horizon : (i + 1) * horizon]) for i in range(len(levels))
        )
    else:
        levels = ()
    history = HISTORY_TIMESTAMPS in attributes
    return ForecastRow(
        series_id=str(attributes[SERIES_ID]),
        forecast_id=str(attributes[FORECAST_ID]),
        timestamps=tuple(int(t) for t in attributes.get(TARGET_TIMESTAMPS, ())),
        point=point,
        scale=float(attributes.get(SCALE, 0.0)),
        quantile_levels=levels,
        quantiles=quantiles,
        history_timestamps=tuple(int(t) for t in attributes[HISTORY_TIMESTAMPS])
        if history
        else None,
        history_values=tuple(float(v) for v in attributes[HISTORY_VALUES]) if history else None,
    )


def record_forecast(
    tracer: trace.Tracer,
    *,
    series_id: str,
    forecast_id: str,
    model_name: str,
    model_version: str,
    variant: str,
    point: Sequence[float] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray | None,
    scale: float,
    start_time: int | None = None,
    extra: dict[str, str | int | float | bool] | None = None,
    quantile_levels: Sequence[float] | None = None,
    quantiles: np.ndarray | None = None,
) -> None:
    """One finished `forecast` span, a child of the current span.

    ``quantiles`` has one row per level of ``quantile_levels``, one value per step.
    """
    attributes: dict[str, str | int | float | bool | list[float] | list[int]] = {
        SERIES_ID: series_id,
        FORECAST_ID: forecast_id,
        MODEL_NAME: model_name,
        MODEL_VERSION: model_version,
        VARIANT: variant,
        HORIZON: len(point),
        POINT: [float(v) for v in point],
        SCALE: float(scale),
    }
    if timestamps is not None and len(timestamps):
        attributes[TARGET_TIMESTAMPS] = [int(t) for t in timestamps]
    if quantile_levels is not None and quantiles is not None and len(quantile_levels):
        attributes[QUANTILE_LEVELS] = [float(q) for q in quantile_levels]
        attributes[QUANTILES] = np.asarray(quantiles, dtype=np.float64).ravel().tolist()
    if extra:
        attributes.update(extra)
    tracer.start_span(FORECAST_SPAN, start_time=start_time, attributes=attributes).end()


def record_failed_attempt(
    tracer: trace.Tracer, variant: str, backend: str, grpc_code: int, reason: str
) -> None:
    tracer.start_span(
        FAILED_ATTEMPT_SPAN,
        attributes={
            VARIANT: variant,
            BACKEND: backend,
            "rpc.grpc.status_code": grpc_code,
            ROUTING_REASON: reason,
        },
    ).end()


def record_observations(
    tracer: trace.Tracer,
    series_ids: Sequence[str],
    timestamps: np.ndarray,
    values: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Finished `observe` spans for a call's series (`SERIES_PER_SPAN` a span at most):
    series i has `counts[i]` of the concatenated `timestamps` (ns) and `values`."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.concatenate([[0], np.cumsum(counts)])
    for lo in range(0, len(series_ids), SERIES_PER_SPAN):
        hi = min(lo + SERIES_PER_SPAN, len(series_ids))
        a, b = int(ends[lo]), int(ends[hi])
        tracer.start_span(
            OBSERVE_SPAN,
            attributes={
                SERIES_IDS: list(series_ids[lo:hi]),
                OBSERVED_COUNTS: pack(counts[lo:hi], "<i8"),
                OBSERVED_TIMES: pack(timestamps[a:b], "<i8"),
                OBSERVED_VALUES: pack(values[a:b], "<f8"),
            },
        ).end()


def record_observed(tracer: trace.Tracer, observations: Sequence[Observation]) -> None:
    """`record_observations` for validated observations (at least one, as Observe requires)."""
    record_observations(
        tracer,
        [o.series_id for o in observations],
        np.concatenate([o.timestamps for o in observations]),
        np.concatenate([o.values for o in observations]),
        np.array([o.values.size for o in observations], dtype=np.int64),
    )


def read_observations(
    attributes: Mapping[str, Any],
) -> list[tuple[str, tuple[int, ...], tuple[float, ...]]]:
    """(series id, timestamps, values) per series of an `observe` span of either shape."""
    if SERIES_IDS not in attributes:
        return [
            (
                str(attributes[SERIES_ID]),
                tuple(int(t) for t in attributes[TIMESTAMPS]),
                tuple(float(v) for v in attributes[VALUES]),
            )
        ]
    ids = [str(s) for s in attributes[SERIES_IDS]]
    counts = _shaped(unpack(attributes[OBSERVED_COUNTS], "<i8"), (len(ids),), OBSERVED_COUNTS)
    times = unpack(attributes[OBSERVED_TIMES], "<i8").tolist()
    values = unpack(attributes[OBSERVED_VALUES], "<f8").tolist()
    if (counts < 0).any() or len(times) != counts.sum() or len(values) != len(times):
        raise ValueError("observed counts disagree with the points carried")
    out, end = [], 0
    for series_id, c in zip(ids, counts.tolist(), strict=True):
        out.append((series_id, tuple(times[end : end + c]), tuple(values[end : end + c])))
        end += c
    return out


def record_observation(
    tracer: trace.Tracer, series_id: str, timestamps: Iterable[int], values: Iterable[float]
) -> None:
    """One finished `observe` span carrying the actual values of a series."""
    tracer.start_span(
        OBSERVE_SPAN,
        attributes={
            SERIES_ID: series_id,
            TIMESTAMPS: [int(t) for t in timestamps],
            VALUES: [float(v) for v in values],
        },
    ).end()
