"""The judge on real data: rolling-origin forecasts of real models, replayed from many offsets.

Per dataset, two models of one recipe (seeds 0 and 1, trained on the real series) forecast
every origin of the test period (one step apart, the full horizon, quantiles 0.1 / 0.5 /
0.9). From each start offset, a fresh analyzer receives those forecasts tick by tick as
both variants of the same calls (stable: seed 0; canary: seed 1 for the A/A, or the known
worse candidate, seed 1's forecasts with every step's error 10 % larger and the interval
widened by 10 % around the moved median) with each tick's actuals, and the judge judges
every tick until it decides or the test period ends.

The errors of the two seeds are strongly dependent (the lag-1 autocorrelation of the
per-forecast log error ratio is about 0.9 on seattle-temps), which is what made the
raw-pair judge (every evidence row an independent pair) roll back A/A rollouts; the
rebuilt judge must not, and must never promote the worse candidate. With one series
there is little independent evidence and it mostly stays undecided, saying why.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np
import pytest

from router.rollout.judge import JudgePolicy, Verdict
from server.lifecycle.training import TrainParams
from tests.router.replay import (
    Period,
    Replay,
    Tally,
    forecasts,
    interval_scores,
    lag1_autocorrelation,
    made_worse,
    period_of,
    scaled_errors,
)

pytestmark = pytest.mark.slow

POLICY = JudgePolicy()
MAX_AA_ROLLBACK_RATE = 0.02
WORSE = 1.10  # the worse candidate's error factor
SEEDS = (0, 1)
# A small recipe, but trained long enough that two seeds are equally good on the test period
# (with 10 epochs seattle-temps' seeds differed by 12 % in MAE: no A/A); about 2.5 s a model.
NETWORK = {"hidden": 16, "layers": 1}
EPOCHS, WINDOWS_PER_EPOCH = 30, 2048

TOO_FEW = re.compile(r"too few effective units: \d+ of \d+ .*need about .+ more at this traffic")
UNDECIDED = re.compile(r"still contains 1\.05")


@dataclass(frozen=True)
class Case:
    name: str
    horizon: int
    lookback: int
    every: int  # ticks between start offsets
    min_left: int  # forecast origins left after the last start offset
    min_autocorrelation: float  # of the per-forecast log error ratio, mean over series
    raw_judge_errs: bool  # measured: the raw-pair judge decides wrongly on these replays


CASES = (
    # one hourly series; 24 offsets, two days apart (a replay runs to the end of the test
    # period, about 1.5 ms a tick: this case is most of the file's run time)
    Case("seattle-temps", 12, 48, 48, 168, 0.5, True),
    # four daily series (precipitation, temp_max, temp_min, wind); 29 offsets a week apart
    Case("seattle-weather", 7, 28, 7, 14, 0.2, False),
)


@dataclass(frozen=True)
class Replayed:
    case: Case
    period: Period
    errors: dict[str, np.ndarray]  # model -> (series, origin, horizon) scaled point errors
    intervals: dict[str, np.ndarray]  # model -> the same, interval scores
    tallies: dict[str, Tally]  # "A/A" | "worse"
    offsets: list[int]
    seconds: dict[str, float]

    def realized(self, model: str, metric: str = "point") -> float:
        """The candidate's true ratio to stable over the whole test period."""
        scores = self.errors if metric == "point" else self.intervals
        return float(scores[model].sum() / scores["A"].sum())


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def replayed(request: pytest.FixtureRequest) -> Replayed:
    case: Case = request.param
    started = time.perf_counter()
    period = period_of(case.name, case.horizon)
    overrides = {"lookback": case.lookback, **NETWORK}
    qa, qb = (
        forecasts(
            period,
            overrides,
            TrainParams(epochs=EPOCHS, max_windows_per_epoch=WINDOWS_PER_EPOCH, seed=seed),
        )[0]
        for seed in SEEDS
    )
    actuals, scale = period.actuals(), period.scales()
    qw = made_worse(actuals, qb, WORSE)
    trained = time.perf_counter()
    models = {"A": qa, "B": qb, "worse": qw}
    errors = {k: scaled_errors(actuals, q, scale) for k, q in models.items()}
    intervals = {k: interval_scores(actuals, q, scale) for k, q in models.items()}

    replay = Replay(period, scale)
    stable = replay.records(qa, "stable", "seed-0")
    candidates = {
        "A/A": replay.records(qb, "canary", "seed-1"),
        "worse": replay.records(qw, "canary", "seed-1-worse"),
    }
    offsets = list(range(0, period.origins - case.min_left + 1, case.every))
    tallies = {
        label: Tally([replay.run(o, stable, canary, POLICY) for o in offsets])
        for label, canary in candidates.items()
    }
    done = time.perf_counter()
    seconds = {"train": trained - started, "replay": done - trained}
    return Replayed(case, period, errors, intervals, tallies, offsets, seconds)


