"""Load and overload: concurrency 64 through the router with a rollout in progress
(zero errors, memory flat, no leaked file descriptors or asyncio tasks), and more than
the capacity (RESOURCE_EXHAUSTED at once from a bounded batch queue and a bound on
concurrent calls, instead of a queue that grows).

The router here is the real `RouterServer` with its embedded controller, run in the
test's own event loop so its tasks can be counted; the model servers are processes.
`make soak` runs the same load for minutes (`tests/reliability/soak.py`).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from canarycast.processes import Component
from canarycast.rollout_client import RolloutClient
from router.app import ControllerSettings, RouterServer, RouterSettings
from router.rollout.controller import RolloutPolicy
from router.rollout.judge import JudgePolicy
from tests.conftest import TrainedRegistry
from tests.reliability.common import (
    HOLD_POLICY,
    MODEL,
    TOKEN,
    Load,
    LoadStats,
    copy_registry,
    open_fds,
    rss_bytes,
    start_router,
    start_server,
    stop_all,
)

pytestmark = pytest.mark.slow


@dataclass
class Samples:
    """One row per second: seconds, RSS (bytes) per process, fds and tasks of the router."""

    t: list[float] = field(default_factory=list)
    rss: dict[str, list[int]] = field(default_factory=dict)
    fds: list[int] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)


async def sample_while(
    load: Load, seconds: float, processes: dict[str, int], progress: object = None
) -> Samples:
    samples = Samples()
    started = time.monotonic()
    while (now := time.monotonic() - started) < seconds:
        await asyncio.sleep(1.0)
        samples.t.append(round(now, 1))
        for name, pid in processes.items():
            samples.rss.setdefault(name, []).append(rss_bytes(pid))
        samples.fds.append(open_fds(os.getpid()))
        samples.tasks.append(len(asyncio.all_tasks()))
        samples.ok.append(load.stats.ok)
        if progress is not None:
            progress.update(1)  # type: ignore[attr-defined]  # a tqdm bar when given
    return samples


@dataclass
class LoadWorld:
    registry: TrainedRegistry
    servers: list[Component]
    workdir: Path


@pytest.fixture(scope="module")
def load_world(
    trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LoadWorld]:
    workdir = tmp_path_factory.mktemp("load")
    copy_registry(trained.root, workdir / "registry").set_alias(MODEL, "canary", trained.v1.version)
    servers: list[Component] = []
    try:
        servers.append(start_server(workdir / "registry", "stable"))
        servers.append(start_server(workdir / "registry", "canary"))
        yield LoadWorld(
            TrainedRegistry(workdir / "registry", trained.v1, trained.v2), servers, workdir
        )
    finally:
        stop_all(servers)


async def run_rollout_load(
    world: LoadWorld, seconds: float, concurrency: int = 64, progress: object = None
) -> tuple[LoadStats, Samples, dict[str, int]]:
    """Concurrency `concurrency` through an in-process router with a rollout at 50 %."""
    stable, canary = world.servers
    router = RouterServer(
        RouterSettings(
            stable=[stable.target],
            canary=[canary.target],
            controller=ControllerSettings(
                registry=world.registry.root,
                model=MODEL,
                state=world.workdir / f"rollouts-{time.time_ns()}.db",
                policy=RolloutPolicy(
                    **{**HOLD_POLICY, "judge": JudgePolicy(**HOLD_POLICY["judge"])}
                ),
                admin_token=TOKEN,
            ),
        )
    )
    await router.start()
    try:
        async with asyncio.timeout(20):
            await router.wait_for_backends()
        target = f"127.0.0.1:{router.port}"

        def start_rollout() -> None:
            with RolloutClient(target, TOKEN) as client:
                client.start(f"{MODEL}:{world.registry.v2.version}")

        await asyncio.to_thread(start_rollout)
        # Warm-up: connections, caches and the analyzer's first allocations.
        await Load(target, concurrency=concurrency).run_for(2.0)
        gc.collect()
        baseline = {"fds": open_fds(os.getpid()), "tasks": len(asyncio.all_tasks())}
        load = Load(target, concurrency=concurrency)
        load.start()
        processes = {"router (and client)": os.getpid()}
        processes |= {s.name: s.process.pid for s in world.servers}
        samples = await sample_while(load, seconds, processes, progress)
        stats = await load.stop()
        # grpc's per-connection tasks end a moment after the clients hang up.
        for _ in range(50):
            await asyncio.sleep(0.1)
            if len(asyncio.all_tasks()) <= baseline["tasks"]:
                break
        gc.collect()
        after = {"fds": open_fds(os.getpid()), "tasks": len(asyncio.all_tasks())}
        assert router.controller is not None and router.controller.record is not None
        assert router.controller.record.phase == "progressing"
        assert router.analyzer is not None
        held = router.analyzer.stats()
        # What the router's memory grows with: the analyzer's join state, each bounded.
        after |= {
            "pending_forecasts": held.pending_forecasts,
            "max_pending": router.analyzer.max_pending,
            "pending_actuals": held.pending_actuals,
            "max_actuals": router.analyzer.max_actuals,
        }
        return stats, samples, {**{f"{k}_before": v for k, v in baseline.items()}, **after}
    finally:
        await router.stop(grace=1)


def rss_drift_mib(series: list[int]) -> float:
    """Mean RSS of the last third of the samples minus that of the first third, MiB."""
    third = max(1, len(series) // 3)
    return float(np.mean(series[-third:]) - np.mean(series[:third])) / 2**20


async def test_concurrency_64_with_a_rollout_in_progress_has_no_errors_or_leaks(
    load_world: LoadWorld,
) -> None:
    seconds = float(os.environ.get("CANARYCAST_LOAD_SECONDS", "6"))
    stats, samples, counts = await run_rollout_load(load_world, seconds)
    drift = {name: round(rss_drift_mib(series), 1) for name, series in samples.rss.items()}
    print(
        f"load: {stats.ok} calls OK in {seconds:.0f} s at concurrency 64 "
        f"(p50 {stats.percentile_ms(50):.1f} ms, p99 {stats.percentile_ms(99):.1f} ms), "
        f"{stats.failed} failed; RSS drift MiB {drift}; fds/tasks {counts}"
    )
    assert stats.failed == 0, stats.failures
    assert stats.ok > 0
    assert len(stats.versions) == 2  # both variants answered: the rollout is live
    # Nothing left behind once the load is gone: connections closed, tasks ended.
    assert counts["fds"] <= counts["fds_before"] + 2, counts
    assert counts["tasks"] <= counts["tasks_before"] + 2, counts
    # The model servers hold nothing per call: flat. The router's analyzer keeps forecasts
    # and actuals for joining up to its bounds (docs/reliability.md): it grows until they
    # are full, and those bounds hold.
    for name, mib in drift.items():
        if name.startswith("router"):
            continue
        assert mib < 32, f"{name} RSS grew {mib} MiB under steady load"
    assert counts["pending_forecasts"] <= counts["max_pending"], counts
    assert counts["pending_actuals"] <= counts["max_actuals"], counts


async def test_overload_gets_resource_exhausted_instead_of_a_growing_queue(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    """A server with a small batch queue and a router with few concurrent calls allowed,
    each offered far more than that: the excess is refused at once, the rest answered."""
    copy_registry(trained.root, tmp_path / "registry")
    components: list[Component] = []
    try:
        server = start_server(
            tmp_path / "registry", "stable", "--max-queue-size", "64", "--max-batch-size", "16"
        )
        components.append(server)
        router = start_router(
            [server.target],
            [],
            registry=None,
            state=None,
            policy=None,
            workdir=tmp_path,
            extra=["--max-concurrent-rpcs", "24"],
        )
        components.append(router)
        # 128 callers of 8 series each against a queue of 64 series: the queue bound.
        direct = await Load(server.target, concurrency=128, n_series=8, observe_every=0).run_for(
            1.5
        )
        # 128 callers through a router that allows 24 calls at once: the router's bound.
        routed = await Load(router.target, concurrency=128, observe_every=0).run_for(1.5)
    finally:
        stop_all(components)
    report = {}
    for name, stats in (("server queue", direct), ("router concurrency", routed)):
        rejected = np.asarray(stats.rejected_latencies) * 1e3
        report[name] = {
            "ok": stats.ok,
            "codes": stats.by_code(),
            "rejection_p50_ms": round(float(np.median(rejected)), 2) if rejected.size else None,
            "rejection_p99_ms": round(float(np.percentile(rejected, 99)), 2)
            if rejected.size
            else None,
        }
        assert stats.ok > 0, name
        assert set(stats.by_code()) == {"OK", "RESOURCE_EXHAUSTED"}, (name, stats.failures)
    assert any("forecast queue is full" in f for f in direct.failures), direct.failures
    assert server.process.returncode == 0 and router.process.returncode == 0
    print("overload:", json.dumps(report))
