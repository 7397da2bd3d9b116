"""`make demo`: the whole story on one machine, live.

Three models are trained on real data (the hourly temperatures of Seattle and San
Francisco in 2010, shipped inside the vega_datasets wheel), or reused from the
registry when their inputs are unchanged:

- v1, the stable model: last quarter's quick recipe (one epoch);
- v2, candidate A: the full recipe, genuinely better;
- v3, candidate B: a crippled recipe (short window, 4 units, one epoch of 128
  windows), genuinely worse than v2.

Then the stable and canary model servers and the router (with its embedded
analyzer and controller) start as real processes on loopback, and the test period
of both series, which no model saw in training, is replayed as a live stream:
each tick the client asks for forecasts, then reports what really happened
(Observe). Act 1 rolls out v2 until it is promoted; act 2 rolls out v3 until it is
rolled back. Every process is stopped, and a report folder gets a JSON record of
both rollouts and a plot of each.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canarycast.processes import (
    Component,
    ProcessFailed,
    start_controller_router,
    start_model_servers,
)
from canarycast.replay import Replayer, ReplaySeries
from canarycast.rollout_client import FINAL, RolloutClient, phase_name
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import rollout_pb2 as rpb
from server.lifecycle.data import Dataset, load_dataset, split_points
from server.lifecycle.model import ModelConfig
from server.lifecycle.pipeline import config_for, find_by_recipe, recipe_key, train_and_register
from server.lifecycle.registry import ModelVersion, Registry
from server.lifecycle.training import TrainParams

DATASET = "hourly-temps"
MODEL = "temps"
HORIZON = 6


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Recipe:
    label: str
    story: str
    overrides: dict[str, Any]
    params: TrainParams


RECIPES = (
    Recipe(
        "v1",
        "stable: last quarter's quick recipe (48-hour window, no weekly season, 1 epoch)",
        {"hidden": 8, "layers": 1, "lookback": 48},
        TrainParams(epochs=1, max_windows_per_epoch=512),
    ),
    Recipe(
        "v2",
        "candidate A: the default recipe (seasons 24 and 168 from the data, up to 30 epochs)",
        {},
        TrainParams(),
    ),
    Recipe(
        "v3",
        "candidate B: a crippled recipe (25-hour window, 4 units, 1 epoch of 128 windows)",
        {"hidden": 4, "layers": 1, "lookback": 25},
        TrainParams(epochs=1, max_windows_per_epoch=128),
    ),
)


def policy(quick: bool) -> dict[str, Any]:
    return {
        "steps": [0.5, 1.0] if quick else [0.1, 0.25, 0.5, 1.0],
        "min_step_seconds": 1.0 if quick else 3.0,
        "max_step_seconds": 60.0,
        "tick_seconds": 0.25,
        "stall_hold_seconds": 20.0,
        "stall_rollback_seconds": 60.0,
        "promote_timeout": 20.0,
        # two series only: a unit is one series over a block of horizons, so the default
        # 30 effective units would take weeks of hourly data per step
        "judge": {"min_pairs": 12},
    }


@dataclass
class Act:
    """One rollout as the demo saw it: a timeline sampled from `rollout status`."""

    name: str
    candidate: str
    story: str
    outcome: str = ""
    reason: str = ""
    rollout_id: str = ""
    served_after: str = ""
    seconds: float = 0.0
    ticks: int = 0
    timeline: dict[str, list[float]] = field(
        default_factory=lambda: {
            k: []
            for k in (
                "t",
                "weight",
                "ratio",
                "lower",
                "upper",
                "stable_error",
                "canary_error",
                "pairs",
                "units",
                "interval_ratio",
                "interval_lower",
                "interval_upper",
            )
        }
    )
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, t: float, s: rpb.RolloutStatus) -> None:
        j = s.judgement
        row = {
            "t": t,
            "weight": s.canary_weight,
            "ratio": j.ratio if j.has_ratio else math.nan,
            "lower": j.lower if j.has_ratio else math.nan,
            "upper": j.upper if j.has_ratio and math.isfinite(j.upper) else math.nan,
            "stable_error": s.stable.mean_scaled_error if s.stable.scored_forecasts else math.nan,
            "canary_error": s.canary.mean_scaled_error if s.canary.scored_forecasts else math.nan,
            "pairs": float(j.pairs),
            "units": float(j.samples if j.method == "paired" else 0),
            **_interval(j),
        }
        for key, value in row.items():
            self.timeline[key].append(value)


def _interval(j: rpb.Judgement) -> dict[str, float]:
    """The interval score's ratio and bounds, NaN where it is not judged (yet)."""
    for m in j.metrics:
        if m.metric == "interval" and m.has_ratio:
            upper = m.upper if math.isfinite(m.upper) else math.nan
            return {"interval_ratio": m.ratio, "interval_lower": m.lower, "interval_upper": upper}
    return dict.fromkeys(("interval_ratio", "interval_lower", "interval_upper"), math.nan)


