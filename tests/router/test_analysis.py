"""The analyzer: joining forecasts with actuals, pairs, evidence, bounds, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from router.rollout.analysis import (
    DEGENERATE_SCALE_FRACTION,
    Analyzer,
    CallRecord,
    ForecastRecord,
    ObservationRecord,
    effective_scale,
)
from router.rollout.judge import CANARY_SCORE, COUNT, STABLE_SCORE, Evidence


def pairs(evidence: Evidence) -> np.ndarray:
    """(stable, canary) mean scores of each row of paired steps (one row per actual)."""
    return evidence.row_means().reshape(-1, 2)


S = 1_000_000_000  # one second in ns
T0 = 1_700_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def analyzer(clock: Clock) -> Analyzer:
    return Analyzer(ttl=60.0, clock=clock)


def forecast(
    fid: str,
    point: tuple[float, ...] = (1.0, 2.0, 3.0),
    *,
    series: str = "a",
    variant: str = "stable",
    call: str | None = None,
    start: int = T0,
    scale: float = 1.0,
    timestamps: tuple[int, ...] | None = None,
) -> ForecastRecord:
    if timestamps is None:
        timestamps = tuple(start + i * S for i in range(len(point)))
    return ForecastRecord(
        series_id=series,
        forecast_id=fid,
        call_id=call,
        variant=variant,
        model_version="v1",
        timestamps=timestamps,
        point=point,
        scale=scale,
        shadow=variant == "canary",
    )


def observe(values: tuple[float, ...], *, series: str = "a", start: int = T0) -> ObservationRecord:
    return ObservationRecord(series, tuple(start + i * S for i in range(len(values))), values)


def test_forecast_waits_for_all_its_actuals(analyzer: Analyzer) -> None:
    analyzer.add_forecast(forecast("f1", scale=2.0))
    analyzer.add_observation(observe((1.0, 4.0)))  # two of three points
    assert analyzer.stats().pending_forecasts == 1
    assert analyzer.stats().scored["stable"] == 0
    analyzer.add_observation(observe((0.0,), start=T0 + 2 * S))
    stats = analyzer.stats()
    assert stats.pending_forecasts == 0
    assert stats.scored == {"stable": 1, "canary": 0}
    # errors |1-1|/2, |4-2|/2, |0-3|/2 -> mean 5/6
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [5 / 6])


def test_actuals_before_the_forecast_score_it_on_arrival(analyzer: Analyzer) -> None:
    analyzer.add_observation(observe((2.0, 2.0, 2.0)))
    assert analyzer.stats().pending_actuals == 3
    analyzer.add_forecast(forecast("f1"))
    stats = analyzer.stats()
    assert stats.pending_forecasts == 0
    assert stats.scored["stable"] == 1
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [2 / 3])


def test_mixed_order_of_arrival(analyzer: Analyzer) -> None:
    analyzer.add_observation(observe((1.0,)))
    analyzer.add_forecast(forecast("f1"))
    assert analyzer.stats().pending_forecasts == 1
    analyzer.add_observation(observe((2.0, 3.0), start=T0 + S))
    assert analyzer.stats().scored["stable"] == 1
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [0.0])


def test_history_of_a_later_call_is_an_implicit_actual(analyzer: Analyzer) -> None:
    # A later call's recent history reaches the analyzer as an observation (spans_in).
    analyzer.add_forecast(forecast("f1"))
    analyzer.add_observation(
        ObservationRecord("a", (T0 - S, T0, T0 + S, T0 + 2 * S), (9.0, 2.0, 2.0, 5.0))
    )
    assert analyzer.stats().scored["stable"] == 1
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [(1 + 0 + 2) / 3])
    # other series' history does not score it
    analyzer.add_forecast(forecast("f2", series="b"))
    analyzer.add_observation(ObservationRecord("a", (T0,), (1.0,)))
    assert analyzer.stats().pending_forecasts == 1


def test_partial_score_at_ttl(analyzer: Analyzer, clock: Clock) -> None:
    analyzer.add_forecast(forecast("f1"))
    analyzer.add_observation(observe((3.0,)))  # only the first point: error 2
    clock.now += 59.0
    assert analyzer.stats().pending_forecasts == 1
    clock.now += 2.0
    stats = analyzer.stats()
    assert stats.pending_forecasts == 0
    assert stats.partial == 1
    assert stats.scored["stable"] == 1
    assert stats.evictions == {"ttl": 0, "capacity": 0}
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [2.0])
    # a late actual for the expired forecast changes nothing
    analyzer.add_observation(observe((2.0, 3.0), start=T0 + S))
    assert analyzer.stats().scored["stable"] == 1


def test_eviction_at_ttl_without_actuals(analyzer: Analyzer, clock: Clock) -> None:
    analyzer.add_forecast(forecast("f1"))
    clock.now += 61.0
    stats = analyzer.stats()
    assert stats.pending_forecasts == 0
    assert stats.evictions == {"ttl": 1, "capacity": 0}
    assert stats.scored["stable"] == 0
    analyzer.add_observation(observe((1.0, 2.0, 3.0)))
    assert analyzer.stats().scored["stable"] == 0


def test_pending_actuals_expire(analyzer: Analyzer, clock: Clock) -> None:
    analyzer.add_observation(observe((1.0, 2.0, 3.0)))
    clock.now += 61.0
    assert analyzer.stats().pending_actuals == 0
    analyzer.add_forecast(forecast("f1"))
    assert analyzer.stats().pending_forecasts == 1


def test_max_actuals_keeps_the_newest(clock: Clock) -> None:
    analyzer = Analyzer(ttl=60.0, max_actuals=2, clock=clock)
    analyzer.add_observation(observe((1.0, 2.0, 3.0)))
    assert analyzer.stats().pending_actuals == 2
    analyzer.add_forecast(forecast("f1", (2.0, 3.0), start=T0 + S))
    assert analyzer.stats().scored["stable"] == 1


def test_eviction_when_too_many_pending(clock: Clock) -> None:
    analyzer = Analyzer(ttl=60.0, max_pending=2, clock=clock)
    for i in range(3):
        analyzer.add_forecast(forecast(f"f{i}", (1.0,), series=f"s{i}"))
    stats = analyzer.stats()
    assert stats.pending_forecasts == 2
    assert stats.evictions == {"ttl": 0, "capacity": 1}
    for i in range(3):
        analyzer.add_observation(observe((1.0,), series=f"s{i}"))
    assert analyzer.stats().scored["stable"] == 2  # the oldest, s0, was evicted


def test_pair_for_the_same_call_and_series(analyzer: Analyzer) -> None:
    analyzer.add_forecast(forecast("s", (1.0, 1.0), call="c1", variant="stable"))
    analyzer.add_forecast(forecast("k", (3.0, 5.0), call="c1", variant="canary"))
    analyzer.add_observation(observe((2.0, 2.0)))
    evidence = analyzer.evidence(0.0)
    # a row per actual: stable's errors (1, 1), canary's (1, 3)
    np.testing.assert_allclose(pairs(evidence), [[1.0, 1.0], [1.0, 3.0]])
    assert analyzer.stats().pairs == 2 and evidence.pairs == 2
    np.testing.assert_allclose(evidence.steps[:, 1], [T0, T0 + S])  # target times
    np.testing.assert_allclose(evidence.steps[:, 2], 2 * S)  # the series' horizon, ns
    np.testing.assert_allclose(evidence.stable_series, [1.0])
    np.testing.assert_allclose(evidence.canary_series, [2.0])


def test_steps_are_scored_as_their_actuals_arrive(analyzer: Analyzer) -> None:
    """Judge early: a 3-step forecast gives evidence from its first actual on."""
    analyzer.add_forecast(forecast("s", (1.0, 1.0, 1.0), call="c1", variant="stable"))
    analyzer.add_forecast(forecast("k", (3.0, 3.0, 3.0), call="c1", variant="canary"))
    analyzer.add_observation(observe((2.0,)))
    np.testing.assert_allclose(pairs(analyzer.evidence(0.0)), [[1.0, 1.0]])
    assert analyzer.stats().pending_forecasts == 2  # not complete yet
    analyzer.add_observation(observe((0.0,), start=T0 + S))
    np.testing.assert_allclose(pairs(analyzer.evidence(0.0)), [[1.0, 1.0], [1.0, 3.0]])


def test_one_actual_sums_the_steps_of_every_forecast_it_scores(analyzer: Analyzer) -> None:
    """Overlapping forecasts of one series: the actual at T0 + S scores two steps each."""
    for call, start in (("c1", T0), ("c2", T0 + S)):
        analyzer.add_forecast(forecast(f"s{call}", (1.0, 1.0), call=call, start=start))
        analyzer.add_forecast(
            forecast(f"k{call}", (4.0, 4.0), call=call, variant="canary", start=start)
        )
    analyzer.add_observation(observe((2.0,), start=T0 + S))
    steps = analyzer.evidence(0.0).steps
    assert steps.shape[0] == 1
    assert steps[0, COUNT] == 2 and steps[0, STABLE_SCORE] == 2.0 and steps[0, CANARY_SCORE] == 4.0


def test_interval_score_of_the_served_quantiles(analyzer: Analyzer) -> None:
    """Gneiting and Raftery's interval score, scaled: width + 2 / beta * miss."""
    from dataclasses import replace

    from router.rollout.judge import CANARY_INTERVAL, COUNT_INTERVAL, STABLE_INTERVAL

    base = forecast("s", (1.0, 1.0), call="c1", scale=2.0)
    analyzer.add_forecast(
        replace(
            base, quantile_levels=(0.1, 0.5, 0.9), quantiles=((0.0, 0.0), (1.0, 1.0), (2.0, 2.0))
        )
    )
    canary = replace(base, forecast_id="k", variant="canary")
    # quantiles given in any order; an unpaired level (0.3) is ignored
    analyzer.add_forecast(
        replace(
            canary, quantile_levels=(0.9, 0.3, 0.1), quantiles=((1.5, 1.5), (1.0, 1.0), (0.5, 0.5))
        )
    )
    analyzer.add_observation(observe((3.0, 1.0)))
    steps = analyzer.evidence(0.0).steps
    assert steps[:, COUNT_INTERVAL].tolist() == [1.0, 1.0]
    # actual 3: stable width 2 + 10 * 1 = 12, canary 1 + 10 * 1.5 = 16; actual 1: 2 and 1
    np.testing.assert_allclose(steps[:, STABLE_INTERVAL], [12.0 / 2, 2.0 / 2])
    np.testing.assert_allclose(steps[:, CANARY_INTERVAL], [16.0 / 2, 1.0 / 2])
    ev = analyzer.evidence(0.0)
    assert ev.stable_series_interval is not None
    np.testing.assert_allclose(ev.stable_series_interval, [3.5])


