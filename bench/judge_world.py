"""Section 7: three canary judges in a simulated world with the dependence real traffic has.

The world (``simulate``): per rollout, N series forecast every hour with horizon H = 24 by
both variants of the same call (the canary's copy a shadow forecast), quantiles 0.1 / 0.5
/ 0.9, and the actual of each hour observed once. A forecast from origin o targets
o .. o + 23, so every target time is forecast by 24 overlapping forecasts. The error of
a variant's forecast of series i from origin o for target t = o + h is, in units of the
series' error scale sigma_i,

    shock_t                       shared: the unpredictable part of the actual
  + regime_t                      shared: AR(1) over target time, phi 0.97
  + (bias_o + own_bias_o) g(h)    per forecast: grows with the step ahead, g = (h + 1) / H
  + own_regime_o                  the model's own: AR(1) over origins, phi 0.97
  + own_noise_{o,h}               the model's own, independent

(the ``own`` parts drawn independently for each variant). A series' error scale is its
magnitude (lognormal, the forecast's ``scale``) times its difficulty (lognormal, its
expected scaled error), so the scaled errors the analyzer scores differ between series.
The canary's error is (1 + delta_i) times an error built exactly like stable's, with a
per-series effect delta_i = effect + spread (sd 0.1) shifted so that the
difficulty-weighted mean of 1 + delta_i -- the ratio of expected mean scaled absolute
errors of the rollout, what the judge estimates -- is exactly the scenario's ratio: some
series are helped, some hurt. Quantiles are the median +- 1.2816 x the variant's nominal
error sd at that step (calibrated 80 % intervals, errors being Gaussian), times a width
factor for the interval scenarios.

Everything goes through the real ``router.rollout.analysis.Analyzer`` (records, observations,
``evidence``); three judges read the same evidence every tick:

- **new**: ``router.rollout.judge.judge(JudgePolicy(), evidence)`` (effective units);
- **raw-pair**: the judge before the rebuild, every evidence row an independent pair of
  mean scores (30 rows at least), on the rebuilt analyzer's *per-actual* rows (the old
  analyzer's rows were single paired steps; per-actual rows already sum the 24 steps that
  scored one actual, so this is the old judge's statistics on today's rows, not a replay
  of the old code);
- **Kayenta**: a two-sided Mann-Whitney test (98 %) of the per-row mean errors of the two
  variants as two unpaired samples, judged every tick from 30 rows on; it fails at the
  first significant increase and passes at the end of the run if it never failed, as
  Kayenta's canary analysis does at the end of its lifetime.

A rollout stops once all its judges have decided, else at its maximum ticks.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.kayenta import mann_whitney_baseline
from router.rollout.analysis import Analyzer, ForecastRecord, ObservationRecord
from router.rollout.confidence import optimal_rho, ratio_confidence_sequence
from router.rollout.judge import Evidence, JudgePolicy, Verdict, judge

FloatArray = npt.NDArray[np.float64]

HORIZON = 24  # steps of a forecast; one step = one hour = one tick
HOUR_NS = 3600 * 10**9
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00Z, the first target time
LEVELS = (0.1, 0.5, 0.9)
Z80 = 1.2815515655446004  # the 0.9 quantile of the standard normal
RAW_MIN_ROWS = 30  # the raw-pair judge's minimum, in evidence rows
KAYENTA_MIN_ROWS = 30
KAYENTA_CONFIDENCE = 0.98
POLICY = JudgePolicy()
JUDGES = ("new", "raw", "kayenta")
LABELS = {"new": "new judge", "raw": "raw-pair sequence", "kayenta": "Kayenta (Mann-Whitney)"}


@dataclass(frozen=True)
class World:
    """The error model's parameters, in units of a series' error scale sigma_i."""

    shock: float = 0.6  # sd of the shared per-target shock
    regime: float = 0.6  # stationary sd of the shared AR(1) regime, over target time
    bias: float = 0.5  # sd of the shared per-forecast bias at the last step
    own_bias: float = 0.5  # sd of a model's own per-forecast bias at the last step
    own_regime: float = 0.4  # stationary sd of a model's own AR(1) regime, over origins
    own_noise: float = 0.3  # sd of a model's own independent noise per step
    phi: float = 0.97  # AR(1) coefficient per step of both regimes
    magnitude_sigma: float = 1.0  # lognormal sigma of the series' magnitudes (their scale)
    difficulty_sigma: float = 0.5  # lognormal sigma of the series' scaled error levels
    effect_sd: float = 0.1  # sd of the canary's per-series effect around the scenario's

    def step_sd(self) -> FloatArray:
        """The marginal error sd at each step ahead (h = 0 .. H - 1), in units of sigma_i."""
        g = _growth()
        var = (
            self.shock**2
            + self.regime**2
            + (self.bias**2 + self.own_bias**2) * g**2
            + self.own_regime**2
            + self.own_noise**2
        )
        return np.sqrt(var)


@dataclass(frozen=True)
class Scenario:
    """What the canary is, against stable."""

    name: str
    ratio: float  # difficulty-weighted mean canary / stable ratio of mean absolute errors
    same_median: bool = False  # the canary's median is stable's (only the intervals differ)
    canary_width: float = 1.0  # interval half-width, relative to a calibrated one
    stable_width: float = 1.0
    expect: str = ""  # the right verdict: "promote" or "rollback"


#: the 80 % interval's half-width factor that covers 50 % (0.6745 / 1.2816) and 60 %
WIDTH_COVERING_50 = 0.53
WIDTH_COVERING_60 = 0.8416212335729143 / Z80

WORSE = Scenario("10 % worse", 1.10, expect="rollback")
EQUAL = Scenario("equal", 1.00, expect="promote")
BETTER = Scenario("10 % better", 0.90, expect="promote")
NARROW_CANARY = Scenario(
    "same median, canary's intervals cover 50 %",
    1.0,
    same_median=True,
    canary_width=WIDTH_COVERING_50,
    expect="rollback",
)
NARROW_STABLE = Scenario(
    "same median, stable's intervals cover 60 %, canary's calibrated",
    1.0,
    same_median=True,
    stable_width=WIDTH_COVERING_60,
    expect="promote",
)
SCENARIOS = {s.name: s for s in (WORSE, EQUAL, BETTER, NARROW_CANARY, NARROW_STABLE)}
POINT_SCENARIOS = (WORSE, EQUAL, BETTER)
INTERVAL_SCENARIOS = (NARROW_CANARY, NARROW_STABLE)


def _growth() -> FloatArray:
    return (np.arange(HORIZON) + 1.0) / HORIZON


def _ar1(rng: np.random.Generator, steps: int, n: int, sd: float, phi: float) -> FloatArray:
    """(steps, n) stationary AR(1) paths with marginal sd ``sd``."""
    eps = rng.standard_normal((steps, n))
    x = np.empty((steps, n))
    x[0] = sd * eps[0]
    innovation = sd * math.sqrt(1.0 - phi * phi)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + innovation * eps[t]
    return x


@dataclass(frozen=True)
class Rollout:
    """The generated forecasts and actuals of one rollout (origin o = tick o)."""

    actual: FloatArray  # (ticks, N): the actual at each tick
    stable_error: FloatArray  # (ticks, N, H): actual - median, of the forecast from origin o
    canary_error: FloatArray
    stable_half: FloatArray  # (ticks, N, H): half-width of the 80 % interval
    canary_half: FloatArray
    scale: FloatArray  # (N,): the forecasts' scale (the series' magnitude)
    difficulty: FloatArray  # (N,): the series' expected scaled error level
    delta: FloatArray  # (N,): the canary's per-series effect, 1 + delta its error factor
    truth: FloatArray  # (ticks + H - 1, N): actual value at every target time

    @property
    def ticks(self) -> int:
        return int(self.actual.shape[0])

    @property
    def n_series(self) -> int:
        return int(self.actual.shape[1])

    def expected_ratio(self) -> float:
        """The difficulty-weighted mean of 1 + delta: E[canary MAE] / E[stable MAE]."""
        w = self.difficulty
        return float(np.sum(w * (1.0 + self.delta)) / np.sum(w))

    def targets(self) -> npt.NDArray[np.int64]:
        """(ticks, H): target index of each step of each origin's forecast."""
        return np.arange(self.ticks)[:, None] + np.arange(HORIZON)[None, :]


