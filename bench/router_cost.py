"""Section 3: what a hop through the router costs, against nginx as the reference proxy.

The same load (single-series calls, fixed concurrency) goes directly to the stable
model server, through `canarycast route` in split mode (weight 0.2, with dual-run
copies, the default, and without them) and in shadow mode, and through nginx
(`grpc_pass` to an upstream weighted 80/20 over the same two servers).
"""

from __future__ import annotations

import shutil
import subprocess
import time
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
)
from canarycast.processes import Component, start_component

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
