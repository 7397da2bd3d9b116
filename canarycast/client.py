"""A small typed client of the `Forecaster` API: numpy arrays in, numpy arrays out.

    with ForecastClient("127.0.0.1:50051") as client:
        info = client.model_info()
        [f] = client.forecast({"sensor-1": history}, horizon=24, quantiles=(0.1, 0.9))
        f.point, f.quantiles[0.1], f.timestamps, f.model.version

The same client talks to a model server or to a router.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import numpy as np
from numpy.typing import ArrayLike

from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc

NS_PER_S = 1_000_000_000


def to_ns(value: Any) -> int:
    """A timestamp (datetime64, datetime, ISO string, pandas Timestamp) as ns since the epoch."""
    return int(np.datetime64(value, "ns").astype(np.int64))


def duration_ns(value: Any) -> int:
    """A step (numpy timedelta64, datetime.timedelta, pandas Timedelta) in ns."""
    return int(np.timedelta64(value, "ns").astype(np.int64))


@dataclass(frozen=True)
class SeriesData:
    """One series to forecast: history oldest first, optional start time and step."""

    series_id: str
    history: ArrayLike
    start: Any = None  # time of history[0]
    step: Any = None  # spacing; default: the model's training step


@dataclass(frozen=True)
class ModelId:
    name: str
    version: str
    variant: str = ""


@dataclass(frozen=True)
class Forecast:
    series_id: str
    forecast_id: str
    point: np.ndarray
    quantiles: dict[float, np.ndarray]
    timestamps: np.ndarray | None  # datetime64[ns], None when no start was given
    model: ModelId


@dataclass(frozen=True)
class ModelInfo:
    model: ModelId
    lookback: int
    max_horizon: int
    quantiles: tuple[float, ...]
    step_seconds: float
    dataset: str
    scores: dict[str, float]
    parameters: dict[str, str]
    max_series_per_call: int
    reload_error: str
    raw: pb.ModelInfo = field(repr=False)


def _model_id(ref: pb.ModelRef) -> ModelId:
    return ModelId(ref.name, ref.version, ref.variant)


def build_request(
    series: Mapping[str, ArrayLike] | Iterable[SeriesData],
    horizon: int,
    quantiles: Sequence[float] = (),
) -> pb.ForecastRequest:
    items = [SeriesData(k, v) for k, v in series.items()] if isinstance(series, Mapping) else series
    request = pb.ForecastRequest(horizon=horizon, quantiles=list(quantiles))
    for s in items:
        out = request.series.add(
            series_id=s.series_id, history=np.asarray(s.history, dtype=np.float64).tolist()
        )
        if s.start is not None:
            out.start.FromNanoseconds(to_ns(s.start))
        if s.step is not None:
            out.step.FromNanoseconds(duration_ns(s.step))
    return request


def parse_response(response: pb.ForecastResponse) -> list[Forecast]:
    model = _model_id(response.model)
    forecasts = []
    for f in response.forecasts:
        timestamps = None
        if len(f.timestamps):
            timestamps = np.array(
                [t.seconds * NS_PER_S + t.nanos for t in f.timestamps], dtype="datetime64[ns]"
            )
        forecasts.append(
            Forecast(
                series_id=f.series_id,
                forecast_id=f.forecast_id,
                point=np.asarray(f.point, dtype=np.float64),
                quantiles={q.quantile: np.asarray(q.values, dtype=np.float64) for q in f.quantiles},
                timestamps=timestamps,
                model=model,
            )
        )
    return forecasts


class ForecastClient:
    """Blocking client. `timeout` (seconds) becomes each call's gRPC deadline."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        channel: grpc.Channel | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS (mTLS with a client certificate); None: plaintext."""
        self._own_channel = channel is None
        if channel is None:
            channel = (
                grpc.secure_channel(target, credentials)
                if credentials is not None
                else grpc.insecure_channel(target)
            )
        self.channel = channel
        self.stub = pb_grpc.ForecasterStub(self.channel)
        self.timeout = timeout
        self.metadata = tuple(metadata)

    def forecast(
        self,
        series: Mapping[str, ArrayLike] | Iterable[SeriesData],
        horizon: int,
        quantiles: Sequence[float] = (),
    ) -> list[Forecast]:
        request = build_request(series, horizon, quantiles)
        response = self.stub.Forecast(request, timeout=self.timeout, metadata=self.metadata)
        return parse_response(response)

    def observe(self, series_id: str, timestamps: Iterable[Any], values: ArrayLike) -> int:
        """Report actual values; returns how many points were accepted."""
        obs = pb.SeriesObservation(
            series_id=series_id, values=np.asarray(values, dtype=np.float64).tolist()
        )
        for t in timestamps:
            obs.timestamps.add().FromNanoseconds(to_ns(t))
        response = self.stub.Observe(
            pb.ObserveRequest(observations=[obs]), timeout=self.timeout, metadata=self.metadata
        )
        return int(response.accepted_points)

    def model_info(self) -> ModelInfo:
        info = self.stub.GetModel(
            pb.GetModelRequest(), timeout=self.timeout, metadata=self.metadata
        )
        return ModelInfo(
            model=_model_id(info.model),
            lookback=info.lookback,
            max_horizon=info.max_horizon,
            quantiles=tuple(info.quantiles),
            step_seconds=info.step.ToTimedelta().total_seconds(),
            dataset=info.lineage.dataset,
            scores=dict(info.lineage.scores),
            parameters=dict(info.lineage.parameters),
            max_series_per_call=info.max_series_per_call,
            reload_error=info.reload_error,
            raw=info,
        )

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def __enter__(self) -> ForecastClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
