"""The data plane of a model server: validate, batch, forecast, describe.

Works on numpy arrays and plain dataclasses; `server.serving.servicer` converts
protobuf at the edge. Every input rule lives here, and every violation is an
`InvalidArgument` naming the field (`series[3].history`) and the series.

History rule: a series needs at least `lookback` values (the model's input
window); longer histories are accepted up to `max_history` values and only
the most recent `lookback` feed the model (the whole history still sets the
series' error scale). There is no padding of short histories: a forecast from
a window the model never saw during training is not one we want to serve.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from opentelemetry import trace

from canarycast import spans
from canarycast.errors import InvalidArgument, Unavailable
from canarycast.validation import (
    Limits,
    Observation,
    history_scales,
    validate_observations,
)
from server.serving.batching import DynamicBatcher
from server.serving.loader import LoadedModel, ModelWatcher
from server.serving.metrics import ServerMetrics

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ForecastQuery:
    """A call's series as arrays: every history concatenated, with per-series fields.

    Built once at the edge (`server.serving.servicer.query_from_proto`, or `from_series`); all
    work on it afterwards is numpy over the whole call, not Python per series.
    """

    series_ids: list[str]
    values: np.ndarray  # float64: every history, oldest first, series after series
    lengths: np.ndarray  # int64 (series,): values of each history
    starts: np.ndarray  # int64 ns (series,): time of history[0]; 0 where has_start is False
    has_start: np.ndarray  # bool (series,)
    steps: np.ndarray  # int64 ns (series,): spacing; 0 where has_step is False
    has_step: np.ndarray  # bool (series,)
    horizon: int
    quantiles: tuple[float, ...] = ()

    @classmethod
    def from_series(
        cls,
        series: Sequence[tuple[str, np.ndarray, int | None, int | None]],
        horizon: int,
        quantiles: Sequence[float] = (),
    ) -> ForecastQuery:
        """From (series id, history, start ns or None, step ns or None) tuples."""
        histories = [np.asarray(h, dtype=np.float64).ravel() for _, h, _, _ in series]
        return cls(
            series_ids=[sid for sid, _, _, _ in series],
            values=np.concatenate(histories) if histories else np.zeros(0),
            lengths=np.array([h.size for h in histories], dtype=np.int64),
            starts=np.array([st or 0 for _, _, st, _ in series], dtype=np.int64),
            has_start=np.array([st is not None for _, _, st, _ in series], dtype=bool),
            steps=np.array([sp or 0 for _, _, _, sp in series], dtype=np.int64),
            has_step=np.array([sp is not None for _, _, _, sp in series], dtype=bool),
            horizon=int(horizon),
            quantiles=tuple(quantiles),
        )

    @property
    def size(self) -> int:
        return len(self.series_ids)

    @property
    def ends(self) -> np.ndarray:
        """Index one past each history's last value in `values`."""
        return np.cumsum(self.lengths)


@dataclass(frozen=True)
class ForecastAnswer:
    """A call's forecasts, as arrays in the order of the request."""

    series_ids: list[str]
    forecast_ids: list[str]
    timestamps: np.ndarray | None  # int64 ns (series, horizon); None when no series has a start
    timed: np.ndarray  # bool (series,): which rows of `timestamps` are real
    points: np.ndarray  # (series, horizon)
    quantiles: np.ndarray  # (series, len(requested quantiles), horizon)
    scales: np.ndarray  # (series,): mean absolute one-step change of each history (MASE)
    model: LoadedModel
    batch_size: int
    quantile_levels: tuple[float, ...]  # levels of `quantiles`, as requested
    variant: str


def target_timestamps(start: int, n: int, horizon: int, step: int | None, freq: str) -> np.ndarray:
    """int64 ns timestamps of the `horizon` steps after a history of `n` values."""
    if step is not None:
        return start + step * np.arange(n, n + horizon, dtype=np.int64)
    fixed = fixed_step(freq)
    if fixed is not None:  # fixed length: plain arithmetic
        return start + fixed * np.arange(n, n + horizon, dtype=np.int64)
    offset = pd.tseries.frequencies.to_offset(freq)
    index = pd.date_range(pd.Timestamp(start, unit="ns"), periods=n + horizon, freq=offset)
    return np.asarray(index[n:].as_unit("ns").asi8, dtype=np.int64)


