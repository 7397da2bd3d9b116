"""What the reliability tests share: a rollout world of real processes on loopback, a
load generator that counts every call's outcome, and readings of a process's RSS and
open file descriptors from /proc.

Used by the short tests (`make test`) and the long runs (`make soak`,
`python -m tests.reliability.soak`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from canarycast.processes import Component, start_component
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from server.lifecycle.data import load_dataset
from server.lifecycle.registry import Registry

MODEL = "temps"
TOKEN = "reliability-admin-token"

#: A rollout that cannot end by itself within a test (long steps, no stall rollback):
#: faults and load act on a rollout that is in progress.
SLOW_POLICY: dict[str, Any] = {
    "steps": [0.5, 1.0],
    "min_step_seconds": 3600.0,
    "max_step_seconds": 7200.0,
    "tick_seconds": 0.2,
    "stall_hold_seconds": 3600.0,
    "stall_rollback_seconds": 7200.0,
    "promote_timeout": 10.0,
}

#: A rollout that stays in progress whatever the evidence (load, graceful operations):
#: these tests are about the traffic, not about the verdict.
HOLD_POLICY: dict[str, Any] = {
    **SLOW_POLICY,
    "judge": {"tolerance": 100.0, "max_latency_ratio": 1000.0, "max_error_rate_increase": 1.0},
}

#: The guardrails decide fast (faults): one tick, few pairs. The latency guardrail is
#: loosened: on a shared 2-core host one canary replica next to two stable ones is slower
#: for no fault of its model, and these tests are about the faults they inject.
FAST_POLICY: dict[str, Any] = {
    **SLOW_POLICY,
    "judge": {"min_pairs": 10, "max_latency_ratio": 20.0},
}


def rss_bytes(pid: int) -> int:
    """Resident set size of a live process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(component: Component) -> bool:
    return component.process.poll() is None


def copy_registry(source: Path, target: Path) -> Registry:
    shutil.copytree(source, target)
    return Registry(target)


def start_server(registry: Path, alias: str, *extra: str, name: str = "") -> Component:
    return start_component(
        name or f"{alias} server",
        [
            "serve",
            "--registry",
            str(registry),
            "--model",
            f"{MODEL}@{alias}",
            "--port",
            "0",
            "--reload-interval",
            "0.2",
            "--grace",
            "2",
            "--workers",  # one process: the faults here (SIGSTOP, SIGKILL) stall or kill it
            "1",
            *extra,
        ],
    )


def start_router(
    stable: Sequence[str],
    canary: Sequence[str],
    *,
    registry: Path | None,
    state: Path | None,
    policy: dict[str, Any] | None,
    workdir: Path,
    extra: Sequence[str] = (),
    name: str = "router",
) -> Component:
    """`canarycast route` in front of the given replicas; with `registry`, it runs the
    controller (state file `state`, rollout policy `policy`) with the admin token."""
    args = ["route", "--port", "0", "--metrics-port", "0", "--grace", "2"]
    args += ["--stable", *stable]
    if canary:
        args += ["--canary", *canary]
    if registry is not None:
        assert state is not None
        policy_file = workdir / "policy.json"
        policy_file.write_text(json.dumps(policy or SLOW_POLICY))
        args += ["--registry", str(registry), "--model", MODEL, "--state", str(state)]
        args += ["--policy", str(policy_file)]
    return start_component(name, [*args, *extra], env={"CANARYCAST_ADMIN_TOKEN": TOKEN}, timeout=60)


def stop_all(components: Sequence[Component]) -> None:
    for c in reversed(components):
        if c.process.poll() is None:
            os.kill(c.process.pid, signal.SIGCONT)  # a stopped process cannot drain
        c.stop(10)


# -- the load --

SERIES = load_dataset("seattle-temps").series[0]
LOOKBACK = 48
HORIZON = 6


def forecast_request(i: int, n_series: int = 1, key: str = "load") -> pb.ForecastRequest:
    """A real window of seattle-temps, with its start time (so the answer can be scored)."""
    request = pb.ForecastRequest(horizon=HORIZON)
    for j in range(n_series):
        at = (i * 7 + j * 13) % (len(SERIES.values) - LOOKBACK - HORIZON - 1)
        item = request.series.add(
            series_id=f"{key}-{(i + j) % 97}", history=SERIES.values[at : at + LOOKBACK]
        )
        item.start.FromNanoseconds(
            int(SERIES.timestamps[at].astype("datetime64[ns]").astype(np.int64))
        )
    return request


