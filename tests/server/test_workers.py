"""`canarycast serve --workers N`: real forked workers on free loopback ports.

A router dials each worker's own port as a replica and both workers answer; the pod's one
scrape sums the workers' counters; health is SERVING on the shared port; every worker
hot-reloads; SIGTERM of the parent drains and stops every worker; a worker that dies stops
the pod with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from canarycast.processes import Component, start_component
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from canarycast.workers import default_workers, merge_expositions, worker_ports
from cli.main import COMMANDS, build_parser
from router.app import RouterServer, RouterSettings
from server.lifecycle.data import load_dataset
from server.serving.app import forward_with_threads, torch_threads
from server.serving.loader import load_model
from tests.conftest import MODEL, TrainedRegistry

VALUES = load_dataset("seattle-temps").series[0].values
CALLS = 40


def main(argv: list[str]) -> int:
    """The command's exit code, in process, with logging left as the tests set it (the CLI's
    `main` would point structlog at this test's captured stderr for good)."""
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def forecast_calls(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "canarycast_server_calls_total" and ("method", "Forecast") in labels
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_workers(root: object, *extra: str) -> Component:
    return start_component(
        "server",
        [
            "serve",
            "--registry",
            str(root),
            "--model",
            f"{MODEL}@stable",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--workers",
            "2",
            "--grace",
            "1",
            *extra,
        ],
    )


@pytest.fixture
def server(registry_copy: TrainedRegistry) -> Iterator[Component]:
    component = start_workers(registry_copy.root, "--reload-interval", "0.2")
    try:
        yield component
    finally:
        component.stop(20)


async def check_health(target: str, service: str = "canarycast.v1.Forecaster") -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(answer.status)


async def versions(targets: list[str]) -> list[str]:
    found = []
    for target in targets:
        async with grpc.aio.insecure_channel(target) as channel:
            info = await pb_grpc.ForecasterStub(channel).GetModel(pb.GetModelRequest(), timeout=5)
        found.append(info.model.version)
    return found


def test_calls_through_a_router_are_spread_over_both_workers_and_one_scrape_sums_them(
    server: Component, registry_copy: TrainedRegistry
) -> None:
    workers = server.workers
    assert len(workers) == 2
    pids = {w["pid"] for w in workers}
    assert len(pids) == 2 and server.process.pid not in pids and all(map(alive, pids))
    assert len({w["port"] for w in workers} | {server.port}) == 3  # own ports + shared one
    assert {w["torch_threads"] for w in workers} == {torch_threads(2)}

    async def scenario() -> None:
        # the shared port and each worker's own port say SERVING
        for target in [server.target, *server.worker_targets]:
            assert await check_health(target) == health_pb2.HealthCheckResponse.SERVING
        router = RouterServer(RouterSettings(stable=server.worker_targets, canary=[]))
        await router.start()
        try:
            async with asyncio.timeout(20):
                await router.wait_for_backends()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{router.port}") as channel:
                stub = pb_grpc.ForecasterStub(channel)
                for i in range(CALLS):  # one connection from the client, one call at a time
                    history = VALUES[i : i + int(registry_copy.v1.config["lookback"])]
                    await stub.Forecast(
                        pb.ForecastRequest(
                            horizon=6, series=[pb.SeriesInput(series_id=f"s{i}", history=history)]
                        ),
                        timeout=10,
                    )
        finally:
            await router.stop(grace=1)

    asyncio.run(scenario())
    per_worker = [forecast_calls(scrape(w["metrics_port"])) for w in workers]
    assert sum(per_worker) == CALLS
    assert all(n > 0 for n in per_worker), per_worker  # both workers answered
    pod = scrape(server.metrics_port or 0)
    assert forecast_calls(pod) == CALLS
    assert pod[("canarycast_server_workers", ())] == 2
    info = [k for k in pod if k[0] == "canarycast_server_model_info"]
    assert len(info) == 1 and pod[info[0]] == 1  # one version: one series, not two
    assert pod[("canarycast_server_forecasts_total", ())] == CALLS

    # hot reload: every worker follows the alias
    registry_copy.registry.set_alias(MODEL, "stable", registry_copy.v2.version)
    deadline = time.monotonic() + 30
    while asyncio.run(versions(server.worker_targets)) != [registry_copy.v2.version] * 2:
        assert time.monotonic() < deadline, "a worker did not reload"
        time.sleep(0.2)

    # SIGTERM of the parent drains and stops every worker, exit 0
    assert server.stop(20) == 0
    assert not any(map(alive, pids))
    stopped = [line for line in server.lines if '"event": "stopped"' in line]
    assert len(stopped) == 3  # each worker, then the parent


def test_a_worker_that_dies_stops_the_pod_with_a_nonzero_exit(
    trained: TrainedRegistry,
) -> None:
    server = start_workers(trained.root)
    try:
        first, second = server.workers
        os.kill(first["pid"], signal.SIGKILL)
        assert server.process.wait(30) == 1
        assert not alive(second["pid"])
        assert any('"event": "worker exited"' in line for line in server.lines)
    finally:
        server.stop(5)


def test_workers_that_cannot_load_end_the_parent_with_the_reason(
    trained: TrainedRegistry,
) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "cli.main", "serve", "--registry", str(trained.root)),
            *("--model", f"{MODEL}@nosuch", "--port", "0", "--workers", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "canarycast serve: worker 0:" in done.stderr or "worker 1:" in done.stderr


def test_bad_worker_flags_are_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", "m@stable", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    too_high = ["--workers", "2", "--worker-port-base", "65535"]
    assert main(["serve", "--model", "m@stable", *too_high]) == 2
    assert "--worker-port-base 65535" in capsys.readouterr().err
    with pytest.raises(ValueError, match="include --port"):
        worker_ports(2, 50052, 50051)
    assert worker_ports(3, 50051, None) == [50052, 50053, 50054]
    assert worker_ports(2, 0, None) == [0, 0]
    assert default_workers() == len(os.sched_getaffinity(0))
    assert torch_threads(2, cores=16) == 8 and torch_threads(4, cores=2) == 1


def test_merged_expositions_read_as_one_process() -> None:
    def process(calls: int, depth: float, failing: float, version: str) -> str:
        registry = CollectorRegistry()
        c = Counter("x_calls", "calls", ["code"], registry=registry)
        c.labels("OK").inc(calls)
        h = Histogram("x_seconds", "time", buckets=(0.1, 1.0), registry=registry)
        for _ in range(calls):
            h.observe(0.5)
        Gauge("x_queue_depth", "queued", registry=registry).set(depth)
        Gauge("x_reload_failing", "failing", registry=registry).set(failing)
        Info("x_model", "model", registry=registry).info({"version": version})
        return generate_latest(registry).decode()

    merged_registry = CollectorRegistry()

    class Merged:
        def collect(self) -> list[object]:
            return merge_expositions(
                [process(3, 2, 0, "a"), process(4, 5, 1, "a")], frozenset({"x_reload_failing"})
            )

    # a plain object with collect(), which is all prometheus_client calls of a collector
    merged_registry.register(Merged())  # type: ignore[arg-type]
    text = generate_latest(merged_registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("x_calls_total", (("code", "OK"),))] == 7
    assert samples[("x_seconds_bucket", (("le", "1.0"),))] == 7
    assert samples[("x_seconds_bucket", (("le", "0.1"),))] == 0
    assert samples[("x_seconds_count", ())] == 7 and samples[("x_seconds_sum", ())] == 3.5
    assert samples[("x_queue_depth", ())] == 7  # summed
    assert samples[("x_reload_failing", ())] == 1  # the largest
    assert samples[("x_model_info", (("version", "a"),))] == 1  # the same label set once


def test_the_torch_thread_count_is_set_in_the_thread_that_runs_the_forward_pass(
    trained: TrainedRegistry,
) -> None:
    import threading

    import numpy as np
    import torch

    model = load_model(trained.registry, f"{MODEL}@stable")
    windows = np.stack([VALUES[:48], VALUES[48:96]])
    forward = forward_with_threads(1)
    seen: list[int] = []

    def batcher_thread() -> None:  # a fresh thread starts with torch's default count
        out = forward(model, windows)
        assert np.array_equal(out, model.predict(windows))
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    thread = threading.Thread(target=batcher_thread)
    thread.start()
    thread.join()
    torch.set_num_threads(before)  # torch's count is also process-wide: leave it as found
    assert seen == [1]


def test_a_parent_that_cannot_serve_its_metrics_stops_its_workers(
    trained: TrainedRegistry,
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "cli.main", "serve", "--registry", str(trained.root)),
                *("--model", f"{MODEL}@stable", "--port", "0", "--workers", "2"),
                *("--metrics-port", str(port), "--grace", "1"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert "canarycast serve: [Errno 98]" in done.stderr
    started = [line for line in done.stderr.splitlines() if '"workers started"' in line]
    pids = json.loads(started[0])["pids"]
    assert len(pids) == 2 and not any(map(alive, pids))