@functools.lru_cache(maxsize=64)
def fixed_step(freq: str) -> int | None:
    """ns of one step of `freq` when it has a fixed length (hours, days); None for months."""
    offset = pd.tseries.frequencies.to_offset(freq)
    if isinstance(offset, pd.offsets.Tick):
        return int(pd.Timedelta(offset).value)
    return None


def all_target_timestamps(query: ForecastQuery, freq: str) -> np.ndarray | None:
    """(series, horizon) int64 ns target times (0 in rows without a start); None if none."""
    if not query.has_start.any():
        return None
    h = query.horizon
    steps = query.steps.copy()
    default = fixed_step(freq)
    calendar = query.has_start & ~query.has_step
    if default is not None:
        steps[calendar] = default
        calendar = np.zeros_like(calendar)
    ahead = query.lengths[:, None] + np.arange(h, dtype=np.int64)[None, :]
    times = np.where(query.has_start[:, None], query.starts[:, None] + steps[:, None] * ahead, 0)
    for i in np.flatnonzero(calendar):  # calendar steps (months): pandas, series by series
        times[i] = target_timestamps(int(query.starts[i]), int(query.lengths[i]), h, None, freq)
    return times.astype(np.int64, copy=False)


#: Timestamps pandas can hold (int64 ns, one step inside the ends).
_FIRST_NS = int(pd.Timestamp.min.value)
_LAST_NS = int(pd.Timestamp.max.value)
#: Longest calendar step (a year) as an upper bound for offsets without a fixed length.
_LONGEST_CALENDAR_STEP_NS = 366 * 24 * 3600 * NS_PER_S