def train_models(registry: Registry, dataset: Dataset) -> dict[str, ModelVersion]:
    models = {}
    for recipe in RECIPES:
        config = config_for(dataset, **recipe.overrides)
        key = recipe_key(dataset, config, recipe.params)
        version = find_by_recipe(registry, MODEL, key)
        if version is None:
            started = time.monotonic()
            version = train_and_register(
                dataset, config, recipe.params, registry, MODEL, progress=sys.stderr.isatty()
            )
            how = f"trained in {time.monotonic() - started:.1f} s"
        else:
            how = "reused (same data, recipe and code)"
        s = version.metadata["scores"]
        say(
            f"   {recipe.label} {version.version}  {recipe.story}\n"
            f"      {how}; test split: MASE {s['mase']:.3f}, "
            f"MAE / seasonal-naive MAE {s['relmae_snaive']:.3f}, MAE {s['mae']:.2f} °F"
        )
        models[recipe.label] = version
    return models


def panel(act: Act, s: rpb.RolloutStatus, t: float) -> str:
    j = s.judgement
    ratio = "-"
    if j.has_ratio:
        upper = "inf" if math.isinf(j.upper) else f"{j.upper:.2f}"
        ratio = f"{j.ratio:.2f} [{j.lower:.2f}, {upper}]"
    units = j.samples if j.method == "paired" else 0
    return (
        f"   {t:5.1f}s  {phase_name(s.phase):<11} step {s.step}/{len(s.steps)}  "
        f"weight {s.canary_weight:4.2f}  pairs {j.pairs:5d} units {units:3d}  "
        f"canary/stable error {ratio:<20} {j.verdict or '-'}"
    )


async def run_act(
    act: Act, replayer: Replayer, client: RolloutClient, *, max_seconds: float = 180.0
) -> None:
    say(f"\n== {act.name}: roll out {act.candidate} ({act.story})")
    await asyncio.to_thread(client.start, f"{MODEL}:{act.candidate}", "demo")
    started = time.monotonic()
    last_print = -10.0
    last_decision = None
    status = await asyncio.to_thread(client.status)
    while time.monotonic() - started < max_seconds:
        if replayer.exhausted:  # the test period is over: the act ends undecided, said so
            say("   the replayed test period has ended before a decision")
            break
        await replayer.tick()
        act.ticks += 1
        await asyncio.sleep(0.02)  # time compressed: an hour of data every ~40 ms
        status = await asyncio.to_thread(client.status)
        t = time.monotonic() - started
        act.sample(t, status)
        decision = (status.last_decision.action, status.last_decision.reason)
        if decision != last_decision and decision[0] not in ("hold", "start"):
            say(f"   {t:5.1f}s  decision: {decision[0]}: {decision[1]}")
        last_decision = decision
        if t - last_print >= 1.0:
            say(panel(act, status, t))
            last_print = t
        if status.phase in FINAL:
            break
    act.seconds = time.monotonic() - started
    act.outcome = phase_name(status.phase)
    act.reason = status.outcome_reason
    act.rollout_id = status.rollout_id


async def stable_version(target: str) -> str:
    import grpc

    from canarycast.headers import VARIANT_HEADER
    from canarycast.v1 import forecast_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        info = await pb_grpc.ForecasterStub(channel).GetModel(
            pb.GetModelRequest(), metadata=((VARIANT_HEADER, "stable"),), timeout=10
        )
    return str(info.model.version)


