"""What every benchmark section shares: the machine, process CPU, servers, the model, results.

Every section returns a JSON-able dict with its raw figures and the ratios it is judged
by, all measured in the same run; absolute numbers on a shared 2-core machine are noisy.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canarycast.processes import Component, start_component

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
RESULTS = ROOT / "bench" / "results"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class BenchModel:
    """A registry and a pinned model version (NAME:VERSION) that every server serves."""

    registry: Path
    ref: str  # NAME:VERSION

    def config(self) -> dict[str, Any]:
        from server.lifecycle.registry import Registry

        return dict(Registry(self.registry).resolve(self.ref).config)

    @property
    def horizon(self) -> int:
        return int(self.config()["horizon"])

    @property
    def lookback(self) -> int:
        """The shortest history the model accepts: every bench call sends this many values."""
        return int(self.config()["lookback"])


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, load: printed with every result."""
    model = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import torch

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 2**20, 1),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "note": "load generator, servers and proxies share these cores (see the load "
        "average); compare ratios, not absolute numbers",
    }


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants (TorchServe runs workers as children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += proc_cpu_seconds(p)
        todo.extend(children.get(p, []))
    return total


def percentiles_ms(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    a = np.asarray(latencies, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


def start_servers(model: BenchModel, configs: Mapping[str, Sequence[str]]) -> dict[str, Component]:
    """`canarycast serve` processes (name -> extra flags), started side by side: one
    process each (`--workers 1`) unless the flags say otherwise, so that a load generator
    on one channel, TorchServe's one worker and nginx meet the same server as before
    `serve` forked a worker per core."""

    def one(item: tuple[str, Sequence[str]]) -> Component:
        name, extra = item
        args = ["serve", "--registry", str(model.registry), "--model", model.ref, "--port", "0"]
        if "--workers" not in extra:
            args += ["--workers", "1"]
        return start_component(name, [*args, "--reload-interval", "60", *extra])

    return start_all(one, list(configs.items()))


def start_all(start: Any, items: list[Any]) -> dict[str, Component]:
    """Start components in parallel threads; stop the started ones if any fails."""
    with ThreadPoolExecutor(max_workers=max(len(items), 1)) as pool:
        futures = [pool.submit(start, item) for item in items]
        done: dict[str, Component] = {}
        error: BaseException | None = None
        for f in futures:
            try:
                c = f.result()
                done[c.name] = c
            except BaseException as exc:
                error = exc
    if error is not None:
        stop_all(done)
        raise error
    return done


def stop_all(components: dict[str, Component]) -> None:
    for c in components.values():
        c.stop(10)


def run_loadgen(scenarios: list[dict[str, Any]], *, progress: str = "") -> list[dict[str, Any]]:
    """Run scenarios one after another in a separate load-generator process."""
    cmd = [sys.executable, "-m", "bench.loadgen"]
    if progress:
        cmd += ["--progress", progress]
    proc = subprocess.run(
        cmd,
        input=json.dumps(scenarios),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    sys.stderr.write(proc.stderr)
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def combine_loadgens(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One scenario run by load generators side by side: forecasts and calls per second
    summed, p50 and p99 the worst of them, errors summed, server CPU as the first one
    measured it (it alone is given the server's pids)."""
    return {
        "forecasts_per_s": sum(p["forecasts_per_s"] for p in parts),
        "calls_per_s": sum(p["calls_per_s"] for p in parts),
        "p50_ms": max(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
        "errors": sum(p["errors"] for p in parts),
        "server_cpu_cores": parts[0]["server_cpu_cores"],
    }


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def now() -> float:
    return time.perf_counter()