def test_no_interval_without_a_central_pair_of_quantiles(analyzer: Analyzer) -> None:
    from dataclasses import replace

    from router.rollout.judge import COUNT_INTERVAL

    base = forecast("s", (1.0,), call="c1")
    analyzer.add_forecast(replace(base, quantile_levels=(0.5,), quantiles=((1.0,),)))
    analyzer.add_forecast(
        replace(
            base,
            forecast_id="k",
            variant="canary",
            quantile_levels=(0.1, 0.9),
            quantiles=((0.0,), (float("nan"),)),
        )
    )
    analyzer.add_observation(observe((2.0,)))
    steps = analyzer.evidence(0.0).steps
    assert steps[:, COUNT].tolist() == [1.0] and steps[:, COUNT_INTERVAL].tolist() == [0.0]


def test_no_pair_across_calls_series_or_within_a_variant(analyzer: Analyzer) -> None:
    analyzer.add_observation(observe((2.0,)))
    analyzer.add_observation(observe((2.0,), series="b"))
    analyzer.add_forecast(forecast("1", (1.0,), call="c1", variant="stable"))
    analyzer.add_forecast(forecast("2", (1.0,), call="c2", variant="canary"))  # other call
    analyzer.add_forecast(forecast("3", (1.0,), call="c1", variant="canary", series="b"))
    analyzer.add_forecast(forecast("4", (1.0,), call="c3", variant="stable"))
    analyzer.add_forecast(forecast("5", (1.0,), call="c3", variant="stable"))  # same variant
    analyzer.add_forecast(forecast("6", (1.0,), call=None, variant="canary"))  # no call id
    assert analyzer.stats().pairs == 0
    assert analyzer.evidence(0.0).steps.shape == (0, 9)
    # one call of two series gives one pair per series
    analyzer.add_forecast(forecast("7", (1.0,), call="c1", variant="stable", series="b"))
    analyzer.add_forecast(forecast("8", (4.0,), call="c1", variant="canary"))
    np.testing.assert_allclose(pairs(analyzer.evidence(0.0)), [[1.0, 1.0], [1.0, 2.0]])


