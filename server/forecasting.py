"""The data plane of a model server: validate, batch, forecast, describe.

Works on numpy arrays and plain dataclasses; `server.servicer` converts
protobuf at the edge. Every input rule lives here, and every violation is an
`InvalidArgument` naming the field (`series[3].history`) and the series.

History rule: a series needs at least `lookback` values (the model's input
window); longer histories are accepted up to `max_history` values and only
the most recent `lookback` feed the model (the whole history still sets the
series' error scale). There is no padding of short histories: a forecast from
a window the model never saw during training is not one we want to serve.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from opentelemetry import trace

from canarycast import spans
from canarycast.errors import InvalidArgument, Unavailable
from canarycast.validation import (
    Limits,
    Observation,
    check_finite,
    check_series_id,
    history_scale,
    validate_observations,
)
from server.batching import DynamicBatcher
from server.loader import LoadedModel, ModelWatcher
from server.metrics import ServerMetrics

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class SeriesQuery:
    series_id: str
    history: np.ndarray  # float64, oldest first
    start: int | None = None  # ns since the epoch of history[0]
    step: int | None = None  # ns between values


@dataclass(frozen=True)
class ForecastQuery:
    series: Sequence[SeriesQuery]
    horizon: int
    quantiles: tuple[float, ...] = ()


@dataclass(frozen=True)
class SeriesForecast:
    series_id: str
    forecast_id: str
    timestamps: np.ndarray | None  # int64 ns, or None without a start
    point: np.ndarray  # (horizon,)
    quantiles: np.ndarray  # (len(requested quantiles), horizon)
    scale: float  # mean absolute one-step change of the history (MASE-style)


@dataclass(frozen=True)
class ForecastAnswer:
    forecasts: list[SeriesForecast]
    model: LoadedModel
    batch_size: int
    quantiles: tuple[float, ...]  # levels of SeriesForecast.quantiles, as requested
    variant: str


def target_timestamps(start: int, n: int, horizon: int, step: int | None, freq: str) -> np.ndarray:
    """int64 ns timestamps of the `horizon` steps after a history of `n` values."""
    if step is not None:
        return start + step * np.arange(n, n + horizon, dtype=np.int64)
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Tick):  # fixed length: plain arithmetic
        fixed = int(pd.Timedelta(offset).value)
        return start + fixed * np.arange(n, n + horizon, dtype=np.int64)
    index = pd.date_range(pd.Timestamp(start, unit="ns"), periods=n + horizon, freq=offset)
    return np.asarray(index[n:].as_unit("ns").asi8, dtype=np.int64)


#: Timestamps pandas can hold (int64 ns, one step inside the ends).
_FIRST_NS = int(pd.Timestamp.min.value)
_LAST_NS = int(pd.Timestamp.max.value)
#: Longest calendar step (a year) as an upper bound for offsets without a fixed length.
_LONGEST_CALENDAR_STEP_NS = 366 * 24 * 3600 * NS_PER_S


def check_forecast_times(s: SeriesQuery, steps: int, freq: str, field: str, where: str) -> None:
    """Every target time (`steps` after `start`) must be a representable timestamp."""
    assert s.start is not None
    step = s.step
    if step is None:
        offset = pd.tseries.frequencies.to_offset(freq)
        step = (
            int(pd.Timedelta(offset).value)
            if isinstance(offset, pd.offsets.Tick)
            else _LONGEST_CALENDAR_STEP_NS
        )
    if not (s.start >= _FIRST_NS and s.start + step * steps <= _LAST_NS):
        raise InvalidArgument(field, f"puts the forecast times outside the years 1678-2261 {where}")


class Forecaster:
    """Answers forecasts with the watched model through the dynamic batcher."""

    def __init__(
        self,
        watcher: ModelWatcher,
        batcher: DynamicBatcher,
        *,
        limits: Limits | None = None,
        variant: str = "",
        metrics: ServerMetrics | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.watcher = watcher
        self.batcher = batcher
        self.limits = limits or Limits()
        self.variant = variant
        self.metrics = metrics
        self.tracer = tracer or trace.get_tracer("canarycast.server")

    def model(self) -> LoadedModel:
        model = self.watcher.current
        if model is None:
            raise Unavailable("model not loaded yet; wait for health SERVING")
        return model

    def validate(self, query: ForecastQuery, model: LoadedModel) -> None:
        config, limits = model.config, self.limits
        if not query.series:
            raise InvalidArgument("series", "at least one series is required")
        if len(query.series) > limits.max_series_per_call:
            raise InvalidArgument(
                "series",
                f"{len(query.series)} series in one call; the limit is "
                f"{limits.max_series_per_call}",
            )
        if not 1 <= query.horizon <= config.horizon:
            raise InvalidArgument(
                "horizon", f"must be between 1 and {config.horizon}, got {query.horizon}"
            )
        seen: set[float] = set()
        for i, q in enumerate(query.quantiles):
            if q not in config.quantiles:
                raise InvalidArgument(
                    f"quantiles[{i}]",
                    f"{q} is not served; this model serves {list(config.quantiles)}",
                )
            if q in seen:
                raise InvalidArgument(f"quantiles[{i}]", f"{q} requested twice")
            seen.add(q)
        ids: set[str] = set()
        for i, s in enumerate(query.series):
            field = f"series[{i}]"
            check_series_id(s.series_id, f"{field}.series_id", limits)
            if s.series_id in ids:
                raise InvalidArgument(f"{field}.series_id", f"duplicate series id {s.series_id!r}")
            ids.add(s.series_id)
            where = f"(series {s.series_id!r})"
            n = s.history.size
            if n == 0:
                raise InvalidArgument(f"{field}.history", f"is empty {where}")
            if n < config.lookback:
                raise InvalidArgument(
                    f"{field}.history",
                    f"has {n} values {where}; the model needs at least {config.lookback} "
                    "(ModelInfo.lookback)",
                )
            if n > limits.max_history:
                raise InvalidArgument(
                    f"{field}.history",
                    f"has {n} values {where}; the limit is {limits.max_history}",
                )
            check_finite(s.history, f"{field}.history", where)
            if s.step is not None:
                if s.start is None:
                    raise InvalidArgument(f"{field}.step", f"is set without start {where}")
                if s.step <= 0:
                    raise InvalidArgument(f"{field}.step", f"must be positive {where}")
            if s.start is not None:
                check_forecast_times(s, n + query.horizon, config.freq, f"{field}.start", where)

    async def forecast(
        self, query: ForecastQuery, deadline: float | None = None, variant: str | None = None
    ) -> ForecastAnswer:
        """Validate against the current model, then batch. `deadline` is time.monotonic();
        `variant` (set by a router) overrides the server's own label for this call."""
        variant = self.variant if variant is None else variant
        started_ns = time.time_ns()
        model = self.model()
        self.validate(query, model)
        lookback = model.config.lookback
        windows = np.stack([s.history[-lookback:] for s in query.series]).astype(np.float64)
        result = await self.batcher.submit(model, windows, deadline)
        outputs = result.outputs  # (n, max_horizon, quantiles)
        h = query.horizon
        q_index = [model.config.quantiles.index(q) for q in query.quantiles]
        forecasts = []
        for i, s in enumerate(query.series):
            ts = None
            if s.start is not None:
                ts = target_timestamps(s.start, s.history.size, h, s.step, model.config.freq)
            forecasts.append(
                SeriesForecast(
                    series_id=s.series_id,
                    forecast_id=secrets.token_hex(12),
                    timestamps=ts,
                    point=outputs[i, :h, model.point_index],
                    quantiles=outputs[i, :h, q_index].reshape(len(q_index), h),
                    scale=history_scale(s.history),
                )
            )
        self._record(forecasts, model, variant, result.batch_size, started_ns, outputs[:, :h])
        return ForecastAnswer(forecasts, model, result.batch_size, query.quantiles, variant)

    def _record(
        self,
        forecasts: list[SeriesForecast],
        model: LoadedModel,
        variant: str,
        batch_size: int,
        started_ns: int,
        outputs: np.ndarray,
    ) -> None:
        """One span per forecast, carrying what is needed to score it once actuals arrive.

        ``outputs`` (series, horizon, quantiles): every quantile the model serves, so
        the interval score can be judged whatever the caller asked for.
        """
        levels = model.config.quantiles
        if self.metrics is not None:
            self.metrics.forecasts.inc(len(forecasts))
        for i, f in enumerate(forecasts):
            spans.record_forecast(
                self.tracer,
                series_id=f.series_id,
                forecast_id=f.forecast_id,
                model_name=model.name,
                model_version=model.version_id,
                variant=variant,
                point=f.point,
                timestamps=f.timestamps,
                scale=f.scale,
                start_time=started_ns,
                extra={spans.BATCH_SIZE: batch_size},
                quantile_levels=levels,
                quantiles=outputs[i].T,
            )

    def observe(self, observations: Sequence[Observation]) -> int:
        """Validate observed values and acknowledge them (one span per series)."""
        total = validate_observations(observations, self.limits)
        for o in observations:
            spans.record_observation(self.tracer, o.series_id, o.timestamps, o.values)
        if self.metrics is not None:
            self.metrics.observed_points.inc(total)
        return total


def deadline_from_remaining(remaining: float | None) -> float | None:
    """time.monotonic() deadline from gRPC's `time_remaining()` (None: no deadline)."""
    if remaining is None or math.isinf(remaining):
        return None
    return time.monotonic() + remaining
