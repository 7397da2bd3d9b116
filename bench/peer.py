"""Section 2: the model server against a peer, TorchServe, serving the same trained LSTM.

TorchServe gets its own virtual environment under .cache/bench/ (torch==2.13.0 first,
the CPU build on disk, then torchserve, torch-model-archiver and pyyaml, which it needs
but does not declare), the served network traced with torch.jit (same weights), the
handler in bench/peers/, one worker, and its batching set like canarycast's defaults
(batchSize 256, maxBatchDelay 2 ms). canarycast is called over gRPC, TorchServe over its
REST API; the same histories, the same horizon, the same concurrency. If TorchServe
cannot run, the exact error is recorded instead of a number.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import types
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    CACHE,
    ROOT,
    BenchModel,
    combine_loadgens,
    ratio,
    run_loadgen,
    start_servers,
    stop_all,
)
from bench.router_cost import free_port
from server.lifecycle.registry import Registry
from server.serving.loader import load_model

VENV = CACHE / "torchserve-venv"
WORK = CACHE / "torchserve"
HANDLER = ROOT / "bench" / "peers" / "torchserve_handler.py"
BATCH_SIZE, MAX_BATCH_DELAY_MS = 256, 2


def export_model(model: BenchModel, folder: Path) -> dict[str, Any]:
    """model.pt (torch.jit.trace of the served network) and config.json into `folder`."""
    loaded = load_model(Registry(model.registry), model.ref)
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(4, loaded.config.lookback)
    with torch.inference_mode():
        traced = torch.jit.trace(loaded.net, example)
    traced.save(str(folder / "model.pt"))
    config = loaded.config.to_dict()
    (folder / "config.json").write_text(json.dumps(config))
    return config


def handler_check(model: BenchModel, folder: Path, n: int = 8) -> dict[str, Any]:
    """Load the handler in this process and compare its answers with the server's predict."""
    sys.path.insert(0, str(HANDLER.parent))
    try:
        import torchserve_handler
    finally:
        sys.path.pop(0)
    config = export_model(model, folder)
    handler = torchserve_handler.LSTMHandler()
    handler.initialize(types.SimpleNamespace(system_properties={"model_dir": str(folder)}))
    from bench.loadgen import histories

    hist = histories(n, config["lookback"] + 10)
    data = [{"body": json.dumps({"history": h.tolist()}).encode()} for h in hist]
    answers = [json.loads(a) for a in handler.handle(data, None)]
    loaded = load_model(Registry(model.registry), model.ref)
    expected = loaded.predict(np.stack([h[-config["lookback"] :] for h in hist]))
    # every quantile the handler answers (point, lower, upper), not the median alone
    diff = max(
        float(np.abs(np.array([a[key] for a in answers]) - expected[:, :, j]).max())
        for key, j in (("point", loaded.point_index), ("lower", 0), ("upper", -1))
    )
    return {
        "answers": len(answers),
        "members": loaded.config.members,
        "max_abs_diff_vs_server_predict": diff,
    }


def _pip(args: list[str]) -> None:
    subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
        check=True,
        capture_output=True,
        text=True,
    )


def ensure_venv() -> None:
    python = VENV / "bin" / "python"
    probe = [str(python), "-c", "import ts, yaml, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return
    shutil.rmtree(VENV, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(VENV)], check=True, capture_output=True)
    _pip(["torch==2.13.0"])  # the CPU build on disk, before anything can pull another
    # numpy: the handler's pre/post-processing (torch's wheel does not pull it)
    _pip(["torchserve", "torch-model-archiver", "pyyaml", "numpy", "torch==2.13.0"])


def _config_properties(store: Path, ports: dict[str, int], threads: int) -> str:
    models = {
        "lstm": {
            "1.0": {
                "defaultVersion": True,
                "marName": "lstm.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": BATCH_SIZE,
                "maxBatchDelay": MAX_BATCH_DELAY_MS,
                "responseTimeout": 120,
            }
        }
    }
    return "\n".join(
        [
            f"inference_address=http://127.0.0.1:{ports['inference']}",
            f"management_address=http://127.0.0.1:{ports['management']}",
            f"metrics_address=http://127.0.0.1:{ports['metrics']}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={ports['grpc_inference']}",
            f"grpc_management_port={ports['grpc_management']}",
            f"model_store={store}",
            "load_models=lstm.mar",
            "default_workers_per_model=1",
            f"number_of_netty_threads={threads}",
            "disable_system_metrics=true",
            f"models={json.dumps(models)}",
            "",
        ]
    )