def test_pair_compares_the_points_both_were_scored_on(analyzer: Analyzer, clock: Clock) -> None:
    analyzer.add_forecast(forecast("s", (1.0, 1.0, 1.0), call="c", variant="stable"))
    analyzer.add_observation(observe((2.0,)))  # stable: 1 point matched so far
    clock.now += 30.0
    analyzer.add_observation(observe((2.0, 2.0, 2.0), start=T0 + 5 * S))  # other times
    analyzer.add_forecast(forecast("k", (4.0, 0.0, 0.0), call="c", variant="canary"))
    # canary errors (2, 2, ...) but only the first point is common to both: 1 vs 2
    np.testing.assert_allclose(pairs(analyzer.evidence(0.0)), [[1.0, 2.0]])
    # different horizons: compared on the common timestamps only
    analyzer.add_observation(observe((2.0, 2.0)))
    analyzer.add_forecast(forecast("k2", (4.0, 0.0, 0.0), call="d", variant="canary"))
    analyzer.add_forecast(
        forecast("s2", (1.0, 1.0), call="d", variant="stable", timestamps=(T0 + S, T0 + 9 * S))
    )
    # call c now pairs at T0 + S too; call d only at T0 + S, the one time both have
    np.testing.assert_allclose(pairs(analyzer.evidence(0.0)), [[1.0, 2.0]] * 3)
    assert analyzer.evidence(0.0).pairs == 3
    clock.now += 61.0  # the forecasts leave at their TTL, partly scored
    assert analyzer.stats().partial == 4


