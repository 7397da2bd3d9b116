"""`Forecaster` gRPC servicer: protobuf in, numpy to the data plane, protobuf out.

Thin on purpose: every rule lives in `server.forecasting.Forecaster`; domain
errors raised there become gRPC statuses in `canarycast.interceptors`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np
from google.protobuf.duration_pb2 import Duration

from canarycast.headers import requested_variant
from canarycast.messages import duration_ns, observations_from_proto, timestamp_ns
from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc
from server.forecasting import (
    NS_PER_S,
    ForecastAnswer,
    Forecaster,
    ForecastQuery,
    SeriesQuery,
    deadline_from_remaining,
)
from server.loader import LoadedModel


def query_from_proto(request: pb.ForecastRequest) -> ForecastQuery:
    series = [
        SeriesQuery(
            series_id=s.series_id,
            history=np.asarray(s.history, dtype=np.float64),
            start=timestamp_ns(s.start, f"series[{i}].start") if s.HasField("start") else None,
            step=duration_ns(s.step, f"series[{i}].step") if s.HasField("step") else None,
        )
        for i, s in enumerate(request.series)
    ]
    return ForecastQuery(series, int(request.horizon), tuple(request.quantiles))


def set_timestamps(target: Any, ns: np.ndarray) -> None:
    """Fill a repeated Timestamp field from int64 nanoseconds."""
    seconds, nanos = np.divmod(ns, NS_PER_S)
    for s, n in zip(seconds.tolist(), nanos.tolist(), strict=True):
        target.add(seconds=s, nanos=n)


def answer_to_proto(answer: ForecastAnswer) -> pb.ForecastResponse:
    response = pb.ForecastResponse(model=model_ref(answer.model, answer.variant))
    for f in answer.forecasts:
        out = response.forecasts.add(
            series_id=f.series_id, forecast_id=f.forecast_id, point=f.point.tolist()
        )
        if f.timestamps is not None:
            set_timestamps(out.timestamps, f.timestamps)
        for level, values in zip(answer.quantiles, f.quantiles, strict=True):
            out.quantiles.add(quantile=level, values=values.tolist())
    return response


def model_ref(model: LoadedModel, variant: str) -> pb.ModelRef:
    return pb.ModelRef(name=model.name, version=model.version_id, variant=variant)


def lineage_to_proto(metadata: Mapping[str, Any]) -> pb.Lineage:
    lineage = pb.Lineage(
        dataset=str(metadata.get("dataset", "")),
        dataset_hash=str(metadata.get("dataset_hash", "")),
        code_version=str(metadata.get("code_version", "")),
    )
    for key, value in (metadata.get("parameters") or {}).items():
        lineage.parameters[str(key)] = str(value)
    for key, value in (metadata.get("scores") or {}).items():
        if isinstance(value, int | float):
            lineage.scores[str(key)] = float(value)
    for key, chosen in (metadata.get("defaults") or {}).items():
        if isinstance(chosen, Mapping):
            lineage.defaults[str(key)] = f"{chosen.get('value')}: {chosen.get('why', '')}"
    created = metadata.get("created_at")
    if isinstance(created, str):
        # An unparseable date stays unset rather than failing GetModel.
        with contextlib.suppress(ValueError):
            lineage.created_at.FromDatetime(dt.datetime.fromisoformat(created))
    return lineage


class ForecasterServicer(pb_grpc.ForecasterServicer):
    def __init__(self, forecaster: Forecaster) -> None:
        self.forecaster = forecaster

    async def Forecast(
        self, request: pb.ForecastRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForecastResponse:
        variant = requested_variant(context.invocation_metadata())
        query = query_from_proto(request)
        answer = await self.forecaster.forecast(
            query, deadline_from_remaining(context.time_remaining()), variant
        )
        return answer_to_proto(answer)

    async def Observe(
        self, request: pb.ObserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ObserveResponse:
        accepted = self.forecaster.observe(observations_from_proto(request))
        return pb.ObserveResponse(accepted_points=accepted)

    async def GetModel(
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        model = self.forecaster.model()
        config, limits = model.config, self.forecaster.limits
        step = Duration()
        step.FromSeconds(config.step_seconds)
        return pb.ModelInfo(
            model=model_ref(model, self.forecaster.variant),
            lookback=config.lookback,
            max_horizon=config.horizon,
            quantiles=list(config.quantiles),
            step=step,
            lineage=lineage_to_proto(model.version.metadata),
            max_series_per_call=limits.max_series_per_call,
            max_history=limits.max_history,
            reload_error=self.forecaster.watcher.reload_error or "",
        )
