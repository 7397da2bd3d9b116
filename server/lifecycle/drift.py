"""Drift: has the world the stable model was trained on changed?

Two questions per series, answered from the observation store (what `Observe` brought in)
against the training reference (the dataset named in the stable model's lineage):

**Data drift.** The *recent* window (the last ``recent_seasons`` seasons of observed
points, 48 hours for hourly data) is compared with the *reference* window: the
``reference_seasons`` seasons just before it (168 hours), taken from the training data
and older observations. Both are scaled by the reference's mean and standard deviation,
then compared with the population stability index (PSI, ten bins at the reference's
deciles) and the two-sample Kolmogorov-Smirnov test. A series drifts when **both** PSI
and the KS statistic D pass their thresholds. Why these defaults: on the bundled hourly
temperatures (Seattle and San Francisco, 2010) every pair of adjacent windows over the
year stayed below D 0.35 and PSI 1.9 (the seasons move the level slowly), while a level
shift of one standard deviation of the series pushed D to 0.52 or more and PSI to 3.8
or more. The KS p-value is reported but not used: it assumes independent points, and
neighbouring hours are not, so it is far too small on any real series.

**Performance drift.** The stable model forecasts every window of the recent period
(inputs from the points before it), scored with the same MASE as its offline test
score (absolute errors over the in-sample seasonal-naive MAE of the series' training
part), and the ratio recent MASE / offline test MASE (from the lineage) is compared with
``performance_ratio``. This is the stable model's online error, recomputed on the
stored actuals in the units of the offline score: the router's analyzer scales errors
by the one-step change of each call's history, which is not the MASE denominator, so
its numbers cannot be divided by the offline MASE (the controller exports the analyzer's
stable error as `canarycast_drift_stable_online_error`).

**The exporter.** `canarycast drift --serve-metrics PORT` (`DriftExporter`, `DriftGauges`)
recomputes the report every interval from the registry and the store (or a folder of the
routers' stores, read-only) and serves the other `canarycast_drift_*` gauges. It is the
one lifecycle process that needs the model for drift, so the router stays torch-free; the
model is loaded here (`load_stable`), not through serving's loader.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import structlog
from pandas.tseries.frequencies import to_offset
from prometheus_client import CollectorRegistry, Counter, Gauge
from scipy import stats

from server.lifecycle.data import DataError, Dataset, Series, load_dataset, split_points
from server.lifecycle.model import load_version
from server.lifecycle.observations import ObservationStore
from server.lifecycle.recipe import DriftPolicy, ModelConfig
from server.lifecycle.registry import ModelVersion, Registry, RegistryError
from server.lifecycle.scoring import insample_seasonal_mae

log = structlog.get_logger("canarycast.drift")

__all__ = [
    "DriftExporter",
    "DriftGauges",
    "DriftModel",
    "DriftPolicy",
    "DriftReport",
    "PerformanceDrift",
    "SeriesDrift",
    "combine",
    "detect_drift",
    "load_stable",
    "population_stability_index",
    "stable_drift",
]

PSI_FLOOR = 1e-4  # share given to an empty bin, so PSI stays finite


class DriftModel(Protocol):
    """What performance drift needs of a model version: its lineage and its forecasts
    (`server.lifecycle.model.LoadedModel` is one: serving's loader and `load_stable` make
    them)."""

    @property
    def version(self) -> ModelVersion: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def version_id(self) -> str: ...

    @property
    def point_index(self) -> int: ...

    def predict(self, windows: np.ndarray) -> np.ndarray: ...


def load_stable(registry: Registry, model: str) -> DriftModel:
    """``model@stable``, its content hash verified by the registry (`RegistryError` if
    missing or corrupt)."""
    return load_version(registry, f"{model}@stable")


@dataclass(frozen=True)
class SeriesDrift:
    series_id: str
    recent_points: int
    reference_points: int
    recent_start: str = ""
    psi: float | None = None
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    level_shift: float | None = None  # (recent mean - reference mean) / reference std
    drifted: bool = False
    note: str = ""


@dataclass(frozen=True)
class PerformanceDrift:
    version: str
    windows: int
    recent_mase: float | None
    offline_mase: float | None
    ratio: float | None
    drifted: bool
    note: str = ""


@dataclass(frozen=True)
class DriftReport:
    model: str
    reference: str
    policy: DriftPolicy
    series: list[SeriesDrift] = field(default_factory=list)
    performance: PerformanceDrift | None = None

    @property
    def data_drifted(self) -> list[str]:
        return [s.series_id for s in self.series if s.drifted]

    @property
    def drifted(self) -> bool:
        return bool(self.data_drifted) or bool(self.performance and self.performance.drifted)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted"] = self.drifted
        out["data_drifted"] = self.data_drifted
        return out

    def format(self) -> str:
        """The readable report of `canarycast drift`."""
        p = self.policy
        lines = [
            f"drift of {self.model} against {self.reference}",
            f"data drift: recent {p.recent_seasons} season(s) vs the {p.reference_seasons} "
            f"before; drift when PSI > {p.psi_threshold:g} and KS D > {p.ks_threshold:g}",
        ]
        rows = [("SERIES", "RECENT FROM", "POINTS", "PSI", "KS D", "KS p", "SHIFT/SD", "DRIFT")]
        for s in self.series:
            rows.append(
                (
                    s.series_id,
                    s.recent_start or "-",
                    f"{s.recent_points}/{s.reference_points}",
                    _num(s.psi, 3),
                    _num(s.ks_statistic, 3),
                    "-" if s.ks_pvalue is None else f"{s.ks_pvalue:.1e}",
                    _num(s.level_shift, 2, signed=True),
                    "DRIFT" if s.drifted else (s.note or "ok"),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        ]
        perf = self.performance
        if perf is None:
            lines.append("performance drift: not checked (no stable model)")
        elif perf.ratio is None:
            lines.append(f"performance drift of {perf.version}: not checked ({perf.note})")
        else:
            lines.append(
                f"performance drift of {perf.version}: MASE {perf.recent_mase:.3f} on "
                f"{perf.windows} recent windows vs {perf.offline_mase:.3f} offline (test split): "
                f"ratio {perf.ratio:.2f} (threshold {p.performance_ratio:g})"
                + (" DRIFT" if perf.drifted else " ok")
            )
        verdict = "DRIFT DETECTED" if self.drifted else "no drift"
        if self.data_drifted:
            verdict += f" in {', '.join(self.data_drifted)}"
        if perf is not None and perf.drifted:
            verdict += " (performance)"
        lines.append(verdict)
        return "\n".join(lines)


def _num(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """PSI with bins at the reference's quantiles; an empty bin counts as PSI_FLOOR."""
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf
    if len(edges) < 3:  # a constant reference: below / at-or-above its value
        edges = np.array([-np.inf, float(reference[0]), np.inf])
    ref = np.histogram(reference, edges)[0] / len(reference)
    cur = np.histogram(recent, edges)[0] / len(recent)
    ref, cur = np.clip(ref, PSI_FLOOR, None), np.clip(cur, PSI_FLOOR, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@dataclass(frozen=True)
class Combined:
    """A reference series continued by its observations, on a regular grid."""

    series_id: str
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray
    first_observed: int  # index of the first point that came from the store
    base_points: int  # points from the reference dataset (its training data)
    filled: int  # grid points neither had, filled by linear interpolation


def combine(
    series_id: str,
    base: Series | None,
    observed_ts: np.ndarray,
    observed_values: np.ndarray,
    freq: str,
) -> Combined:
    """The reference series up to the first observation, then the observations (they win
    where both have a point), on the regular ``freq`` grid; gaps filled linearly."""
    obs_ts = np.asarray(observed_ts, dtype="datetime64[ns]")
    obs_values = np.asarray(observed_values, dtype=np.float64)
    if base is not None and len(obs_ts):
        keep = base.timestamps < obs_ts[0]
        ts = np.concatenate([base.timestamps[keep], obs_ts])
        values = np.concatenate([base.values[keep], obs_values])
        base_points = int(keep.sum())
    elif base is not None:
        ts, values, base_points = base.timestamps, base.values, len(base)
    else:
        ts, values, base_points = obs_ts, obs_values, 0
    frame = pd.Series(values, index=pd.DatetimeIndex(ts))
    offset = to_offset(freq)
    grid = pd.date_range(frame.index[0], frame.index[-1], freq=offset)
    on_grid = frame.index.isin(grid)
    frame = frame[on_grid]  # points off the grid cannot be placed; they are left out
    regular = frame.reindex(grid)
    filled = int(regular.isna().sum())
    if filled:
        regular = regular.interpolate(method="time", limit_direction="both")
    grid_ts = grid.as_unit("ns").to_numpy(dtype="datetime64[ns]")
    first_observed = int(np.searchsorted(grid_ts, obs_ts[0])) if len(obs_ts) else len(grid_ts)
    return Combined(
        series_id,
        grid_ts,
        regular.to_numpy(dtype=np.float64),
        first_observed,
        base_points,
        filled,
    )


def data_drift(
    combined: Combined, season_length: int, policy: DriftPolicy
) -> tuple[SeriesDrift, slice]:
    """Data drift of one series, and the slice of its recent window."""
    n_obs = len(combined.values) - combined.first_observed
    recent_n = policy.recent_seasons * season_length
    reference_n = policy.reference_seasons * season_length
    end = len(combined.values)
    start = max(combined.first_observed, end - recent_n)
    recent = combined.values[start:end]
    reference = combined.values[max(0, start - reference_n) : start]
    since = str(combined.timestamps[start])[:19] if start < end else ""
    if n_obs < recent_n:
        return (
            SeriesDrift(
                combined.series_id,
                len(recent),
                len(reference),
                since,
                note=f"too few observations ({n_obs} of {recent_n})",
            ),
            slice(start, end),
        )
    if len(reference) < reference_n:
        return (
            SeriesDrift(
                combined.series_id,
                len(recent),
                len(reference),
                since,
                note=f"too little reference ({len(reference)} of {reference_n})",
            ),
            slice(start, end),
        )
    loc, scale = float(reference.mean()), float(reference.std())
    scale = scale if scale > 0 else 1.0
    ref_z, cur_z = (reference - loc) / scale, (recent - loc) / scale
    psi = population_stability_index(ref_z, cur_z, policy.bins)
    ks = stats.ks_2samp(ref_z, cur_z)
    statistic, pvalue = float(ks.statistic), float(ks.pvalue)
    drifted = psi > policy.psi_threshold and statistic > policy.ks_threshold
    return (
        SeriesDrift(
            combined.series_id,
            len(recent),
            len(reference),
            since,
            psi=psi,
            ks_statistic=statistic,
            ks_pvalue=pvalue,
            level_shift=float(cur_z.mean()),
            drifted=drifted,
        ),
        slice(start, end),
    )


def recent_mase(
    model: DriftModel,
    combined: Sequence[tuple[Combined, slice]],
) -> tuple[float | None, int]:
    """MASE of the model's forecasts of every window whose targets lie in the recent slice
    (stride 1, horizon up to the model's), scaled as the offline score is."""
    config = model.config
    lookback, m = config.lookback, config.season_length
    errors: list[np.ndarray] = []
    n_windows = 0
    for c, recent in combined:
        start, end = recent.start or 0, recent.stop or len(c.values)
        horizon = min(config.horizon, end - start)
        origins = np.arange(max(start, lookback), end - horizon + 1)
        if horizon < 1 or not len(origins) or c.base_points <= 2 * m:
            continue
        train_end, _ = split_points(c.base_points)
        if train_end <= m:
            continue
        scale = insample_seasonal_mae(c.values[:train_end], m)
        if scale <= 0:
            continue
        windows = c.values[origins[:, None] + np.arange(-lookback, 0)]
        targets = c.values[origins[:, None] + np.arange(horizon)]
        point = model.predict(windows)[:, :horizon, model.point_index]
        errors.append((np.abs(targets - point) / scale).ravel())
        n_windows += len(origins)
    if not errors:
        return None, 0
    return float(np.concatenate(errors).mean()), n_windows


def detect_drift(
    store: ObservationStore,
    reference: Dataset,
    *,
    model: DriftModel | None = None,
    model_name: str = "",
    policy: DriftPolicy | None = None,
) -> DriftReport:
    """Data drift of every stored series, and performance drift of `model` if given."""
    policy = policy or DriftPolicy()
    season = reference.season_length
    known = {s.series_id: s for s in reference.series}
    results: list[SeriesDrift] = []
    recent: list[tuple[Combined, slice]] = []
    for summary in store.series():
        ts, values = store.query(summary.series_id)
        combined = combine(
            summary.series_id, known.get(summary.series_id), ts, values, reference.freq
        )
        result, window = data_drift(combined, season, policy)
        if summary.series_id not in known and not result.note:
            result = SeriesDrift(**{**asdict(result), "note": "no reference series (own history)"})
        results.append(result)
        if summary.series_id in known:
            recent.append((combined, window))
    performance = None
    if model is not None:
        offline = model.version.metadata.get("scores", {}).get("mase")
        mase, n_windows = recent_mase(model, recent)
        if mase is None or not isinstance(offline, int | float) or offline <= 0:
            note = "no recent window of a reference series" if mase is None else "no offline MASE"
            performance = PerformanceDrift(model.version_id, 0, mase, offline, None, False, note)
        else:
            ratio = mase / float(offline)
            performance = PerformanceDrift(
                model.version_id,
                n_windows,
                mase,
                float(offline),
                ratio,
                ratio > policy.performance_ratio,
            )
    return DriftReport(model_name, reference.name, policy, results, performance)


def stable_drift(
    observations: str | os.PathLike[str],
    registry: Registry,
    model: str,
    reference: str | None = None,
    policy: DriftPolicy | None = None,
) -> DriftReport:
    """Drift of ``model@stable`` against its lineage's dataset (or ``reference``)."""
    loaded = load_stable(registry, model)
    meta = loaded.version.metadata
    name = reference or meta.get("retrain", {}).get("base_dataset") or meta["dataset"]
    with ObservationStore(Path(observations), readonly=True) as store:
        return detect_drift(
            store, load_dataset(name), model=loaded, model_name=model, policy=policy
        )


class DriftGauges:
    """The drift scores as Prometheus gauges (`canarycast drift --serve-metrics`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.psi = Gauge(
            "canarycast_drift_psi",
            "Population stability index of a series' recent window against its reference.",
            ["series"],
            registry=registry,
        )
        self.ks = Gauge(
            "canarycast_drift_ks_statistic",
            "Two-sample Kolmogorov-Smirnov statistic D, recent window against reference.",
            ["series"],
            registry=registry,
        )
        self.drifted = Gauge(
            "canarycast_drift_detected",
            "1 when a series (or 'performance') is past its drift thresholds.",
            ["series"],
            registry=registry,
        )
        self.performance = Gauge(
            "canarycast_drift_performance_ratio",
            "Stable model's MASE on recent observations over its offline test MASE.",
            registry=registry,
        )
        self.last_success = Gauge(
            "canarycast_drift_last_success_timestamp_seconds",
            "Unix time of the last drift check that completed.",
            registry=registry,
        )
        self.failures = Counter(
            "canarycast_drift_check_failures",
            "Drift checks that could not run (no stable model, no store yet, bad data).",
            registry=registry,
        )

    def update(self, report: DriftReport, now: float) -> None:
        """The report's scores; a series no longer in the store loses its gauges."""
        self.psi.clear()
        self.ks.clear()
        self.drifted.clear()
        for s in report.series:
            if s.psi is not None and s.ks_statistic is not None:
                self.psi.labels(s.series_id).set(s.psi)
                self.ks.labels(s.series_id).set(s.ks_statistic)
            self.drifted.labels(s.series_id).set(1 if s.drifted else 0)
        perf = report.performance
        if perf is not None and perf.ratio is not None:
            self.performance.set(perf.ratio)
            self.drifted.labels("performance").set(1 if perf.drifted else 0)
        self.last_success.set(now)


#: What a drift check may fail with and still be retried next interval.
CHECK_ERRORS: tuple[type[Exception], ...] = (
    DataError,
    RegistryError,
    OSError,
    ValueError,
    KeyError,
)


@dataclass
class DriftExporter:
    """Recomputes `stable_drift` every `interval` seconds into `gauges`, until stopped.

    A check that fails (no stable model yet, no store yet) is logged and counted, and the
    next interval tries again: the gauges keep the last scores, and
    `canarycast_drift_last_success_timestamp_seconds` says how old they are."""

    observations: Path
    registry: Registry
    model: str
    gauges: DriftGauges
    interval: float = 300.0
    reference: str | None = None
    policy: DriftPolicy | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"--interval must be above 0 seconds, not {self.interval:g}")

    def check(self) -> DriftReport | None:
        try:
            report = stable_drift(
                self.observations, self.registry, self.model, self.reference, self.policy
            )
        except CHECK_ERRORS as exc:
            self.gauges.failures.inc()
            log.warning("drift check failed", error=f"{type(exc).__name__}: {exc}")
            return None
        self.gauges.update(report, self.clock())
        log.info(
            "drift checked",
            drifted=report.drifted,
            data_drifted=report.data_drifted,
            performance_ratio=report.performance.ratio if report.performance else None,
        )
        return report

    def run(self, stop: threading.Event) -> None:
        """Check now, then every `interval` seconds, until `stop` is set."""
        while not stop.is_set():
            self.check()
            stop.wait(self.interval)
