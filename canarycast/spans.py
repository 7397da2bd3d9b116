"""The spans that carry forecasts and observations, written by servers and routers.

The canary analysis reads these attributes to score forecasts once the actual
values arrive, so their names are defined once, here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from opentelemetry import trace

FORECAST_SPAN = "forecast"
OBSERVE_SPAN = "observe"
#: A routed call's attempt on a variant that failed (unreachable, or none serving) before
#: the router failed over: the client never sees it, the canary's guardrail must.
FAILED_ATTEMPT_SPAN = "failed_attempt"

SERIES_ID = "canarycast.series_id"
FORECAST_ID = "canarycast.forecast_id"
MODEL_NAME = "canarycast.model.name"
MODEL_VERSION = "canarycast.model.version"
VARIANT = "canarycast.variant"
HORIZON = "canarycast.horizon"
BATCH_SIZE = "canarycast.batch_size"
POINT = "canarycast.point"
# The quantiles the forecast served, for the interval score: their levels, and their
# values level by level (len(levels) * horizon values, the first level's steps first).
QUANTILE_LEVELS = "canarycast.quantile_levels"
QUANTILES = "canarycast.quantiles"
SCALE = "canarycast.scale"
TARGET_TIMESTAMPS = "canarycast.target_timestamps"  # int64 ns since the epoch
TIMESTAMPS = "canarycast.timestamps"  # observed, int64 ns
# The most recent values of the call's history with their times: implicit actuals that
# score earlier forecasts of the same series (only on the answered forecast, never a copy).
HISTORY_TIMESTAMPS = "canarycast.history_timestamps"
HISTORY_VALUES = "canarycast.history_values"
VALUES = "canarycast.values"  # observed
CALL_ID = "canarycast.call_id"  # one per routed call, shared by its primary and mirrored forecasts
SHADOW = "canarycast.shadow"  # True: a dual-run/shadow copy, never returned to the client
ROUTING_REASON = "canarycast.routing_reason"
BACKEND = "canarycast.backend"


def record_forecast(
    tracer: trace.Tracer,
    *,
    series_id: str,
    forecast_id: str,
    model_name: str,
    model_version: str,
    variant: str,
    point: Sequence[float] | np.ndarray,
    timestamps: Sequence[int] | np.ndarray | None,
    scale: float,
    start_time: int | None = None,
    extra: dict[str, str | int | float | bool] | None = None,
    quantile_levels: Sequence[float] | None = None,
    quantiles: np.ndarray | None = None,
) -> None:
    """One finished `forecast` span, a child of the current span.

    ``quantiles`` has one row per level of ``quantile_levels``, one value per step.
    """
    attributes: dict[str, str | int | float | bool | list[float] | list[int]] = {
        SERIES_ID: series_id,
        FORECAST_ID: forecast_id,
        MODEL_NAME: model_name,
        MODEL_VERSION: model_version,
        VARIANT: variant,
        HORIZON: len(point),
        POINT: [float(v) for v in point],
        SCALE: float(scale),
    }
    if timestamps is not None and len(timestamps):
        attributes[TARGET_TIMESTAMPS] = [int(t) for t in timestamps]
    if quantile_levels is not None and quantiles is not None and len(quantile_levels):
        attributes[QUANTILE_LEVELS] = [float(q) for q in quantile_levels]
        attributes[QUANTILES] = np.asarray(quantiles, dtype=np.float64).ravel().tolist()
    if extra:
        attributes.update(extra)
    tracer.start_span(FORECAST_SPAN, start_time=start_time, attributes=attributes).end()


def record_failed_attempt(
    tracer: trace.Tracer, variant: str, backend: str, grpc_code: int, reason: str
) -> None:
    tracer.start_span(
        FAILED_ATTEMPT_SPAN,
        attributes={
            VARIANT: variant,
            BACKEND: backend,
            "rpc.grpc.status_code": grpc_code,
            ROUTING_REASON: reason,
        },
    ).end()


def record_observation(
    tracer: trace.Tracer, series_id: str, timestamps: Iterable[int], values: Iterable[float]
) -> None:
    """One finished `observe` span carrying the actual values of a series."""
    tracer.start_span(
        OBSERVE_SPAN,
        attributes={
            SERIES_ID: series_id,
            TIMESTAMPS: [int(t) for t in timestamps],
            VALUES: [float(v) for v in values],
        },
    ).end()