async def story(
    router: Component,
    token: str,
    series: list[ReplaySeries],
    start: int,
    lookback: int,
    models: dict[str, ModelVersion],
) -> tuple[list[Act], list[str]]:
    client = RolloutClient(router.target, token, timeout=30)
    replayer = Replayer(router.target, series, lookback=lookback, horizon=HORIZON, start=start)
    acts = [
        Act("Act 1", models["v2"].version, "the better candidate"),
        Act("Act 2", models["v3"].version, "the worse candidate"),
    ]
    try:
        for _ in range(HORIZON + 2):  # warm up: forecasts and actuals flowing before act 1
            await replayer.tick()
        await run_act(acts[0], replayer, client)
        acts[0].served_after = await stable_version(router.target)
        say(f"   the stable servers now answer with {acts[0].served_after}")
        await run_act(acts[1], replayer, client)
        acts[1].served_after = await stable_version(router.target)
    finally:
        await replayer.close()
        client.close()
    say(
        f"   replayed {replayer.stats.ticks} hours of {len(series)} series: "
        f"{replayer.stats.calls} forecast calls, {replayer.stats.observed} observed values, "
        f"{len(replayer.stats.failures)} failed calls"
    )
    for failure in replayer.stats.failures[:5]:
        say(f"     failed: {failure}")
    return acts, replayer.stats.failures