def _effects(rng: np.random.Generator, world: World, ratio: float, w: FloatArray) -> FloatArray:
    """Per-series canary effects whose ``w``-weighted mean of 1 + delta is exactly ``ratio``."""
    spread = world.effect_sd * rng.standard_normal(w.size)
    spread -= np.sum(w * spread) / np.sum(w)
    delta = (ratio - 1.0) + spread
    return np.asarray(np.maximum(delta, -0.9), dtype=np.float64)


def simulate(
    world: World, scenario: Scenario, n_series: int, ticks: int, seed: int | Sequence[int]
) -> Rollout:
    """One rollout's errors, in bulk. The same seed gives the same stable model, series and
    shocks in every scenario (common random numbers); only the canary differs."""
    root = np.random.SeedSequence(seed)
    common, own_s, own_c, effect = (np.random.default_rng(s) for s in root.spawn(4))
    n, targets_n = n_series, ticks + HORIZON - 1
    magnitude = common.lognormal(0.0, world.magnitude_sigma, n)
    difficulty = common.lognormal(0.0, world.difficulty_sigma, n)
    sigma = magnitude * difficulty
    shock = world.shock * common.standard_normal((targets_n, n))
    regime = _ar1(common, targets_n, n, world.regime, world.phi)
    bias = world.bias * common.standard_normal((ticks, n))
    index = np.arange(ticks)[:, None] + np.arange(HORIZON)[None, :]  # (ticks, H)
    g = _growth()
    # (ticks, N, H): the part both variants share
    shared = (shock[index] + regime[index]).transpose(0, 2, 1) + bias[:, :, None] * g

    def own(rng: np.random.Generator) -> FloatArray:
        b = world.own_bias * rng.standard_normal((ticks, n))
        m = _ar1(rng, ticks, n, world.own_regime, world.phi)
        noise = world.own_noise * rng.standard_normal((ticks, n, HORIZON))
        return np.asarray(b[:, :, None] * g + m[:, :, None] + noise, dtype=np.float64)

    stable_error = sigma[None, :, None] * (shared + own(own_s))
    nominal = sigma[None, :, None] * world.step_sd()[None, None, :]  # (1, N, H)
    if scenario.same_median:
        delta = np.zeros(n)
        canary_error = stable_error.copy()
        canary_nominal = nominal
    else:
        delta = _effects(effect, world, scenario.ratio, difficulty)
        factor = (1.0 + delta)[None, :, None]
        canary_error = factor * sigma[None, :, None] * (shared + own(own_c))
        canary_nominal = factor * nominal
    hours = np.arange(targets_n)
    level = magnitude[None, :] * (10.0 + 3.0 * np.sin(2.0 * np.pi * hours / 24.0))[:, None]
    truth = level + sigma[None, :] * shock
    return Rollout(
        actual=truth[:ticks],
        stable_error=stable_error,
        canary_error=canary_error,
        stable_half=np.broadcast_to(Z80 * scenario.stable_width * nominal, stable_error.shape),
        canary_half=np.broadcast_to(
            Z80 * scenario.canary_width * canary_nominal, canary_error.shape
        ),
        scale=magnitude,
        difficulty=difficulty,
        delta=delta,
        truth=truth,
    )


