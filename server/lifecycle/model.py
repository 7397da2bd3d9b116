"""The network and its inference: an LSTM encoder with a direct multi-horizon quantile head,
or several of them (seeds) served as one network, :class:`EnsembleForecaster`.

Every window is scaled on its own (:func:`scale_windows`), so one model serves series of
any level and spread; the network sees and predicts scaled values only, and
:func:`predict` maps its quantiles back to original units. The network carries a
conformal interval correction (``interval_offset``, fitted after training by
:func:`server.lifecycle.training.train`) in its state dict, so every copy of the weights (the
registry's, a traced one) serves the calibrated intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from server.lifecycle.recipe import ModelConfig

if TYPE_CHECKING:
    from server.lifecycle.registry import ModelRef, ModelVersion, Registry

__all__ = [
    "EnsembleForecaster",
    "Forecaster",
    "LSTMForecaster",
    "LoadedModel",
    "ModelConfig",
    "build_model",
    "load_version",
    "predict",
    "scale_windows",
]

SCALE_FLOOR = 1e-8  # relative to max(1, |loc|): the scale of a (nearly) constant window
SEASONAL_FLOOR = 1e-3  # in scaled units: least mean absolute seasonal difference of a window


class Forecaster(torch.nn.Module):
    """What every served network offers (:func:`predict`, calibration, the registry):
    ``config``; ``forward(x)``, (batch, lookback) scaled -> (batch, horizon, n_quantiles)
    scaled; ``seasonal_scale(x)``; and ``interval_offset`` (horizon, n_quantiles), the
    persistent conformal correction in the head's normalised units. No parameters of its
    own, so it adds no state-dict keys."""

    config: ModelConfig
    interval_offset: torch.Tensor  # (horizon, n_quantiles) conformal correction, normalised

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config

    def seasonal_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, lookback) scaled -> (batch, 1): ``s``, the window's mean absolute
        seasonal difference (floored), the unit of the head's output."""
        return self._seasonal(x)[1]

    def _seasonal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The seasonal differences ``x[t] - x[t-m]`` and their scale ``s``."""
        m = self.config.season_length
        diff = x[:, m:] - x[:, :-m]
        return diff, diff.abs().mean(dim=1, keepdim=True).clamp_min(SEASONAL_FLOOR)


class LSTMForecaster(Forecaster):
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
    part of the state dict (so of the registry's content hash) and of any traced copy;
    a member of an :class:`EnsembleForecaster` keeps it at zero and out of its state dict
    (``offset=False``), since the ensemble corrects the combined output once.
    """

    base_index: torch.Tensor  # (horizon,) input positions of the seasonal-naive forecast
    extra_index: torch.Tensor  # (extra seasons, horizon) the same for each longer season

    def __init__(self, config: ModelConfig, *, offset: bool = True) -> None:
        super().__init__(config)
        extra = config.extra_seasons
        self.lstm = torch.nn.LSTM(
            input_size=2 + len(extra),
            hidden_size=config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        # Longer seasons also reach the head directly: their naive forecasts, as a
        # difference from the primary one, one feature per season and step.
        self.head = torch.nn.Linear(
            config.hidden + len(extra) * config.horizon, config.horizon * config.n_quantiles
        )
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        steps = torch.arange(config.horizon)
        m = config.season_length
        base = config.lookback - m + steps % m
        self.register_buffer("base_index", base, persistent=False)
        extra_index = torch.stack(
            [config.lookback - e + steps % e for e in extra]
            if extra
            else [torch.zeros(config.horizon, dtype=torch.long)]
        )[: len(extra)]
        self.register_buffer("extra_index", extra_index, persistent=False)
        zeros = torch.zeros(config.horizon, config.n_quantiles)
        self.register_buffer("interval_offset", zeros, persistent=offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, lookback) scaled -> (batch, horizon, n_quantiles) scaled."""
        diff, s = self._seasonal(x)
        channels = [x, torch.nn.functional.pad(diff / s, (self.config.season_length, 0))]
        for e in self.config.extra_seasons:
            channels.append(torch.nn.functional.pad((x[:, e:] - x[:, :-e]) / s, (e, 0)))
        out, _ = self.lstm(torch.stack(channels, dim=-1)[:, -self.config.encoder_length :])
        features = out[:, -1, :]
        base = x[:, self.base_index]
        if self.config.extra_seasons:
            naive = (x[:, self.extra_index] - base.unsqueeze(1)) / s.unsqueeze(-1)
            features = torch.cat((features, naive.flatten(1)), dim=1)
        y = self.head(features).view(x.shape[0], self.config.horizon, -1)
        return base.unsqueeze(-1) + s.unsqueeze(-1) * (y + self.interval_offset)


class EnsembleForecaster(Forecaster):
    """``config.members`` LSTMForecasters (one per training seed) served as one network.

    ``forward`` averages the members' scaled quantile outputs (each the seasonal-naive
    forecast plus its head's correction; the seasonal scale ``s`` is the same for every
    member, a function of the window alone), then adds ``s * interval_offset``: the
    conformal correction, applied once, to the combined output, so
    :func:`server.lifecycle.training.calibrate` fits it exactly as on a single network. The members
    carry no offset of their own. State dict: ``members.<i>.<the member's weights>`` and
    ``interval_offset``; a traced copy holds them all.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if config.members < 2:
            raise ValueError(f"members must be >= 2 for an ensemble, got {config.members}")
        member_config = replace(config, members=1)
        self.members = torch.nn.ModuleList(
            LSTMForecaster(member_config, offset=False) for _ in range(config.members)
        )
        zeros = torch.zeros(config.horizon, config.n_quantiles)
        self.register_buffer("interval_offset", zeros, persistent=True)

    @classmethod
    def from_members(cls, config: ModelConfig, members: list[LSTMForecaster]) -> EnsembleForecaster:
        """An ensemble of trained members' weights (their offsets left out), offset zero."""
        if len(members) != config.members:
            raise ValueError(f"config.members is {config.members}, got {len(members)} members")
        net = cls(config)
        for mine, theirs in zip(net.members, members, strict=True):
            state = {k: v for k, v in theirs.state_dict().items() if k != "interval_offset"}
            mine.load_state_dict(state, strict=True)
        return net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, lookback) scaled -> (batch, horizon, n_quantiles) scaled."""
        out = torch.stack([member(x) for member in self.members]).mean(dim=0)
        return out + self.seasonal_scale(x).unsqueeze(-1) * self.interval_offset


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


def predict(net: Forecaster, windows: np.ndarray) -> np.ndarray:
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
) -> Forecaster:
    """A network for ``config`` in eval mode (an :class:`EnsembleForecaster` when
    ``config.members`` > 1, else an :class:`LSTMForecaster`), with ``state_dict`` loaded
    strictly if given.

    A state dict saved before the conformal correction existed has no ``interval_offset``:
    it loads with the correction at zero (the intervals it was trained and scored with).
    """
    net: Forecaster = EnsembleForecaster(config) if config.members > 1 else LSTMForecaster(config)
    if state_dict is not None:
        state = dict(state_dict)
        state.setdefault("interval_offset", torch.zeros_like(net.interval_offset))
        net.load_state_dict(state, strict=True)
    return net.eval()


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One verified model version, ready to forecast. Identity-hashed: the batcher
    groups calls by the model object they were validated against."""

    version: ModelVersion
    config: ModelConfig
    net: Forecaster = field(repr=False)

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def version_id(self) -> str:
        return self.version.version

    @property
    def point_index(self) -> int:
        return self.config.quantiles.index(0.5)

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """(n, lookback) raw values -> (n, horizon, quantiles) in original units."""
        return predict(self.net, windows)


def load_version(registry: Registry, ref: ModelRef | str) -> LoadedModel:
    """Resolve `ref`, load its weights with the registry's content-hash check and build
    the network (no warm-up: serving's loader adds it).

    Raises `RegistryError` for a missing or corrupt version, ValueError for a bad config.
    """
    resolved = registry.resolve(ref)
    version, state_dict = registry.load(resolved.name, resolved.version)
    config = ModelConfig.from_dict(version.config)
    return LoadedModel(version, config, build_model(config, state_dict))
