"""Retraining end to end: real servers, a router with its controller and an observation
store; observations with a level shift come in through Observe; `canarycast retrain
--on-drift` trains a candidate on data + observations, checks it on the hold-out,
registers it with its lineage and starts a canary rollout through the control API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from canarycast.client import ForecastClient
from canarycast.processes import Component, start_controller_router, start_model_servers
from canarycast.rollout_client import RolloutClient
from canarycast.v1 import rollout_pb2 as rpb
from cli.main import main
from server.lifecycle.data import load_dataset
from server.lifecycle.observations import ObservationStore, observations_hash
from tests.conftest import MODEL, TrainedRegistry

TOKEN = "retrain-admin-token"
POLICY = {"steps": [0.5, 1.0], "min_step_seconds": 60.0, "tick_seconds": 0.5}


def canarycast(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CANARYCAST_ADMIN_TOKEN"}
    if token:
        env["CANARYCAST_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.slow
def test_retrain_on_drift_registers_a_candidate_and_starts_a_rollout(
    registry_copy: TrainedRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CANARYCAST_ADMIN_TOKEN", TOKEN)
    # In-process CLI runs must not point structlog (cached loggers) at this test's captured
    # stderr: later tests would log into a closed file.
    monkeypatch.setattr("canarycast.telemetry.configure_logging", lambda *a, **k: None)
    registry = registry_copy.registry
    registry.set_alias(MODEL, "canary", registry_copy.v1.version)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    store_path = tmp_path / "observations.db"
    components: list[Component] = []
    try:
        components += start_model_servers(registry_copy.root, MODEL, extra=["--grace", "1"])
        router = start_controller_router(
            components,
            registry_copy.root,
            MODEL,
            state=tmp_path / "rollouts.db",
            policy=policy,
            token=TOKEN,
            extra=["--observations", str(store_path)],
        )
        components.append(router)
        # The last two days come in again as a noisier sensor reports them (1 degF of
        # noise: six times the hour-to-hour change of this smooth series).
        series = load_dataset("seattle-temps").series[0]
        noise = 1.0 * np.random.default_rng(0).standard_normal(48)
        ts, values = series.timestamps[-48:], series.values[-48:] + noise
        with ForecastClient(router.target) as client:
            for day in range(2):
                part = slice(24 * day, 24 * day + 24)
                assert client.observe("seattle-temps", ts[part], values[part]) == 24

        def common(store: Path) -> list[str]:
            return [
                "retrain",
                "--registry",
                str(registry_copy.root),
                "--model",
                MODEL,
                "--observations",
                str(store),
                "--router",
                router.target,
                "--epochs",
                "10",
                "--max-windows-per-epoch",
                "2048",
                "--no-progress",
                "--json",
            ]

        # Without drift nothing happens (an empty store). In process: no torch start-up.
        quiet = tmp_path / "quiet.db"
        ObservationStore(quiet).close()
        assert main([*common(quiet), "--on-drift"]) == 0
        assert json.loads(capsys.readouterr().out)["action"] == "none"

        # A candidate held to "50 % better than stable" is rejected and not registered.
        before = {v.version for v in registry.versions(MODEL)}
        code = main([*common(store_path), "--tolerance", "-0.5", "--dry-run", "--epochs", "1"])
        assert code == 3
        assert json.loads(capsys.readouterr().out)["action"] == "rejected"
        assert {v.version for v in registry.versions(MODEL)} == before

        out = canarycast(*common(store_path), "--on-drift")
        capsys.readouterr()
        assert out.returncode == 0, out.stderr + out.stdout
        outcome = json.loads(out.stdout)
        assert outcome["drift"]["drifted"] and outcome["drift"]["performance"]["drifted"]
        assert outcome["action"] == "rollout" and outcome["holdout"]["not_worse"]
        version = outcome["version"]
        meta = registry.get(MODEL, version).metadata
        with ObservationStore(store_path, readonly=True) as store:
            frame = store.frame()
        lineage = meta["retrain"]
        assert lineage["observations"]["hash"] == observations_hash(frame)
        assert lineage["observations"]["points"] == 48
        assert lineage["base_dataset"] == "seattle-temps"
        assert meta["dataset_hash"] == lineage["data_hash"] != lineage["base_dataset_hash"]
        assert meta["parameters"]["epochs"] == 10 and meta["parameters"]["hidden"] == 8
        assert lineage["holdout"]["stable_version"] == registry_copy.v1.version
        with RolloutClient(router.target, TOKEN) as control:
            status = control.status()
        assert status.phase == rpb.PROGRESSING
        assert status.candidate_version == version
        assert status.stable_version == registry_copy.v1.version
        assert registry.get_alias(MODEL, "canary") == version
    finally:
        for c in reversed(components):
            c.stop(10)
    assert np.isfinite(outcome["holdout"]["candidate_mase"])


def test_holdout_points_train_on_everything_older_than_the_recent_period() -> None:
    """With ``holdout_points`` the newest observations are trained on: only the last
    ``holdout`` points are held out (and as many before them validate)."""
    from server.lifecycle.data import split_points
    from server.lifecycle.training import TrainParams

    assert split_points(8760) == (6132, 7446)  # 70 / 15 / 15 %
    assert split_points(8760, holdout=168) == (8760 - 336, 8760 - 168)
    params = TrainParams(holdout_points=168)
    assert params.to_dict()["holdout_points"] == 168
    assert TrainParams.from_dict(params.to_dict()) == params
    assert "holdout_points" not in TrainParams().to_dict()  # earlier recipe keys hold
    with pytest.raises(ValueError, match="holdout_points"):
        TrainParams(holdout_points=0)
    with pytest.raises(ValueError, match="holdout"):
        split_points(100, holdout=-1)