def observe_request(i: int, key: str = "load") -> pb.ObserveRequest:
    """The value that came after the window of `forecast_request(i)`."""
    at = (i * 7) % (len(SERIES.values) - LOOKBACK - HORIZON - 1) + LOOKBACK
    request = pb.ObserveRequest()
    o = request.observations.add(series_id=f"{key}-{i % 97}", values=[SERIES.values[at]])
    o.timestamps.add().FromNanoseconds(
        int(SERIES.timestamps[at].astype("datetime64[ns]").astype(np.int64))
    )
    return request


BALANCED_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "canarycast.v1.Forecaster"},
    }
)


@dataclass
class LoadStats:
    """Every call's outcome: counts by method and status code, latencies of OK calls."""

    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rejected_latencies: list[float] = field(default_factory=list)
    observed_points: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, for messages
    versions: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> int:
        return sum(n for (_, code), n in self.codes.items() if code == "OK")

    @property
    def failed(self) -> int:
        return sum(n for (_, code), n in self.codes.items() if code != "OK")

    def by_code(self, method: str = "Forecast") -> dict[str, int]:
        return {code: n for (m, code), n in self.codes.items() if m == method}

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


class Load:
    """`concurrency` workers calling Forecast (and Observe every `observe_every` calls)
    through `target` until stopped; nothing is retried, so every failure is counted."""

    def __init__(
        self,
        target: str,
        *,
        concurrency: int = 64,
        channels: int = 4,
        n_series: int = 1,
        observe_every: int = 4,
        timeout: float = 10.0,
        key: str = "load",
        target_uri: str | None = None,
    ) -> None:
        uri = target_uri or target
        # Several routers in one target: round robin over those whose health is SERVING
        # (a draining router says NOT_SERVING first), and a reconnect backoff short enough
        # that a restarted router is taken back within a second (gRPC's default grows to 2 min).
        options = (
            [
                ("grpc.service_config", BALANCED_SERVICE_CONFIG),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ]
            if target_uri
            else []
        )
        self.channels = [grpc.aio.insecure_channel(uri, options=options) for _ in range(channels)]
        self.stubs = [pb_grpc.ForecasterStub(c) for c in self.channels]
        self.concurrency = concurrency
        self.n_series = n_series
        self.observe_every = observe_every
        self.timeout = timeout
        self.key = key
        self.stats = LoadStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._counter = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.get_running_loop().create_task(self._worker(w)) for w in range(self.concurrency)
        ]

    async def stop(self) -> LoadStats:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for channel in self.channels:
            await channel.close()
        return self.stats

    async def run_for(self, seconds: float) -> LoadStats:
        self.start()
        await asyncio.sleep(seconds)
        return await self.stop()

    def _note(self, method: str, exc: grpc.aio.AioRpcError, started: float) -> None:
        self.stats.codes[(method, exc.code().name)] += 1
        self.stats.rejected_latencies.append(time.perf_counter() - started)
        if len(self.stats.failures) < 20:
            self.stats.failures.append(f"{method}: {exc.code().name}: {exc.details()}")

    async def _worker(self, w: int) -> None:
        stub = self.stubs[w % len(self.stubs)]
        while not self._stop.is_set():
            i = self._counter
            self._counter += 1
            started = time.perf_counter()
            try:
                answer = await stub.Forecast(
                    forecast_request(i, self.n_series, self.key), timeout=self.timeout
                )
                self.stats.codes[("Forecast", "OK")] += 1
                self.stats.latencies.append(time.perf_counter() - started)
                self.stats.versions[answer.model.version] += 1
            except grpc.aio.AioRpcError as exc:
                self._note("Forecast", exc, started)
                await asyncio.sleep(0.05)  # a target that is down is not hammered
            if self.observe_every and i % self.observe_every == 0:
                started = time.perf_counter()
                try:
                    out = await stub.Observe(observe_request(i, self.key), timeout=self.timeout)
                    self.stats.codes[("Observe", "OK")] += 1
                    self.stats.observed_points += out.accepted_points
                except grpc.aio.AioRpcError as exc:
                    self._note("Observe", exc, started)


def metric_value(body: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in an exposition text (0 when absent)."""
    total = 0.0
    for line in body.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def scrape(component: Component) -> str:
    import urllib.request

    url = f"http://127.0.0.1:{component.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
    return body.decode()


async def wait_until(predicate: Any, seconds: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(interval)
