"""Protobuf ↔ domain conversions shared by model servers and routers."""

from __future__ import annotations

import numpy as np
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from canarycast.errors import InvalidArgument
from canarycast.v1 import forecast_pb2 as pb
from canarycast.validation import Observation

NS_PER_S = 1_000_000_000
#: Times are int64 nanoseconds since the epoch (numpy, pandas): about 1677-09-22 to
#: 2262-04-11. Anything outside is refused at the edge rather than overflowing inside.
MIN_NS = -(2**63) + 1
MAX_NS = 2**63 - 1


def timestamp_ns(ts: Timestamp, field: str) -> int:
    """A Timestamp as int64 ns; `InvalidArgument` naming `field` when it is not valid."""
    if not 0 <= ts.nanos < NS_PER_S:
        raise InvalidArgument(f"{field}.nanos", f"is {ts.nanos}; must be in [0, 999999999]")
    ns = ts.seconds * NS_PER_S + ts.nanos
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidArgument(
            field, f"{ts.seconds} s is outside the years 1678-2261 that int64 nanoseconds hold"
        )
    return ns


def duration_ns(d: Duration, field: str) -> int:
    """A Duration as int64 ns; `InvalidArgument` naming `field` when it is not valid."""
    if not -NS_PER_S < d.nanos < NS_PER_S or (d.seconds * d.nanos < 0):
        raise InvalidArgument(
            f"{field}.nanos", f"is {d.nanos}; must be in (-1e9, 1e9) with the sign of seconds"
        )
    ns = d.seconds * NS_PER_S + d.nanos
    if not MIN_NS <= ns <= MAX_NS:
        raise InvalidArgument(field, f"{d.seconds} s does not fit in int64 nanoseconds")
    return ns


def observations_from_proto(request: pb.ObserveRequest) -> list[Observation]:
    """Raises `InvalidArgument` naming `observations[i].timestamps[j]` for a bad time."""
    return [
        Observation(
            series_id=o.series_id,
            timestamps=np.fromiter(
                (
                    timestamp_ns(t, f"observations[{i}].timestamps[{j}]")
                    for j, t in enumerate(o.timestamps)
                ),
                dtype=np.int64,
                count=len(o.timestamps),
            ),
            values=np.asarray(o.values, dtype=np.float64),
        )
        for i, o in enumerate(request.observations)
    ]
