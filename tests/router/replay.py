"""Replaying real rolling-origin forecasts of real models through the analyzer and the judge.

`forecasts` trains a small model on a bundled dataset and forecasts every origin of its
test period at once (the batch `server.lifecycle.model.predict`); `Replay` feeds those forecasts,
tick by tick from a start offset, into a fresh `router.rollout.analysis.Analyzer` as the stable
and the canary variant of the same calls, with each tick's actuals as observations, and
judges every tick with `router.rollout.judge.judge` (and with the raw-pair judge it replaced)
until a decision or the end of the test period. Used by tests/router/test_judge_replay.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.judge_world import raw_pair_verdict
from canarycast.validation import history_scale
from router.rollout.analysis import Analyzer, ForecastRecord, ObservationRecord
from router.rollout.judge import (
    Judgement,
    JudgePolicy,
    Verdict,
    judge,
)
from server.lifecycle.data import Dataset, load_dataset, split_points
from server.lifecycle.model import build_model, predict
from server.lifecycle.pipeline import config_for
from server.lifecycle.training import TrainParams, train

LEVELS = (0.1, 0.5, 0.9)


@dataclass(frozen=True)
class Period:
    """The aligned series of a dataset and the forecast origins of its test period.

    Tick k is time index ``start + k``: the forecast from origin ``start + k`` (history
    up to ``start + k - 1``, targets ``start + k .. start + k + horizon - 1``) is made,
    then the actual at ``start + k`` arrives. Only origins whose whole horizon lies in
    the test period forecast (``origins`` of them), actuals arrive for all ``ticks``.
    """

    dataset: Dataset
    horizon: int
    values: np.ndarray  # (series, n)
    times: np.ndarray  # (n,) int64 ns, shared by the series
    start: int  # first index of the test split

    @property
    def ticks(self) -> int:
        return int(self.values.shape[1]) - self.start

    @property
    def origins(self) -> int:
        return self.ticks - self.horizon + 1

    @property
    def series_ids(self) -> tuple[str, ...]:
        return self.dataset.series_ids

    def actuals(self) -> np.ndarray:
        """(series, origin, horizon): what each forecast step is scored on."""
        index = self.start + np.arange(self.origins)[:, None] + np.arange(self.horizon)
        return self.values[:, index]

    def scales(self) -> np.ndarray:
        """(series, origin): the server's scale of each forecast, `history_scale` of all of
        the series before the origin (a client sending the whole history)."""
        return np.array(
            [[history_scale(v[: self.start + k]) for k in range(self.origins)] for v in self.values]
        )


def period_of(name: str, horizon: int) -> Period:
    dataset = load_dataset(name)
    values = np.stack([s.values for s in dataset.series])
    times = dataset.series[0].timestamps.view(np.int64)
    assert all(np.array_equal(s.timestamps.view(np.int64), times) for s in dataset.series)
    _, val_end = split_points(values.shape[1])
    return Period(dataset, horizon, values, times, val_end)


def forecasts(
    period: Period, overrides: dict[str, Any], params: TrainParams
) -> tuple[np.ndarray, dict[str, float]]:
    """Train one model and forecast every origin of the test period in one batch.

    Returns the quantiles (series, origin, horizon, LEVELS) in original units and the
    model's own test scores.
    """
    config = config_for(period.dataset, horizon=period.horizon, quantiles=LEVELS, **overrides)
    result = train(period.dataset, config, params, progress=False)
    net = build_model(result.config, result.state_dict)
    lb = config.lookback
    index = period.start + np.arange(period.origins)[:, None] + np.arange(-lb, 0)
    windows = period.values[:, index].reshape(-1, lb)
    q = predict(net, windows)
    n_series = period.values.shape[0]
    return q.reshape(n_series, period.origins, period.horizon, len(LEVELS)), result.scores


def made_worse(actuals: np.ndarray, q: np.ndarray, factor: float) -> np.ndarray:
    """Quantile forecasts whose median's error is ``factor`` times larger on every step:
    median' = actual + factor (median - actual), and the other quantiles widened by the
    same factor around the moved median: q' = median' + factor (q - median)."""
    median = q[..., LEVELS.index(0.5)]
    moved = actuals + factor * (median - actuals)
    return moved[..., None] + factor * (q - median[..., None])


def scaled_errors(actuals: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(series, origin, horizon): |actual - median| / scale, the analyzer's point score."""
    return np.abs(actuals - q[..., LEVELS.index(0.5)]) / scale[..., None]


