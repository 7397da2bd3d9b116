"""The routing key, read from a call's bytes without decoding the request.

A router forwards a `ForecastRequest` as it came; to route it needs only the first
series' id. This walks the protobuf wire format up to that series and skips the rest,
so its cost (about 5 us) does not grow with the series or their histories, where a
full decode costs about 0.1 us per 192-value series (100 us for 1,024 series). The
full decode happens after the answer has left (`router.traffic.proxy.Router.record`). The
answer is decoded with protobuf's C decoder instead (for its model version): a Python
walk over it costs more than that decode at any size.

Bytes that are not a well-formed message up to what is read are an `InvalidArgument`
naming the message type, as a full decode would say; anything malformed beyond that
is the model server's to refuse (it decodes the whole request).
"""

from __future__ import annotations

from collections.abc import Iterator

from canarycast.errors import InvalidArgument
from canarycast.v1 import forecast_pb2 as pb

_REQUEST = pb.ForecastRequest.DESCRIPTOR.full_name
_SERIES = pb.ForecastRequest.DESCRIPTOR.fields_by_name["series"].number
_SERIES_ID = pb.SeriesInput.DESCRIPTOR.fields_by_name["series_id"].number


class Malformed(ValueError):
    """Not protobuf wire format."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise Malformed("truncated or over-long varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value start, value end) of each top-level field;
    a varint's value is read from [start, end) by `_varint`."""
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        number, kind = tag >> 3, tag & 7
        if number == 0:
            raise Malformed("field number 0")
        if kind == 0:
            _, end = _varint(data, at)
        elif kind == 1:
            end = at + 8
        elif kind == 2:
            size, at = _varint(data, at)
            end = at + size
        elif kind == 5:
            end = at + 4
        else:  # groups (3, 4) are not in these messages; 6 and 7 do not exist
            raise Malformed(f"wire type {kind}")
        if end > len(data):
            raise Malformed("truncated field")
        yield number, kind, at, end
        at = end


def _last_string(data: bytes, number: int) -> str | None:
    found = None
    for n, kind, start, end in fields(data):
        if n == number:
            if kind != 2:
                raise Malformed(f"field {number} is not length-delimited")
            found = data[start:end]
    return None if found is None else found.decode("utf-8")  # strict, as protobuf is


def first_series_id(raw: bytes) -> str | None:
    """The routing key: `series[0].series_id` of a `ForecastRequest` (None: no series)."""
    try:
        for number, kind, start, end in fields(raw):
            if number == _SERIES:
                if kind != 2:
                    raise Malformed("series is not length-delimited")
                return _last_string(raw[start:end], _SERIES_ID) or ""
    except (Malformed, UnicodeDecodeError) as exc:
        raise InvalidArgument("request", f"not a {_REQUEST}: {exc}") from exc
    return None


def split_request(raw: bytes) -> tuple[list[bytes], list[str], bytes]:
    """A `ForecastRequest`'s bytes as (each `series` field with its tag, each series' id,
    the other fields' bytes). ``rest + b"".join(series)`` parses as the same request, and
    requests with equal `rest` may be joined by concatenating their series fields (the
    order of fields does not matter to protobuf; repeated fields are appended)."""
    series: list[bytes] = []
    ids: list[str] = []
    rest: list[bytes] = []
    at = 0
    try:
        for number, kind, start, end in fields(raw):
            if number == _SERIES:
                if kind != 2:
                    raise Malformed("series is not length-delimited")
                series.append(raw[at:end])
                ids.append(_last_string(raw[start:end], _SERIES_ID) or "")
            else:
                rest.append(raw[at:end])
            at = end
    except (Malformed, UnicodeDecodeError) as exc:
        raise InvalidArgument("request", f"not a {_REQUEST}: {exc}") from exc
    return series, ids, b"".join(rest)
