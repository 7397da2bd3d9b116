"""`make soak`: the long versions of the reliability tests, with figures for the page.

    python -m tests.reliability.soak --minutes 5 --out docs/soak

1. load: concurrency 64 through the router with a rollout in progress for `--minutes`,
   sampling RSS, fds and asyncio tasks every second (progress bar); writes
   `load.json` and `load-rss.png`;
2. fuzz: the fuzz suite with the `soak` hypothesis profile (many more examples); writes
   `fuzz.json` (cases sent, RSS before and growth);
3. graceful: the rolling restart of every server and both routers at concurrency 32.

Not part of `make test`. Prints what it measured; exits non-zero if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm import tqdm

from tests.conftest import MODEL, TrainedRegistry, train_two_versions
from tests.reliability.common import start_server, stop_all
from tests.reliability.test_load import LoadWorld, rss_drift_mib, run_rollout_load


def train(root: Path) -> TrainedRegistry:
    trained = train_two_versions(root)
    trained.registry.set_alias(MODEL, "canary", trained.v1.version)
    return trained


async def soak_load(workdir: Path, minutes: float, out: Path) -> bool:
    trained = train(workdir / "registry")
    servers = [start_server(trained.root, "stable"), start_server(trained.root, "canary")]
    try:
        world = LoadWorld(trained, servers, workdir)
        seconds = minutes * 60
        with tqdm(total=int(seconds), desc="load at concurrency 64", unit="s") as bar:
            stats, samples, counts = await run_rollout_load(world, seconds, 64, bar)
    finally:
        stop_all(servers)
    drift = {name: round(rss_drift_mib(series), 2) for name, series in samples.rss.items()}
    figures = {
        "seconds": seconds,
        "concurrency": 64,
        "calls_ok": stats.ok,
        "calls_failed": stats.failed,
        "failures_by_code": {f"{m} {c}": n for (m, c), n in stats.codes.items() if c != "OK"},
        "calls_per_second": round(stats.ok / seconds, 1),
        "latency_ms": {"p50": stats.percentile_ms(50), "p99": stats.percentile_ms(99)},
        "observations_accepted": stats.observed_points,
        "rss_mib_first": {k: round(v[0] / 2**20, 1) for k, v in samples.rss.items()},
        "rss_mib_last": {k: round(v[-1] / 2**20, 1) for k, v in samples.rss.items()},
        "rss_drift_mib_last_third_minus_first_third": drift,
        "fds_and_tasks": counts,
        "fds_min_max": [min(samples.fds), max(samples.fds)],
        "tasks_min_max": [min(samples.tasks), max(samples.tasks)],
    }
    (out / "load.json").write_text(json.dumps(figures, indent=2) + "\n")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, series in samples.rss.items():
        top.plot(samples.t, [v / 2**20 for v in series], label=name)
    top.set_ylabel("RSS (MiB)")
    top.legend(loc="center right")
    top.set_title(f"{minutes:g} min at concurrency 64 through the router, rollout at 50 %")
    bottom.plot(samples.t, samples.fds, label="open fds (router process)")
    bottom.plot(samples.t, samples.tasks, label="asyncio tasks (router loop)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out / "load-rss.png", dpi=100)
    print(json.dumps(figures, indent=2))
    servers_flat = all(v < 32 for k, v in drift.items() if not k.startswith("router"))
    bounded = (
        counts["pending_forecasts"] <= counts["max_pending"]
        and counts["pending_actuals"] <= counts["max_actuals"]
    )
    return stats.failed == 0 and servers_flat and bounded


def pytest_run(test: str, env: dict[str, str]) -> bool:
    command = [sys.executable, "-m", "pytest", test, "-q", "-s", "-p", "no:cacheprovider"]
    print("$", " ".join(command[1:]), " ".join(f"{k}={v}" for k, v in env.items()), flush=True)
    return subprocess.run(command, env={**os.environ, **env}).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the load soak")
    parser.add_argument("--out", type=Path, default=Path("docs/soak"), help="results folder")
    parser.add_argument("--skip", nargs="*", default=[], choices=["load", "fuzz", "graceful"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ok = True
    if "load" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            ok &= asyncio.run(soak_load(Path(tmp), args.minutes, args.out))
    if "fuzz" not in args.skip:
        ok &= pytest_run(
            "tests/reliability/test_fuzz.py",
            {
                "CANARYCAST_FUZZ_PROFILE": "soak",
                "CANARYCAST_FUZZ_REPORT": str((args.out / "fuzz.json").resolve()),
            },
        )
    if "graceful" not in args.skip:
        ok &= pytest_run("tests/reliability/test_graceful.py", {"CANARYCAST_RESTART_ALL": "1"})
    print("soak:", "all checks passed" if ok else "A CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
