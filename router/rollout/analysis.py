"""Online error of each variant: forecasts joined with actuals, evidence for the judge.

The analyzer receives three kinds of records (from spans, see `router.rollout.spans_in`):
forecasts (what a variant predicted for which timestamps, with the quantiles it
served), observations (actual values) and routed calls (for the guardrails). It
joins predictions with actuals by (series id, timestamp) whichever arrives first
and scores **each forecast step as its actual arrives**: the scaled absolute
error |actual - median| / scale (as in MASE) and, where the forecast carried a
central interval (quantiles tau and 1 - tau), the interval score of Gneiting and
Raftery (2007): (u - l) + 2/beta (l - y)+ + 2/beta (y - u)+ with beta = 2 tau, also
divided by the scale (averaged over the intervals served). When the stable and
the canary forecast of the same call and series are both scored at a target
time, they form one *paired step*: the judge compares variants on the same
actuals. Paired steps are summed per actual of a series into one row of
evidence (what the judge groups into effective units, see `router.rollout.judge`), so
a day-ahead model's rollout has evidence one step after it starts instead of
one horizon.

Memory is bounded: pending forecasts by `max_pending` (oldest evicted first),
held actuals by `ttl` and `max_actuals`, scored samples by `max_scored` and
`forget_before()`. Everything is behind one lock; each record costs a few dict
operations and, when a forecast is scored, a few small numpy operations (about
20-40 us per record). A pending 12-step forecast holds about 2 kB (its record
included) when series are forecast repeatedly, up to 4 kB when every pending
forecast is of a different series.

Scale floor: a constant history has scale 0 (and a non-finite or negative one
is meaningless); such a forecast is scaled by `max(0.01 * mean |point|,
min_scale)` instead, i.e. errors relative to 1 % of the predicted level.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from canarycast.variants import VARIANTS
from router.rollout.judge import STEP_COLUMNS, Evidence, VariantStats

DEGENERATE_SCALE_FRACTION = 0.01  # of the mean absolute predicted level
MIN_SCALE = 1e-6


@dataclass(frozen=True)
class ForecastRecord:
    """One variant's forecast of one series, as its `forecast` span carries it."""

    series_id: str
    forecast_id: str
    call_id: str | None
    variant: str
    model_version: str
    timestamps: tuple[int, ...]  # ns; empty when the client gave no start time
    point: tuple[float, ...]
    scale: float
    shadow: bool
    quantile_levels: tuple[float, ...] = ()  # the served quantiles' levels
    quantiles: tuple[tuple[float, ...], ...] = ()  # one row per level, a value per step


@dataclass(frozen=True)
class CallRecord:
    """One routed Forecast call, for the guardrails."""

    variant: str
    ok: bool
    latency: float  # seconds


@dataclass(frozen=True)
class ObservationRecord:
    """Actual values of one series."""

    series_id: str
    timestamps: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class AnalyzerStats:
    """Counts since the analyzer started, and what it holds now."""

    pending_forecasts: int
    pending_actuals: int
    scored: dict[str, int]  # per variant
    partial: int  # scored at TTL on some of their points
    pairs: int  # paired forecast steps
    evictions: dict[str, int]  # by reason: "ttl", "capacity"
    unscorable: int
    duplicates: int
    last_span_at: float | None
    answered_calls: int = 0  # routed Forecast calls that were answered (all of them)
    recorded_calls: int = 0  # of those, the calls whose forecasts reached the analysis

    @property
    def sampled_share(self) -> float | None:
        """The share of answered calls the analysis saw (the router's analysis sample)."""
        if not self.answered_calls:
            return None
        return min(1.0, self.recorded_calls / self.answered_calls)


def effective_scale(scale: float, point: Sequence[float]) -> float:
    """The scale errors are divided by, floored for constant histories (see module doc)."""
    if math.isfinite(scale) and scale > 0.0:
        return scale
    level = float(np.mean(np.abs(point))) if len(point) else 0.0
    return max(DEGENERATE_SCALE_FRACTION * level, MIN_SCALE)