# --- the two baselines ------------------------------------------------------------------


def raw_pair_verdict(evidence: Evidence, policy: JudgePolicy = POLICY) -> Verdict:
    """The judge before the rebuild: every evidence row an independent pair of mean scores."""
    rows = evidence.row_means("point")
    if len(rows) < RAW_MIN_ROWS:
        return Verdict.INCONCLUSIVE
    _, lower, upper = ratio_confidence_sequence(rows, policy.alpha, optimal_rho(policy.alpha))
    if upper < 1.0 + policy.tolerance:
        return Verdict.PROMOTE
    if lower > 1.0 + policy.tolerance:
        return Verdict.ROLLBACK
    return Verdict.INCONCLUSIVE


def kayenta_fails(evidence: Evidence) -> bool:
    """Kayenta-style: a significant increase of canary's per-row mean error (98 %)."""
    rows = evidence.row_means("point")
    if len(rows) < KAYENTA_MIN_ROWS:
        return False
    verdict = mann_whitney_baseline(rows[:, 0], rows[:, 1], KAYENTA_CONFIDENCE)
    return verdict is Verdict.ROLLBACK


# --- one rollout through the analyzer ----------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One rollout to run."""

    scenario: str
    n_series: int
    max_ticks: int
    rep: int
    judges: tuple[str, ...] = JUDGES
    seed: int = 13


