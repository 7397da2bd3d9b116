"""The declarative path: a file naming the desired canary version (the Helm chart mounts it
from `canary.model.version`) starts a rollout exactly as `canarycast rollout start` does.

The controller is driven tick by tick with the fakes of `test_controller` (router weights,
analyzer evidence, clock); the registry and the SQLite store are the real ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from router.rollout.controller import Phase, desired_canary_action
from router.rollout.store import RolloutRecord
from tests.conftest import MODEL, TrainedRegistry
from tests.router.test_controller import BAD, GOOD, POLICY, World, make_world


def desired_world(trained: TrainedRegistry, path: Path) -> World:
    world = make_world(trained)
    world.controller.desired_canary = path
    return world


def record(candidate: str, phase: str, rollout_id: str = "r1") -> RolloutRecord:
    return RolloutRecord(rollout_id, MODEL, "stable00000", candidate, phase, 0, 0.0, 0.0, 0.0)


def test_the_decision_is_a_pure_function_of_stable_latest_and_history() -> None:
    start = desired_canary_action("bbb", stable="aaa", latest=None, concluded=[])
    assert start.start and start.action == "start"
    same = desired_canary_action("aaa", stable="aaa", latest=None, concluded=[])
    assert same.action == "none" and "stable" in same.reason
    active = record("bbb", Phase.PROGRESSING)
    running = desired_canary_action("bbb", stable="aaa", latest=active, concluded=[])
    assert running.action == "none" and "r1" in running.reason
    other = desired_canary_action("ccc", stable="aaa", latest=active, concluded=[])
    assert other.action == "wait" and "bbb" in other.reason
    done = record("ccc", Phase.ROLLED_BACK, "r0")
    again = desired_canary_action(
        "ccc", stable="aaa", latest=record("ddd", "promoted"), concluded=[done]
    )
    assert (
        again.action == "none" and "rolled_back" in again.reason and "rollout start" in again.reason
    )
    fresh = desired_canary_action("eee", stable="aaa", latest=done, concluded=[done])
    assert fresh.start


async def test_a_new_desired_version_starts_a_rollout_like_rollout_start(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    desired = tmp_path / "desired" / "canary"
    world = desired_world(registry_copy, desired)
    await world.tick()  # no file yet (the ConfigMap has no version): nothing happens
    assert world.controller.record is None and world.traffic.weights == []
    desired.parent.mkdir()
    desired.write_text("")  # an empty value: nothing either
    await world.tick()
    assert world.controller.record is None

    v2 = registry_copy.v2.version
    desired.write_text(f"{v2[:8]}\n")  # a unique prefix, as `models list` shows it
    with capture_logs() as logs:
        await world.tick()
    r = world.controller.record
    assert r is not None and (r.candidate_version, r.phase, r.weight) == (
        v2,
        Phase.PROGRESSING,
        POLICY.steps[0],
    )
    assert registry_copy.registry.get_alias(MODEL, "canary") == v2  # canary servers follow it
    assert world.traffic.weights == [POLICY.steps[0]]
    start = world.controller.store.decisions(r.rollout_id)[0]  # then the tick's own "hold"
    assert (start.action, start.actor) == ("start", "desired-canary")
    events = [e for e in logs if e["event"] == "desired_canary"]
    assert [e["action"] for e in events] == ["start"] and events[0]["desired"] == v2[:8]

    # Read again every tick, but the same version never starts a second rollout.
    world.analyzer.current = GOOD
    with capture_logs() as logs:
        await world.tick(11, times=4)
    assert world.record.rollout_id == r.rollout_id
    assert world.record.phase == Phase.PROMOTED
    assert registry_copy.registry.get_alias(MODEL, "stable") == v2
    assert len(world.controller.history()) == 1
    # logged once per change: "candidate of the rollout", then "is the stable version"
    reasons = [e["reason"] for e in logs if e["event"] == "desired_canary"]
    assert len(reasons) == 2 and "stable version" in reasons[-1]


async def test_a_rolled_back_version_is_not_retried_but_a_new_one_is(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    desired = tmp_path / "canary"
    world = desired_world(registry_copy, desired)
    v1, v2 = registry_copy.v1.version, registry_copy.v2.version
    desired.write_text(f"{MODEL}:{v2}")  # NAME:VERSION works too
    await world.tick()
    world.analyzer.current = BAD
    await world.tick(11)
    first = world.record
    assert first.phase == Phase.ROLLED_BACK and world.traffic.weights[-1] == 0.0
    await world.tick(1, times=3)
    assert world.record.rollout_id == first.rollout_id  # not retried

    # A restarted controller reads the history from the store: still not retried.
    world.controller.store.close()
    again = make_world(registry_copy)
    again.controller.desired_canary = desired
    again.clock.now = world.clock.now + 100
    await again.controller.resume_after_restart()
    await again.tick()
    assert again.record.rollout_id == first.rollout_id
    assert len(again.controller.history()) == 1

    # Stable moves to v2 by hand and the values name v1 (the old stable): a new rollout.
    registry_copy.registry.set_alias(MODEL, "stable", v2)
    desired.write_text(v1)
    await again.tick()
    r = again.record
    assert r.rollout_id != first.rollout_id and r.candidate_version == v1
    assert (r.stable_version, r.phase) == (v2, Phase.PROGRESSING)


async def test_a_desired_version_waits_for_the_active_rollout(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    desired = tmp_path / "canary"
    world = desired_world(registry_copy, desired)
    v1, v2 = registry_copy.v1.version, registry_copy.v2.version
    await world.controller.start(f"{MODEL}:{v2}", "alice")  # by hand
    # v1 is stable, so ask for a version that is neither: move stable first
    registry_copy.registry.set_alias(MODEL, "stable", v2)
    desired.write_text(v1)
    with capture_logs() as logs:
        await world.tick(1, times=3)
    r = world.record
    assert r.candidate_version == v2 and len(world.controller.history()) == 1
    waits = [e for e in logs if e["event"] == "desired_canary"]
    assert [e["action"] for e in waits] == ["wait"]  # logged once, not every tick
    await world.controller.rollback("enough", "alice")
    await world.tick()
    assert world.record.candidate_version == v1
    assert world.record.phase == Phase.PROGRESSING


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("abcdef123456", "unknown version"),
        ("other:abcdef123456", "desired canary"),
        ("temps@canary", "desired canary"),
        ("not a version", "invalid"),
    ],
)
async def test_bad_desired_versions_are_refused_with_a_warning(
    registry_copy: TrainedRegistry, tmp_path: Path, content: str, match: str
) -> None:
    desired = tmp_path / "canary"
    desired.write_text(content)
    world = desired_world(registry_copy, desired)
    with capture_logs() as logs:
        await world.tick(1, times=3)
    assert world.controller.record is None and world.traffic.weights == []
    warnings = [e for e in logs if e["event"] == "desired_canary"]
    assert len(warnings) == 1, warnings  # once, not every tick
    assert warnings[0]["log_level"] == "warning" and warnings[0]["action"] == "refused"
    assert match in warnings[0]["reason"].lower()


async def test_the_route_command_passes_the_file_to_the_controller(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    from cli.main import build_parser
    from router.app import ControllerSettings, RouterServer, RouterSettings

    args = build_parser().parse_args(
        [
            "route",
            "--stable",
            "127.0.0.1:1",
            "--registry",
            str(registry_copy.root),
            "--model",
            MODEL,
            "--desired-canary",
            str(tmp_path / "canary"),
        ]
    )
    assert args.desired_canary == tmp_path / "canary"
    settings = ControllerSettings(
        registry=registry_copy.root,
        model=MODEL,
        state=tmp_path / "state.db",
        desired_canary=args.desired_canary,
    )
    server = RouterServer(RouterSettings(stable=args.stable, controller=settings))
    try:
        assert server.controller is not None
        assert server.controller.desired_canary == tmp_path / "canary"
    finally:
        await server.stop(0)
