"""A whole rollout with real processes on loopback: two model servers from real model
versions, a router with its embedded controller, a client replaying a real series."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from canarycast.processes import Component, start_controller_router, start_model_servers
from canarycast.replay import Replayer, ReplaySeries, ReplayStats
from canarycast.rollout_client import RolloutClient
from canarycast.v1 import rollout_pb2 as rpb
from server.lifecycle.data import load_dataset
from server.lifecycle.pipeline import train_and_register
from server.lifecycle.training import TrainParams
from tests.conftest import MODEL, TrainedRegistry, tiny_config

TOKEN = "e2e-admin-token"
POLICY = {
    "steps": [0.5, 1.0],
    "min_step_seconds": 1.0,
    "max_step_seconds": 90.0,
    "tick_seconds": 0.2,
    "stall_hold_seconds": 20.0,
    "stall_rollback_seconds": 60.0,
    "promote_timeout": 20.0,
}


#: The rollout_world fixture: the registry, the good candidate's version, and the stable
#: server, canary server and router processes.
RolloutWorld = tuple[TrainedRegistry, str, list[Component]]


def canarycast(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def rollout_world(registry_copy: TrainedRegistry, tmp_path: Path) -> Iterator[RolloutWorld]:
    """stable = a tiny model (about seasonal naive); `good` = the default recipe."""
    good = train_and_register(
        load_dataset("seattle-temps"),
        tiny_config(hidden=32, layers=2),
        TrainParams(),
        registry_copy.registry,
        MODEL,
        progress=False,
    )
    registry_copy.registry.set_alias(MODEL, "canary", registry_copy.v1.version)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    components: list[Component] = []
    try:
        components += start_model_servers(
            registry_copy.root, MODEL, extra=["--reload-interval", "0.2", "--grace", "1"]
        )
        components.append(
            start_controller_router(
                components,
                registry_copy.root,
                MODEL,
                state=tmp_path / "rollouts.db",
                policy=policy,
                token=TOKEN,
                extra=["--metrics-port", "0"],
            )
        )
        yield registry_copy, good.version, components
    finally:
        for c in reversed(components):
            c.stop(10)


def replay_series() -> list[ReplaySeries]:
    s = load_dataset("seattle-temps").series[0]
    return [
        ReplaySeries(f"seattle-temps#{k}", s.timestamps[700 * k :], s.values[700 * k :])
        for k in range(8)
    ]


async def replay_until_done(
    router: Component, client: RolloutClient, max_ticks: int = 400
) -> tuple[rpb.Phase, ReplayStats]:
    replayer = Replayer(router.target, replay_series(), lookback=48, horizon=6, start=48)
    try:
        for _ in range(max_ticks):
            await replayer.tick()
            status = await asyncio.to_thread(client.status)
            if status.phase in (rpb.PROMOTED, rpb.ROLLED_BACK):
                break
        return status.phase, replayer.stats
    finally:
        await replayer.close()


async def test_good_candidate_is_promoted_then_a_worse_one_is_rolled_back(
    rollout_world: RolloutWorld,
) -> None:
    trained, good, (_, _, router) = rollout_world
    client = RolloutClient(router.target, TOKEN)
    try:
        # No credentials, wrong credentials: refused, and the Forecast path is untouched.
        for token in (None, "wrong"):
            out = canarycast(
                "rollout",
                "--router",
                router.target,
                "promote",
                env={"CANARYCAST_ADMIN_TOKEN": token or ""},
            )
            assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr
        out = canarycast(
            "rollout",
            "--router",
            router.target,
            "start",
            "--candidate",
            f"{MODEL}:{good}",
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        assert out.returncode == 0, out.stderr
        assert "progressing" in out.stdout
        phase, stats = await replay_until_done(router, client)
        assert phase == rpb.PROMOTED, client.status()
        assert stats.failures == []
        assert trained.registry.get_alias(MODEL, "stable") == good
        final = client.status()
        assert final.canary_weight == 0.0 and final.judgement.verdict == "promote"
        assert final.judgement.method == "paired" and final.judgement.upper < 1.05
        as_json = canarycast(
            "rollout",
            "--router",
            router.target,
            "status",
            "--json",
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        record = json.loads(as_json.stdout)
        assert record["phase"] == "promoted" and record["candidate_version"] == good
        url = f"http://127.0.0.1:{router.metrics_port}/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        assert 'canarycast_rollout_phase{phase="promoted"} 1.0' in body
        assert 'canarycast_rollout_decisions_total{action="promote",actor="controller"} 1.0' in body
        assert "canarycast_analysis_pairs_total" in body
        # the stable server now answers with the candidate's version
        replayer = Replayer(router.target, replay_series()[:1], lookback=48, horizon=6, start=400)
        await replayer.tick()
        await replayer.close()
        assert set(replayer.stats.versions) == {good}

        # Act 2: a worse candidate (about seasonal naive) is rolled back.
        client.start(f"{MODEL}:{trained.v2.version}")
        phase, stats = await replay_until_done(router, client)
        assert phase == rpb.ROLLED_BACK
        assert stats.failures == []
        after = client.status()
        assert after.canary_weight == 0.0 and "ratio" in after.outcome_reason
        assert trained.registry.get_alias(MODEL, "stable") == good
        history = canarycast(
            "rollout", "--router", router.target, "history", env={"CANARYCAST_ADMIN_TOKEN": TOKEN}
        )
        assert history.returncode == 0
        assert "promoted" in history.stdout and "rolled_back" in history.stdout
        wait = canarycast(
            "rollout",
            "--router",
            router.target,
            "status",
            "--wait",
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        assert wait.returncode == 1  # the last rollout ended rolled back
        watch = canarycast(
            "rollout",
            "--router",
            router.target,
            "status",
            "--watch",
            "--json",
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        assert watch.returncode == 1
        assert json.loads(watch.stdout.splitlines()[-1])["phase"] == "rolled_back"
    finally:
        client.close()
    logs = [json.loads(line) for line in router.lines if line.startswith("{")]
    assert not any(TOKEN in json.dumps(e) for e in logs)
    assert any(e["event"] == "rollout_decision" and e["action"] == "promote" for e in logs)


async def test_a_canary_killed_mid_rollout_is_rolled_back_by_the_guardrail(
    rollout_world: RolloutWorld,
) -> None:
    trained, good, (_, canary, router) = rollout_world
    with RolloutClient(router.target, TOKEN) as client:
        client.start(f"{MODEL}:{good}")
        replayer = Replayer(router.target, replay_series(), lookback=48, horizon=6, start=48)
        try:
            await replayer.tick()
            canary.process.kill()
            for _ in range(300):
                await replayer.tick()
                status = await asyncio.to_thread(client.status)
                if status.phase in (rpb.PROMOTED, rpb.ROLLED_BACK):
                    break
        finally:
            await replayer.close()
        assert status.phase == rpb.ROLLED_BACK
        assert status.judgement.guardrail == "error_rate", status
        assert replayer.stats.failures == []  # every call failed over to stable
        assert trained.registry.get_alias(MODEL, "stable") == trained.v1.version


async def test_a_restarted_router_resumes_the_rollout(
    rollout_world: RolloutWorld, tmp_path: Path
) -> None:
    trained, good, components = rollout_world
    stable, canary, router = components
    with RolloutClient(router.target, TOKEN) as client:
        before = client.start(f"{MODEL}:{good}")
    router.process.kill()  # no goodbye: the state file must carry the rollout
    router.process.wait()
    again = start_controller_router(
        [stable, canary],
        trained.root,
        MODEL,
        state=tmp_path / "rollouts.db",
        policy=tmp_path / "policy.json",
        token=TOKEN,
    )
    components[2] = again
    with RolloutClient(again.target, TOKEN) as client:
        resumed = client.status()
        assert (resumed.rollout_id, resumed.step, resumed.canary_weight) == (
            before.rollout_id,
            before.step,
            before.canary_weight,
        )
        assert resumed.phase == rpb.PROGRESSING
        assert "restarted" in resumed.last_decision.reason
        phase, stats = await replay_until_done(again, client)
        assert phase == rpb.PROMOTED and stats.failures == []
