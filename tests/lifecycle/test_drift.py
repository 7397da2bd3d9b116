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
from server.lifecycle.data import load_dataset
from server.lifecycle.drift import (
    DriftPolicy,
    detect_drift,
    load_stable,
    population_stability_index,
)
from server.lifecycle.observations import ObservationStore
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
    model = load_stable(trained.registry, MODEL)
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
    model = load_stable(trained.registry, MODEL)
    try:
        report = detect_drift(store, load_dataset("seattle-temps"), model=model)
    finally:
        store.close()
    assert report.data_drifted == []
    assert report.performance is not None and report.performance.drifted
    assert report.performance.ratio is not None and report.performance.ratio > 2.0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
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


def scrape(port: int) -> dict[tuple[str, str], float]:
    """/metrics of a real process: (name, series label or "") -> value."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, sample.labels.get("series", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.slow
def test_the_exporter_serves_drift_scores_from_the_routers_stores_and_waits_for_them(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    """`canarycast drift --serve-metrics`: started before any router wrote (the chart's
    controller pod starts first), its checks fail, are counted and retried; once the
    routers' stores are there it serves their scores, read-only; SIGTERM ends it with 0."""
    import time

    from canarycast.processes import start_component

    routers = tmp_path / "routers"
    exporter = start_component(
        "drift exporter",
        [
            "drift",
            "--registry",
            str(registry_copy.root),
            "--model",
            MODEL,
            "--observations",
            str(routers),
            "--serve-metrics",
            "0",
            "--interval",
            "0.2",
        ],
    )
    try:
        port = exporter.metrics_port
        assert port is not None
        for _ in range(600):
            if scrape(port).get(("canarycast_drift_check_failures_total", ""), 0) >= 1:
                break
            time.sleep(0.1)
        assert scrape(port)[("canarycast_drift_check_failures_total", "")] >= 1
        assert not [k for k in scrape(port) if k[0] == "canarycast_drift_detected"]
        routers.mkdir()
        store_with(routers / "router-a.db", {"seattle-temps": 1.0}).close()
        store_with(routers / "router-b.db", {"sf-temps": 0.0}).close()
        for _ in range(600):
            if scrape(port).get(("canarycast_drift_performance_ratio", ""), 0) > 0:
                break
            time.sleep(0.1)
        metrics = scrape(port)
        assert metrics[("canarycast_drift_detected", "seattle-temps")] == 1.0
        assert metrics[("canarycast_drift_detected", "sf-temps")] == 0.0  # unchanged
        assert metrics[("canarycast_drift_psi", "seattle-temps")] > DriftPolicy().psi_threshold
        assert ("canarycast_drift_ks_statistic", "seattle-temps") in metrics
        assert metrics[("canarycast_drift_performance_ratio", "")] > 0
        assert metrics[("canarycast_drift_last_success_timestamp_seconds", "")] > 0
    finally:
        code = exporter.stop()
    assert code == 0, exporter.tail()


def test_exporter_flags_are_checked_naming_the_flag(tmp_path: Path) -> None:
    common = ["drift", "--registry", str(tmp_path), "--model", MODEL]
    out = run_cli(
        *common, "--observations", str(tmp_path), "--serve-metrics", "0", "--interval", "0"
    )
    assert out.returncode == 2 and "--interval must be above 0" in out.stderr
    out = run_cli(*common, "--observations", str(tmp_path), "--serve-metrics", "70000")
    assert out.returncode == 2 and "--serve-metrics 70000" in out.stderr
    out = run_cli(*common, "--observations", str(tmp_path), "--interval", "5")
    assert out.returncode == 2 and "--interval needs --serve-metrics" in out.stderr
    out = run_cli(*common, "--observations", str(tmp_path), "--serve-metrics", "0", "--json")
    assert out.returncode == 2 and "--json" in out.stderr


def test_drift_interval_is_checked_naming_the_flag() -> None:
    from router.app import RouterServer, RouterSettings

    with pytest.raises(ValueError, match="--drift-interval"):
        RouterServer(RouterSettings(stable=["127.0.0.1:1"], drift_interval=0))


async def test_the_controller_exports_the_stable_online_error_and_no_drift_scores(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    """The router's one drift gauge: the analyzer's stable error over the last
    --drift-interval, windowed on the analyzer's own clock; the scores that need the model
    come from the exporter, so the router registers none of them."""
    import asyncio
    import socket

    from router.app import ControllerSettings, RouterServer, RouterSettings
    from tests.router.test_analysis import forecast, observe

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = RouterServer(
        RouterSettings(
            stable=[dead],
            controller=ControllerSettings(
                registry=registry_copy.root, model=MODEL, state=tmp_path / "r.db", admin_token="t"
            ),
            drift_interval=0.5,
        )
    )
    await server.start()
    try:
        assert server.analyzer is not None
        registry = server.metrics.registry
        for i in range(300):  # a stream of scored forecasts, as a serving router sees
            series = f"s{i}"
            server.analyzer.add_forecast(forecast(f"f{i}", (1.0, 2.0, 3.0), series=series))
            server.analyzer.add_observation(observe((3.0, 4.0, 5.0), series=series))  # error 2
            await asyncio.sleep(0.05)
            if registry.get_sample_value("canarycast_drift_stable_online_error"):
                break
        assert registry.get_sample_value("canarycast_drift_stable_online_error") == 2.0
        names = {family.name for family in registry.collect()}
        assert not {"canarycast_drift_psi", "canarycast_drift_detected"} & names
    finally:
        await server.stop(0)
