"""Smoke runs of every benchmark section (tiny sizes), so the scripts cannot rot.

Real servers, routers, load generator and analyzer on loopback, with the session's tiny
trained model; nothing here asserts a speed (shared, noisy machine), only that each
section measures what it says and writes its results. The full sizes, TorchServe as a
process, nginx and statsforecast run in `make bench` only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.common import BenchModel
from bench.run import main, run
from server.lifecycle.recipe import DEFAULT_MEMBERS
from tests.conftest import MODEL, TrainedRegistry


@pytest.fixture
def model(trained: TrainedRegistry) -> BenchModel:
    return BenchModel(trained.root, f"{MODEL}:{trained.v1.version}")


def _ok_runs(runs: list[dict[str, Any]]) -> None:
    assert runs
    for r in runs:
        assert r["calls"] and r["errors"] == 0, r
        assert r["forecasts_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert r["loadgen_cpu_s"] is not None and r["server_cpu_s"] is not None


@pytest.mark.slow
def test_serving_and_growth_sections_measure_and_write_results(
    model: BenchModel, tmp_path: Path
) -> None:
    results = run(("serving", "growth"), tmp_path, model, smoke=True)
    serving = results["serving"]
    assert "error" not in serving, serving.get("error")
    assert [r["batch"] for r in serving["roofline"]["rows"]] == [1, 4, 16]
    _ok_runs(serving["runs"])
    assert {r["batching"] for r in serving["runs"]} == {"on", "off"}
    assert any(r["series_per_call"] == 64 for r in serving["runs"])
    assert all(math.isfinite(v) and v > 0 for v in serving["ratios"].values())
    growth = results["growth"]
    assert "error" not in growth, growth.get("error")
    assert set(growth["curves"]) == {"history", "horizon", "series_per_call"}
    for rows in growth["curves"].values():
        _ok_runs(rows)
    saved = json.loads((tmp_path / "serving.json").read_text())
    assert saved["ratios"] == pytest.approx(serving["ratios"])
    for dim in growth["curves"]:
        assert (tmp_path / f"growth_{dim}.png").stat().st_size > 0
    readme = (tmp_path / "README.md").read_text()
    assert "## 1. Model server against the compute limit" in readme
    assert "## 5. How cost grows" in readme


@pytest.mark.slow
def test_router_section_compares_a_hop_with_direct_calls(model: BenchModel, tmp_path: Path) -> None:
    results = run(("router", "sample"), tmp_path, model, smoke=True)
    result = results["router"]
    assert "error" not in result, result.get("error")
    _ok_runs(result["runs"])
    assert {r["path"] for r in result["runs"]} == {"direct", "router split (dual-run)"}
    assert "router split (dual-run) c16: throughput / direct" in result["ratios"]
    # The analysis sample: routers with the analyzer at fractions 1 and 0.1.
    sample = results["sample"]
    assert "error" not in sample, sample.get("error")
    assert [x["analysis_fraction"] for x in sample["rows"]] == [1.0, 0.1]
    for x in sample["rows"]:
        assert x["calls"] > 0 and x["errors"] == 0, x
        assert x["router_cpu_s_per_1k_calls"] > 0 and x["throughput_over_direct"] > 0
    assert sample["rows"][0]["analyzer_cpu_s_per_1k_calls"] > 0  # every call analysed
    assert "### The analysis sample" in (tmp_path / "README.md").read_text()


def test_torchserve_handler_answers_like_the_model_server(
    model: BenchModel, tmp_path: Path
) -> None:
    from bench.peer import handler_check

    check = handler_check(model, tmp_path / "handler")
    assert check["answers"] == 8
    assert check["members"] == DEFAULT_MEMBERS
    assert check["max_abs_diff_vs_server_predict"] < 1e-3


def test_nginx_config_weights_the_two_upstreams(tmp_path: Path) -> None:
    from bench.router_cost import nginx_config

    conf = nginx_config(tmp_path, 5000, "127.0.0.1:1", "127.0.0.1:2")
    assert "server 127.0.0.1:1 weight=80;" in conf and "server 127.0.0.1:2 weight=20;" in conf
    assert "listen 127.0.0.1:5000 http2;" in conf and "grpc_pass grpc://forecasters;" in conf
    assert f"pid {tmp_path}/nginx.pid;" in conf


@pytest.mark.slow
def test_analysis_section_ingests_every_span_and_sizes_memory(tmp_path: Path) -> None:
    result = run(("analysis",), tmp_path, None, smoke=True)["analysis"]
    assert "error" not in result, result.get("error")
    n = result["direct"]["records"] // 2
    assert result["direct"]["scored"] == n
    assert result["span_processor"]["scored"] == n and result["span_processor"]["dropped"] == 0
    assert result["otlp_receiver"]["scored"] == n
    assert [m["pending"] for m in result["memory"]] == [500, 2000]
    assert all(m["bytes_per_pending"] > 0 for m in result["memory"])
    assert [j["pairs"] for j in result["judge"]] == [100, 1000]
    assert (tmp_path / "analyzer_memory.png").stat().st_size > 0


@pytest.mark.slow
def test_accuracy_section_scores_lstm_and_seasonal_naive(tmp_path: Path) -> None:
    from bench.accuracy import accuracy_section

    result = accuracy_section(smoke=True, with_stats=False)
    [row] = result["rows"]
    assert row["dataset"] == "seattle-temps" and row["forecasts"] == 3
    assert set(row["models"]) == {"LSTM", "seasonal naive"}
    lstm = row["models"]["LSTM"]
    assert lstm["mase"] > 0 and 0 < lstm["smape"] < 200 and 0 <= lstm["coverage_80"] <= 1
    assert math.isnan(row["models"]["seasonal naive"]["coverage_80"])  # no interval without it


def test_run_refuses_an_unknown_section(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--smoke", "--sections", "serving,nope"])
    assert "unknown section(s) nope" in capsys.readouterr().err


def test_judge_section_runs_the_three_judges_and_writes_its_table_and_plot(
    tmp_path: Path,
) -> None:
    from bench import judge_world

    result = judge_world.judge_section(smoke=True, processes=1)
    assert {r["scenario"] for r in result["rows"]} >= {"10 % worse", "equal", "10 % better"}
    row = next(r for r in result["rows"] if r["scenario"] == "10 % worse" and r["n_series"] == 40)
    assert set(row["judges"]) == {"new", "raw", "kayenta"}
    text = judge_world.markdown(result)
    assert "| 10 % worse | 40 |" in text
    judge_world.plot(result, tmp_path)
    assert (tmp_path / "judge_decision_times.png").stat().st_size > 10_000
