"""The router loads no torch, scipy or pandas: every router module imports without them in a
fresh interpreter, and a real `canarycast route` process with its controller, its analyzer's
OTLP port and an observation store, once it has answered Forecast and Observe calls and
started a rollout, has none of their shared libraries mapped (read from /proc/PID/maps,
checked against a model server process, which has torch's)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import router
from canarycast.client import ForecastClient, SeriesData
from canarycast.processes import Component, start_component
from tests.conftest import MODEL, TrainedRegistry
from tests.lifecycle.test_torch_free import HEAVY, loaded_after

TOKEN = "torch-free-admin"
VALUES = [50.0 + (i % 24) / 4 for i in range(48)]


def test_every_router_module_loads_no_torch_scipy_or_pandas() -> None:
    modules = sorted(
        m.name for m in pkgutil.walk_packages(router.__path__, "router.") if not m.ispkg
    )
    assert {
        "router.app",
        "router.rollout.controller",
        "router.traffic.proxy",
        "router.rollout.control",
    } <= set(modules)
    assert loaded_after("\n".join(f"import {m}" for m in modules)) == []


def mapped_heavy(pid: int) -> set[str]:
    """The heavy packages whose files (extension modules, bundled libraries such as
    torch/lib/libtorch_cpu.so) process `pid` has mapped; by folder, since numpy bundles a
    `numpy.libs/libscipy_openblas64_*.so` of its own."""
    paths = {
        line.split(maxsplit=5)[5].strip()
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if len(line.split(maxsplit=5)) == 6
    }
    return {
        name for name in HEAVY for path in paths if f"/{name}/" in path or f"/{name}.libs/" in path
    }


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CANARYCAST_ADMIN_TOKEN": TOKEN},
    )


@pytest.fixture
def server(registry_copy: TrainedRegistry) -> Iterator[Component]:
    component = start_component(
        "server",
        [
            "serve",
            "--registry",
            str(registry_copy.root),
            "--model",
            f"{MODEL}@stable",
            "--port",
            "0",
            "--workers",
            "1",
        ],
    )
    yield component
    component.stop(10)


@pytest.mark.slow
def test_a_router_process_with_its_controller_maps_no_torch_scipy_or_pandas(
    server: Component, registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    assert {"torch", "pandas"} <= mapped_heavy(server.process.pid)  # a model server's, seen
    routed = start_component(
        "router",
        [
            "route",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--otlp-port",
            "0",
            "--stable",
            server.target,
            "--canary",
            server.target,
            "--registry",
            str(registry_copy.root),
            "--model",
            MODEL,
            "--state",
            str(tmp_path / "state.db"),
            "--observations",
            str(tmp_path / "observations.db"),
        ],
        env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
    )
    try:
        with ForecastClient(routed.target, timeout=10) as client:
            for _ in range(100):  # the router learns its backend's health asynchronously
                try:
                    [forecast] = client.forecast([SeriesData("s", VALUES)], horizon=4)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                    time.sleep(0.1)
            assert forecast.model.name == MODEL and len(forecast.point) == 4
            hour = 3600 * 10**9
            assert client.observe("s", [hour * i for i in range(1, 4)], [51.0, 52.0, 53.0]) == 3
        started = cli(
            "rollout",
            "--router",
            routed.target,
            "start",
            "--candidate",
            f"{MODEL}:{registry_copy.v2.version}",
        )
        assert started.returncode == 0, started.stderr
        status = cli("rollout", "--router", routed.target, "status", "--json")
        assert status.returncode == 0, status.stderr
        assert routed.process.poll() is None, routed.tail()
        assert mapped_heavy(routed.process.pid) == set()
    finally:
        code = routed.stop()
    assert code == 0, routed.tail()
