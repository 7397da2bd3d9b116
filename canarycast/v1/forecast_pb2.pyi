import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SeriesInput(_message.Message):
    __slots__ = ("series_id", "history", "start", "step")
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    series_id: str
    history: _containers.RepeatedScalarFieldContainer[float]
    start: _timestamp_pb2.Timestamp
    step: _duration_pb2.Duration
    def __init__(self, series_id: _Optional[str] = ..., history: _Optional[_Iterable[float]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ForecastRequest(_message.Message):
    __slots__ = ("series", "horizon", "quantiles")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[SeriesInput]
    horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, series: _Optional[_Iterable[_Union[SeriesInput, _Mapping]]] = ..., horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ...) -> None: ...

class QuantileForecast(_message.Message):
    __slots__ = ("quantile", "values")
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    quantile: float
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, quantile: _Optional[float] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class SeriesForecast(_message.Message):
    __slots__ = ("series_id", "forecast_id", "timestamps", "point", "quantiles")
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    FORECAST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    POINT_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    series_id: str
    forecast_id: str
    timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    point: _containers.RepeatedScalarFieldContainer[float]
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantileForecast]
    def __init__(self, series_id: _Optional[str] = ..., forecast_id: _Optional[str] = ..., timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., point: _Optional[_Iterable[float]] = ..., quantiles: _Optional[_Iterable[_Union[QuantileForecast, _Mapping]]] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "variant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    variant: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., variant: _Optional[str] = ...) -> None: ...

class ForecastResponse(_message.Message):
    __slots__ = ("forecasts", "model")
    FORECASTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    forecasts: _containers.RepeatedCompositeFieldContainer[SeriesForecast]
    model: ModelRef
    def __init__(self, forecasts: _Optional[_Iterable[_Union[SeriesForecast, _Mapping]]] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class SeriesObservation(_message.Message):
    __slots__ = ("series_id", "timestamps", "values")
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    series_id: str
    timestamps: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, series_id: _Optional[str] = ..., timestamps: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("observations",)
    OBSERVATIONS_FIELD_NUMBER: _ClassVar[int]
    observations: _containers.RepeatedCompositeFieldContainer[SeriesObservation]
    def __init__(self, observations: _Optional[_Iterable[_Union[SeriesObservation, _Mapping]]] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("accepted_points",)
    ACCEPTED_POINTS_FIELD_NUMBER: _ClassVar[int]
    accepted_points: int
    def __init__(self, accepted_points: _Optional[int] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Lineage(_message.Message):
    __slots__ = ("dataset", "dataset_hash", "parameters", "scores", "created_at", "code_version", "defaults")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DefaultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    dataset_hash: str
    parameters: _containers.ScalarMap[str, str]
    scores: _containers.ScalarMap[str, float]
    created_at: _timestamp_pb2.Timestamp
    code_version: str
    defaults: _containers.ScalarMap[str, str]
    def __init__(self, dataset: _Optional[str] = ..., dataset_hash: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., scores: _Optional[_Mapping[str, float]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., code_version: _Optional[str] = ..., defaults: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model", "lookback", "max_horizon", "quantiles", "step", "lineage", "max_series_per_call", "max_history", "reload_error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOOKBACK_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_SERIES_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_FIELD_NUMBER: _ClassVar[int]
    RELOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    lookback: int
    max_horizon: int
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    step: _duration_pb2.Duration
    lineage: Lineage
    max_series_per_call: int
    max_history: int
    reload_error: str
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., lookback: _Optional[int] = ..., max_horizon: _Optional[int] = ..., quantiles: _Optional[_Iterable[float]] = ..., step: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., lineage: _Optional[_Union[Lineage, _Mapping]] = ..., max_series_per_call: _Optional[int] = ..., max_history: _Optional[int] = ..., reload_error: _Optional[str] = ...) -> None: ...