def _post(url: str, body: bytes, timeout: float = 5.0) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


def start_torchserve(model: BenchModel) -> tuple[subprocess.Popen[bytes], int, Path]:
    ensure_venv()
    shutil.rmtree(WORK, ignore_errors=True)
    store = WORK / "store"
    store.mkdir(parents=True)
    config = export_model(model, WORK)
    bin_dir = VENV / "bin"
    subprocess.run(
        [
            str(bin_dir / "torch-model-archiver"),
            "--model-name",
            "lstm",
            "--version",
            "1.0",
            "--serialized-file",
            str(WORK / "model.pt"),
            "--handler",
            str(HANDLER),
            "--extra-files",
            str(WORK / "config.json"),
            "--export-path",
            str(store),
            "--force",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    ports = {
        k: free_port()
        for k in ("inference", "management", "metrics", "grpc_inference", "grpc_management")
    }
    threads = torch.get_num_threads()
    (WORK / "config.properties").write_text(_config_properties(store, ports, threads))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "LOG_LOCATION": str(WORK / "logs"),
        "METRICS_LOCATION": str(WORK / "logs"),
        "BENCH_TORCH_THREADS": str(threads),
        "VIRTUAL_ENV": str(VENV),
    }
    env.pop("PYTHONPATH", None)
    log = open(WORK / "torchserve.log", "wb")  # noqa: SIM115  # closed with the process
    process = subprocess.Popen(
        [
            str(bin_dir / "torchserve"),
            "--start",
            "--foreground",
            "--ncs",
            "--disable-token-auth",
            "--model-store",
            str(store),
            "--ts-config",
            str(WORK / "config.properties"),
        ],
        cwd=WORK,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{ports['inference']}/predictions/lstm"
    body = json.dumps({"history": list(np.linspace(0, 1, config["lookback"]))}).encode()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if _post(url, body) == 200:
                return process, ports["inference"], WORK
        except OSError:
            pass
        time.sleep(1.0)
    stop_torchserve(process)
    tail = (WORK / "torchserve.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"TorchServe did not answer within 240 s (exit {process.poll()}):\n{tail}")


def stop_torchserve(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    subprocess.run(
        [str(VENV / "bin" / "torchserve"), "--stop"], capture_output=True, check=False, timeout=60
    )


def peer_section(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    check = handler_check(model, CACHE / "handler-check" if not smoke else WORK / "smoke")
    if smoke:
        return {"handler_check": check, "runs": [], "ratios": {}, "torchserve_error": ""}
    horizon = model.horizon
    try:
        ts_process, ts_port, _ = start_torchserve(model)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        return {
            "handler_check": check,
            "runs": [],
            "ratios": {},
            "torchserve_error": f"{type(exc).__name__}: {exc}\n{detail[-3000:]}",
        }
    servers = start_servers(model, {"canarycast": []})
    cc = servers["canarycast"]
    try:
        scenarios = []
        for c in (16, 64):
            common = {
                "concurrency": c,
                "horizon": horizon,
                "history": model.lookback,
                "warmup": 2.0,
                "duration": 5.0,
            }
            scenarios.append(
                {
                    "name": f"canarycast gRPC, concurrency {c}",
                    "peer": "canarycast",
                    "target": cc.target,
                    "server_pids": [cc.process.pid],
                    **common,
                }
            )
            scenarios.append(
                {
                    "name": f"TorchServe REST, concurrency {c}",
                    "peer": "torchserve",
                    "kind": "http",
                    "path": "/predictions/lstm",
                    "target": f"127.0.0.1:{ts_port}",
                    "server_pids": [ts_process.pid],
                    **common,
                }
            )
        runs = run_loadgen(scenarios, progress="peer")
        stop_all(servers)
        servers = start_servers(model, {"canarycast 2 workers": ["--workers", "2"]})
        spread = _spread_rows(servers["canarycast 2 workers"], ts_process, ts_port, horizon, model)
    finally:
        stop_all(servers)
        stop_torchserve(ts_process)
    for s, r in zip(scenarios, runs, strict=True):
        r["peer"] = s["peer"]
    ratios = {}
    for c in (16, 64):
        a = next(r for r in runs if r["peer"] == "canarycast" and r["concurrency"] == c)
        b = next(r for r in runs if r["peer"] == "torchserve" and r["concurrency"] == c)
        ratios[f"c{c}: throughput canarycast / TorchServe"] = ratio(
            a["forecasts_per_s"], b["forecasts_per_s"]
        )
        ratios[f"c{c}: p99 canarycast / TorchServe"] = ratio(a["p99_ms"], b["p99_ms"])
    for c in (16, 64):
        a = next(r for r in spread if r["peer"] == "canarycast" and r["concurrency"] == c)
        b = next(r for r in spread if r["peer"] == "torchserve" and r["concurrency"] == c)
        key = f"c{c}, 2 load generators: canarycast --workers 2 / TorchServe"
        ratios[f"{key}, throughput"] = ratio(a["forecasts_per_s"], b["forecasts_per_s"])
        ratios[f"{key}, p99"] = ratio(a["p99_ms"], b["p99_ms"])
        ratios[f"{key}, forecasts per server CPU-second"] = ratio(
            a["forecasts_per_s"] / a["server_cpu_cores"],
            b["forecasts_per_s"] / b["server_cpu_cores"],
        )
    return {
        "handler_check": check,
        "runs": runs,
        "ratios": ratios,
        "torchserve_error": "",
        "batching": {"batchSize": BATCH_SIZE, "maxBatchDelay_ms": MAX_BATCH_DELAY_MS},
        "workers": 1,
        "spread_runs": spread,
    }


#: Load generator processes of the spread rows: one per canarycast worker, so that each
#: holds one connection to one worker's own port as a router's replica channel does;
#: TorchServe gets the same two generators on its one REST port.
SPREAD_LOADGENS = 2


def _spread_rows(
    cc: Any, ts_process: subprocess.Popen[bytes], ts_port: int, horizon: int, model: BenchModel
) -> list[dict[str, Any]]:
    """canarycast with two worker processes against TorchServe, each under the same load
    from SPREAD_LOADGENS generator processes side by side (callers split between them).
    Forecasts/s are summed over the generators, p99 is the worst of them, server CPU is the
    server's whole process tree (measured by the first generator)."""
    targets = cc.worker_targets
    per_gen: list[list[dict[str, Any]]] = [[] for _ in range(SPREAD_LOADGENS)]
    for c in (16, 64):
        for peer in ("canarycast", "torchserve"):
            for g in range(SPREAD_LOADGENS):
                kind: dict[str, str] = {}
                if peer == "canarycast":
                    target, pid = targets[g % len(targets)], cc.process.pid
                    name = f"canarycast gRPC, 2 workers, concurrency {c}"
                else:
                    target, pid = f"127.0.0.1:{ts_port}", ts_process.pid
                    name = f"TorchServe REST, concurrency {c}, 2 generators"
                    kind = {"kind": "http", "path": "/predictions/lstm"}
                per_gen[g].append(
                    {
                        "name": name,
                        "target": target,
                        "server_pids": [pid] if g == 0 else [],
                        "concurrency": c // SPREAD_LOADGENS,
                        "horizon": horizon,
                        "history": model.lookback,
                        "warmup": 2.0,  # both generators connect before either counts
                        "duration": 5.0,
                        **kind,
                    }
                )
    with ThreadPoolExecutor(SPREAD_LOADGENS) as pool:
        results = list(pool.map(run_loadgen, per_gen))
    rows = []
    i = 0
    for c in (16, 64):
        for peer in ("canarycast", "torchserve"):
            parts = [results[g][i] for g in range(SPREAD_LOADGENS)]
            i += 1
            rows.append(
                {
                    "name": parts[0]["name"],
                    "peer": peer,
                    "workers": 2 if peer == "canarycast" else 1,
                    "concurrency": c,
                    **combine_loadgens(parts),
                }
            )
    return rows