class _Columns:
    """Append-only rows of float64, the first column a clock time; bounded by `cap` rows."""

    def __init__(self, width: int, cap: int) -> None:
        self._data = np.empty((min(256, max(cap, 1)), width), dtype=np.float64)
        self._n = 0
        self._cap = max(cap, 1)
        self.dropped = 0

    def __len__(self) -> int:
        return self._n

    def append(self, row: tuple[float, ...]) -> None:
        if self._n == len(self._data):
            if self._n >= self._cap:  # drop the oldest quarter, amortized O(1) per row
                keep = self._cap - self._cap // 4 - 1
                self.dropped += self._n - keep
                self._data[:keep] = self._data[self._n - keep : self._n]
                self._n = keep
            else:
                grown = np.empty((min(2 * len(self._data), self._cap), self._data.shape[1]))
                grown[: self._n] = self._data[: self._n]
                self._data = grown
        self._data[self._n] = row
        self._n += 1

    def since(self, t: float) -> np.ndarray:
        """A copy of the rows at clock time >= t."""
        rows = self._data[: self._n]
        return rows[rows[:, 0] >= t]

    def forget_before(self, t: float) -> None:
        kept = self.since(t)
        self._data[: len(kept)] = kept
        self._n = len(kept)

    def column(self, i: int) -> np.ndarray:
        return self._data[: self._n, i]


def _intervals(record: ForecastRecord) -> list[tuple[list[float], list[float], float]]:
    """(lower, upper, 2 / beta) of each central interval a forecast served (may be none).

    An interval is a pair of levels tau and 1 - tau (tau < 0.5), with beta = 2 tau its
    nominal miss rate. Malformed quantiles serve no interval. Plain floats: this runs
    per forecast and is read per step.
    """
    levels, rows = record.quantile_levels, record.quantiles
    h = len(record.point)
    if len(levels) < 2 or len(rows) != len(levels) or any(len(r) != h for r in rows):
        return []
    if not all(math.isfinite(v) for row in rows for v in row):
        return []
    index = {round(float(q), 9): i for i, q in enumerate(levels)}
    out = []
    for q, i in index.items():
        j = index.get(round(1.0 - q, 9))
        if 0.0 < q < 0.5 and j is not None:
            low = [min(a, b) for a, b in zip(rows[i], rows[j], strict=True)]
            high = [max(a, b) for a, b in zip(rows[i], rows[j], strict=True)]
            out.append((low, high, 1.0 / q))  # 2 / beta with beta = 2 q
    return out


class _Pending:
    """A forecast waiting for actuals; `errors` is NaN where no actual has come yet."""

    __slots__ = (
        "arrived",
        "errors",
        "intervals",
        "positions",
        "record",
        "scale",
        "scored",
        "waiting",
    )

    def __init__(self, record: ForecastRecord, scale: float, arrived: float) -> None:
        self.record = record
        self.scale = scale
        self.arrived = arrived
        self.errors = np.full(len(record.point), np.nan)
        self.intervals = _intervals(record)
        self.positions: dict[int, list[int]] = {}
        for i, t in enumerate(record.timestamps):
            self.positions.setdefault(t, []).append(i)
        self.waiting = 0
        self.scored = False

    def score(self, i: int, actual: float) -> tuple[float, float]:
        """Score step i on its actual: (scaled error, scaled interval score or NaN)."""
        error = abs(actual - self.record.point[i]) / self.scale
        self.errors[i] = error
        if not self.intervals:
            return error, math.nan
        total = 0.0
        for low, high, two_over_beta in self.intervals:
            lo, hi = low[i], high[i]
            miss = (lo - actual if actual < lo else 0.0) + (actual - hi if actual > hi else 0.0)
            total += hi - lo + two_over_beta * miss
        return error, total / len(self.intervals) / self.scale


@dataclass
class _Half:
    """A scored forecast step waiting for the other variant's step of the same call."""

    variant: int  # 0 stable, 1 canary
    error: float
    interval: float  # NaN: no interval served
    at: float
    version: int  # index into Analyzer._versions


