"""`canarycast route --workers N`: real forked router workers in front of a real server.

Every worker answers on its own port and, through SO_REUSEPORT, on the shared one (each
new connection lands on one worker); the pod's one scrape sums their calls; SIGTERM of the
parent stops every worker; the embedded controller refuses more than one process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from canarycast.processes import (
    Component,
    start_component,
    start_controller_router,
    start_model_servers,
)
from canarycast.rollout_client import RolloutClient
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from router.app import worker_observations
from server.lifecycle.data import load_dataset
from tests.conftest import MODEL, TrainedRegistry
from tests.server.test_workers import alive, main, scrape

VALUES = load_dataset("seattle-temps").series[0].values
CONNECTIONS = 20  # on the shared port: all on one of 2 workers with probability 2**-19


def router_calls(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "canarycast_router_calls_total" and ("method", "Forecast") in labels
    )


@pytest.fixture
def server(trained: TrainedRegistry) -> Iterator[Component]:
    [component] = start_model_servers(trained.root, MODEL, aliases=("stable",))
    try:
        yield component
    finally:
        component.stop(10)


def request(i: int) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        horizon=6, series=[pb.SeriesInput(series_id=f"s{i}", history=VALUES[i : i + 48])]
    )


async def call_on_new_connections(target: str, connections: int) -> None:
    for i in range(connections):
        # a channel of its own per call: a new TCP connection, placed by the kernel
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            await pb_grpc.ForecasterStub(channel).Forecast(request(i), timeout=10)


def test_router_workers_all_answer_and_one_scrape_sums_them(server: Component) -> None:
    router = start_component(
        "router",
        [
            *("route", "--stable", server.target, "--port", "0", "--metrics-port", "0"),
            *("--workers", "2", "--grace", "1"),
        ],
    )
    try:
        workers = router.workers
        pids = {w["pid"] for w in workers}
        assert len(pids) == 2 and all(map(alive, pids))
        for target in router.worker_targets:  # each worker's own port
            asyncio.run(call_on_new_connections(target, 1))
        assert [router_calls(scrape(w["metrics_port"])) for w in workers] == [1, 1]
        asyncio.run(call_on_new_connections(router.target, CONNECTIONS))
        per_worker = [router_calls(scrape(w["metrics_port"])) for w in workers]
        assert sum(per_worker) == 2 + CONNECTIONS
        assert all(n > 1 for n in per_worker), per_worker  # the shared port spread them
        assert router_calls(scrape(router.metrics_port or 0)) == 2 + CONNECTIONS
        assert router.stop(20) == 0
        assert not any(map(alive, pids))
    finally:
        router.stop(5)


def test_the_embedded_controller_refuses_more_than_one_worker(
    trained: TrainedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["route", "--stable", "127.0.0.1:1", "--registry", str(trained.root)]
    assert main([*args, "--model", MODEL, "--port", "0", "--workers", "2"]) == 1
    assert "--workers 2: the embedded controller" in capsys.readouterr().err
    assert main(["route", "--stable", "127.0.0.1:1", "--workers", "0"]) == 1
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_each_worker_writes_its_own_observation_store(tmp_path: Path) -> None:
    path = tmp_path / "router-a.db"
    assert worker_observations(path, 0) == path
    assert worker_observations(path, 2) == tmp_path / "router-a.w2.db"
    assert worker_observations(None, 1) is None


TOKEN = "workers-admin-token"


def test_follower_workers_all_take_the_weight_of_the_one_controller(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    registry_copy.registry.set_alias(MODEL, "canary", registry_copy.v1.version)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"steps": [0.5, 1.0], "min_step_seconds": 600.0}))
    components: list[Component] = []
    try:
        components += start_model_servers(registry_copy.root, MODEL, extra=["--grace", "1"])
        stable, canary = components
        controller = start_controller_router(
            components,
            registry_copy.root,
            MODEL,
            state=tmp_path / "r.db",
            policy=policy,
            token=TOKEN,
        )
        components.append(controller)
        follower = start_component(
            "follower",
            [
                *("route", "--port", "0", "--metrics-port", "0", "--grace", "1"),
                *("--stable", stable.target, "--canary", canary.target),
                *("--follow", controller.target, "--workers", "2"),
            ],
            env={"CANARYCAST_ADMIN_TOKEN": TOKEN},
        )
        components.append(follower)
        with RolloutClient(controller.target, TOKEN) as client:
            client.start(f"{MODEL}:{registry_copy.v2.version}")
            client.set_weight(0.3)
        weight = ("canarycast_router_canary_weight", ())
        deadline = time.monotonic() + 30
        while [scrape(w["metrics_port"]).get(weight) for w in follower.workers] != [0.3, 0.3]:
            assert time.monotonic() < deadline, "a worker did not take the controller's weight"
            time.sleep(0.2)
        assert scrape(follower.metrics_port or 0)[weight] == 0.3  # the pod: one weight
    finally:
        for component in reversed(components):
            component.stop(10)
