"""Input rules shared by model servers and routers, each violation an `InvalidArgument`
naming the field (`observations[2].values[5]`) and the series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from canarycast.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    """Per-call limits. Message size itself is capped by gRPC (`max_message_bytes`)."""

    max_series_per_call: int = 1024
    max_history: int = 100_000
    max_series_id_bytes: int = 256
    max_observation_points: int = 100_000
    max_message_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class Observation:
    series_id: str
    timestamps: np.ndarray  # int64 ns
    values: np.ndarray  # float64


def check_series_id(series_id: str, field: str, limits: Limits) -> None:
    if not series_id:
        raise InvalidArgument(field, "must not be empty")
    if len(series_id.encode()) > limits.max_series_id_bytes:
        raise InvalidArgument(field, f"longer than {limits.max_series_id_bytes} bytes")


def check_finite(values: np.ndarray, field: str, where: str) -> None:
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(np.argmin(finite))
        raise InvalidArgument(f"{field}[{bad}]", f"is {values[bad]} {where}; values must be finite")


def history_scale(history: np.ndarray) -> float:
    """Mean absolute one-step change: the error scale of a series (as in MASE)."""
    if history.size < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(history))))


def history_scales(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mean absolute one-step change of each concatenated history (0 below two values):
    the error scale of a series, as in MASE (`history_scale`, for a whole call)."""
    n = lengths.size
    scales = np.zeros(n, dtype=np.float64)
    if values.size < 2:
        return scales
    steps = np.abs(np.diff(values))
    ends = np.cumsum(lengths)
    inner = ends[:-1][lengths[:-1] > 0] - 1  # the step from one history into the next
    steps[inner[inner < steps.size]] = 0.0
    starts = ends - lengths
    ok = lengths >= 2
    if ok.any():
        sums = np.add.reduceat(steps, np.minimum(starts[ok], steps.size - 1))
        # reduceat sums up to the next index given; the last one runs to the end, where
        # the only steps left are the last series' own (or zeros at boundaries).
        scales[ok] = sums / (lengths[ok] - 1)
    return scales


def validate_observations(observations: Sequence[Observation], limits: Limits) -> int:
    """Check an Observe call; returns the number of points it carries."""
    if not observations:
        raise InvalidArgument("observations", "at least one observation is required")
    total = 0
    ids: set[str] = set()
    for i, o in enumerate(observations):
        field = f"observations[{i}]"
        check_series_id(o.series_id, f"{field}.series_id", limits)
        if o.series_id in ids:
            raise InvalidArgument(f"{field}.series_id", f"duplicate series id {o.series_id!r}")
        ids.add(o.series_id)
        where = f"(series {o.series_id!r})"
        if o.values.size == 0:
            raise InvalidArgument(f"{field}.values", f"is empty {where}")
        if o.timestamps.size != o.values.size:
            raise InvalidArgument(
                f"{field}.timestamps",
                f"has {o.timestamps.size} entries for {o.values.size} values {where}",
            )
        check_finite(o.values, f"{field}.values", where)
        if o.timestamps.size > 1 and not (np.diff(o.timestamps) > 0).all():
            bad = int(np.argmin(np.diff(o.timestamps) > 0)) + 1
            raise InvalidArgument(
                f"{field}.timestamps[{bad}]", f"is not after the previous one {where}"
            )
        total += o.values.size
    if total > limits.max_observation_points:
        raise InvalidArgument(
            "observations",
            f"{total} points in one call; the limit is {limits.max_observation_points}",
        )
    return total