@dataclass
class Outcome:
    """What each judge decided in one rollout, and after how many ticks (0: undecided)."""

    scenario: str
    n_series: int
    rep: int
    max_ticks: int
    ticks_run: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)
    ticks: dict[str, int] = field(default_factory=dict)
    units: int = 0  # the new judge's effective units at its decision (or at the end)
    block_horizons: float | None = None
    seconds: float = 0.0

    def row(self) -> list[Any]:
        """Compact form for the JSON: scenario, N, rep, then verdict and ticks per judge."""
        out: list[Any] = [self.scenario, self.n_series, self.rep, self.max_ticks]
        for name in JUDGES:
            out += [self.verdicts.get(name), self.ticks.get(name, 0)]
        return [*out, self.units]


def feed_tick(analyzer: Analyzer, world: Rollout, k: int, now: list[float]) -> None:
    """Tick k: both variants' forecasts from origin k of every series, then its actuals."""
    now[0] = float(k)
    ts = tuple(START_NS + (k + h) * HOUR_NS for h in range(HORIZON))
    truth = world.truth[k : k + HORIZON].T  # (N, H)
    ps = (truth - world.stable_error[k]).tolist()
    pc = (truth - world.canary_error[k]).tolist()
    ls = (truth - world.stable_error[k] - world.stable_half[k]).tolist()
    hs = (truth - world.stable_error[k] + world.stable_half[k]).tolist()
    lc = (truth - world.canary_error[k] - world.canary_half[k]).tolist()
    hc = (truth - world.canary_error[k] + world.canary_half[k]).tolist()
    actual = world.actual[k].tolist()
    scale = world.scale.tolist()
    observed = (START_NS + k * HOUR_NS,)
    call = f"c{k}"
    add_forecast, add_observation = analyzer.add_forecast, analyzer.add_observation
    for i in range(world.n_series):
        sid = f"s{i}"
        p, q = tuple(ps[i]), tuple(pc[i])
        add_forecast(
            ForecastRecord(
                sid, f"s{k}.{i}", call, "stable", "v1", ts, p, scale[i], False,
                LEVELS, (tuple(ls[i]), p, tuple(hs[i])),
            )
        )  # fmt: skip
        add_forecast(
            ForecastRecord(
                sid, f"c{k}.{i}", call, "canary", "v2", ts, q, scale[i], True,
                LEVELS, (tuple(lc[i]), q, tuple(hc[i])),
            )
        )  # fmt: skip
        add_observation(ObservationRecord(sid, observed, (actual[i],)))


