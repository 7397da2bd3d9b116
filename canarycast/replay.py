"""Replay real series as a live stream: at each tick forecast, then report what happened.

The production code path, with time compressed: for every series the client
asks for a forecast from the values seen so far (with their timestamps, so the
answer can be scored), then reports the value that really came next with
`Observe`. Each series is its own call, so sticky routing applies per series.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from canarycast.v1 import forecast_pb2 as pb
from canarycast.v1 import forecast_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class ReplaySeries:
    series_id: str
    timestamps: np.ndarray  # datetime64[ns]
    values: np.ndarray


@dataclass
class ReplayStats:
    ticks: int = 0
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    variants: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    observed: int = 0


class Replayer:
    def __init__(
        self,
        target: str,
        series: Sequence[ReplaySeries],
        *,
        lookback: int,
        horizon: int,
        start: int,
        timeout: float = 10.0,
        quantiles: Sequence[float] = (0.1, 0.9),
    ) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ForecasterStub(self.channel)
        self.series = list(series)
        self.lookback = lookback
        self.horizon = horizon
        self.position = start  # index of the next value to be revealed
        self.timeout = timeout
        self.quantiles = list(quantiles)  # the 80 % interval, as a user would ask
        self.stats = ReplayStats()

    def _request(self, s: ReplaySeries) -> pb.ForecastRequest:
        first = self.position - self.lookback
        request = pb.ForecastRequest(horizon=self.horizon, quantiles=self.quantiles)
        item = request.series.add(series_id=s.series_id, history=s.values[first : self.position])
        item.start.FromNanoseconds(
            int(s.timestamps[first].astype("datetime64[ns]").astype(np.int64))
        )
        return request

    async def _forecast(self, s: ReplaySeries) -> None:
        try:
            answer = await self.stub.Forecast(self._request(s), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            self.stats.failures.append(f"{s.series_id}: {exc.code().name}: {exc.details()}")
            return
        self.stats.variants[answer.model.variant] += 1
        self.stats.versions[answer.model.version] += 1

    @property
    def exhausted(self) -> bool:
        """Every value of some series has been revealed: no tick is left."""
        return any(self.position >= len(s.values) for s in self.series)

    async def tick(self) -> None:
        """Forecast every series, then reveal the next value of each."""
        if any(self.position >= len(s.values) for s in self.series):
            raise IndexError("the replay ran past the end of a series")
        await asyncio.gather(*(self._forecast(s) for s in self.series))
        self.stats.calls += len(self.series)
        observe = pb.ObserveRequest()
        for s in self.series:
            o = observe.observations.add(series_id=s.series_id, values=[s.values[self.position]])
            o.timestamps.add().FromNanoseconds(
                int(s.timestamps[self.position].astype("datetime64[ns]").astype(np.int64))
            )
        try:
            answer = await self.stub.Observe(observe, timeout=self.timeout)
            self.stats.observed += answer.accepted_points
        except grpc.aio.AioRpcError as exc:
            self.stats.failures.append(f"observe: {exc.code().name}: {exc.details()}")
        self.position += 1
        self.stats.ticks += 1

    async def close(self) -> None:
        await self.channel.close()