def plot_act(act: Act, path: Path, tolerance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = {k: np.asarray(v, dtype=float) for k, v in act.timeline.items()}
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].step(tl["t"], tl["weight"] * 100, where="post", color="tab:orange")
    axes[0].set_ylabel("canary weight (%)")
    axes[0].set_ylim(-5, 105)
    axes[1].plot(tl["t"], tl["stable_error"], ".-", label="stable (paired, this step)")
    axes[1].plot(tl["t"], tl["canary_error"], ".-", label=f"canary {act.candidate}")
    axes[1].set_ylabel("mean scaled error")
    axes[1].legend(loc="best")
    axes[2].plot(tl["t"], tl["ratio"], ".-", color="black", label="point error")
    axes[2].fill_between(tl["t"], tl["lower"], tl["upper"], alpha=0.25, label="judge's interval")
    known = np.isfinite(tl["lower"]) & np.isfinite(tl["upper"]) & np.isfinite(tl["ratio"])
    axes[2].errorbar(
        tl["t"][known],
        tl["ratio"][known],
        yerr=[tl["ratio"][known] - tl["lower"][known], tl["upper"][known] - tl["ratio"][known]],
        fmt="none",
        ecolor="tab:blue",
        alpha=0.5,
    )
    axes[2].plot(tl["t"], tl["interval_ratio"], ".-", color="tab:green", label="interval score")
    axes[2].fill_between(
        tl["t"], tl["interval_lower"], tl["interval_upper"], color="tab:green", alpha=0.15
    )
    axes[2].axhline(1 + tolerance, color="tab:red", linestyle="--", label="1 + tolerance")
    axes[2].set_ylabel("canary / stable")
    axes[3].plot(tl["t"], tl["units"], "-", color="black", label="effective units (judged)")
    axes[3].set_ylabel("effective units")
    twin = axes[3].twinx()
    twin.plot(tl["t"], tl["pairs"], ":", color="tab:gray", label="paired steps (dependent)")
    twin.set_ylabel("paired steps")
    axes[3].legend(loc="upper left")
    twin.legend(loc="lower right")
    axes[3].set_xlabel("seconds since the rollout started")
    shown = np.concatenate([tl["ratio"], tl["upper"], tl["interval_ratio"], tl["interval_upper"]])
    shown = shown[np.isfinite(shown)]
    top = max(2.0, float(shown.max()) * 1.1) if shown.size else 2.0
    axes[2].set_ylim(0, min(top, 10.0))
    axes[2].legend(loc="best")
    fig.suptitle(
        f"{act.name}: {act.candidate} {act.outcome.replace('_', ' ')} — {act.reason}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(workdir: Path, *, quick: bool = False, report_dir: Path | None = None) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    report_dir = report_dir or workdir / "report"
    registry_dir = workdir / "registry"
    registry = Registry(registry_dir)
    dataset = load_dataset(DATASET)
    say("canarycast demo: two candidates meet live traffic; one is promoted, one rolled back")
    say(f"\n== Models, trained on real data: {dataset.source}")
    models = train_models(registry, dataset)
    registry.set_alias(MODEL, "stable", models["v1"].version)
    registry.set_alias(MODEL, "canary", models["v1"].version)

    token = secrets.token_hex(16)
    state = workdir / "rollouts.db"
    for stale in (state, state.with_suffix(".db-wal"), state.with_suffix(".db-shm")):
        stale.unlink(missing_ok=True)
    policy_file = workdir / "policy.json"
    policy_file.write_text(json.dumps(policy(quick)))
    say("\n== Processes on loopback (free ports): stable server, canary server, router")
    components: list[Component] = []
    codes: dict[str, int] = {}
    try:
        components += start_model_servers(
            registry_dir, MODEL, extra=["--reload-interval", "0.2", "--grace", "2"]
        )
        components.append(
            start_controller_router(
                components,
                registry_dir,
                MODEL,
                state=state,
                policy=policy_file,
                token=token,
                extra=["--metrics-port", "0", "--grace", "2"],
            )
        )
        for c in components:
            say(f"   {c.name:<14} {c.target}  (pid {c.process.pid})")
        say(f"   router metrics: http://127.0.0.1:{components[2].metrics_port}/metrics")
        lookback = max(ModelConfig.from_dict(m.config).lookback for m in models.values())
        _, val_end = split_points(len(dataset.series[0]))
        series = [ReplaySeries(s.series_id, s.timestamps, s.values) for s in dataset.series]
        say(
            f"   replaying the test period of {', '.join(s.series_id for s in series)} "
            f"from {str(series[0].timestamps[val_end])[:16]}, never seen in training"
        )
        acts, failures = asyncio.run(story(components[2], token, series, val_end, lookback, models))
    except ProcessFailed as exc:
        say(f"   a process did not start: {exc}")
        return 1
    finally:
        say("\n== Stopping every process (SIGTERM: drain, exit)")
        for c in reversed(components):
            codes[c.name] = c.stop(30)
            say(f"   {c.name:<14} exited with code {codes[c.name]}")

    from router.rollout.store import RolloutStore

    store = RolloutStore(state)
    for act in acts:
        act.decisions = [
            {
                "at": d.at,
                "action": d.action,
                "reason": d.reason,
                "actor": d.actor,
                "weight": d.weight,
            }
            for d in store.decisions(act.rollout_id)
        ]
    store.close()
    report_dir.mkdir(parents=True, exist_ok=True)
    tolerance = 0.05
    record = {
        "dataset": dataset.source,
        "models": {
            k: {"version": v.version, "scores": v.metadata["scores"]} for k, v in models.items()
        },
        "failed_calls": len(failures),
        "exit_codes": codes,
        "acts": [
            {k: v for k, v in vars(act).items()}
            | {"plot": f"{act.name.lower().replace(' ', '')}.png"}
            for act in acts
        ],
    }
    (report_dir / "rollouts.json").write_text(json.dumps(record, indent=2, default=float))
    for act in acts:
        plot_act(act, report_dir / f"{act.name.lower().replace(' ', '')}.png", tolerance)
    say("\n== Summary")
    for act in acts:
        say(
            f"   {act.name}: {act.candidate} {act.outcome} after {act.seconds:.0f} s "
            f"({act.ticks} hours replayed): {act.reason}"
        )
    say(f"   stable now serves {acts[-1].served_after}; failed client calls: {len(failures)}")
    say(f"   report: {report_dir}/rollouts.json, act1.png, act2.png")
    ok = (
        acts[0].outcome == "promoted"
        and acts[1].outcome == "rolled_back"
        and not failures
        and all(code == 0 for code in codes.values())
    )
    return 0 if ok else 1


def main() -> None:
    sys.exit(run_demo(Path(".cache/demo")))