def test_evidence_since_and_forget_before(analyzer: Analyzer, clock: Clock) -> None:
    clock.now = 10.0
    analyzer.add_observation(observe((2.0,)))
    analyzer.add_forecast(forecast("s1", (1.0,), call="c1", variant="stable"))
    analyzer.add_forecast(forecast("k1", (1.0,), call="c1", variant="canary"))
    analyzer.add_call(CallRecord("stable", True, 0.1))
    clock.now = 20.0
    analyzer.add_observation(observe((5.0,), series="b"))
    analyzer.add_forecast(forecast("s2", (1.0,), call="c2", variant="stable", series="b"))
    analyzer.add_forecast(forecast("k2", (2.0,), call="c2", variant="canary", series="b"))
    analyzer.add_call(CallRecord("stable", True, 0.2))
    assert analyzer.evidence(0.0).pairs == 2
    late = analyzer.evidence(15.0)
    np.testing.assert_allclose(pairs(late), [[4.0, 3.0]])
    np.testing.assert_allclose(late.stable_series, [4.0])
    assert late.stable.calls == 1
    assert analyzer.evidence(25.0).pairs == 0
    analyzer.forget_before(15.0)
    everything = analyzer.evidence(0.0)
    np.testing.assert_allclose(pairs(everything), [[4.0, 3.0]])
    np.testing.assert_allclose(everything.canary_series, [3.0])
    assert everything.stable.calls == 1
    # series numbering survives forgetting: new samples land on the right series
    clock.now = 30.0
    analyzer.add_observation(observe((1.0,), series="a", start=T0 + S))
    analyzer.add_forecast(forecast("s3", (0.0,), series="a", start=T0 + S))
    analyzer.add_observation(observe((5.0,), series="b", start=T0 + S))
    analyzer.add_forecast(forecast("s4", (1.0,), series="b", start=T0 + S))
    np.testing.assert_allclose(sorted(analyzer.evidence(0.0).stable_series), [1.0, 4.0])