def interval_scores(actuals: np.ndarray, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(series, origin, horizon): the 80 % interval score / scale, as the analyzer scores it."""
    lo, hi = q[..., 0], q[..., -1]
    beta = 2 * LEVELS[0]
    miss = np.maximum(lo - actuals, 0.0) + np.maximum(actuals - hi, 0.0)
    return (hi - lo + 2.0 / beta * miss) / scale[..., None]


def lag1_autocorrelation(x: np.ndarray) -> float:
    """Lag-1 autocorrelation of a sequence."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.corrcoef(x[:-1], x[1:])[0, 1])


@dataclass(frozen=True)
class Outcome:
    """One replay from one start offset."""

    offset: int  # ticks into the test period
    verdict: Verdict  # the judge's first decision, else INCONCLUSIVE
    ticks: int  # ticks judged (to the decision or the end)
    judgement: Judgement  # the deciding one, else the last
    raw: Verdict  # the raw-pair judge's first decision on the same replay
    raw_ticks: int
    point_promoted: bool  # the point error alone was within tolerance at some tick


@dataclass
class Tally:
    """Outcomes of one candidate over all offsets."""

    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, verdict: Verdict, *, raw: bool = False) -> int:
        return sum((o.raw if raw else o.verdict) is verdict for o in self.outcomes)

    def counts(self, *, raw: bool = False) -> Counter[str]:
        return Counter((o.raw if raw else o.verdict).value for o in self.outcomes)

    def __len__(self) -> int:
        return len(self.outcomes)


class Replay:
    """The forecasts of a stable model and of candidates, as records, ready to replay."""

    def __init__(self, period: Period, scale: np.ndarray) -> None:
        self.period = period
        self.scale = scale
        h, t0 = period.horizon, period.start
        self._targets = [
            tuple(int(x) for x in period.times[t0 + k : t0 + k + h]) for k in range(period.origins)
        ]
        self._observations = [
            [
                ObservationRecord(sid, (int(period.times[t0 + k]),), (float(v[t0 + k]),))
                for sid, v in zip(period.series_ids, period.values, strict=True)
            ]
            for k in range(period.ticks)
        ]

    def records(self, q: np.ndarray, variant: str, version: str) -> list[list[ForecastRecord]]:
        """[origin][series]: one forecast record per call and series, as a server's span
        carries it (the median as the point, every quantile row)."""
        median = LEVELS.index(0.5)
        return [
            [
                ForecastRecord(
                    series_id=sid,
                    forecast_id=f"{version}-{k}-{s}",
                    call_id=f"call-{k}",
                    variant=variant,
                    model_version=version,
                    timestamps=self._targets[k],
                    point=tuple(q[s, k, :, median].tolist()),
                    scale=float(self.scale[s, k]),
                    shadow=variant == "canary",
                    quantile_levels=LEVELS,
                    quantiles=tuple(tuple(q[s, k, :, j].tolist()) for j in range(len(LEVELS))),
                )
                for s, sid in enumerate(self.period.series_ids)
            ]
            for k in range(self.period.origins)
        ]

    def run(
        self,
        offset: int,
        stable: Sequence[Sequence[ForecastRecord]],
        canary: Sequence[Sequence[ForecastRecord]],
        policy: JudgePolicy,
    ) -> Outcome:
        """Replay from ``offset`` into a fresh analyzer, judging every tick."""
        now = [0.0]
        analyzer = Analyzer(clock=lambda: now[0], ttl=1e12)
        decided: tuple[Judgement, int] | None = None
        raw: tuple[Verdict, int] | None = None
        last: Judgement | None = None
        point_promoted = False
        for k in range(offset, self.period.ticks):
            now[0] = float(k)
            if k < self.period.origins:
                for st, ca in zip(stable[k], canary[k], strict=True):
                    analyzer.add_forecast(st)
                    analyzer.add_forecast(ca)
            for observation in self._observations[k]:
                analyzer.add_observation(observation)
            evidence = analyzer.evidence(float(offset))
            if decided is None:
                last = judge(policy, evidence)
                point_promoted |= any(
                    m.metric == "point" and m.verdict is Verdict.PROMOTE for m in last.metrics
                )
                if last.verdict is not Verdict.INCONCLUSIVE:
                    decided = (last, k - offset + 1)
            if raw is None:
                verdict = raw_pair_verdict(evidence, policy)
                if verdict is not Verdict.INCONCLUSIVE:
                    raw = (verdict, k - offset + 1)
            if decided is not None and raw is not None:
                break
        assert last is not None
        ticks = self.period.ticks - offset
        judgement, judged = decided if decided is not None else (last, ticks)
        raw_verdict, raw_ticks = raw if raw is not None else (Verdict.INCONCLUSIVE, ticks)
        return Outcome(
            offset, judgement.verdict, judged, judgement, raw_verdict, raw_ticks, point_promoted
        )
