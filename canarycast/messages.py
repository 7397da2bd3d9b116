"""Protobuf ↔ domain conversions shared by model servers and routers."""

from __future__ import annotations

import numpy as np

from canarycast.v1 import forecast_pb2 as pb
from canarycast.validation import Observation

NS_PER_S = 1_000_000_000


def observations_from_proto(request: pb.ObserveRequest) -> list[Observation]:
    return [
        Observation(
            series_id=o.series_id,
            timestamps=np.fromiter(
                (t.seconds * NS_PER_S + t.nanos for t in o.timestamps),
                dtype=np.int64,
                count=len(o.timestamps),
            ),
            values=np.asarray(o.values, dtype=np.float64),
        )
        for o in request.observations
    ]