def test_per_series_means_without_pairs(analyzer: Analyzer) -> None:
    analyzer.add_observation(observe((0.0, 0.0, 0.0), series="a"))
    analyzer.add_observation(observe((0.0, 0.0), series="b"))
    analyzer.add_forecast(forecast("1", (1.0, 1.0), series="a"))
    analyzer.add_forecast(forecast("2", (3.0, 3.0), series="a", start=T0 + S))
    analyzer.add_forecast(forecast("3", (5.0,), series="b"))
    analyzer.add_forecast(forecast("4", (7.0,), series="b", variant="canary"))
    evidence = analyzer.evidence(0.0)
    assert evidence.pairs == 0
    # per series, the mean of its steps' errors: a = (1 + 1 + 3 + 3) / 4, b = 5
    np.testing.assert_allclose(sorted(evidence.stable_series), [2.0, 5.0])
    np.testing.assert_allclose(evidence.canary_series, [7.0])


def test_guardrail_call_stats(analyzer: Analyzer) -> None:
    latencies = np.linspace(0.01, 1.0, 100)
    for i, latency in enumerate(latencies):
        analyzer.add_call(CallRecord("stable", i % 25 != 0, float(latency)))
    analyzer.add_call(CallRecord("canary", False, 2.0))
    analyzer.add_call(CallRecord("experimental", True, 0.1))  # not a variant we judge
    evidence = analyzer.evidence(0.0)
    assert evidence.stable.calls == 100
    assert evidence.stable.errors == 4
    assert evidence.stable.p99_latency == pytest.approx(float(np.quantile(latencies, 0.99)))
    assert (evidence.canary.calls, evidence.canary.errors) == (1, 1)
    assert evidence.canary.p99_latency == pytest.approx(2.0)
    empty = Analyzer().evidence(0.0)
    assert (empty.stable.calls, empty.stable.errors, empty.stable.p99_latency) == (0, 0, None)


def test_constant_history_scale_is_floored(analyzer: Analyzer) -> None:
    assert effective_scale(0.5, [100.0]) == 0.5
    floor = DEGENERATE_SCALE_FRACTION * 100.0
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        assert effective_scale(bad, [100.0, -100.0]) == pytest.approx(floor)
    assert effective_scale(0.0, [0.0]) > 0.0
    analyzer.add_observation(observe((101.0,)))
    analyzer.add_forecast(forecast("f", (100.0,), scale=0.0))
    (error,) = analyzer.evidence(0.0).stable_series
    assert np.isfinite(error)
    assert error == pytest.approx(1.0 / floor)


def test_unscorable_and_duplicate_forecasts(analyzer: Analyzer) -> None:
    analyzer.add_forecast(forecast("none", (1.0,), timestamps=()))
    analyzer.add_forecast(forecast("nan", (float("nan"),)))
    analyzer.add_forecast(forecast("short", (1.0, 2.0), timestamps=(T0,)))
    analyzer.add_forecast(forecast("odd", (1.0,), variant="blue"))
    assert analyzer.stats().unscorable == 4
    assert analyzer.stats().pending_forecasts == 0
    # the same forecast twice (a server's span and the router's): the router's call id wins
    analyzer.add_forecast(forecast("f", (1.0,), call=None))
    analyzer.add_forecast(forecast("f", (1.0,), call="c"))
    analyzer.add_forecast(forecast("g", (1.0,), call="c", variant="canary"))
    analyzer.add_observation(observe((1.0,)))
    stats = analyzer.stats()
    assert stats.duplicates == 1
    assert stats.scored == {"stable": 1, "canary": 1}
    assert stats.pairs == 1
    analyzer.add_forecast(forecast("f", (1.0,), call="c"))  # after scoring: still once
    assert analyzer.stats().scored["stable"] == 1


def test_scored_history_is_capped(clock: Clock) -> None:
    analyzer = Analyzer(max_scored=100, clock=clock)
    for i in range(1000):
        analyzer.add_call(CallRecord("stable", True, float(i)))
    evidence = analyzer.evidence(0.0)
    assert 0 < evidence.stable.calls <= 100
    assert evidence.stable.p99_latency is not None
    assert evidence.stable.p99_latency > 990.0  # the newest are kept


