"""Section 3: what a hop through the router costs, against nginx as the reference proxy.

The same load (single-series calls, fixed concurrency) goes directly to the stable
model server, through `canarycast route` in split mode (weight 0.2, with dual-run
copies, the default, and without them) and in shadow mode, and through nginx
(`grpc_pass` to an upstream weighted 80/20 over the same two servers).

The sample sub-section puts routers with the embedded controller (so with the analyzer)
at `--analysis-fraction` 1, 0.1 and 0.01 under the same load, each bracketed by the
router's CPU seconds and its metrics, for router and analyzer CPU per 1,000 calls.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    CACHE,
    BenchModel,
    ratio,
    run_loadgen,
    start_all,
    start_servers,
    stop_all,
    tree_cpu_seconds,
)
from canarycast.environment import CANARYCAST_ADMIN_TOKEN
from canarycast.processes import Component, start_component

#: The analysis fractions of the sample sub-section, and its distinct series (enough that
#: a 0.01 sample holds about 40 of them).
FRACTIONS = (1.0, 0.1, 0.01)
SAMPLE_POOL = 4096

ROUTERS: dict[str, list[str]] = {
    "router split (dual-run)": ["--mode", "split", "--canary-weight", "0.2"],
    "router split (no copies)": [
        "--mode",
        "split",
        "--canary-weight",
        "0.2",
        "--mirror-fraction",
        "0",
    ],
    "router shadow": ["--mode", "shadow"],
}


def nginx_config(prefix: Path, port: int, stable: str, canary: str) -> str:
    """nginx.conf for a weighted gRPC proxy with every path under `prefix` (nginx 1.22)."""
    return f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    upstream forecasters {{
        server {stable} weight=80;
        server {canary} weight=20;
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        location / {{
            grpc_pass grpc://forecasters;
        }}
    }}
}}
"""


