import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    IDLE: _ClassVar[Phase]
    PROGRESSING: _ClassVar[Phase]
    PAUSED: _ClassVar[Phase]
    PROMOTED: _ClassVar[Phase]
    ROLLED_BACK: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
IDLE: Phase
PROGRESSING: Phase
PAUSED: Phase
PROMOTED: Phase
ROLLED_BACK: Phase

class StartRolloutRequest(_message.Message):
    __slots__ = ("candidate", "actor")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    candidate: str
    actor: str
    def __init__(self, candidate: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("full", "actor")
    FULL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    full: bool
    actor: str
    def __init__(self, full: _Optional[bool] = ..., actor: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("reason", "actor")
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    reason: str
    actor: str
    def __init__(self, reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("actor",)
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    actor: str
    def __init__(self, actor: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("actor",)
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    actor: str
    def __init__(self, actor: _Optional[str] = ...) -> None: ...

class SetWeightRequest(_message.Message):
    __slots__ = ("weight", "actor")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    weight: float
    actor: str
    def __init__(self, weight: _Optional[float] = ..., actor: _Optional[str] = ...) -> None: ...

class ListHistoryRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class Judgement(_message.Message):
    __slots__ = ("verdict", "reason", "method", "weaker", "samples", "has_ratio", "ratio", "lower", "upper", "guardrail", "pairs", "metrics")
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEAKER_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HAS_RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    GUARDRAIL_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    verdict: str
    reason: str
    method: str
    weaker: bool
    samples: int
    has_ratio: bool
    ratio: float
    lower: float
    upper: float
    guardrail: str
    pairs: int
    metrics: _containers.RepeatedCompositeFieldContainer[MetricJudgement]
    def __init__(self, verdict: _Optional[str] = ..., reason: _Optional[str] = ..., method: _Optional[str] = ..., weaker: _Optional[bool] = ..., samples: _Optional[int] = ..., has_ratio: _Optional[bool] = ..., ratio: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., guardrail: _Optional[str] = ..., pairs: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[MetricJudgement, _Mapping]]] = ...) -> None: ...

class MetricJudgement(_message.Message):
    __slots__ = ("metric", "verdict", "units", "pairs", "has_ratio", "ratio", "lower", "upper", "block_horizons", "note")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    HAS_RATIO_FIELD_NUMBER: _ClassVar[int]
    RATIO_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HORIZONS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    verdict: str
    units: int
    pairs: int
    has_ratio: bool
    ratio: float
    lower: float
    upper: float
    block_horizons: float
    note: str
    def __init__(self, metric: _Optional[str] = ..., verdict: _Optional[str] = ..., units: _Optional[int] = ..., pairs: _Optional[int] = ..., has_ratio: _Optional[bool] = ..., ratio: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., block_horizons: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class VariantSamples(_message.Message):
    __slots__ = ("calls", "errors", "p99_latency_seconds", "scored_forecasts", "mean_scaled_error")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P99_LATENCY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORED_FORECASTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCALED_ERROR_FIELD_NUMBER: _ClassVar[int]
    calls: int
    errors: int
    p99_latency_seconds: float
    scored_forecasts: int
    mean_scaled_error: float
    def __init__(self, calls: _Optional[int] = ..., errors: _Optional[int] = ..., p99_latency_seconds: _Optional[float] = ..., scored_forecasts: _Optional[int] = ..., mean_scaled_error: _Optional[float] = ...) -> None: ...

class AnalysisSample(_message.Message):
    __slots__ = ("fraction", "answered_calls", "recorded_calls", "share")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_CALLS_FIELD_NUMBER: _ClassVar[int]
    RECORDED_CALLS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    answered_calls: int
    recorded_calls: int
    share: float
    def __init__(self, fraction: _Optional[float] = ..., answered_calls: _Optional[int] = ..., recorded_calls: _Optional[int] = ..., share: _Optional[float] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("at", "action", "reason", "actor", "weight")
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    action: str
    reason: str
    actor: str
    weight: float
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("rollout_id", "phase", "model", "stable_version", "candidate_version", "step", "steps", "canary_weight", "stable", "canary", "judgement", "seconds_in_step", "last_decision", "started_at", "ended_at", "outcome_reason", "sample")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STABLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_IN_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_DECISION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    phase: Phase
    model: str
    stable_version: str
    candidate_version: str
    step: int
    steps: _containers.RepeatedScalarFieldContainer[float]
    canary_weight: float
    stable: VariantSamples
    canary: VariantSamples
    judgement: Judgement
    seconds_in_step: float
    last_decision: DecisionRecord
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    outcome_reason: str
    sample: AnalysisSample
    def __init__(self, rollout_id: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., model: _Optional[str] = ..., stable_version: _Optional[str] = ..., candidate_version: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[_Iterable[float]] = ..., canary_weight: _Optional[float] = ..., stable: _Optional[_Union[VariantSamples, _Mapping]] = ..., canary: _Optional[_Union[VariantSamples, _Mapping]] = ..., judgement: _Optional[_Union[Judgement, _Mapping]] = ..., seconds_in_step: _Optional[float] = ..., last_decision: _Optional[_Union[DecisionRecord, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome_reason: _Optional[str] = ..., sample: _Optional[_Union[AnalysisSample, _Mapping]] = ...) -> None: ...

class ListHistoryResponse(_message.Message):
    __slots__ = ("rollouts",)
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutStatus]
    def __init__(self, rollouts: _Optional[_Iterable[_Union[RolloutStatus, _Mapping]]] = ...) -> None: ...