def test_metrics(clock: Clock) -> None:
    registry = CollectorRegistry()
    analyzer = Analyzer(ttl=60.0, max_pending=1, clock=clock, registry=registry)
    analyzer.add_forecast(forecast("s", (1.0,), call="c", variant="stable"))
    analyzer.add_forecast(forecast("k", (1.0,), call="c", variant="canary", series="z"))
    assert registry.get_sample_value("canarycast_analysis_pending_forecasts") == 1
    analyzer.add_forecast(forecast("k2", (1.0,), call="c", variant="canary"))
    analyzer.add_observation(observe((1.0,)))
    analyzer.add_call(CallRecord("stable", True, 0.1))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("canarycast_analysis_evictions_total", reason="capacity") == 2
    assert value("canarycast_analysis_scored_forecasts_total", variant="canary") == 1
    assert value("canarycast_analysis_pairs_total") == 0
    assert value("canarycast_analysis_spans_total", kind="forecast") == 3
    assert value("canarycast_analysis_spans_total", kind="observe") == 1
    assert value("canarycast_analysis_spans_total", kind="call") == 1
    assert value("canarycast_analysis_pending_forecasts") == 0
    assert analyzer.last_span_at == clock.now
    assert analyzer.stats().last_span_at == clock.now


def test_two_threads_feeding() -> None:
    analyzer = Analyzer()
    n = 2000

    def forecasts() -> None:
        for i in range(n):
            for variant in ("stable", "canary"):
                analyzer.add_forecast(
                    forecast(
                        f"{variant}{i}", (1.0, 2.0), series=f"s{i}", call=f"c{i}", variant=variant
                    )
                )

    def actuals() -> None:
        for i in range(n):
            analyzer.add_observation(observe((1.0, 1.0), series=f"s{i}"))

    threads = [threading.Thread(target=forecasts), threading.Thread(target=actuals)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = analyzer.stats()
    assert stats.pending_forecasts == 0
    assert stats.scored == {"stable": n, "canary": n}
    assert stats.pairs == 2 * n  # two paired steps per call
    steps = analyzer.evidence(0.0).steps  # errors 0 and 1 of every forecast
    assert steps[:, COUNT].sum() == 2 * n
    assert steps[:, STABLE_SCORE].sum() == n and steps[:, CANARY_SCORE].sum() == n


def test_a_timestamp_given_twice_in_one_forecast(analyzer: Analyzer) -> None:
    analyzer.add_forecast(forecast("f", (1.0, 3.0, 5.0), timestamps=(T0, T0 + S, T0)))
    analyzer.add_observation(observe((2.0,)))
    assert analyzer.stats().pending_forecasts == 1
    analyzer.add_observation(observe((3.0,), start=T0 + S))
    assert analyzer.stats().scored["stable"] == 1
    np.testing.assert_allclose(analyzer.evidence(0.0).stable_series, [(1 + 0 + 3) / 3])


def test_evidence_counts_only_the_versions_under_test(analyzer: Analyzer) -> None:
    from dataclasses import replace

    # call 1: the canary servers still answered with the old version (v1, before reload)
    analyzer.add_forecast(forecast("s1", (1.0,), call="c1"))
    analyzer.add_forecast(forecast("c1", (1.0,), variant="canary", call="c1"))
    # call 2: the candidate (v2) answers
    analyzer.add_forecast(forecast("s2", (1.0,), call="c2", start=T0 + S))
    analyzer.add_forecast(
        replace(
            forecast("c2", (3.0,), variant="canary", call="c2", start=T0 + S), model_version="v2"
        )
    )
    analyzer.add_observation(observe((2.0, 2.0)))
    everything = analyzer.evidence(since=0.0)
    assert pairs(everything).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert len(everything.canary_series) == 1
    tested = analyzer.evidence(since=0.0, stable_version="v1", canary_version="v2")
    assert pairs(tested).tolist() == [[1.0, 1.0]]
    assert tested.canary_series.tolist() == [1.0]  # only c2: |2 - 3| / 1
    assert analyzer.evidence(since=0.0, canary_version="v9").pairs == 0