def ensure_nginx() -> str:
    """The nginx binary; installs the Debian package when it is missing (we are root)."""
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "nginx"], check=True, capture_output=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(stable: str, canary: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    binary = ensure_nginx()
    prefix = CACHE / "nginx"
    shutil.rmtree(prefix, ignore_errors=True)
    for d in ("conf", "logs", "tmp"):
        (prefix / d).mkdir(parents=True)
    port = free_port()
    (prefix / "conf" / "nginx.conf").write_text(nginx_config(prefix, port, stable, canary))
    cmd = [binary, "-p", str(prefix), "-c", "conf/nginx.conf", "-e", str(prefix / "logs/error.log")]
    process = subprocess.Popen(
        [*cmd, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, prefix
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("nginx did not open its port within 10 s")


def router_section(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    horizon = model.horizon
    servers = start_servers(model, {"stable": [], "canary": []})
    stable, canary = servers["stable"], servers["canary"]
    routers: dict[str, Component] = {}
    nginx: subprocess.Popen[bytes] | None = None
    nginx_error = ""
    try:

        def start_router(item: tuple[str, list[str]]) -> Component:
            name, flags = item
            return start_component(
                name,
                [
                    "route",
                    "--port",
                    "0",
                    "--stable",
                    stable.target,
                    "--canary",
                    canary.target,
                    *flags,
                ],
            )

        chosen = list(ROUTERS.items())[:1] if smoke else list(ROUTERS.items())
        routers = start_all(start_router, chosen)
        targets: dict[str, tuple[str, list[int]]] = {
            "direct": (stable.target, [stable.process.pid])
        }
        backend_pids = [stable.process.pid, canary.process.pid]
        for name, router in routers.items():
            targets[name] = (router.target, [router.process.pid, *backend_pids])
        if not smoke:
            try:
                nginx, port, _ = start_nginx(stable.target, canary.target)
                targets["nginx (80/20)"] = (f"127.0.0.1:{port}", [nginx.pid, *backend_pids])
            except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                nginx_error = f"{type(exc).__name__}: {exc}"
        scenarios = []
        for c in (16,) if smoke else (1, 16, 64):
            for name, (target, pids) in targets.items():
                scenarios.append(
                    {
                        "name": f"{name}, concurrency {c}",
                        "path": name,
                        "target": target,
                        "server_pids": pids,
                        "concurrency": c,
                        "horizon": horizon,
                        "history": model.lookback,
                        "warmup": 0.2 if smoke else 1.0,
                        "duration": 0.3 if smoke else 4.0,
                    }
                )
        runs = run_loadgen(scenarios, progress="router")
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        stop_all(routers)
        stop_all(servers)
    for s, r in zip(scenarios, runs, strict=True):
        r["path"] = s["path"]
    ratios: dict[str, float] = {}
    for r in runs:
        if r["path"] == "direct":
            continue
        d = next(x for x in runs if x["path"] == "direct" and x["concurrency"] == r["concurrency"])
        key = f"{r['path']} c{r['concurrency']}"
        ratios[f"{key}: throughput / direct"] = ratio(r["forecasts_per_s"], d["forecasts_per_s"])
        ratios[f"{key}: added p50 ms"] = r["p50_ms"] - d["p50_ms"]
        ratios[f"{key}: added p99 ms"] = r["p99_ms"] - d["p99_ms"]
    return {"runs": runs, "ratios": ratios, "nginx_error": nginx_error}


def metric_total(port: int, name: str) -> float:
    """The sum of one metric's samples on a /metrics page (0 when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    total = 0.0
    for line in body.splitlines():
        if not line.startswith("#") and line.split("{")[0].split(" ")[0] == name:
            total += float(line.rpartition(" ")[2])
    return total


def sample_section(model: BenchModel, *, smoke: bool = False) -> dict[str, Any]:
    """Router and analyzer CPU per 1,000 calls at each analysis fraction (dual-run copies,
    weight 0.2, concurrency 64), and throughput against direct in the same run."""
    concurrency = 16 if smoke else 64
    servers = start_servers(model, {"stable": [], "canary": []})
    stable, canary = servers["stable"], servers["canary"]
    state = CACHE / "sample-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    name = model.ref.split(":")[0]
    scenario = {
        "concurrency": concurrency,
        "horizon": model.horizon,
        "history": model.lookback,
        "pool": SAMPLE_POOL,
        "warmup": 0.2 if smoke else 1.0,
        "duration": 0.3 if smoke else 4.0,
    }
    rows: list[dict[str, Any]] = []
    try:
        [direct] = run_loadgen(
            [{**scenario, "name": "direct", "target": stable.target}], progress="sample"
        )
        for fraction in FRACTIONS[:2] if smoke else FRACTIONS:
            router = start_component(
                f"router {fraction}",
                [
                    *("route", "--port", "0", "--metrics-port", "0"),
                    *("--stable", stable.target, "--canary", canary.target),
                    *("--mode", "split", "--canary-weight", "0.2"),
                    *("--analysis-fraction", str(fraction)),
                    *("--registry", str(model.registry), "--model", name),
                    *("--state", str(state / f"{fraction}.db")),
                ],
                env={CANARYCAST_ADMIN_TOKEN: "bench-sample-token"},
            )
            try:
                port = router.metrics_port
                assert port is not None, "the router did not report its metrics port"
                pid = router.process.pid

                def bracket(port: int = port, pid: int = pid) -> dict[str, float]:
                    return {
                        "cpu": tree_cpu_seconds(pid),
                        "calls": metric_total(port, "canarycast_router_sampled_calls_total"),
                        "analysis": metric_total(port, "canarycast_analysis_cpu_seconds_total"),
                    }

                before = bracket()
                [run] = run_loadgen(
                    [
                        {
                            **scenario,
                            "name": f"analysis fraction {fraction}",
                            "target": router.target,
                            "server_pids": [pid],
                        }
                    ],
                    progress="sample",
                )
                time.sleep(0.5 if smoke else 2.0)  # the analyzer drains its queue
                after = bracket()
            finally:
                router.stop(10)
            calls = after["calls"] - before["calls"]
            per_k = 1000.0 / calls if calls else float("nan")
            rows.append(
                {
                    "analysis_fraction": fraction,
                    "calls": int(calls),
                    "router_cpu_s_per_1k_calls": (after["cpu"] - before["cpu"]) * per_k,
                    "analyzer_cpu_s_per_1k_calls": (after["analysis"] - before["analysis"]) * per_k,
                    "throughput_over_direct": ratio(
                        run["forecasts_per_s"], direct["forecasts_per_s"]
                    ),
                    "p50_ms": run["p50_ms"],
                    "p99_ms": run["p99_ms"],
                    "errors": run["errors"],
                }
            )
    finally:
        stop_all(servers)
    return {"concurrency": concurrency, "direct": direct, "rows": rows}