class _Sums:
    """Scores of the steps one actual (or one late forecast) scored, summed per row of output."""

    __slots__ = ("pairs", "steps")

    def __init__(self) -> None:
        # (stable version, canary version) -> [stable, canary, n, stable iv, canary iv, n iv]
        self.pairs: dict[tuple[int, int], list[float]] = {}
        # (variant, version) -> [score, n, interval, n interval]
        self.steps: dict[tuple[int, int], list[float]] = {}

    def step(self, variant: int, version: int, error: float, interval: float) -> None:
        row = self.steps.setdefault((variant, version), [0.0, 0.0, 0.0, 0.0])
        row[0] += error
        row[1] += 1.0
        if not math.isnan(interval):
            row[2] += interval
            row[3] += 1.0

    def pair(self, stable: _Half, canary: _Half) -> None:
        row = self.pairs.setdefault((stable.version, canary.version), [0.0] * 6)
        row[0] += stable.error
        row[1] += canary.error
        row[2] += 1.0
        if not (math.isnan(stable.interval) or math.isnan(canary.interval)):
            row[3] += stable.interval
            row[4] += canary.interval
            row[5] += 1.0


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "canarycast_analysis_pending_forecasts",
            "Forecasts waiting for actuals.",
            registry=registry,
        )
        self.actuals = Gauge(
            "canarycast_analysis_pending_actuals",
            "Actual values held for joining (until their TTL).",
            registry=registry,
        )
        self.scored = Counter(
            "canarycast_analysis_scored_forecasts",
            "Forecasts scored against actuals, by variant.",
            ["variant"],
            registry=registry,
        )
        self.pairs = Counter(
            "canarycast_analysis_pairs",
            "Paired forecast steps: both variants' steps of one call, series and target, scored.",
            registry=registry,
        )
        self.evictions = Counter(
            "canarycast_analysis_evictions",
            "Forecasts dropped without a score, by reason (ttl, capacity).",
            ["reason"],
            registry=registry,
        )
        self.unscorable = Counter(
            "canarycast_analysis_unscorable_forecasts",
            "Forecasts that cannot be scored (no target timestamps, bad values).",
            registry=registry,
        )
        self.spans = Counter(
            "canarycast_analysis_spans",
            "Records received from spans, by kind (forecast, observe, call).",
            ["kind"],
            registry=registry,
        )
        self.cpu = Counter(
            "canarycast_analysis_cpu_seconds",
            "CPU time spent turning spans into records and feeding them to the analyzer "
            "(the thread that does it: the span-analysis worker, the OTLP receiver).",
            registry=registry,
        )


