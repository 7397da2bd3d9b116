"""The analysis sample: a share of series, by a hash of its id, gets dual-run copies and
forecast records; the other calls are routed and counted only."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from pathlib import Path

import pytest

from canarycast import spans
from canarycast.rollout_client import format_status
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import rollout_pb2 as rpb
from canarycast.v1 import rollout_pb2_grpc as rpb_grpc
from router.app import ControllerSettings
from router.traffic.routing import (
    RoutingPolicy,
    StickyKey,
    decide,
    in_sample,
    key_position,
    sample_position,
)
from tests.conftest import MODEL, TrainedRegistry
from tests.router.test_router import attrs, make_cluster, request

IDS = [f"meter-{i}" for i in range(2000)]
TOKEN = "sample-test-token"


def test_the_sample_is_a_fixed_share_of_series_independent_of_the_routing() -> None:
    policy = RoutingPolicy(canary_weight=0.3, analysis_fraction=0.1)
    decisions = {i: decide(policy, i, None, 0.5, 0.0) for i in IDS}
    sampled = [i for i, d in decisions.items() if d.sampled]
    n = len(IDS)
    assert abs(len(sampled) - 0.1 * n) <= 4.5 * math.sqrt(n * 0.1 * 0.9)
    # the same series every time, whatever the draws, and on any router (a pure hash)
    again = {i: decide(policy, i, None, 0.99, 0.99).sampled for i in IDS}
    assert again == {i: d.sampled for i, d in decisions.items()}
    # the sample does not lean to either variant: its canary share is the weight's
    canary = sum(decisions[i].variant == "canary" for i in sampled)
    assert abs(canary - 0.3 * len(sampled)) <= 4.5 * math.sqrt(len(sampled) * 0.3 * 0.7)
    assert sample_position("meter-1") != key_position("meter-1")
    # copies only for sampled calls; a larger fraction only adds series
    for d in decisions.values():
        assert (d.mirror is not None) == d.sampled
    wider = {i for i in IDS if in_sample(0.3, i)}
    assert set(sampled) <= wider
    assert all(in_sample(1.0, i) for i in IDS) and not any(in_sample(0.0, i) for i in IDS)
    with pytest.raises(ValueError, match="analysis_fraction"):
        RoutingPolicy(analysis_fraction=1.5)


async def test_only_sampled_series_are_copied_and_recorded_and_the_status_says_so(
    registry_copy: TrainedRegistry, tmp_path: Path
) -> None:
    fraction = 0.25
    c = await make_cluster(
        registry_copy,
        canary_weight=0.3,
        analysis_fraction=fraction,
        controller=ControllerSettings(
            registry=registry_copy.root, model=MODEL, state=tmp_path / "state", admin_token=TOKEN
        ),
    )
    ids = IDS[:80]
    expected = {i for i in ids if in_sample(fraction, i)}
    assert 0 < len(expected) < len(ids)
    try:
        answers = await asyncio.gather(*(c.stub.Forecast(request(i)) for i in ids))
        assert [a.forecasts[0].series_id for a in answers] == ids  # every call answered
        for _ in range(300):  # the answered forecast and its copy, per sampled series
            if len(c.forecasts()) >= 2 * len(expected):
                break
            await asyncio.sleep(0.01)
        rows = Counter(
            (row.series_id, attrs(s)[spans.SHADOW])
            for s in c.forecasts()
            for row in spans.read_forecasts(attrs(s))
        )
        assert rows == Counter({(i, shadow): 1 for i in expected for shadow in (False, True)})
        counted = c.router.metrics.sampled_calls
        assert counted.labels("yes")._value.get() == len(expected)
        assert counted.labels("no")._value.get() == len(ids) - len(expected)
        mirrored = sum(
            c.router.metrics.mirrored.labels(v, "OK")._value.get() for v in ("stable", "canary")
        )
        assert mirrored == len(expected)

        # Observe: every point is accepted, only the sampled series' reach the analysis.
        observe = pb.ObserveRequest()
        for i in ids:
            o = observe.observations.add(series_id=i, values=[1.0])
            o.timestamps.add(seconds=100)
        assert (await c.stub.Observe(observe)).accepted_points == len(ids)
        observed = [s for s in c.router_spans.get_finished_spans() if s.name == "observe"]
        assert {
            sid for span in observed for sid, _, _ in spans.read_observations(attrs(span))
        } == expected

        # The controller reports the configured fraction and what the analysis received.
        status = rpb_grpc.RolloutControlStub(c.channel)
        for _ in range(300):
            auth = (("authorization", f"Bearer {TOKEN}"),)
            sample = (await status.GetStatus(rpb.GetStatusRequest(), metadata=auth)).sample
            if sample.answered_calls == len(ids) and sample.recorded_calls == len(expected):
                break
            await asyncio.sleep(0.01)
        assert sample.fraction == fraction
        assert (sample.answered_calls, sample.recorded_calls) == (len(ids), len(expected))
        assert sample.share == pytest.approx(len(expected) / len(ids))
    finally:
        await c.close()


def test_the_status_table_shows_the_sample() -> None:
    status = rpb.RolloutStatus(
        phase=rpb.PROGRESSING,
        sample=rpb.AnalysisSample(
            fraction=0.1, answered_calls=12_210, recorded_calls=1_234, share=1234 / 12210
        ),
    )
    assert "analysis sample  0.1 of series; analysed 10.1% of answered calls (1,234 of 12,210)" in (
        format_status(status)
    )


def test_without_a_sticky_key_the_sample_still_follows_the_series() -> None:
    policy = RoutingPolicy(sticky_key=StickyKey.NONE, analysis_fraction=0.2)
    for i in IDS[:200]:
        draws = {decide(policy, i, None, d, 0.0).sampled for d in (0.0, 0.5, 0.99)}
        assert draws == {in_sample(0.2, i)}
