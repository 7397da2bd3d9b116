"""Faults during a rollout, with real processes on loopback — one rollout's bad day, in
order: the registry's alias file is corrupted, the router (with its controller) is
killed and restarted, a stable replica is killed (a second one is present), the canary
hangs (SIGSTOP), a second rollout's canary is killed, and the controller's state file
is corrupted.

For each: the client-visible failures are counted (zero where a healthy replica
exists), the rollout's state is checked, and every observation a client saw accepted
is counted by the router and reaches its analyzer. The tests of this module share one
set of processes and run in the order written (each leaves the state the next expects).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from canarycast.processes import Component
from canarycast.rollout_client import RolloutClient
from canarycast.v1 import rollout_pb2 as rpb
from tests.conftest import TrainedRegistry
from tests.reliability.common import (
    FAST_POLICY,
    MODEL,
    TOKEN,
    Load,
    LoadStats,
    alive,
    copy_registry,
    metric_value,
    scrape,
    start_router,
    start_server,
    stop_all,
    wait_until,
)

pytestmark = pytest.mark.slow


@dataclass
class World:
    registry: TrainedRegistry
    workdir: Path
    stable_a: Component
    stable_b: Component
    canary: Component
    router: Component
    port: int
    components: list[Component]

    @property
    def state(self) -> Path:
        return self.workdir / "rollouts.db"

    def start_router(self) -> Component:
        router = start_router(
            [self.stable_a.target, self.stable_b.target],
            [self.canary.target],
            registry=self.registry.root,
            state=self.state,
            policy=FAST_POLICY,
            workdir=self.workdir,
            extra=["--keepalive", "1", "--port", str(self.port)],
        )
        self.components.append(router)
        self.router = router
        return router

    def client(self) -> RolloutClient:
        return RolloutClient(self.router.target, TOKEN, timeout=10)

    async def status(self) -> rpb.RolloutStatus:
        def get() -> rpb.RolloutStatus:
            with self.client() as client:
                return client.status()

        return await asyncio.to_thread(get)

    async def wait_for_end(self, seconds: float) -> rpb.RolloutStatus:
        deadline = time.monotonic() + seconds
        while True:
            status = await self.status()
            if status.phase in (rpb.ROLLED_BACK, rpb.PROMOTED) or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.2)

    def observations(self) -> tuple[float, float]:
        """(points the router counted, observation records its analyzer received)."""
        body = scrape(self.router)
        return (
            metric_value(body, "canarycast_router_observed_points_total"),
            metric_value(body, "canarycast_analysis_spans_total", kind="observe"),
        )

    async def check_observations(
        self, before: tuple[float, float], stats: LoadStats, exact: bool = True
    ) -> None:
        """No accepted observation lost: each Observe of the load carries one point, which
        the router counts and its analyzer receives; every answered Forecast also carries
        its recent history as implicit actuals (one more observation record each)."""
        expected = stats.observed_points + stats.by_code().get("OK", 0)

        async def all_in() -> bool:
            counted, analysed = await asyncio.to_thread(self.observations)
            got = analysed - before[1]
            return counted - before[0] == stats.observed_points and (
                got == expected if exact else got >= expected
            )

        try:
            await wait_until(all_in, 10, "every accepted observation to be recorded")
        except AssertionError:
            counted, analysed = await asyncio.to_thread(self.observations)
            raise AssertionError(
                f"accepted {stats.observed_points}, router counted {counted - before[0]}, "
                f"analyzer got {analysed - before[1]} records of the {expected} expected"
            ) from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def world(trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("faults")
    registry = copy_registry(trained.root, workdir / "registry")
    registry.set_alias(MODEL, "canary", trained.v1.version)
    root = workdir / "registry"
    components: list[Component] = []
    try:
        components.append(start_server(root, "stable", name="stable server a"))
        components.append(start_server(root, "stable", name="stable server b"))
        components.append(start_server(root, "canary"))
        w = World(
            TrainedRegistry(root, trained.v1, trained.v2),
            workdir,
            components[0],
            components[1],
            components[2],
            router=components[0],  # replaced just below
            port=free_port(),
            components=components,
        )
        w.start_router()
        with w.client() as client:
            client.start(f"{MODEL}:{trained.v2.version}")
        yield w
    finally:
        stop_all(components)


async def test_1_a_corrupt_alias_file_refuses_promotion_and_nothing_else_changes(
    world: World,
) -> None:
    aliases = world.registry.root / MODEL / "aliases.json"
    good = aliases.read_bytes()
    before = world.observations()
    load = Load(world.router.target, concurrency=16)
    load.start()
    with world.client() as client:
        for name, damage in (("truncated", good[: len(good) // 2]), ("garbage", b"\x00\xff{")):
            aliases.write_bytes(damage)
            with pytest.raises(grpc.RpcError) as caught:
                await asyncio.to_thread(client.promote, True)
            code, details = caught.value.code(), caught.value.details()
            print(f"alias file {name}: Promote(full) -> {code.name}: {details}")
            assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
            assert "aliases.json" in details
            assert client.status().phase == rpb.PROGRESSING  # not promoted, not rolled back
            await asyncio.sleep(0.6)  # the servers' alias watch fails, they keep serving
    aliases.write_bytes(good)
    stats = await load.stop()
    print(f"alias file: {stats.ok} calls OK, {stats.failed} failed")
    assert stats.failed == 0, stats.failures
    for server in (world.stable_a, world.canary):
        assert any('"model_reload_failed"' in line for line in server.lines), server.name
    assert world.registry.registry.get_alias(MODEL, "stable") == world.registry.v1.version
    await world.check_observations(before, stats)


async def test_2_a_killed_router_restarts_and_resumes_the_rollout(world: World) -> None:
    before_kill = await world.status()
    load = Load(world.router.target, concurrency=16)
    load.start()
    await asyncio.sleep(0.5)
    world.router.process.kill()  # no goodbye: the state file carries the rollout
    world.router.process.wait()
    down_at = time.monotonic()
    await asyncio.to_thread(world.start_router)
    gap = time.monotonic() - down_at
    await asyncio.sleep(0.5)
    during = await load.stop()
    print(
        f"router kill -9 and restart: {gap:.1f} s down, {during.ok} calls OK, failed by code "
        f"{during.by_code()} (one router: no healthy replica during the gap)"
    )
    assert set(during.by_code()) <= {"OK", "UNAVAILABLE"}
    resumed = await world.status()
    assert (resumed.rollout_id, resumed.step, resumed.canary_weight, resumed.phase) == (
        before_kill.rollout_id,
        before_kill.step,
        before_kill.canary_weight,
        rpb.PROGRESSING,
    )
    assert any('"action": "resume"' in line for line in world.router.lines)
    before = world.observations()
    stats = await Load(world.router.target, concurrency=16).run_for(1.0)
    assert stats.failed == 0, stats.failures
    await world.check_observations(before, stats)


async def test_3_kill_9_one_of_two_stable_replicas_fails_no_call(world: World) -> None:
    before = world.observations()
    load = Load(world.router.target, concurrency=16)
    load.start()
    await asyncio.sleep(0.7)
    world.stable_a.process.kill()
    await asyncio.sleep(1.5)
    stats = await load.stop()
    print(f"stable replica kill -9: {stats.ok} calls OK, {stats.failed} failed")
    assert stats.failed == 0, stats.failures
    assert (await world.status()).phase == rpb.PROGRESSING  # a stable fault is no verdict
    assert alive(world.stable_b) and alive(world.router)
    await world.check_observations(before, stats)


async def test_4_a_hung_canary_deadlines_fire_and_the_guardrail_rolls_back(world: World) -> None:
    """SIGSTOP: the canary accepts connections and answers nothing. Calls to it end by the
    router's keepalive (then fail over) or by the client's own deadline; none hangs."""
    before = world.observations()
    load = Load(world.router.target, concurrency=16, timeout=3.0)
    load.start()
    await asyncio.sleep(0.5)
    os.kill(world.canary.process.pid, signal.SIGSTOP)
    try:
        status = await world.wait_for_end(40)
        await asyncio.sleep(0.5)
        stats = await load.stop()
    finally:
        os.kill(world.canary.process.pid, signal.SIGCONT)
    slowest = max([*stats.latencies, *stats.rejected_latencies])
    print(
        f"canary SIGSTOP: {stats.ok} calls OK, failed by code {stats.by_code()}, slowest "
        f"{slowest:.2f} s; rolled back by guardrail {status.judgement.guardrail!r}"
    )
    assert status.phase == rpb.ROLLED_BACK, status
    assert status.judgement.guardrail in ("error_rate", "latency_p99"), status
    assert status.canary_weight == 0.0
    # Every call ended: OK, or its own deadline fired. None was left hanging.
    assert set(stats.by_code()) <= {"OK", "DEADLINE_EXCEEDED"}, stats.failures
    assert set(stats.by_code("Observe")) <= {"OK"}  # Observe never waits on a backend
    assert slowest < 3.0 + 2.0  # the client's deadline (3 s) plus scheduling slack
    # A call that timed out at the client may still have been answered and recorded.
    await world.check_observations(before, stats, exact=False)


async def test_5_kill_9_the_canary_fails_no_call_and_the_guardrail_rolls_back(
    world: World,
) -> None:
    with world.client() as client:
        await wait_until(
            lambda: world.canary.process.poll() is None, 5, "the canary to be running again"
        )
        client.start(f"{MODEL}:{world.registry.v2.version}")
    before = world.observations()
    load = Load(world.router.target, concurrency=16)
    load.start()
    await asyncio.sleep(1.0)
    world.canary.process.kill()
    status = await world.wait_for_end(30)
    await asyncio.sleep(0.5)
    stats = await load.stop()
    print(f"canary kill -9: {stats.ok} calls OK, {stats.failed} failed")
    assert stats.failed == 0, stats.failures
    assert status.phase == rpb.ROLLED_BACK, status
    assert status.judgement.guardrail == "error_rate", status
    assert world.registry.registry.get_alias(MODEL, "stable") == world.registry.v1.version
    await world.check_observations(before, stats)


def route(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CANARYCAST_ADMIN_TOKEN": TOKEN},
    )


def test_6_a_corrupt_state_file_is_refused_with_a_clear_error(world: World) -> None:
    """The router will not start from a state file it cannot read (never 'no rollout',
    never a promotion): it exits 1 naming the file."""
    assert world.router.stop() == 0
    good = world.state.read_bytes()
    args = ["route", "--port", "0", "--stable", world.stable_b.target]
    args += ["--registry", str(world.registry.root), "--model", MODEL, "--state", str(world.state)]
    for name, damage in (
        ("garbage", b"this is not a database" * 200),
        ("truncated", good[: len(good) // 2]),
        ("emptied", b""),
    ):
        world.state.write_bytes(damage)
        for side in ("rollouts.db-wal", "rollouts.db-shm"):
            (world.workdir / side).unlink(missing_ok=True)
        out = route(args)
        print(f"state file {name}: exit {out.returncode}: {out.stderr.strip().splitlines()[-1]}")
        assert out.returncode == 1, (name, out.stderr)
        assert "rollout state file" in out.stderr and str(world.state) in out.stderr
        assert "Traceback" not in out.stderr, out.stderr
    assert world.registry.registry.get_alias(MODEL, "stable") == world.registry.v1.version
