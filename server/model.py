"""The network and its inference: an LSTM encoder with a direct multi-horizon quantile head.

Every window is scaled on its own (:func:`scale_windows`), so one model serves series of
any level and spread; the network sees and predicts scaled values only, and
:func:`predict` maps its quantiles back to original units. The network carries a
conformal interval correction (``interval_offset``, fitted after training by
:func:`server.training.train`) in its state dict, so every copy of the weights (the
registry's, a traced one) serves the calibrated intervals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from pandas.tseries.frequencies import to_offset

__all__ = [
    "LSTMForecaster",
    "ModelConfig",
    "build_model",
    "predict",
    "scale_windows",
]

SCALE_FLOOR = 1e-8  # relative to max(1, |loc|): the scale of a (nearly) constant window
SEASONAL_FLOOR = 1e-3  # in scaled units: least mean absolute seasonal difference of a window


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network and the data it was trained on; validated on construction."""

    lookback: int = 48
    horizon: int = 24
    hidden: int = 32
    layers: int = 2
    dropout: float = 0.0
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    freq: str = "h"
    step_seconds: int = 3600
    season_length: int = 24

    def __post_init__(self) -> None:
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
    def point_index(self) -> int:
        """Index of the median (the point forecast) along the quantile axis."""
        return self.quantiles.index(0.5)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        for name in ("lookback", "horizon", "hidden", "layers", "step_seconds", "season_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.lookback <= self.season_length:
            raise ValueError(
                f"lookback ({self.lookback}) must be > season_length ({self.season_length}): "
                "the network reads seasonal differences within its window"
            )
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
        try:
            to_offset(self.freq)
        except ValueError as exc:
            raise ValueError(f"freq {self.freq!r} is not a pandas offset alias: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (quantiles as a list)."""
        d = asdict(self)
        d["quantiles"] = list(self.quantiles)
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


class LSTMForecaster(torch.nn.Module):
    """LSTM encoder over the (per-window scaled) history, direct multi-horizon head:
    Linear(hidden -> horizon * n_quantiles) on the last hidden state.

    Seasonal-residual design: the LSTM reads two channels per step, the scaled value and
    its seasonal difference ``x[t] - x[t-m]`` divided by ``s``, the window's mean absolute
    seasonal difference (its in-window seasonal-naive error, floored). The head's output,
    times ``s``, corrects the seasonal-naive forecast of the window (its last ``m`` values
    repeated) for every quantile. The head starts at zero, so an untrained network
    forecasts seasonal naive; all of this is invariant to the window's level and scale.

    ``interval_offset`` (horizon, n_quantiles), a persistent buffer, is added to the head's
    output: the conformal correction of each quantile and step in the same normalised units
    (divided by the window's scale and by ``s``), zero by default and for the median. It is
    part of the state dict (so of the registry's content hash) and of any traced copy.
    """

    base_index: torch.Tensor  # (horizon,) input positions of the seasonal-naive forecast
    interval_offset: torch.Tensor  # (horizon, n_quantiles) conformal correction, normalised

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.lstm = torch.nn.LSTM(
            input_size=2,
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = torch.nn.Linear(config.hidden, config.horizon * config.n_quantiles)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        m = config.season_length
        base = config.lookback - m + torch.arange(config.horizon) % m
        self.register_buffer("base_index", base, persistent=False)
        offset = torch.zeros(config.horizon, config.n_quantiles)
        self.register_buffer("interval_offset", offset, persistent=True)

    def seasonal_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, lookback) scaled -> (batch, 1): ``s``, the window's mean absolute
        seasonal difference (floored), the unit of the head's output."""
        return self._seasonal(x)[1]

    def _seasonal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The seasonal differences ``x[t] - x[t-m]`` and their scale ``s``."""
        m = self.config.season_length
        diff = x[:, m:] - x[:, :-m]
        return diff, diff.abs().mean(dim=1, keepdim=True).clamp_min(SEASONAL_FLOOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, lookback) scaled -> (batch, horizon, n_quantiles) scaled."""
        diff, s = self._seasonal(x)
        diff = torch.nn.functional.pad(diff / s, (self.config.season_length, 0))
        out, _ = self.lstm(torch.stack((x, diff), dim=-1))
        y = self.head(out[:, -1, :]).view(x.shape[0], self.config.horizon, -1)
        return x[:, self.base_index].unsqueeze(-1) + s.unsqueeze(-1) * (y + self.interval_offset)


def scale_windows(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-window scaling: ``scaled = (w - loc) / scale`` with loc the window's mean and
    scale its mean absolute deviation from that mean, floored at
    ``1e-8 * max(1, |loc|)`` so a constant window scales to zeros instead of dividing by
    zero. Returns ``(scaled, loc, scale)`` as float64, loc and scale shaped (batch, 1).
    Affine-equivariant: ``a * w + b`` (a > 0) gives the same scaled windows.
    """
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] == 0:
        raise ValueError(f"windows must be shaped (batch, lookback), got {w.shape}")
    loc = w.mean(axis=1, keepdims=True)
    scale = np.abs(w - loc).mean(axis=1, keepdims=True)
    scale = np.maximum(scale, SCALE_FLOOR * np.maximum(1.0, np.abs(loc)))
    return (w - loc) / scale, loc, scale


def predict(net: LSTMForecaster, windows: np.ndarray) -> np.ndarray:
    """Forecast from raw windows.

    ``windows``: (batch, lookback) float64 raw values, the last ``lookback`` of each history.
    Returns (batch, horizon, n_quantiles) float64 in original units with quantiles sorted
    along the last axis (monotone rearrangement, so intervals never cross). Touches no
    module state, so threads may call it concurrently (on the same or different models).
    """
    config = net.config
    w = np.asarray(windows, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != config.lookback:
        raise ValueError(f"windows must be shaped (batch, {config.lookback}), got {w.shape}")
    if w.shape[0] == 0:
        return np.empty((0, config.horizon, config.n_quantiles), dtype=np.float64)
    if not np.isfinite(w).all():
        raise ValueError("windows must hold finite values only")
    scaled, loc, scale = scale_windows(w)
    with torch.inference_mode():
        out = net(torch.from_numpy(scaled.astype(np.float32)))
    q = np.sort(out.numpy().astype(np.float64), axis=-1)
    return loc[:, :, None] + scale[:, :, None] * q


def build_model(
    config: ModelConfig, state_dict: Mapping[str, torch.Tensor] | None = None
) -> LSTMForecaster:
    """A network for ``config`` in eval mode, with ``state_dict`` loaded strictly if given.

    A state dict saved before the conformal correction existed has no ``interval_offset``:
    it loads with the correction at zero (the intervals it was trained and scored with).
    """
    net = LSTMForecaster(config)
    if state_dict is not None:
        state = dict(state_dict)
        state.setdefault("interval_offset", torch.zeros_like(net.interval_offset))
        net.load_state_dict(state, strict=True)
    return net.eval()
