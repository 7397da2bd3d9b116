"""Plain, validated settings: a model's recipe (its shape, `ModelConfig`, and how it is
trained, `TrainParams`) and the thresholds of drift detection (`DriftPolicy`).

No torch, pandas or scipy at import, so that what only needs settings (the command line
and its defaults) starts in a fraction of a second. `server.lifecycle.model`,
`server.lifecycle.training` and `server.lifecycle.drift` re-export them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["DEFAULT_MEMBERS", "DriftPolicy", "ModelConfig", "TrainParams"]

#: Seed members of the default recipe (`server.lifecycle.pipeline.config_for`): one network.
#: Three members were 1-8 % better on the validation split of every bundled dataset, but on
#: test they moved MASE by -2.3 % to +2.8 % (worse on us-employment) for three times the
#: training and the forward pass (bench/results/levers-members.json, accuracy-members3.json,
#: members-cost.json); `canarycast train --members 3` trains one.
DEFAULT_MEMBERS = 1


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network and the data it was trained on; validated on construction."""

    lookback: int = 48
    horizon: int = 24
    # 64 units: better on the validation split of every bundled dataset than 32 (0.78-0.99x
    # the MASE, bench/levers.py) at 2-6x the training time (hourly-temps: 21 s).
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.0
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    freq: str = "h"
    step_seconds: int = 3600
    season_length: int = 24
    # Longer seasons the network also reads (168 for hourly data): seasonal differences
    # and naive forecasts at these lags. Empty for models trained before they existed.
    extra_seasons: tuple[int, ...] = ()
    # Steps of the window the LSTM reads (its last ones; 0: all of it). The longer seasons
    # reach it as differences on those steps, and the head as naive forecasts, so a year
    # of daily data need not be read step by step. 0 for models trained before it existed.
    encoder_steps: int = 0
    # Seed members served as one network (their quantiles averaged, server.lifecycle.model's
    # EnsembleForecaster); 1: a single LSTMForecaster, as every model trained before it.
    # The default recipe (config_for) takes DEFAULT_MEMBERS.
    members: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.extra_seasons, list):
            object.__setattr__(self, "extra_seasons", tuple(self.extra_seasons))
        if isinstance(self.quantiles, list | tuple):
            # JSON gives lists, and integers where floats are meant; normalise before checking.
            quantiles = tuple(
                float(q) if isinstance(q, int | float) and not isinstance(q, bool) else q
                for q in self.quantiles
            )
            object.__setattr__(self, "quantiles", quantiles)
        if isinstance(self.dropout, int) and not isinstance(self.dropout, bool):
            object.__setattr__(self, "dropout", float(self.dropout))
        self.validate()

    @property
    def n_quantiles(self) -> int:
        return len(self.quantiles)

    @property
    def seasons(self) -> tuple[int, ...]:
        """``season_length`` and the extra seasons, shortest first."""
        return (self.season_length, *self.extra_seasons)

    @property
    def encoder_length(self) -> int:
        """Steps the LSTM reads: ``encoder_steps``, or the whole window when it is 0."""
        return self.encoder_steps or self.lookback

    @property
    def point_index(self) -> int:
        """Index of the median (the point forecast) along the quantile axis."""
        return self.quantiles.index(0.5)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        for name in (
            "lookback",
            "horizon",
            "hidden",
            "layers",
            "step_seconds",
            "season_length",
            "members",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.lookback <= self.season_length:
            raise ValueError(
                f"lookback ({self.lookback}) must be > season_length ({self.season_length}): "
                "the network reads seasonal differences within its window"
            )
        es = self.encoder_steps
        if not isinstance(es, int) or isinstance(es, bool) or not 0 <= es <= self.lookback:
            raise ValueError(
                f"encoder_steps must be an integer in 0..lookback ({self.lookback}), got {es!r}"
            )
        extra = self.extra_seasons
        if not isinstance(extra, tuple) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in extra
        ):
            raise ValueError(f"extra_seasons must be a sequence of integers, got {extra!r}")
        previous = self.season_length
        for m in extra:
            if m <= previous:
                raise ValueError(
                    f"extra_seasons must be increasing and > season_length "
                    f"({self.season_length}), got {list(extra)}"
                )
            if m >= self.lookback:
                raise ValueError(
                    f"extra_seasons: {m} must be < lookback ({self.lookback}): the network "
                    "reads each season within its window"
                )
            previous = m
        if (
            not isinstance(self.dropout, float)
            or not math.isfinite(self.dropout)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        qs = self.quantiles
        if not isinstance(qs, tuple) or not qs:
            raise ValueError(f"quantiles must be a non-empty sequence, got {qs!r}")
        for q in qs:
            if not isinstance(q, float) or not 0.0 < q < 1.0:
                raise ValueError(f"quantiles must be numbers in (0, 1), got {q!r}")
        if any(b <= a for a, b in itertools.pairwise(qs)):
            raise ValueError(f"quantiles must be strictly increasing, got {list(qs)}")
        if 0.5 not in qs:
            raise ValueError(f"quantiles must contain 0.5 (the point forecast), got {list(qs)}")
        if not isinstance(self.freq, str) or not self.freq:
            raise ValueError(f"freq must be a pandas offset alias, got {self.freq!r}")
        from pandas.tseries.frequencies import to_offset

        try:
            to_offset(self.freq)
        except ValueError as exc:
            raise ValueError(f"freq {self.freq!r} is not a pandas offset alias: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (quantiles as a list)."""
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
        if self.extra_seasons:
            d["extra_seasons"] = list(self.extra_seasons)
        else:
            del d["extra_seasons"]  # absent unless set: configs and keys of earlier models hold
        if not self.encoder_steps:
            del d["encoder_steps"]
        if self.members == 1:
            del d["members"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; missing fields take defaults, unknown ones are refused."""
        if not isinstance(d, Mapping):
            raise ValueError(f"model config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(map(str, unknown))}")
        kwargs = dict(d)
        if "quantiles" in kwargs and not isinstance(kwargs["quantiles"], list | tuple):
            raise ValueError(f"quantiles must be a list of numbers, got {kwargs['quantiles']!r}")
        return cls(**kwargs)


@dataclass(frozen=True)
class TrainParams:
    """How to train; validated on construction."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 3e-3
    # The validation loss often rises for the first few epochs before it falls; with a
    # patience of 5, seed 1 stopped at epoch 9 with MASE 1.83 (seeds 0-7 at 10: 0.51-0.52).
    patience: int = 10
    seed: int = 0
    max_windows_per_epoch: int | None = 2048
    series_ids: tuple[str, ...] | None = None
    # Points held out for validation and again for test at the end of every series
    # (None: 15 % each). Retraining sets it so that new observations are trained on.
    holdout_points: int | None = None
    # Conformalize the intervals on the training and validation windows (see calibrate).
    calibrate: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.series_ids, list):
            object.__setattr__(self, "series_ids", tuple(self.series_ids))
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        lr = self.learning_rate
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a number > 0, got {lr!r}")
        mw = self.max_windows_per_epoch
        if mw is not None and (not isinstance(mw, int) or isinstance(mw, bool) or mw < 1):
            raise ValueError(f"max_windows_per_epoch must be None or an integer >= 1, got {mw!r}")
        if not isinstance(self.calibrate, bool):
            raise ValueError(f"calibrate must be true or false, got {self.calibrate!r}")
        hp = self.holdout_points
        if hp is not None and (not isinstance(hp, int) or isinstance(hp, bool) or hp < 1):
            raise ValueError(f"holdout_points must be None or an integer >= 1, got {hp!r}")
        ids = self.series_ids
        if ids is not None and (
            not isinstance(ids, tuple) or not ids or not all(isinstance(s, str) for s in ids)
        ):
            raise ValueError(f"series_ids must be None or a non-empty tuple of str, got {ids!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (series_ids as a list or None)."""
        d = asdict(self)
        d["series_ids"] = None if self.series_ids is None else list(self.series_ids)
        if self.holdout_points is None:
            del d["holdout_points"]  # absent unless set: recipe keys of earlier models hold
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainParams:
        """Inverse of :meth:`to_dict`; missing fields take defaults, unknown ones are refused."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown train params field(s): {', '.join(map(str, unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class DriftPolicy:
    """Window sizes (in seasons of the data) and the thresholds that make a drift."""

    recent_seasons: int = 2
    reference_seasons: int = 7
    psi_threshold: float = 2.5
    ks_threshold: float = 0.5
    performance_ratio: float = 2.0
    bins: int = 10

    def __post_init__(self) -> None:
        for name in ("recent_seasons", "reference_seasons", "bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("psi_threshold", "ks_threshold", "performance_ratio"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
