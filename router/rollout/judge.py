"""The canary judge: pure functions from evidence to a verdict (no I/O, no clock).

Order of checks:

1. guardrails (error rate, p99 latency, canary against stable): a breach rolls
   back at once;
2. accuracy on *paired* forecast steps (both variants forecast the same call, so
   both are scored on the same actual): for each judged metric (the scaled
   absolute error of the median, ``"point"``, and the interval score of the served
   quantiles, ``"interval"``) an anytime-valid confidence sequence for the ratio
   R = E[canary score] / E[stable score]; PROMOTE when every judged metric's upper
   bound is below ``1 + tolerance``, ROLLBACK when any lower bound is above,
   otherwise INCONCLUSIVE (keep collecting);
3. without pairs (dual-run off): the same kind of interval on per-series mean
   scores of the series routed to each variant (``method="series"``,
   ``weaker=True``).

Too few samples is always INCONCLUSIVE with a reason saying so: no data never
means pass.

**The unit of evidence.** Errors of one series are strongly dependent: a forecast
made every step shares all but one target time with the previous one, the steps
of one forecast share its origin, and error regimes last for many steps. Paired
steps are therefore never treated as independent draws. They are summed into
*effective units*: one series over one block of target times, the block
``block_horizons`` forecast horizons long, counted from the series' first target
in the step (batch means, clustered by series). Units of different series are
independent; neighbouring blocks of one series share only the forecasts that
straddle their border, and the judge measures the lag-1 autocorrelation of
neighbouring units and doubles the block while it is clearly above
``MAX_UNIT_AUTOCORRELATION`` (the batch-size rule of Law and Carson 1979), so a
regime longer than a block merges blocks instead of faking evidence. Until a
series has lived one block it is one unit whose sums grow as its actuals arrive:
that is how a rollout with many series decides within its first horizon.

**The confidence sequence** is the asymptotic CS of Waudby-Smith, Arbour, Sinha,
Kennedy and Ramdas (2021, arXiv 2103.06476, Robbins' normal-mixture boundary),
applied to the units: for the mean of x_1..x_t with sample variance s_t^2,

    mean_t +- s_t * k_t,  k_t = sqrt(2 (t tau^2 + 1) / (t^2 tau^2) * log(sqrt(t tau^2 + 1) / alpha))

where ``tau = rho * s_t`` is the mixing scale in units of the data's standard
deviation (the paper writes ``rho`` with ``s_t`` inside; fixing ``tau`` makes
the boundary scale-free). It is applied to d_j(r) = C_j - r S_j, the canary and
stable score sums of unit j, for each candidate ratio r; the set of r with 0
inside the CS solves a quadratic in r (Fieller's construction), so bounds are
closed form and the unbounded case is reported as ``inf``. ``tau`` is the
paper's optimum for ``TARGET_UNITS``. With two metrics each gets ``alpha / 2``
(Bonferroni), so the judgement as a whole keeps level ``alpha``. The boundary and
the ratio intervals are in `router.rollout.confidence`.

While a unit is still growing, the judge re-reads the same ``t`` units with more
steps in them; the boundary never falls below about 3 standard errors there (its
minimum over t at alpha 0.05), so looking every tick at a fully persistent error
(the worst case: each unit's mean fixed from its first step) errs with
probability below 0.3 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from router.rollout.confidence import optimal_rho, ratio_confidence_sequence, series_ratio_interval

__all__ = [
    "METRICS",
    "STEP_COLUMNS",
    "TARGET_UNITS",
    "Evidence",
    "JudgePolicy",
    "Judgement",
    "MetricJudgement",
    "Units",
    "VariantStats",
    "Verdict",
    "effective_units",
    "judge",
]

FloatArray = npt.NDArray[np.float64]

#: the number of effective units the boundary is tuned to be tightest at
TARGET_UNITS = 100
#: what the judge can score: the median's scaled absolute error, the quantiles' interval score
METRICS = ("point", "interval")
#: neighbouring units more correlated than this: the block doubles
MAX_UNIT_AUTOCORRELATION = 0.1
#: the autocorrelation is measured once this many neighbouring units exist
MIN_NEIGHBOURS = 20
#: ... on the series with at least this many units
MIN_UNITS_PER_SERIES = 5
#: at most this many doublings of the block (16 times ``block_horizons``)
MAX_DOUBLINGS = 4

# Columns of Evidence.steps: one row per actual of a series (all the paired forecast
# steps that actual scored, summed), as the analyzer writes them.
SERIES, TARGET, BLOCK, STABLE_SCORE, CANARY_SCORE, COUNT = 0, 1, 2, 3, 4, 5
STABLE_INTERVAL, CANARY_INTERVAL, COUNT_INTERVAL = 6, 7, 8
STEP_COLUMNS = 9
#: (stable sum, canary sum, count) columns of each metric
_METRIC_COLUMNS = {
    "point": (STABLE_SCORE, CANARY_SCORE, COUNT),
    "interval": (STABLE_INTERVAL, CANARY_INTERVAL, COUNT_INTERVAL),
}


class Verdict(StrEnum):
    """What the judge says about the current step."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class JudgePolicy:
    """Thresholds of the judge; validated on construction."""

    tolerance: float = 0.05
    alpha: float = 0.05
    min_pairs: int = 30  # effective units (series x block), not raw pairs
    min_series: int = 8  # fallback method: per variant
    max_error_rate_increase: float = 0.02
    max_latency_ratio: float = 2.0
    min_guardrail_calls: int = 20
    block_horizons: float = 2.0  # length of a unit's block of target times, in horizons
    metrics: tuple[str, ...] = METRICS  # what is judged, each within tolerance

    def __post_init__(self) -> None:
        metrics = self.metrics
        if isinstance(metrics, str) or not isinstance(metrics, tuple | list):
            raise ValueError(f"metrics must be a list of {list(METRICS)}, got {metrics!r}")
        metrics = tuple(metrics)
        object.__setattr__(self, "metrics", metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if not metrics or unknown or len(set(metrics)) != len(metrics):
            raise ValueError(
                f"metrics must be distinct names among {list(METRICS)}, got {list(metrics)}"
            )
        for f in fields(self):
            if f.name == "metrics":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {self.tolerance}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        for name in ("min_pairs", "min_series", "min_guardrail_calls"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
        if self.max_error_rate_increase < 0:
            raise ValueError(
                f"max_error_rate_increase must be >= 0, got {self.max_error_rate_increase}"
            )
        if self.max_latency_ratio < 1:
            raise ValueError(f"max_latency_ratio must be >= 1, got {self.max_latency_ratio}")
        if self.block_horizons <= 0:
            raise ValueError(f"block_horizons must be > 0, got {self.block_horizons}")


@dataclass(frozen=True)
class VariantStats:
    """Guardrail inputs for one variant over the step."""

    calls: int = 0
    errors: int = 0
    p99_latency: float | None = None  # seconds


def _empty(*shape: int) -> FloatArray:
    return np.empty(shape, dtype=np.float64)


@dataclass(frozen=True)
class Evidence:
    """Everything the judge looks at, gathered since the step began.

    ``steps`` has one row per actual of a series that scored paired forecast steps
    (columns ``SERIES`` .. ``COUNT_INTERVAL``, see the module constants): the sums
    of stable's and canary's scores over those steps and their count, for the point
    error and for the interval score (whose count is 0 where no quantiles were
    served). The per-series arrays are the fallback without pairs: mean scores per
    series of each variant (interval: NaN where a series has none).
    """

    steps: FloatArray
    stable_series: FloatArray
    canary_series: FloatArray
    stable: VariantStats
    canary: VariantStats
    stable_series_interval: FloatArray | None = None
    canary_series_interval: FloatArray | None = None

    @property
    def pairs(self) -> int:
        """Paired forecast steps (raw, dependent) behind the evidence."""
        return int(np.nansum(self.steps[:, COUNT])) if len(self.steps) else 0

    def row_means(self, metric: str = "point") -> FloatArray:
        """(stable, canary) mean score of each row of paired steps that has that metric."""
        s, c, n = _METRIC_COLUMNS[metric]
        rows = self.steps[self.steps[:, n] > 0]
        return np.column_stack([rows[:, s] / rows[:, n], rows[:, c] / rows[:, n]])

    @classmethod
    def empty(cls) -> Evidence:
        """No evidence at all."""
        return cls(
            steps=_empty(0, STEP_COLUMNS),
            stable_series=_empty(0),
            canary_series=_empty(0),
            stable=VariantStats(),
            canary=VariantStats(),
        )

    @classmethod
    def of_units(
        cls,
        pairs: npt.ArrayLike,
        interval: npt.ArrayLike | None = None,
        *,
        stable: VariantStats | None = None,
        canary: VariantStats | None = None,
    ) -> Evidence:
        """Evidence whose every (stable, canary) pair is its own series: independent units.

        For hand-built evidence in tests and benchmarks of the judge alone; traffic's
        evidence comes from the analyzer.
        """
        p = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
        n = len(p)
        steps = np.zeros((n, STEP_COLUMNS))
        steps[:, SERIES] = np.arange(n)
        steps[:, STABLE_SCORE], steps[:, CANARY_SCORE], steps[:, COUNT] = p[:, 0], p[:, 1], 1.0
        if interval is not None:
            q = np.asarray(interval, dtype=np.float64).reshape(-1, 2)
            steps[:, STABLE_INTERVAL], steps[:, CANARY_INTERVAL] = q[:, 0], q[:, 1]
            steps[:, COUNT_INTERVAL] = 1.0
        calls = VariantStats(calls=500, errors=0, p99_latency=0.02)
        return cls(
            steps=steps,
            stable_series=_empty(0),
            canary_series=_empty(0),
            stable=stable or calls,
            canary=canary or calls,
        )


@dataclass(frozen=True)
class MetricJudgement:
    """The interval and verdict of one judged metric."""

    metric: str  # "point" | "interval"
    verdict: Verdict
    units: int  # effective units (series on the smaller variant for the fallback)
    pairs: int  # paired forecast steps behind them (0 for the fallback)
    ratio: float | None
    lower: float | None
    upper: float | None
    block_horizons: float | None  # the block a unit spans (None: fallback)
    autocorrelation: float | None  # lag-1, of neighbouring units (None: too few to say)
    note: str  # "" or why the metric could not be judged yet


@dataclass(frozen=True)
class Judgement:
    """A verdict with its reason and the interval behind it.

    ``ratio``, ``lower`` and ``upper`` are those of the first judged metric (the
    point error by default), ``samples`` the effective units of the metric the
    verdict rests on; ``metrics`` has each judged metric.
    """

    verdict: Verdict
    reason: str
    method: str  # "paired" | "series" | "none"
    weaker: bool
    samples: int  # effective units
    ratio: float | None
    lower: float | None
    upper: float | None
    guardrail: str | None
    pairs: int = 0  # raw paired forecast steps
    metrics: tuple[MetricJudgement, ...] = ()


# --- the judge ---------------------------------------------------------------------


def _rate(stats: VariantStats) -> float:
    return stats.errors / stats.calls if stats.calls > 0 else 0.0


def _guardrails(policy: JudgePolicy, ev: Evidence) -> Judgement | None:
    st, ca = ev.stable, ev.canary
    if ca.calls >= policy.min_guardrail_calls:
        cr, sr = _rate(ca), _rate(st)
        if cr - sr > policy.max_error_rate_increase:
            return _breach(
                "error_rate",
                f"canary error rate {cr:.1%} ({ca.errors}/{ca.calls}) exceeds stable's "
                f"{sr:.1%} ({st.errors}/{st.calls}) by more than "
                f"{policy.max_error_rate_increase:.1%}",
            )
    if (
        ca.calls >= policy.min_guardrail_calls
        and st.calls >= policy.min_guardrail_calls
        and ca.p99_latency is not None
        and st.p99_latency is not None
        and ca.p99_latency > policy.max_latency_ratio * st.p99_latency
    ):
        return _breach(
            "latency_p99",
            f"canary p99 latency {ca.p99_latency * 1e3:.1f} ms is more than "
            f"{policy.max_latency_ratio:g}x stable's {st.p99_latency * 1e3:.1f} ms",
        )
    return None


def _breach(name: str, reason: str) -> Judgement:
    return Judgement(Verdict.ROLLBACK, reason, "none", False, 0, None, None, None, name)


# --- effective units ------------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """The effective units of one metric: score sums per series x block of target times."""

    stable: FloatArray  # stable's score sum per unit
    canary: FloatArray  # canary's score sum per unit
    count: FloatArray  # paired forecast steps per unit
    series: npt.NDArray[np.int64]  # series of each unit
    pairs: int
    n_series: int
    block_horizons: float  # the block a unit spans, in horizons (after any doubling)
    autocorrelation: float | None  # lag-1 of neighbouring units (None: too few to say)
    block_ns: float  # a unit's block in data time (median over series), ns

    @property
    def n(self) -> int:
        return len(self.stable)


def _sums(index: np.ndarray, weights: FloatArray) -> FloatArray:
    return np.bincount(index, weights=weights).astype(np.float64)


def _horizons(inv: np.ndarray, target: FloatArray, block: FloatArray, n: int) -> FloatArray:
    """A horizon in ns per series: the analyzer's, else the smallest gap between targets."""
    length = np.zeros(n)
    np.maximum.at(length, inv, block)
    missing = ~(length > 0)
    if missing.any():
        order = np.lexsort((target, inv))
        s, t = inv[order], target[order]
        gap = np.diff(t)
        same = (s[1:] == s[:-1]) & (gap > 0)
        step = np.full(n, np.inf)
        np.minimum.at(step, s[1:][same], gap[same])
        step[~np.isfinite(step)] = 1.0  # one target time: any block holds it
        length = np.where(missing, step, length)
    return length


def _lag1(
    stable: FloatArray,
    canary: FloatArray,
    count: FloatArray,
    series: np.ndarray,
    block: np.ndarray,
) -> tuple[float | None, int]:
    """Lag-1 autocorrelation of neighbouring units of a series, and how many pairs it rests on.

    On each unit's mean paired difference c - r s (r the overall ratio), centred
    within its series (a series' own effect is not dependence), over the series
    with at least ``MIN_UNITS_PER_SERIES`` units (shorter ones say little about it).
    """
    total_s = float(stable.sum())
    r = float(canary.sum()) / total_s if total_s > 0 else 1.0
    d = (canary - r * stable) / count
    n_series = int(series.max()) + 1 if len(series) else 0
    per = np.bincount(series, minlength=n_series)
    keep = per[series] >= MIN_UNITS_PER_SERIES
    if not keep.any():
        return None, 0
    d, s, b = d[keep], series[keep], block[keep]
    mean = np.bincount(s, weights=d, minlength=n_series) / np.maximum(
        np.bincount(s, minlength=n_series), 1
    )
    x = d - mean[s]
    adjacent = (s[1:] == s[:-1]) & (b[1:] == b[:-1] + 1)
    neighbours = int(adjacent.sum())
    var = float(np.mean(x * x))
    if neighbours == 0 or var <= 0:
        return None, neighbours
    return float(np.sum(x[1:][adjacent] * x[:-1][adjacent]) / neighbours) / var, neighbours


def effective_units(
    steps: npt.ArrayLike, metric: str = "point", block_horizons: float = 2.0
) -> Units:
    """Sum paired steps into units of one series over ``block_horizons`` horizons of targets.

    Blocks are counted from each series' first target time in ``steps``; while the
    lag-1 autocorrelation of neighbouring units exceeds ``MAX_UNIT_AUTOCORRELATION``
    by more than its standard error (about 1 / sqrt(neighbours); measured once
    ``MIN_NEIGHBOURS`` neighbouring pairs exist) the block doubles, at most
    ``MAX_DOUBLINGS`` times.
    """
    s_col, c_col, n_col = _METRIC_COLUMNS[metric]
    rows = np.asarray(steps, dtype=np.float64).reshape(-1, STEP_COLUMNS)
    ok = (rows[:, n_col] > 0) & np.isfinite(rows[:, [s_col, c_col, TARGET, SERIES]]).all(axis=1)
    rows = rows[ok]
    if not len(rows):
        empty = _empty(0)
        return Units(empty, empty, empty, np.empty(0, np.int64), 0, 0, block_horizons, None, 0.0)
    names, inv = np.unique(rows[:, SERIES].astype(np.int64), return_inverse=True)
    target = rows[:, TARGET]
    first = np.full(len(names), np.inf)
    np.minimum.at(first, inv, target)
    offset = target - first[inv]
    horizon = _horizons(inv, target, rows[:, BLOCK], len(names))
    m = block_horizons
    for doubling in range(MAX_DOUBLINGS + 1):
        block = np.floor(offset / (m * horizon[inv])).astype(np.int64)
        width = int(block.max()) + 1
        keys, kinv = np.unique(inv * width + block, return_inverse=True)
        stable = _sums(kinv, rows[:, s_col])
        canary = _sums(kinv, rows[:, c_col])
        count = _sums(kinv, rows[:, n_col])
        series, unit_block = keys // width, keys % width
        rho, neighbours = _lag1(stable, canary, count, series, unit_block)
        if (
            rho is None
            or neighbours < MIN_NEIGHBOURS
            or rho <= MAX_UNIT_AUTOCORRELATION + 1.0 / math.sqrt(neighbours)
            or doubling == MAX_DOUBLINGS
        ):
            break
        m *= 2.0
    return Units(
        stable=stable,
        canary=canary,
        count=count,
        series=series,
        pairs=int(rows[:, n_col].sum()),
        n_series=len(names),
        block_horizons=m,
        autocorrelation=rho if neighbours >= MIN_NEIGHBOURS else None,
        block_ns=float(np.median(m * horizon)),
    )


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.3f}"


def _duration(ns: float) -> str:
    """Data time in words: 45 min, 5.0 h, 2.5 d."""
    s = ns / 1e9
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _blocks(m: float) -> str:
    return f"{m:g} horizon" + ("" if m == 1 else "s")


_LABEL = {"point": "point error", "interval": "interval score"}


def _too_few_note(u: Units, need: int) -> str:
    """Why a metric cannot be judged yet, and how long the traffic needs at this rate."""
    note = f"too few effective units: {u.n} of {need} (pairs {u.pairs:,} from {u.n_series} series"
    if u.block_ns > 1.0:
        more = math.ceil((need - u.n) / max(u.n_series, 1))
        note += (
            f"; a unit is one series over {_blocks(u.block_horizons)} = "
            f"{_duration(u.block_ns)} of data, so {need} need about "
            f"{_duration(more * u.block_ns)} more at this traffic"
        )
    return note + ")"


def _metric_verdict(policy: JudgePolicy, lo: float, hi: float) -> Verdict:
    bar = 1.0 + policy.tolerance
    if hi < bar:
        return Verdict.PROMOTE
    if lo > bar:
        return Verdict.ROLLBACK
    return Verdict.INCONCLUSIVE


def _paired_metric(policy: JudgePolicy, steps: FloatArray, metric: str) -> MetricJudgement:
    u = effective_units(steps, metric, policy.block_horizons)
    if u.n == 0:
        note = "no forecast carried quantiles" if metric == "interval" else "no pairs"
        return _unjudged(metric, 0, note)
    total = float(u.stable.sum())
    est = float(u.canary.sum()) / total if total > 0 else None
    if u.n < policy.min_pairs:
        return MetricJudgement(
            metric,
            Verdict.INCONCLUSIVE,
            u.n,
            u.pairs,
            est,
            None,
            None,
            u.block_horizons,
            u.autocorrelation,
            _too_few_note(u, policy.min_pairs),
        )
    alpha = policy.alpha / len(policy.metrics)
    e, lo, hi = ratio_confidence_sequence(
        np.column_stack([u.stable, u.canary]), alpha, optimal_rho(alpha, TARGET_UNITS)
    )
    return MetricJudgement(
        metric,
        _metric_verdict(policy, lo, hi),
        u.n,
        u.pairs,
        None if math.isnan(e) else e,
        lo,
        hi,
        u.block_horizons,
        u.autocorrelation,
        "",
    )


def _unjudged(metric: str, units: int, note: str) -> MetricJudgement:
    inconclusive = Verdict.INCONCLUSIVE
    return MetricJudgement(metric, inconclusive, units, 0, None, None, None, None, None, note)


def _series_metric(
    policy: JudgePolicy, stable: npt.ArrayLike | None, canary: npt.ArrayLike | None, metric: str
) -> MetricJudgement:
    st = np.asarray(stable if stable is not None else (), dtype=np.float64).ravel()
    ca = np.asarray(canary if canary is not None else (), dtype=np.float64).ravel()
    st, ca = st[np.isfinite(st)], ca[np.isfinite(ca)]
    k = min(st.size, ca.size)
    if st.size == 0 and ca.size == 0:
        note = "no forecast carried quantiles" if metric == "interval" else "no scores"
        return _unjudged(metric, 0, note)
    if k < policy.min_series:
        note = (
            f"too few samples: {k} series on the smaller variant (no pairs), "
            f"need at least {policy.min_series}"
        )
        return _unjudged(metric, k, note)
    alpha = policy.alpha / len(policy.metrics)
    est, lo, hi = series_ratio_interval(st, ca, alpha)
    return MetricJudgement(
        metric,
        _metric_verdict(policy, lo, hi),
        k,
        0,
        None if math.isnan(est) else est,
        lo,
        hi,
        None,
        None,
        "",
    )


def _describe(policy: JudgePolicy, m: MetricJudgement) -> str:
    """One metric's interval and verdict, with the units it rests on."""
    label = _LABEL[m.metric]
    if m.note:
        return f"{label}: {m.note}"
    bar = 1.0 + policy.tolerance
    assert m.lower is not None and m.upper is not None
    est = _fmt(m.ratio) if m.ratio is not None else "nan"
    interval = f"{label} ratio {est} [{_fmt(m.lower)}, {_fmt(m.upper)}]"
    if m.block_horizons is not None:
        after = f"after {m.units:,} effective units (blocks of {_blocks(m.block_horizons)})"
    else:
        after = f"after {m.units} series per variant (series-level, weaker)"
    if m.verdict is Verdict.PROMOTE:
        return f"{interval} < {bar:g} {after}"
    if m.verdict is Verdict.ROLLBACK:
        return f"{interval} > {bar:g} {after}"
    return f"{interval} still contains {bar:g} {after}"


def _combine(
    policy: JudgePolicy, method: str, results: list[MetricJudgement], pairs: int
) -> Judgement:
    """Promote when every judged metric is within tolerance, roll back when any is beyond.

    A metric with no evidence at all (the interval score when no forecast carried
    quantiles) is reported and left out; one with too few units keeps the step open.
    ``samples`` is the effective units of the metric the verdict rests on (the first
    beyond tolerance for a rollback, the first not yet within it when inconclusive).
    """
    judged = [m for m in results if m.units > 0 or m.note.startswith("too few")] or results[:1]
    worse = [m for m in judged if m.verdict is Verdict.ROLLBACK]
    if worse:
        verdict, shown = Verdict.ROLLBACK, worse
    elif all(m.verdict is Verdict.PROMOTE for m in judged):
        verdict, shown = Verdict.PROMOTE, judged
    else:
        verdict = Verdict.INCONCLUSIVE
        shown = [m for m in judged if m.verdict is not Verdict.PROMOTE]
    parts = [_describe(policy, m) for m in shown]
    if verdict is Verdict.INCONCLUSIVE:
        parts += [_describe(policy, m) for m in judged if m.verdict is Verdict.PROMOTE]
    reason = "; ".join(parts)
    if method == "paired":
        reason += f"; pairs {pairs:,}"
    for m in results:
        if m not in judged:
            reason += f"; {_LABEL[m.metric]} not judged: {m.note}"
    first = judged[0]
    return Judgement(
        verdict,
        reason,
        method,
        method == "series",
        shown[0].units,
        first.ratio,
        first.lower,
        first.upper,
        None,
        pairs,
        tuple(results),
    )


def judge(policy: JudgePolicy, evidence: Evidence) -> Judgement:
    """The verdict for the current step: guardrails, then paired accuracy, else series."""
    breach = _guardrails(policy, evidence)
    if breach is not None:
        return breach
    steps = np.asarray(evidence.steps, dtype=np.float64).reshape(-1, STEP_COLUMNS)
    point = steps[
        (steps[:, COUNT] > 0)
        & np.isfinite(steps[:, [SERIES, TARGET, STABLE_SCORE, CANARY_SCORE]]).all(axis=1)
    ]
    if len(point):
        results = [_paired_metric(policy, steps, metric) for metric in policy.metrics]
        return _combine(policy, "paired", results, int(point[:, COUNT].sum()))
    series = {
        "point": (evidence.stable_series, evidence.canary_series),
        "interval": (evidence.stable_series_interval, evidence.canary_series_interval),
    }
    results = [_series_metric(policy, *series[metric], metric) for metric in policy.metrics]
    if all(m.units == 0 for m in results):
        return Judgement(
            Verdict.INCONCLUSIVE,
            "too few samples: no pairs and no per-series errors yet",
            "none",
            False,
            0,
            None,
            None,
            None,
            None,
        )
    return _combine(policy, "series", results, 0)
