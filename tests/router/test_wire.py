"""The routing key read from a request's bytes, against protobuf's own decoding."""

from __future__ import annotations

import numpy as np
import pytest

from canarycast.errors import InvalidArgument
from canarycast.v1 import forecast_pb2 as pb
from router.traffic.wire import first_series_id


@pytest.mark.parametrize(
    "request_",
    [
        pb.ForecastRequest(),
        pb.ForecastRequest(horizon=3, quantiles=[0.1]),
        pb.ForecastRequest(series=[pb.SeriesInput(history=[1.0])]),
        pb.ForecastRequest(
            horizon=24,
            series=[
                pb.SeriesInput(series_id=f"sëries-{i}", history=np.arange(200.0).tolist())
                for i in range(64)
            ],
        ),
    ],
)
def test_the_key_is_what_a_full_decode_says(request_: pb.ForecastRequest) -> None:
    raw = request_.SerializeToString()
    decoded = pb.ForecastRequest.FromString(raw)
    expected = decoded.series[0].series_id if decoded.series else None
    assert first_series_id(raw) == expected


def test_a_repeated_id_field_counts_as_protobuf_counts_it() -> None:
    # the same field twice in one message: the last one wins, as in any decoder
    series = pb.SeriesInput(series_id="first").SerializeToString()
    series += pb.SeriesInput(series_id="second").SerializeToString()
    raw = bytes([0x0A, len(series)]) + series
    assert first_series_id(raw) == pb.ForecastRequest.FromString(raw).series[0].series_id


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05ab",  # a series longer than the bytes left
        b"\x0a\x03\x0a\x02\xff\xfe",  # an id that is not UTF-8
        b"\x0b",  # wire type 3 (a group)
        b"\x0a\x02\x0a\x81",  # a truncated varint inside the series
        b"\x09\x00",  # a truncated fixed64 before the series
    ],
)
def test_bytes_that_are_not_a_request_are_refused_naming_the_message(raw: bytes) -> None:
    with pytest.raises(InvalidArgument) as err:
        first_series_id(raw)
    assert str(err.value).startswith("request: not a canarycast.v1.ForecastRequest")