def run_rollout(task: Task, world_params: World | None = None) -> Outcome:
    """Generate a rollout, feed it tick by tick into a fresh analyzer, judge every tick."""
    import time

    started = time.perf_counter()
    scenario = SCENARIOS[task.scenario]
    world = simulate(
        world_params or World(), scenario, task.n_series, task.max_ticks, (task.seed, task.rep)
    )
    now = [0.0]
    analyzer = Analyzer(
        clock=lambda: now[0], ttl=1e12, max_pending=10**7, max_actuals=10**7, max_scored=10**8
    )
    out = Outcome(task.scenario, task.n_series, task.rep, task.max_ticks)
    pending = set(task.judges)
    last = None
    for k in range(task.max_ticks):
        feed_tick(analyzer, world, k, now)
        evidence = analyzer.evidence(0.0)
        if "new" in pending:
            last = judge(POLICY, evidence)
            if last.verdict is not Verdict.INCONCLUSIVE:
                out.verdicts["new"], out.ticks["new"] = last.verdict.value, k + 1
                pending.discard("new")
        if "raw" in pending:
            verdict = raw_pair_verdict(evidence)
            if verdict is not Verdict.INCONCLUSIVE:
                out.verdicts["raw"], out.ticks["raw"] = verdict.value, k + 1
                pending.discard("raw")
        if "kayenta" in pending and kayenta_fails(evidence):
            out.verdicts["kayenta"], out.ticks["kayenta"] = Verdict.ROLLBACK.value, k + 1
            pending.discard("kayenta")
        out.ticks_run = k + 1
        if not pending:
            break
    if "kayenta" in pending:  # never failed: passes at the end of its run
        out.verdicts["kayenta"], out.ticks["kayenta"] = Verdict.PROMOTE.value, out.ticks_run
        pending.discard("kayenta")
    for name in pending:
        out.verdicts[name], out.ticks[name] = Verdict.INCONCLUSIVE.value, 0
    if last is not None:
        out.units, out.block_horizons = last.samples, _block(last)
    out.seconds = time.perf_counter() - started
    return out


def _block(j: Any) -> float | None:
    blocks = [m.block_horizons for m in j.metrics if m.block_horizons is not None]
    return max(blocks) if blocks else None


# --- tallies ---------------------------------------------------------------------------


def wrong(scenario: Scenario, verdict: str) -> bool:
    """A decision against the scenario's right verdict (undecided is not wrong)."""
    if verdict == Verdict.INCONCLUSIVE.value:
        return False
    return verdict != scenario.expect


def tally(outcomes: Iterable[Outcome], judge_name: str) -> dict[str, Any]:
    """Rates of one judge over rollouts of one cell, with decision times."""
    outs = list(outcomes)
    verdicts = [o.verdicts.get(judge_name) for o in outs if judge_name in o.verdicts]
    n = len(verdicts)
    if n == 0:
        return {"rollouts": 0}
    ticks = [
        o.ticks[judge_name]
        for o in outs
        if o.verdicts.get(judge_name) not in (None, "inconclusive")
    ]
    scenario = SCENARIOS[outs[0].scenario]
    count = {v.value: sum(x == v.value for x in verdicts) for v in Verdict}
    median = float(np.median(ticks)) if ticks else math.nan
    return {
        "rollouts": n,
        "promoted": count["promote"] / n,
        "rolled_back": count["rollback"] / n,
        "undecided": count["inconclusive"] / n,
        "counts": count,
        "wrong": sum(wrong(scenario, str(v)) for v in verdicts) / n,
        "median_ticks": median,
        "median_horizons": median / HORIZON,
    }


