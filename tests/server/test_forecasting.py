"""The data plane's whole-call numpy work against the per-series rules it replaced."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from canarycast.errors import InvalidArgument
from canarycast.v1 import forecast_pb2 as pb
from canarycast.validation import Limits, history_scale, history_scales
from server.serving.forecasting import (
    NS_PER_S,
    ForecastAnswer,
    Forecaster,
    ForecastQuery,
    all_target_timestamps,
    target_timestamps,
    times_out_of_range,
)
from server.serving.servicer import build_forecasts, encode_forecasts

HOUR = 3600 * NS_PER_S
T0 = 1_700_000_000 * NS_PER_S


def _answer(
    rng: np.random.Generator, k: int, h: int, levels: tuple[float, ...], **kw: Any
) -> ForecastAnswer:
    times = rng.integers(-(2**62), 2**62, size=(k, h))
    times[:, 0] = T0  # whole seconds: nanos 0, left out of the wire
    times[0, :] = -5  # before 1970: negative seconds
    fields: dict[str, Any] = {
        "series_ids": [f"s{i}-é✓" * (1 + i % 3) for i in range(k)],
        "forecast_ids": [f"{i:024x}" for i in range(k)],
        "timestamps": times,
        "timed": rng.random(k) < 0.7,
        "points": rng.normal(size=(k, h)) * 1e6,
        "quantiles": rng.normal(size=(k, len(levels), h)),
        "scales": rng.random(k),
        "model": None,
        "batch_size": k,
        "quantile_levels": levels,
        "variant": "stable",
    }
    fields.update(kw)
    return ForecastAnswer(**fields)


@pytest.mark.parametrize(
    ("k", "h", "levels", "kw"),
    [
        (1, 1, (), {}),
        (7, 24, (0.1, 0.9), {}),
        (64, 12, (0.5,), {"timestamps": None}),
        (3, 5, (0.1, 0.5, 0.9), {"series_ids": ["a" * 300, "", "b"]}),
        # whole hours after 1970, every time one varint size: the fast path
        (5, 24, (0.1, 0.9), {"timestamps": T0 + HOUR * np.arange(120).reshape(5, 24)}),
    ],
)
def test_encoded_answer_is_the_message_built_field_by_field(
    k: int, h: int, levels: tuple[float, ...], kw: dict[str, Any]
) -> None:
    answer = _answer(np.random.default_rng(k), k, h, levels, **kw)
    encoded = pb.ForecastResponse.FromString(encode_forecasts(answer))
    built = build_forecasts(answer)
    assert encoded == built
    assert encoded.SerializeToString() == built.SerializeToString()


def _query(histories: list[np.ndarray], **kw: Any) -> ForecastQuery:
    series = [(f"s{i}", h, kw.get("start"), kw.get("step")) for i, h in enumerate(histories)]
    return ForecastQuery.from_series(series, kw.get("horizon", 3))


def test_history_scales_are_the_per_series_scales() -> None:
    rng = np.random.default_rng(0)
    histories = [rng.normal(size=n) * 10 for n in (1, 2, 50, 3, 1, 200, 2)]
    query = _query(histories)
    np.testing.assert_allclose(
        history_scales(query.values, query.lengths),
        [history_scale(h) for h in histories],
        rtol=1e-12,
    )


@pytest.mark.parametrize(("freq", "step"), [("h", None), ("h", 900 * NS_PER_S), ("MS", None)])
def test_target_times_are_the_per_series_times(freq: str, step: int | None) -> None:
    histories = [np.zeros(n) for n in (4, 9, 30)]
    query = ForecastQuery.from_series(
        [
            ("a", histories[0], T0, step),
            ("b", histories[1], None, None),
            ("c", histories[2], 0, step),
        ],
        5,
    )
    times = all_target_timestamps(query, freq)
    assert times is not None
    np.testing.assert_array_equal(times[0], target_timestamps(T0, 4, 5, step, freq))
    np.testing.assert_array_equal(times[2], target_timestamps(0, 30, 5, step, freq))
    assert all_target_timestamps(_query(histories), freq) is None


def test_forecast_times_at_the_edge_of_int64_are_refused_exactly() -> None:
    last = 2**63 - 1  # pandas' Timestamp.max
    n, horizon = 4, 3
    fits = last - HOUR * (n + horizon)
    query = ForecastQuery.from_series(
        [("ok", np.zeros(n), fits, HOUR), ("over", np.zeros(n), fits + 1, HOUR)], horizon
    )
    assert times_out_of_range(query, "h").tolist() == [False, True]
    huge = ForecastQuery.from_series([("x", np.zeros(n), 0, 2**62)], horizon)
    assert times_out_of_range(huge, "h").tolist() == [True]  # no wrap-around


class _Model:
    config = SimpleNamespace(lookback=4, horizon=6, quantiles=(0.1, 0.5, 0.9), freq="h")


def _refusal(query: ForecastQuery) -> tuple[str, str]:
    # validate() reads only the limits and the model's config: no watcher, no batcher, a fake
    forecaster = Forecaster(watcher=None, batcher=None, limits=Limits(max_history=50))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as err:
        forecaster.validate(query, _Model())  # type: ignore[arg-type]
    return err.value.field, str(err.value)


def test_the_first_broken_series_and_its_first_broken_rule_are_named() -> None:
    good = np.arange(6.0)
    bad_value = good.copy()
    bad_value[3] = np.inf
    cases: list[tuple[list[tuple[str, np.ndarray, int | None, int | None]], str, str]] = [
        ([("a", good, None, None), ("", good, None, None)], "series[1].series_id", "empty"),
        ([("a", good, None, None), ("a", good, None, None)], "series[1].series_id", "duplicate"),
        ([("a", good, None, None), ("b", good[:0], None, None)], "series[1].history", "is empty"),
        ([("a", good[:2], None, None)], "series[0].history", "needs at least 4"),
        ([("a", np.zeros(51), None, None)], "series[0].history", "the limit is 50"),
        ([("a", good, None, None), ("b", bad_value, None, None)], "series[1].history[3]", "inf"),
        ([("a", good, None, HOUR)], "series[0].step", "without start"),
        ([("a", good, T0, -HOUR)], "series[0].step", "must be positive"),
        ([("a", good, 2**63 - 2, None)], "series[0].start", "1678-2261"),
        # several broken series: the first in order; several rules: the first rule
        (
            [("a", good, None, None), ("b", bad_value, None, HOUR), ("", good[:0], None, None)],
            "series[1].history[3]",
            "finite",
        ),
    ]
    for series, field, words in cases:
        got_field, message = _refusal(ForecastQuery.from_series(series, 3))
        assert got_field == field, (series, message)
        assert words in message
        assert "(series" in message or "series_id" in field
