"""Graceful operations under load, with real processes: a rolling restart of every
model server (two stable replicas, then the canary) and of the routers (two, behind a
client that balances over both), and a hot reload of a model version. Zero failed calls.

A server told to stop turns NOT_SERVING first, the routers watching its health stop
sending to it, it drains what it has, and exits 0; the same port is then served again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from canarycast.processes import Component
from tests.conftest import TrainedRegistry
from tests.reliability.common import (
    MODEL,
    Load,
    copy_registry,
    metric_value,
    scrape,
    start_router,
    start_server,
    stop_all,
    wait_until,
)

pytestmark = pytest.mark.slow

#: NOT_SERVING for 1 s before the port closes (routers and health-checking clients stop
#: sending), then long enough for every call in flight to finish on a busy 2-core machine.
GRACE = ("--drain-delay", "1", "--grace", "10")
#: `make test` restarts the canary server and one router; `make soak` every component.
EVERY_COMPONENT = os.environ.get("CANARYCAST_RESTART_ALL") == "1"
#: Callers during the restarts (a restarting process must still get CPU on 2 cores).
CONCURRENCY = 32 if EVERY_COMPONENT else 8


@dataclass
class Fleet:
    registry: TrainedRegistry
    servers: list[Component]  # stable a, stable b, canary
    routers: list[Component]
    workdir: Path

    @property
    def uri(self) -> str:
        """Both routers in one target: the client balances over them (round robin)."""
        return "ipv4:" + ",".join(r.target for r in self.routers)

    def all(self) -> list[Component]:
        return [*self.servers, *self.routers]


def router_sees_serving(router: Component, address: str) -> bool:
    return metric_value(scrape(router), "canarycast_router_backend_serving", address=address) == 1


@pytest.fixture(scope="module")
def fleet(trained: TrainedRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("graceful")
    root = workdir / "registry"
    copy_registry(trained.root, root).set_alias(MODEL, "canary", trained.v1.version)
    servers: list[Component] = []
    routers: list[Component] = []
    try:
        servers.append(start_server(root, "stable", *GRACE, name="stable server a"))
        servers.append(start_server(root, "stable", *GRACE, name="stable server b"))
        servers.append(start_server(root, "canary", *GRACE))
        for name in ("router a", "router b"):
            routers.append(
                start_router(
                    [s.target for s in servers[:2]],
                    [servers[2].target],
                    registry=None,
                    state=None,
                    policy=None,
                    workdir=workdir,
                    extra=["--canary-weight", "0.5", *GRACE],
                    name=name,
                )
            )
        yield Fleet(TrainedRegistry(root, trained.v1, trained.v2), servers, routers, workdir)
    finally:
        stop_all([*servers, *routers])


async def restart_in_place(component: Component, again: object) -> Component:
    """SIGTERM (drain), wait for exit 0, start again on the same port."""
    code = await asyncio.to_thread(component.stop, 30)
    assert code == 0, component.tail()
    # again: a lambda with default arguments (bound per loop turn), which mypy cannot type
    return await asyncio.to_thread(again)  # type: ignore[arg-type]


async def test_rolling_restart_of_every_server_and_router_fails_no_call(fleet: Fleet) -> None:
    load = Load(fleet.routers[0].target, target_uri=fleet.uri, concurrency=CONCURRENCY)
    load.start()
    await asyncio.sleep(1.0)
    started = time.monotonic()
    for i, server in enumerate(list(fleet.servers)):
        if i < 2 and not EVERY_COMPONENT:  # the canary only: it has no second replica
            continue
        alias = "canary" if i == 2 else "stable"
        port = str(server.port)
        fleet.servers[i] = await restart_in_place(
            server,
            lambda a=alias, p=port, n=server.name: start_server(
                fleet.registry.root, a, *GRACE, "--port", p, name=n
            ),
        )
        for router in fleet.routers:  # back in rotation before the next one goes
            await wait_until(
                lambda r=router, t=server.target: asyncio.to_thread(router_sees_serving, r, t),
                20,
                f"{router.name} to see {server.name} serving again",
            )
    for i, router in enumerate(list(fleet.routers)):
        if i == 1 and not EVERY_COMPONENT:
            continue
        port = str(router.port)
        before = metric_value(scrape(fleet.routers[1 - i]), "canarycast_router_calls_total")
        fleet.routers[i] = await restart_in_place(
            router,
            lambda p=port, n=router.name: start_router(
                [s.target for s in fleet.servers[:2]],
                [fleet.servers[2].target],
                registry=None,
                state=None,
                policy=None,
                workdir=fleet.workdir,
                extra=["--canary-weight", "0.5", *GRACE, "--port", p],
                name=n,
            ),
        )
        # As an operator would: the restarted router takes calls again before the next goes.
        again = fleet.routers[i]
        await wait_until(
            lambda r=again: asyncio.to_thread(
                lambda: metric_value(scrape(r), "canarycast_router_calls_total") > 100
            ),
            30,
            f"the client to send calls to {again.name} again",
        )
        assert before > 0
    took = time.monotonic() - started
    await asyncio.sleep(1.0)
    stats = await load.stop()
    print(
        f"rolling restart ({'both stable servers, ' if EVERY_COMPONENT else ''}the canary, "
        f"{'both routers' if EVERY_COMPONENT else 'one router'}) in {took:.0f} s at concurrency "
        f"{CONCURRENCY}: {stats.ok} calls OK, "
        f"{stats.failed} failed"
    )
    assert stats.failed == 0, stats.failures
    assert all(c.process.poll() is None for c in fleet.all())


async def test_hot_reload_under_load_fails_no_call(fleet: Fleet) -> None:
    registry = fleet.registry.registry
    load = Load(fleet.routers[0].target, target_uri=fleet.uri, concurrency=32)
    load.start()
    await asyncio.sleep(1.0)
    registry.set_alias(MODEL, "stable", fleet.registry.v2.version)

    def reloaded() -> bool:
        return all(
            any('"model_loaded"' in line and fleet.registry.v2.version in line for line in s.lines)
            for s in fleet.servers[:2]
        )

    await wait_until(reloaded, 20, "both stable servers to load the new version")
    await asyncio.sleep(1.0)
    stats = await load.stop()
    print(
        f"hot reload: {stats.ok} calls OK, {stats.failed} failed, versions {dict(stats.versions)}"
    )
    assert stats.failed == 0, stats.failures
    assert set(stats.versions) == {fleet.registry.v1.version, fleet.registry.v2.version}
