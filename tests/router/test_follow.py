"""Router replicas follow the weights set by the router that runs the controller."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from router.app import ControllerSettings, RouterServer, RouterSettings
from tests.conftest import MODEL, TrainedRegistry

TOKEN = "follow-token"


async def eventually(predicate: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_replica_follows_the_controllers_weight(registry_copy: TrainedRegistry) -> None:
    leader = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            canary=["127.0.0.1:2"],
            controller=ControllerSettings(
                registry=registry_copy.root,
                model=MODEL,
                state=registry_copy.root / "rollouts.db",
                admin_token=TOKEN,
            ),
        )
    )
    await leader.start()
    target = f"127.0.0.1:{leader.port}"
    replica = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"], canary=["127.0.0.1:2"], follow=target, follow_token=TOKEN
        )
    )
    stranger = RouterServer(
        RouterSettings(
            stable=["127.0.0.1:1"],
            canary=["127.0.0.1:2"],
            follow=target,
            follow_token="nope",
            canary_weight=0.3,
        )
    )
    await replica.start()
    await stranger.start()
    try:
        assert leader.controller is not None and replica.follower is not None
        follower = replica.follower
        await eventually(lambda: follower.applied == 0.0, "the idle weight")
        await leader.controller.start(f"{MODEL}:{registry_copy.v2.version}")
        first = leader.controller.policy.steps[0]
        await eventually(lambda: replica.router.policy.canary_weight == first, "the first step")
        await leader.controller.set_weight(0.4)
        await eventually(lambda: replica.router.policy.canary_weight == 0.4, "a manual weight")
        await leader.stop(grace=0)  # the controller goes away: the replica keeps its weight
        await eventually(lambda: not follower.connected, "the lost stream")
        assert replica.router.policy.canary_weight == 0.4
        assert stranger.follower is not None and stranger.follower.applied is None
        assert stranger.router.policy.canary_weight == 0.3  # refused: nothing applied
    finally:
        await leader.stop(grace=0)
        await replica.stop(grace=0)
        await stranger.stop(grace=0)


def test_a_router_cannot_both_lead_and_follow(registry_copy: TrainedRegistry) -> None:
    with pytest.raises(ValueError, match="not both"):
        RouterServer(
            RouterSettings(
                stable=["127.0.0.1:1"],
                follow="127.0.0.1:3",
                controller=ControllerSettings(
                    registry=registry_copy.root, model=MODEL, state=registry_copy.root / "r.db"
                ),
            )
        )