class Analyzer:
    """Joins forecasts with actuals and keeps per-variant scores; thread-safe."""

    def __init__(
        self,
        *,
        ttl: float = 3600.0,
        max_pending: int = 100_000,
        max_actuals: int = 250_000,
        max_scored: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self.max_actuals = max_actuals
        self._clock = clock
        self._lock = threading.Lock()
        self._metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        self.last_span_at: float | None = None
        # forecast id -> pending forecast, in order of arrival
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        # (series, timestamp) -> pending forecasts waiting for it (each once)
        self._waiting: dict[tuple[str, int], list[_Pending]] = {}
        # (series, timestamp) -> (value, clock time received), oldest first
        self._actuals: OrderedDict[tuple[str, int], tuple[float, float]] = OrderedDict()
        # (call id, series, target timestamp) -> the first variant's scored step
        self._halves: OrderedDict[tuple[str, str, int], _Half] = OrderedDict()
        # forecast ids recently scored or evicted, to drop duplicate spans
        self._done: OrderedDict[str, float] = OrderedDict()
        # scored steps per actual: (time, variant 0/1, series index, score sum, steps,
        # interval score sum, steps with an interval, model version index)
        self._steps = _Columns(8, max_scored)
        # paired steps per actual: (time, then router.rollout.judge's step columns: series index,
        # target ns, horizon ns, stable sum, canary sum, steps, stable interval sum,
        # canary interval sum, steps with intervals; then stable and canary version index)
        self._pairs = _Columns(1 + STEP_COLUMNS + 2, max_scored)
        self._versions: dict[str, int] = {}
        self._calls = _Columns(4, max_scored)  # (time, variant 0/1, ok 0/1, latency)
        self._series: dict[str, int] = {}
        self._horizons: dict[str, float] = {}  # series -> a forecast's horizon, ns
        self._scored_counts: dict[str, int] = dict.fromkeys(VARIANTS, 0)
        self._evictions = {"ttl": 0, "capacity": 0}
        self._partial = 0
        self._pair_count = 0
        self._unscorable = 0
        self._duplicates = 0
        self._answered_calls = 0
        self._recorded_calls = 0
        self._last_call_id: str | None = None

    # -- input --

    def add_forecast(self, record: ForecastRecord) -> None:
        """A variant's forecast; its steps whose actuals are already here are scored at once."""
        with self._lock:
            now = self._received("forecast")
            self._expire(now)
            if self._is_duplicate(record):
                return
            # A call's series arrive one after another (one span per call).
            if not record.shadow and record.call_id and record.call_id != self._last_call_id:
                self._recorded_calls += 1
                self._last_call_id = record.call_id
            ts, point = record.timestamps, record.point
            if (
                record.variant not in VARIANTS
                or not ts
                or len(ts) != len(point)
                or not all(math.isfinite(v) for v in point)
            ):
                self._unscorable += 1
                self._metrics.unscorable.inc()
                return
            if len(ts) >= 2 and ts[-1] > ts[0]:
                self._horizons[record.series_id] = (ts[-1] - ts[0]) / (len(ts) - 1) * len(ts)
            pending = _Pending(record, effective_scale(record.scale, point), now)
            for i, t in enumerate(ts):
                key = (record.series_id, t)
                actual = self._actuals.get(key)
                if actual is not None:
                    sums = _Sums()
                    self._score_step(pending, i, actual[0], now, sums)
                    self._emit(record.series_id, t, sums, now)
                else:
                    pending.waiting += 1
                    waiters = self._waiting.setdefault(key, [])
                    if not waiters or waiters[-1] is not pending:  # a timestamp given twice
                        waiters.append(pending)
            if pending.waiting == 0:
                self._complete(pending, now)
            else:
                self._pending[record.forecast_id] = pending
                while len(self._pending) > self.max_pending:
                    _, oldest = self._pending.popitem(last=False)
                    self._finish(oldest, now, "capacity")
            self._update_gauges()

    def add_observation(self, record: ObservationRecord) -> None:
        """Actual values; they score waiting forecasts and are held for later ones."""
        with self._lock:
            now = self._received("observe")
            self._expire(now)
            self._add_actuals(record.series_id, record.timestamps, record.values, now)
            self._update_gauges()

    def add_call(self, record: CallRecord) -> None:
        """A routed call of a variant, for its error rate and latency."""
        with self._lock:
            now = self._received("call")
            if record.ok:
                self._answered_calls += 1
            if record.variant in VARIANTS:
                variant = VARIANTS.index(record.variant)
                self._calls.append((now, variant, float(record.ok), record.latency))

    def charge(self, cpu_seconds: float) -> None:
        """Count CPU time spent feeding this analyzer (by the span paths in)."""
        self._metrics.cpu.inc(max(cpu_seconds, 0.0))

    # -- output --

    def evidence(
        self,
        since: float,
        *,
        stable_version: str | None = None,
        canary_version: str | None = None,
    ) -> Evidence:
        """What the judge needs, from everything scored at clock time >= since.

        With versions given, only forecasts of those model versions count: right after
        a rollout starts, the canary servers may still answer with the old version.
        """
        with self._lock:
            self._expire(self._clock())
            pairs = self._pairs.since(since)
            steps = self._steps.since(since)
            calls = self._calls.since(since)
            wanted = [
                self._versions.get(v, -1) if v is not None else None
                for v in (stable_version, canary_version)
            ]
        for column, index in ((1 + STEP_COLUMNS, wanted[0]), (2 + STEP_COLUMNS, wanted[1])):
            if index is not None:
                pairs = pairs[pairs[:, column] == index]
        for variant, index in enumerate(wanted):
            if index is not None:
                steps = steps[(steps[:, 1] != variant) | (steps[:, 7] == index)]
        series = [_series_means(steps[steps[:, 1] == v]) for v in range(len(VARIANTS))]
        stats = [_call_stats(calls[calls[:, 1] == v]) for v in range(len(VARIANTS))]
        return Evidence(
            steps=pairs[:, 1 : 1 + STEP_COLUMNS].copy(),
            stable_series=series[0][0],
            canary_series=series[1][0],
            stable=stats[0],
            canary=stats[1],
            stable_series_interval=series[0][1],
            canary_series_interval=series[1][1],
        )

    def stats(self) -> AnalyzerStats:
        with self._lock:
            self._expire(self._clock())
            self._update_gauges()
            return AnalyzerStats(
                pending_forecasts=len(self._pending),
                pending_actuals=len(self._actuals),
                scored=dict(self._scored_counts),
                partial=self._partial,
                pairs=self._pair_count,
                evictions=dict(self._evictions),
                unscorable=self._unscorable,
                duplicates=self._duplicates,
                last_span_at=self.last_span_at,
                answered_calls=self._answered_calls,
                recorded_calls=self._recorded_calls,
            )

    def forget_before(self, t: float) -> None:
        """Drop scored steps, pairs and calls from before clock time t."""
        with self._lock:
            self._steps.forget_before(t)
            self._pairs.forget_before(t)
            self._calls.forget_before(t)
            # re-number the series still referenced, so the table does not grow forever
            steps, pairs = self._steps.column(2), self._pairs.column(1)
            idx = np.concatenate([steps, pairs]).astype(np.int64)
            used, inverse = np.unique(idx, return_inverse=True)
            names = {i: name for name, i in self._series.items()}
            self._series = {names[int(old)]: new for new, old in enumerate(used)}
            steps[:] = inverse[: len(steps)]
            pairs[:] = inverse[len(steps) :]
            self._horizons = {s: h for s, h in self._horizons.items() if s in self._series}

    # -- internals (lock held) --

    def _received(self, kind: str) -> float:
        now = self._clock()
        self.last_span_at = now
        self._metrics.spans.labels(kind).inc()
        return now

    def _is_duplicate(self, record: ForecastRecord) -> bool:
        """The same forecast seen twice (e.g. from a server and a router): keep one."""
        pending = self._pending.get(record.forecast_id)
        if pending is not None:
            if pending.record.call_id is None and record.call_id is not None:
                # the router's copy knows the call: keep that one (with the quantiles
                # either copy carried; a server's span has all the model serves)
                if not record.quantile_levels and pending.record.quantile_levels:
                    record = replace(
                        record,
                        quantile_levels=pending.record.quantile_levels,
                        quantiles=pending.record.quantiles,
                    )
                pending.record = record
                pending.intervals = _intervals(record)
            self._duplicates += 1
            return True
        if record.forecast_id in self._done:
            self._duplicates += 1
            return True
        return False

    def _add_actuals(
        self, series_id: str, timestamps: Sequence[int], values: Sequence[float], now: float
    ) -> None:
        for t, v in zip(timestamps, values, strict=False):
            value = float(v)
            if not math.isfinite(value):
                continue
            key = (series_id, int(t))
            self._actuals[key] = (value, now)
            self._actuals.move_to_end(key)
            waiters = self._waiting.pop(key, ())
            if not waiters:
                continue
            sums = _Sums()
            for pending in waiters:
                for i in pending.positions.get(key[1], ()):
                    self._score_step(pending, i, value, now, sums)
                    pending.waiting -= 1
                if pending.waiting == 0:
                    del self._pending[pending.record.forecast_id]
                    self._complete(pending, now)
            self._emit(series_id, key[1], sums, now)
        while len(self._actuals) > self.max_actuals:
            self._actuals.popitem(last=False)

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.arrived > horizon:
                break
            self._pending.popitem(last=False)
            self._finish(pending, now, "ttl")
        while self._actuals and next(iter(self._actuals.values()))[1] <= horizon:
            self._actuals.popitem(last=False)
        while self._halves and next(iter(self._halves.values())).at <= horizon:
            self._halves.popitem(last=False)
        while self._done and next(iter(self._done.values())) <= horizon:
            self._done.popitem(last=False)

    def _finish(self, pending: _Pending, now: float, reason: str) -> None:
        """A forecast leaving before all its actuals came: partial score, else eviction."""
        record = pending.record
        for i, t in enumerate(record.timestamps):
            if math.isnan(pending.errors[i]):
                key = (record.series_id, t)
                waiters = [w for w in self._waiting.get(key, ()) if w is not pending]
                if waiters:
                    self._waiting[key] = waiters
                else:
                    self._waiting.pop(key, None)
        if np.isnan(pending.errors).all():
            self._evictions[reason] += 1
            self._metrics.evictions.labels(reason).inc()
            self._mark_done(record.forecast_id, now)
        else:
            self._partial += 1
            self._complete(pending, now)

    def _score_step(
        self, pending: _Pending, i: int, actual: float, now: float, sums: _Sums
    ) -> None:
        """Score step i of a forecast and pair it with the other variant's step, if scored."""
        error, interval = pending.score(i, actual)
        record = pending.record
        variant = VARIANTS.index(record.variant)
        version = self._versions.setdefault(record.model_version, len(self._versions))
        sums.step(variant, version, error, interval)
        if record.call_id is None:
            return
        key = (record.call_id, record.series_id, record.timestamps[i])
        half = _Half(variant, error, interval, now, version)
        other = self._halves.get(key)
        if other is None or other.variant == variant:
            self._halves[key] = half
            self._halves.move_to_end(key)
            while len(self._halves) > self.max_actuals:
                self._halves.popitem(last=False)
            return
        del self._halves[key]
        sums.pair(*((half, other) if variant == 0 else (other, half)))
        self._pair_count += 1
        self._metrics.pairs.inc()

    def _emit(self, series_id: str, target: int, sums: _Sums, now: float) -> None:
        """One row of scored steps per variant and of paired steps for one actual."""
        if not sums.steps:
            return
        series = self._series.setdefault(series_id, len(self._series))
        horizon = self._horizons.get(series_id, 0.0)
        for (variant, version), (score, n, interval, n_interval) in sums.steps.items():
            self._steps.append((now, variant, series, score, n, interval, n_interval, version))
        for (stable_v, canary_v), row in sums.pairs.items():
            self._pairs.append((now, series, float(target), horizon, *row, stable_v, canary_v))

    def _complete(self, pending: _Pending, now: float) -> None:
        """A forecast all of whose steps that will be scored are: count it, remember its id."""
        if pending.scored:
            return
        pending.scored = True
        variant = pending.record.variant
        self._scored_counts[variant] += 1
        self._metrics.scored.labels(variant).inc()
        self._mark_done(pending.record.forecast_id, now)

    def _mark_done(self, forecast_id: str, now: float) -> None:
        self._done[forecast_id] = now
        while len(self._done) > self.max_pending:
            self._done.popitem(last=False)

    def _update_gauges(self) -> None:
        self._metrics.pending.set(len(self._pending))
        self._metrics.actuals.set(len(self._actuals))


def _series_means(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean point score and mean interval score (NaN: none) per series of step rows."""
    if not len(rows):
        return np.empty(0), np.empty(0)
    idx = rows[:, 2].astype(np.int64)
    sums = np.bincount(idx, weights=rows[:, 3])
    counts = np.bincount(idx, weights=rows[:, 4])
    interval = np.bincount(idx, weights=rows[:, 5])
    n_interval = np.bincount(idx, weights=rows[:, 6])
    seen = counts > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iv = np.where(n_interval > 0, interval / n_interval, np.nan)
    return np.asarray(sums[seen] / counts[seen], dtype=np.float64), iv[seen]


def _call_stats(rows: np.ndarray) -> VariantStats:
    """Calls, errors and p99 latency of (time, variant, ok, latency) rows."""
    if not len(rows):
        return VariantStats(calls=0, errors=0, p99_latency=None)
    return VariantStats(
        calls=len(rows),
        errors=int(np.sum(rows[:, 2] == 0.0)),
        p99_latency=float(np.quantile(rows[:, 3], 0.99)),
    )
