"""Drift on real series: an injected level shift fires, the unchanged series stays quiet,
and a stable model whose errors grew shows performance drift."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from canarycast.validation import Observation
from server.data import load_dataset
from server.drift import DriftPolicy, detect_drift, population_stability_index
from server.loader import load_model
from server.observations import ObservationStore
from tests.conftest import MODEL, TrainedRegistry

START = 7000  # in the test split of both series: no model trained on these hours
POINTS = 48  # two seasons: the default recent window


def store_with(path: Path, shifts: dict[str, float], noise: float = 0.0) -> ObservationStore:
    """Real hours START.. of hourly-temps, each series shifted by shifts[id] (x its std)."""
    store = ObservationStore(path)
    rng = np.random.default_rng(0)
    for s in load_dataset("hourly-temps").series:
        if s.series_id not in shifts:
            continue
        values = s.values[START : START + POINTS] + shifts[s.series_id] * s.values.std()
        values = values + noise * rng.standard_normal(POINTS)
        ts = s.timestamps[START : START + POINTS].astype(np.int64)
        store.append([Observation(s.series_id, ts, values)])
    return store


def test_psi_is_zero_for_the_same_sample_and_grows_with_a_shift() -> None:
    x = load_dataset("seattle-temps").series[0].values[:500]
    assert population_stability_index(x, x) == pytest.approx(0.0, abs=1e-12)
    small = population_stability_index(x, x + 0.1 * x.std())
    assert 0.0 < small < population_stability_index(x, x + x.std())


def test_level_shift_fires_and_the_unchanged_series_stays_quiet(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    store = store_with(tmp_path / "obs.db", {"seattle-temps": 0.0, "sf-temps": 1.0})
    model = load_model(trained.registry, f"{MODEL}@stable")
    try:
        report = detect_drift(store, load_dataset("hourly-temps"), model=model, model_name=MODEL)
    finally:
        store.close()
    by_id = {s.series_id: s for s in report.series}
    quiet, shifted = by_id["seattle-temps"], by_id["sf-temps"]
    assert (quiet.recent_points, quiet.reference_points) == (48, 168)
    assert not quiet.drifted and quiet.psi is not None and quiet.ks_statistic is not None
    assert quiet.psi < DriftPolicy().psi_threshold and quiet.ks_statistic < 0.5
    assert shifted.drifted and shifted.level_shift is not None and shifted.level_shift > 1.0
    assert report.data_drifted == ["sf-temps"] and report.drifted
    perf = report.performance
    assert perf is not None and perf.ratio is not None and perf.windows > 0
    assert perf.offline_mase == model.version.metadata["scores"]["mase"]
    text = report.format()
    assert "DRIFT DETECTED in sf-temps" in text


def test_noisy_actuals_show_performance_drift_but_no_data_drift(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    store = store_with(tmp_path / "obs.db", {"seattle-temps": 0.0}, noise=1.0)
    model = load_model(trained.registry, f"{MODEL}@stable")
    try:
        report = detect_drift(store, load_dataset("seattle-temps"), model=model)
    finally:
        store.close()
    assert report.data_drifted == []
    assert report.performance is not None and report.performance.drifted
    assert report.performance.ratio is not None and report.performance.ratio > 2.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "canarycast.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )


@pytest.mark.slow
def test_the_command_exits_non_zero_past_a_threshold(
    trained: TrainedRegistry, tmp_path: Path
) -> None:
    store_with(tmp_path / "shift.db", {"seattle-temps": 0.0, "sf-temps": 1.0}).close()
    common = ["drift", "--registry", str(trained.root), "--model", MODEL]
    out = run_cli(
        *common, "--observations", str(tmp_path / "shift.db"), "--reference", "hourly-temps"
    )
    assert out.returncode == 1, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines() if line.startswith("  ")}
    assert lines["sf-temps"].rstrip().endswith("DRIFT")
    assert lines["seattle-temps"].rstrip().endswith("ok")
    missing = run_cli(*common, "--observations", str(tmp_path / "missing.db"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("source", ["own store", "the routers' stores"])
async def test_the_controller_exports_drift_scores_as_prometheus_gauges(
    registry_copy: TrainedRegistry, tmp_path: Path, source: str
) -> None:
    """From its own store, or (the Helm chart's controller, which takes no Observe calls)
    from the folder of the routers' stores, read-only."""
    import asyncio
    import socket

    from router.app import ControllerSettings, RouterServer, RouterSettings

    if source == "own store":
        store_with(tmp_path / "obs.db", {"seattle-temps": 1.0}).close()
        stores = {"observations": tmp_path / "obs.db"}
    else:
        (tmp_path / "routers").mkdir()
        store_with(tmp_path / "routers" / "router-a.db", {"seattle-temps": 1.0}).close()
        store_with(tmp_path / "routers" / "router-b.db", {"sf-temps": 0.0}).close()
        stores = {"drift_observations": tmp_path / "routers"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = RouterServer(
        RouterSettings(
            stable=[dead],
            controller=ControllerSettings(
                registry=registry_copy.root, model=MODEL, state=tmp_path / "r.db", admin_token="t"
            ),
            drift_interval=0.2,
            **stores,  # type: ignore[arg-type]
        )
    )
    await server.start()
    try:
        registry = server.metrics.registry
        for _ in range(100):
            await asyncio.sleep(0.1)
            if registry.get_sample_value("canarycast_drift_performance_ratio"):
                break
        labels = {"series": "seattle-temps"}
        assert registry.get_sample_value("canarycast_drift_detected", labels) == 1.0
        psi = registry.get_sample_value("canarycast_drift_psi", labels)
        assert psi is not None and psi > DriftPolicy().psi_threshold
        assert registry.get_sample_value("canarycast_drift_ks_statistic", labels) is not None
        assert (registry.get_sample_value("canarycast_drift_performance_ratio") or 0) > 0
        if source != "own store":
            quiet = registry.get_sample_value("canarycast_drift_detected", {"series": "sf-temps"})
            assert quiet == 0.0  # the other router's series, unchanged
            assert server.router.observations is None  # it stores nothing itself
    finally:
        await server.stop(0)


def test_drift_settings_are_checked_naming_the_flag(tmp_path: Path) -> None:
    from router.app import RouterServer, RouterSettings

    with pytest.raises(ValueError, match="--drift-observations needs the controller"):
        RouterServer(RouterSettings(stable=["127.0.0.1:1"], drift_observations=tmp_path))
    with pytest.raises(ValueError, match="--drift-interval"):
        RouterServer(RouterSettings(stable=["127.0.0.1:1"], drift_interval=0))