def table(r: Replayed) -> str:
    """The outcomes of both judges for both candidates, as text."""
    p = r.period
    lines = [
        f"{r.case.name}: {len(r.offsets)} start offsets {r.case.every} ticks apart, "
        f"{len(p.series_ids)} series, horizon {p.horizon}, {p.ticks} ticks in the test period "
        f"(train and forecast {r.seconds['train']:.1f} s, replay {r.seconds['replay']:.1f} s)",
        f"realized ratio to stable, point / interval: A/A {r.realized('B'):.3f} / "
        f"{r.realized('B', 'interval'):.3f}, worse {r.realized('worse'):.3f} / "
        f"{r.realized('worse', 'interval'):.3f}",
        f"{'candidate':10} {'judge':10} {'promote':>8} {'rollback':>9} {'undecided':>10} "
        f"{'median ticks to a decision':>27}",
    ]
    for label, tally in r.tallies.items():
        for judge_name, raw in (("new", False), ("raw-pair", True)):
            c = tally.counts(raw=raw)
            ticks = [
                o.raw_ticks if raw else o.ticks
                for o in tally.outcomes
                if (o.raw if raw else o.verdict) is not Verdict.INCONCLUSIVE
            ]
            median = f"{np.median(ticks):.0f}" if ticks else "-"
            lines.append(
                f"{label:10} {judge_name:10} {c['promote']:8d} {c['rollback']:9d} "
                f"{c['inconclusive']:10d} {median:>27}"
            )
    return "\n".join(lines)


def test_the_errors_of_two_seeds_are_dependent(replayed: Replayed) -> None:
    """The dependence the judge was rebuilt for: neighbouring forecasts' log error ratios."""
    e = replayed.errors
    lag1 = {
        sid: lag1_autocorrelation(np.log(e["B"][s].mean(-1) / e["A"][s].mean(-1)))
        for s, sid in enumerate(replayed.period.series_ids)
    }
    print(f"\n{replayed.case.name}: lag-1 autocorrelation of log(error B / error A) per forecast")
    for sid, rho in lag1.items():
        print(f"  {sid:40} {rho:6.3f}")
    assert float(np.mean(list(lag1.values()))) >= replayed.case.min_autocorrelation


def test_the_seeds_are_an_a_a_and_the_candidate_is_worse(replayed: Replayed) -> None:
    """What makes a verdict wrong: the seeds are within tolerance on the test period, the
    worse candidate is beyond it."""
    bar = 1.0 + POLICY.tolerance
    for metric in ("point", "interval"):
        assert 1.0 / bar < replayed.realized("B", metric) < bar, metric
    assert replayed.realized("worse") > bar


def test_the_judge_never_rolls_back_the_a_a_nor_promotes_the_worse(replayed: Replayed) -> None:
    """At most 2 % of the A/A replays rolled back, no worse replay promoted (printed: the
    outcomes of both judges, `pytest -s` shows them)."""
    outcomes = table(replayed)
    print("\n" + outcomes)
    aa, worse = replayed.tallies["A/A"], replayed.tallies["worse"]
    rolled_back = [
        (o.offset, o.judgement.reason) for o in aa.outcomes if o.verdict is Verdict.ROLLBACK
    ]
    assert len(rolled_back) <= MAX_AA_ROLLBACK_RATE * len(aa), (outcomes, rolled_back)
    promoted = [
        (o.offset, o.judgement.reason) for o in worse.outcomes if o.verdict is Verdict.PROMOTE
    ]
    assert not promoted, (outcomes, promoted)
    # nor, at any tick, was the worse candidate's point error alone within tolerance
    assert not [o.offset for o in worse.outcomes if o.point_promoted], outcomes


def test_the_raw_pair_judge_errs_on_the_same_replays(replayed: Replayed) -> None:
    """The test has teeth: the judge the rebuild replaced decides wrongly on these replays."""
    aa, worse = replayed.tallies["A/A"], replayed.tallies["worse"]
    rollbacks = aa.count(Verdict.ROLLBACK, raw=True)
    promotions = worse.count(Verdict.PROMOTE, raw=True)
    if not replayed.case.raw_judge_errs:
        # measured: on this dataset the raw-pair judge decides rightly too (its two seeds
        # are almost the same model): the case claims no wrong decision, so check that
        assert rollbacks == 0 and promotions == 0, table(replayed)
        return
    assert rollbacks > MAX_AA_ROLLBACK_RATE * len(aa) or promotions > 0, table(replayed)


def test_an_undecided_judgement_says_why(replayed: Replayed) -> None:
    """Undecided: too few effective units and how much more data that needs, or an interval
    still around the tolerance; with one series it is always too few units."""
    single = len(replayed.period.series_ids) == 1
    for tally in replayed.tallies.values():
        for o in tally.outcomes:
            if o.verdict is not Verdict.INCONCLUSIVE:
                continue
            reason = o.judgement.reason
            assert TOO_FEW.search(reason) or (not single and UNDECIDED.search(reason)), reason