def summarise(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One row per (scenario, N): each judge's tally."""
    cells: dict[tuple[str, int], list[Outcome]] = {}
    for o in outcomes:
        cells.setdefault((o.scenario, o.n_series), []).append(o)
    order = list(SCENARIOS)
    rows = []
    for (name, n), outs in sorted(cells.items(), key=lambda c: (order.index(c[0][0]), c[0][1])):
        judges = [j for j in JUDGES if any(j in o.verdicts for o in outs)]
        rows.append(
            {
                "scenario": name,
                "ratio": SCENARIOS[name].ratio,
                "expect": SCENARIOS[name].expect,
                "n_series": n,
                "max_ticks": outs[0].max_ticks,
                "rollouts": len(outs),
                "seconds": sum(o.seconds for o in outs),
                "judges": {j: tally(outs, j) for j in judges},
            }
        )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as text, for a test's output."""
    lines = [
        f"{'canary':<22} {'N':>5} {'runs':>4} {'max h':>5}  "
        + "  ".join(f"{j + ' P/R/U  med h':>26}" for j in JUDGES)
    ]
    for r in rows:
        cells = []
        for j in JUDGES:
            t = r["judges"].get(j)
            if not t or not t["rollouts"]:
                cells.append(f"{'-':>26}")
                continue
            cells.append(
                f"{t['promoted']:>6.2f}/{t['rolled_back']:.2f}/{t['undecided']:.2f}"
                f"  {t['median_horizons']:>6.2f}"
            )
        lines.append(
            f"{r['scenario'][:22]:<22} {r['n_series']:>5} {r['rollouts']:>4} "
            f"{r['max_ticks'] / HORIZON:>5.1f}  " + "  ".join(f"{c:>26}" for c in cells)
        )
    return "\n".join(lines)


def outcome_dict(o: Outcome) -> dict[str, Any]:
    return asdict(o)


# --- the bench section -----------------------------------------------------------------

#: (series, max ticks, rollouts per point scenario, rollouts per interval scenario)
PLAN = (
    (2, 240, 16, 0),
    (10, 240, 12, 0),
    (40, 240, 10, 4),
    (200, 48, 8, 4),
    (1000, 24, 2, 0),
)
SMOKE_PLAN = ((2, 48, 1, 0), (40, 24, 1, 1))


def tasks(plan: Sequence[tuple[int, int, int, int]]) -> list[Task]:
    out = []
    for n, max_ticks, reps, interval_reps in plan:
        for rep in range(reps):
            out += [Task(s.name, n, max_ticks, rep) for s in POINT_SCENARIOS]
        for rep in range(interval_reps):
            out += [Task(s.name, n, max_ticks, rep, judges=("new",)) for s in INTERVAL_SCENARIOS]
    # the most expensive first, so the pool's two workers finish together
    return sorted(out, key=lambda t: -t.n_series * t.max_ticks)


def judge_section(*, smoke: bool = False, processes: int = 2) -> dict[str, Any]:
    from multiprocessing import get_context

    from tqdm import tqdm

    todo = tasks(SMOKE_PLAN if smoke else PLAN)
    bar = tqdm(total=len(todo), desc="judge", unit="rollout", leave=False, file=sys.stderr)
    outcomes: list[Outcome] = []
    if processes > 1:
        with get_context("spawn").Pool(processes) as pool:
            for o in pool.imap_unordered(run_rollout, todo):
                outcomes.append(o)
                bar.update()
    else:
        for task in todo:
            outcomes.append(run_rollout(task))
            bar.update()
    bar.close()
    outcomes.sort(key=lambda o: (list(SCENARIOS).index(o.scenario), o.n_series, o.rep))
    rows = summarise(outcomes)
    world = World()
    return {
        "world": asdict(world),
        "horizon": HORIZON,
        "policy": {"tolerance": POLICY.tolerance, "alpha": POLICY.alpha},
        "plan": [list(p) for p in (SMOKE_PLAN if smoke else PLAN)],
        "rows": rows,
        "rollouts": [o.row() for o in outcomes],
        "rollout_columns": ["scenario", "n_series", "rep", "max_ticks"]
        + [f"{j}_{x}" for j in JUDGES for x in ("verdict", "ticks")]
        + ["new_units"],
        "ratios": _ratios(rows),
    }


def _ratios(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The figures the section is judged by: wrong-decision rates and decision times."""
    out: dict[str, float] = {}
    for r in rows:
        if r["scenario"] not in (WORSE.name, EQUAL.name, BETTER.name):
            continue
        for j, t in r["judges"].items():
            if t.get("rollouts"):
                out[f"{j} {r['scenario']} N={r['n_series']}: wrong"] = t["wrong"]
    return out


# --- the section's table and plot ------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """The judge section of bench/results/README.md: one table, three judges."""
    lines = [
        "## Judge: three judges in a world with dependent errors",
        "",
        f"Hourly series, horizon {result['horizon']}, both variants forecast every call, "
        "judged after every tick through the real analyzer (`bench/judge_world.py` says "
        "what the world has). P / R / U: promoted / rolled back / undecided within the run; "
        "times are medians of the decided rollouts, in horizons since the rollout started. "
        "A wrong decision: a 10 %-worse canary promoted, an equal or better one rolled back.",
        "",
        "| canary | series | rollouts | run (horizons) | "
        + " | ".join(f"{LABELS[j]} P / R / U, time" for j in JUDGES)
        + " |",
        "|---|---|---|---|" + "---|" * len(JUDGES),
    ]
    for r in result["rows"]:
        cells = []
        for j in JUDGES:
            t = r["judges"].get(j)
            if not t or not t.get("rollouts"):
                cells.append("-")
                continue
            time_h = "-" if math.isnan(t["median_horizons"]) else f"{t['median_horizons']:.2f} h"
            cells.append(
                f"{t['promoted']:.2f} / {t['rolled_back']:.2f} / {t['undecided']:.2f}, {time_h}"
            )
        lines.append(
            f"| {r['scenario']} | {r['n_series']} | {r['rollouts']} | "
            f"{r['max_ticks'] / HORIZON:g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Any) -> None:
    """Decision times (horizons since the start) of every rollout, per judge and scenario;
    wrong decisions in red, undecided rollouts at the right edge of their run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = result["rollout_columns"]
    rows = result["rollouts"]
    names = [s.name for s in POINT_SCENARIOS]
    fig, axes = plt.subplots(1, len(names), figsize=(15, 5), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        for k, j in enumerate(JUDGES):
            vi, ti = columns.index(f"{j}_verdict"), columns.index(f"{j}_ticks")
            for row in rows:
                if row[0] != name or row[vi] is None:
                    continue
                n, max_ticks = row[1], row[3]
                y = math.log10(n) + (k - 1) * 0.12
                verdict = row[vi]
                if verdict == "inconclusive":
                    x, colour, marker = max_ticks / HORIZON, "0.6", "|"
                else:
                    x = max(row[ti], 1) / HORIZON
                    bad = wrong(SCENARIOS[name], verdict)
                    colour = "tab:red" if bad else ("tab:blue", "tab:orange", "tab:green")[k]
                    marker = "x" if bad else "o"
                ax.scatter(x, y, s=14, c=colour, marker=marker, alpha=0.6)
        ax.set_xscale("log")
        ax.set_title(f"canary {name}")
        ax.set_xlabel("horizons since the rollout started")
    axes[0].set_yticks([math.log10(n) for n in (2, 10, 40, 200, 1000)])
    axes[0].set_yticklabels(["2", "10", "40", "200", "1000"])
    axes[0].set_ylabel("live series (rows: new judge, raw pairs, Kayenta)")
    handles = [
        plt.Line2D([], [], marker="o", ls="", c=c, label=LABELS[j])
        for j, c in zip(JUDGES, ("tab:blue", "tab:orange", "tab:green"), strict=True)
    ]
    handles += [
        plt.Line2D([], [], marker="x", ls="", c="tab:red", label="wrong decision"),
        plt.Line2D([], [], marker="|", ls="", c="0.6", label="undecided at the end"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out / "judge_decision_times.png", dpi=100)
    plt.close(fig)