def times_out_of_range(query: ForecastQuery, freq: str) -> np.ndarray:
    """bool (series,): a series with a start whose target times (`length + horizon` steps
    after it) leave what int64 ns hold; exact integer arithmetic, no overflow."""
    default = fixed_step(freq) or _LONGEST_CALENDAR_STEP_NS
    step = np.where(query.has_step, query.steps, default)
    steps_ahead = (query.lengths + query.horizon).astype(np.uint64)
    starts = query.starts
    below = starts < _FIRST_NS
    # LAST - start fits uint64 for any start >= FIRST; positive steps only are checked here.
    room = np.uint64(_LAST_NS) - starts.astype(np.uint64)
    step_u = np.maximum(step, 1).astype(np.uint64)
    beyond = step_u > room // np.maximum(steps_ahead, np.uint64(1))
    checked = query.has_start & (~query.has_step | (query.steps > 0))
    return checked & (below | beyond)


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
        """Every rule at once over the call's arrays; the error names the first series
        (in request order) that breaks one, and the first rule it breaks."""
        config, limits = model.config, self.limits
        k = query.size
        if not k:
            raise InvalidArgument("series", "at least one series is required")
        if k > limits.max_series_per_call:
            raise InvalidArgument(
                "series",
                f"{k} series in one call; the limit is {limits.max_series_per_call}",
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
        ids, n = query.series_ids, query.lengths
        id_chars = np.fromiter(map(len, ids), dtype=np.int64, count=k)
        id_bytes = id_chars
        if id_chars.max() * 4 > limits.max_series_id_bytes:  # only then can one be too long
            id_bytes = np.fromiter((len(x.encode()) for x in ids), dtype=np.int64, count=k)
        duplicate = np.zeros(k, dtype=bool)
        if len(set(ids)) < k:
            first: dict[str, int] = {}
            for i, x in enumerate(ids):
                duplicate[i] = first.setdefault(x, i) != i
        finite = np.isfinite(query.values)
        bad_value = np.zeros(k, dtype=bool)
        first_bad = np.zeros(k, dtype=np.int64)
        ends = query.ends
        if not finite.all():
            flat = np.flatnonzero(~finite)
            owner = np.searchsorted(ends, flat, side="right")
            owners, where_first = np.unique(owner, return_index=True)
            bad_value[owners] = True
            first_bad[owners] = flat[where_first] - (ends - n)[owners]
        rules: list[tuple[np.ndarray, str, Callable[[int], str]]] = [
            (id_chars == 0, "series_id", lambda i: "must not be empty"),
            (
                id_bytes > limits.max_series_id_bytes,
                "series_id",
                lambda i: f"longer than {limits.max_series_id_bytes} bytes",
            ),
            (duplicate, "series_id", lambda i: f"duplicate series id {ids[i]!r}"),
            (n == 0, "history", lambda i: f"is empty {_where(ids[i])}"),
            (
                (n > 0) & (n < config.lookback),
                "history",
                lambda i: (
                    f"has {n[i]} values {_where(ids[i])}; the model needs at least "
                    f"{config.lookback} (ModelInfo.lookback)"
                ),
            ),
            (
                n > limits.max_history,
                "history",
                lambda i: f"has {n[i]} values {_where(ids[i])}; the limit is {limits.max_history}",
            ),
            (
                bad_value,
                "history[]",
                lambda i: (
                    f"is {query.values[ends[i] - n[i] + first_bad[i]]} {_where(ids[i])}; "
                    "values must be finite"
                ),
            ),
            (
                query.has_step & ~query.has_start,
                "step",
                lambda i: f"is set without start {_where(ids[i])}",
            ),
            (
                query.has_step & query.has_start & (query.steps <= 0),
                "step",
                lambda i: f"must be positive {_where(ids[i])}",
            ),
            (
                times_out_of_range(query, config.freq),
                "start",
                lambda i: f"puts the forecast times outside the years 1678-2261 {_where(ids[i])}",
            ),
        ]
        broken = np.zeros(k, dtype=bool)
        for mask, _, _ in rules:
            broken |= mask
        if not broken.any():
            return
        i = int(np.argmax(broken))
        for mask, field, message in rules:
            if mask[i]:
                name = f"series[{i}].{field}"
                if field == "history[]":
                    name = f"series[{i}].history[{first_bad[i]}]"
                raise InvalidArgument(name, message(i))

    async def forecast(
        self, query: ForecastQuery, deadline: float | None = None, variant: str | None = None
    ) -> ForecastAnswer:
        """Validate against the current model, then batch. `deadline` is time.monotonic();
        `variant` (set by a router) overrides the server's own label for this call."""
        variant = self.variant if variant is None else variant
        started_ns = time.time_ns()
        model = self.model()
        self.validate(query, model)
        config = model.config
        lookback = config.lookback
        window = query.ends[:, None] - lookback + np.arange(lookback, dtype=np.int64)[None, :]
        windows = query.values[window]
        result = await self.batcher.submit(model, windows, deadline)
        outputs = result.outputs  # (n, max_horizon, quantiles)
        h = query.horizon
        q_index = [config.quantiles.index(q) for q in query.quantiles]
        served = outputs[:, :h, :].transpose(0, 2, 1)  # (n, every served level, h)
        answer = ForecastAnswer(
            series_ids=query.series_ids,
            forecast_ids=spans.new_ids(query.size),
            timestamps=all_target_timestamps(query, config.freq),
            timed=query.has_start,
            points=outputs[:, :h, model.point_index],
            quantiles=served[:, q_index, :],
            scales=history_scales(query.values, query.lengths),
            model=model,
            batch_size=result.batch_size,
            quantile_levels=query.quantiles,
            variant=variant,
        )
        self._record(answer, started_ns, served)
        return answer

    def _record(self, answer: ForecastAnswer, started_ns: int, served: np.ndarray) -> None:
        """Spans carrying what is needed to score each forecast once actuals arrive: one
        per call (`canarycast.spans.record_forecasts`), its series as arrays.

        ``served`` (series, levels, horizon): every quantile the model serves, so the
        interval score can be judged whatever the caller asked for.
        """
        model = answer.model
        if self.metrics is not None:
            self.metrics.forecasts.inc(len(answer.series_ids))
        spans.record_forecasts(
            self.tracer,
            series_ids=answer.series_ids,
            forecast_ids=answer.forecast_ids,
            model_name=model.name,
            model_version=model.version_id,
            variant=answer.variant,
            points=answer.points,
            timestamps=answer.timestamps,
            timed=answer.timed,
            scales=answer.scales,
            start_time=started_ns,
            extra={spans.BATCH_SIZE: answer.batch_size},
            quantile_levels=model.config.quantiles,
            quantiles=served,
        )

    def observe(self, observations: Sequence[Observation]) -> int:
        """Validate observed values and acknowledge them (one span per call)."""
        total = validate_observations(observations, self.limits)
        spans.record_observed(self.tracer, observations)
        if self.metrics is not None:
            self.metrics.observed_points.inc(total)
        return total


def _where(series_id: str) -> str:
    return f"(series {series_id!r})"


def deadline_from_remaining(remaining: float | None) -> float | None:
    """time.monotonic() deadline from gRPC's `time_remaining()` (None: no deadline)."""
    if remaining is None or math.isinf(remaining):
        return None
    return time.monotonic() + remaining
