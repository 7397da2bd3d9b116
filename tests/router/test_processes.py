"""A router in front of model servers running as real processes, which we stall and kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from canarycast.processes import Component, start_component, start_model_servers
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from router.app import RouterServer, RouterSettings
from router.traffic.routing import Mode, StickyKey
from server.lifecycle.data import load_dataset
from tests.conftest import MODEL, TrainedRegistry

VALUES = load_dataset("seattle-temps").series[0].values


def request(i: int) -> pb.ForecastRequest:
    return pb.ForecastRequest(
        horizon=6, series=[pb.SeriesInput(series_id=f"s{i}", history=VALUES[i : i + 48])]
    )


@pytest.fixture
def servers(registry_copy: TrainedRegistry) -> Iterator[tuple[Component, Component]]:
    registry_copy.registry.set_alias(MODEL, "canary", registry_copy.v2.version)
    started = start_model_servers(registry_copy.root, MODEL, extra=["--grace", "1"])
    yield started[0], started[1]
    for component in started:
        if component.process.poll() is None:
            os.kill(component.process.pid, signal.SIGCONT)
        component.stop(5)


@contextlib.asynccontextmanager
async def routed(
    servers: tuple[Component, Component], **settings: Any
) -> AsyncIterator[tuple[RouterServer, pb_grpc.ForecasterStub]]:
    """An in-process router in front of the two server processes, and a stub on it."""
    stable, canary = servers
    router = RouterServer(
        RouterSettings(stable=[stable.target], canary=[canary.target], **settings)
    )
    await router.start()
    async with asyncio.timeout(20):
        await router.wait_for_backends()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{router.port}")
    try:
        yield router, pb_grpc.ForecasterStub(channel)
    finally:
        await channel.close()
        await router.stop(grace=1)


async def run_load(
    stub: pb_grpc.ForecasterStub, calls: int, concurrency: int = 8
) -> tuple[list[float], list[BaseException]]:
    latencies: list[float] = []
    failures: list[BaseException] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            try:
                await stub.Forecast(request(i % 500), timeout=10)
                latencies.append(time.perf_counter() - started)
            except grpc.aio.AioRpcError as exc:
                failures.append(exc)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, failures


@pytest.mark.parametrize("mode", [Mode.SPLIT, Mode.SHADOW], ids=["dual-run", "shadow"])
async def test_a_stalled_then_killed_canary_never_fails_or_slows_a_call(
    servers: tuple[Component, Component], mode: Mode
) -> None:
    canary = servers[1]
    async with routed(
        servers,
        mode=mode,
        canary_weight=0.0 if mode is Mode.SPLIT else 0.5,
        mirror_fraction=1.0,
        mirror_queue_size=16,
        mirror_workers=4,
        mirror_timeout=3.0,
    ) as (router, stub):
        healthy, failures = await run_load(stub, 100)
        assert failures == []
        os.kill(canary.process.pid, signal.SIGSTOP)  # a hung canary: it accepts nothing
        stalled, failures = await run_load(stub, 300)
        assert failures == []
        # Had a call waited on the canary, it would have taken the 3 s mirror deadline.
        assert max(stalled) < 1.5, max(stalled)
        metrics = router.metrics
        copies_lost = metrics.mirror_dropped.labels("canary")._value.get() + sum(
            metrics.mirrored.labels("canary", code)._value.get()
            for code in ("DEADLINE_EXCEEDED", "UNAVAILABLE")
        )
        assert copies_lost > 0
        os.kill(canary.process.pid, signal.SIGKILL)
        os.kill(canary.process.pid, signal.SIGCONT)
        killed, failures = await run_load(stub, 200)
        assert failures == []
        print(
            f"p50 latency healthy {np.median(healthy) * 1e3:.1f} ms, canary stalled "
            f"{np.median(stalled) * 1e3:.1f} ms, canary killed {np.median(killed) * 1e3:.1f} ms"
        )


async def test_split_mode_fails_over_when_the_canary_is_killed(
    servers: tuple[Component, Component],
) -> None:
    canary = servers[1]
    async with routed(
        servers, canary_weight=0.5, sticky_key=StickyKey.NONE, mirror_fraction=0.0
    ) as (router, stub):
        load = asyncio.ensure_future(run_load(stub, 600))
        await asyncio.sleep(0.3)
        canary.process.kill()
        _, failures = await load
        assert failures == []
        assert router.metrics.failovers.labels("canary")._value.get() > 0
        answered = {
            variant: sum(
                router.metrics.routed.labels(variant, reason, "OK")._value.get()
                for reason in ("weight", "failover")
            )
            for variant in ("stable", "canary")
        }
        assert answered["canary"] > 0 and answered["stable"] > 0


def test_route_command_serves_the_forecaster_through_real_processes(
    servers: tuple[Component, Component], registry_copy: TrainedRegistry
) -> None:
    import json
    import subprocess
    import sys
    import urllib.request

    stable, canary = servers
    router = start_component(
        "router",
        [
            "route",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--stable",
            stable.target,
            "--canary",
            canary.target,
            "--canary-weight",
            "1.0",
        ],
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # the router learns its backends' health asynchronously
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cli.main",
                    "forecast",
                    "--target",
                    router.target,
                    "--values",
                    ",".join(["50"] * 48),
                    "--horizon",
                    "3",
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        assert answer["model"]["variant"] == "canary"
        assert answer["model"]["version"] == registry_copy.v2.version
        url = f"http://127.0.0.1:{router.metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert (
            'canarycast_router_routed_calls_total{code="OK",reason="sticky",variant="canary"}'
            in body
        )
        assert "canarycast_router_canary_weight 1.0" in body
        assert (
            f'canarycast_router_backend_serving{{address="{stable.target}",variant="stable"}} 1.0'
            in body
        )
    finally:
        assert router.stop() == 0
