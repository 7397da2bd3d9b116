"""The `canarycast` command as users run it: real child processes, real ports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from canarycast.client import ForecastClient
from canarycast.processes import ProcessFailed, start_component
from tests.conftest import MODEL, TrainedRegistry


def canarycast(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_command() -> None:
    out = canarycast("--help")
    assert out.returncode == 0
    for command in ("train", "serve", "models", "forecast", "demo"):
        assert command in out.stdout
    serve = canarycast("serve", "--help").stdout
    for flag in ("--registry", "--model", "--port", "--metrics-port", "--max-batch-size"):
        assert flag in serve


def test_train_registers_a_version_with_lineage(tmp_path: Path) -> None:
    out = canarycast(
        "train",
        "--dataset",
        "seattle-weather",
        "--series",
        "seattle-weather/temp_max",
        "--registry",
        str(tmp_path),
        "--name",
        "weather",
        "--lookback",
        "28",
        "--horizon",
        "7",
        "--hidden",
        "8",
        "--layers",
        "1",
        "--epochs",
        "1",
        "--alias",
        "stable",
        "--no-progress",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["name"] == "weather" and len(record["version"]) == 12
    assert record["dataset"] == "seattle-weather"
    assert record["series"] == ["seattle-weather/temp_max"]
    assert record["parameters"]["freq"] == "D" and record["parameters"]["horizon"] == 7
    assert {"mae", "rmse", "smape", "mase"} <= set(record["scores"])
    listing = canarycast("models", "--registry", str(tmp_path), "list")
    assert listing.returncode == 0
    assert record["version"] in listing.stdout and "stable" in listing.stdout
    show = canarycast("models", "--registry", str(tmp_path), "show", "weather@stable")
    assert json.loads(show.stdout)["version"] == record["version"]


def test_train_rejects_a_bad_file_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("unique_id,ds,y\na,2020-01-01,1\na,not-a-date,2\n")
    out = canarycast("train", "--dataset", str(bad), "--registry", str(tmp_path), "--name", "x")
    assert out.returncode == 2
    assert "not-a-date" in out.stderr and "line 3" in out.stderr


def test_models_alias_refuses_an_unknown_version(registry_copy: TrainedRegistry) -> None:
    out = canarycast(
        "models", "--registry", str(registry_copy.root), "alias", MODEL, "canary", "ffffff"
    )
    assert out.returncode == 1
    assert "ffffff" in out.stderr
    ok = canarycast(
        "models",
        "--registry",
        str(registry_copy.root),
        "alias",
        MODEL,
        "canary",
        registry_copy.v2.version,
    )
    assert ok.returncode == 0 and registry_copy.v2.version in ok.stdout
    assert registry_copy.registry.get_alias(MODEL, "canary") == registry_copy.v2.version


def test_serve_forecast_and_sigterm_as_processes(trained: TrainedRegistry) -> None:
    server = start_component(
        "server",
        [
            "serve",
            "--registry",
            str(trained.root),
            "--model",
            f"{MODEL}@stable",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        out = canarycast(
            "forecast",
            "--target",
            server.target,
            "--dataset",
            "seattle-temps",
            "--end",
            "5000",
            "--horizon",
            "6",
            "--quantiles",
            "0.1,0.9",
            "--json",
        )
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["model"]["version"] == trained.v1.version
        assert len(answer["point"]) == 6 and set(answer["quantiles"]) == {"0.1", "0.9"}
        assert answer["timestamps"][0].startswith("2010-07-28T08:00")  # hour 5000 of 2010
        table = canarycast(
            "forecast",
            "--target",
            server.target,
            "--values",
            ",".join(["50"] * 48),
            "--horizon",
            "3",
        )
        assert table.returncode == 0 and "POINT" in table.stdout
        bad = canarycast(
            "forecast", "--target", server.target, "--values", "1,2,3", "--horizon", "3"
        )
        assert bad.returncode == 1
        assert "INVALID_ARGUMENT" in bad.stderr and "series[0].history" in bad.stderr
        # structlog JSON lines carry trace ids for calls
        with ForecastClient(server.target) as client:
            assert client.model_info().model.version == trained.v1.version
    finally:
        code = server.stop()
    assert code == 0
    logs = [json.loads(line) for line in server.lines if line.startswith("{")]
    events = [e["event"] for e in logs]
    assert "serving" in events and events[-1] == "stopped"
    rejected = [e for e in logs if e["event"] == "call_rejected"]
    assert rejected and len(rejected[0]["trace_id"]) == 32 and len(rejected[0]["span_id"]) == 16


def test_serve_refuses_a_tampered_version_with_a_clear_error(
    registry_copy: TrainedRegistry,
) -> None:
    weights = registry_copy.v1.path / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-200] ^= 0xFF
    weights.write_bytes(bytes(data))
    started = time.monotonic()
    with pytest.raises(ProcessFailed) as err:
        start_component(
            "server",
            [
                "serve",
                "--registry",
                str(registry_copy.root),
                "--model",
                f"{MODEL}@stable",
                "--port",
                "0",
            ],
            timeout=60,
        )
    assert time.monotonic() - started < 60
    assert registry_copy.v1.version in str(err.value)
