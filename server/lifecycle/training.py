"""Training: pooled sliding windows, pinball loss, Adam, early stopping, test-split scores.

Each series is split chronologically with :func:`server.lifecycle.data.split_points`. A window
reads ``lookback`` values and predicts the next ``horizon``; its targets lie wholly in one
split (train, validation or test) while its inputs may reach back into earlier ones. The
windows of all series are pooled. Training is seeded: the same dataset, config and params
give bit-identical weights on the same machine and thread count.

After training, the intervals are calibrated by conformalized quantile regression (CQR,
Romano, Patterson & Candes 2019) on every window before the test split: the training and
the validation windows together (see :func:`calibrate`). Validation alone is a few weeks of
one season, and the season shifts before the test weeks (on seattle-temps the validation
weeks asked for narrower intervals, test coverage 0.63; pooled over the year, 0.78). The
correction is stored in
the network (``interval_offset``), so the test scores, the registry and the served path all
see the calibrated intervals. ``TrainParams(calibrate=False)`` keeps the raw quantile head.

The default recipe (``config_for(dataset)`` and ``TrainParams()``) trains on seattle-temps
in about 20 s on 2 CPU cores; the README's accuracy table has its scores on test.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from tqdm import tqdm

from server.lifecycle.data import DataError, Dataset, split_points
from server.lifecycle.model import (
    EnsembleForecaster,
    Forecaster,
    LSTMForecaster,
    ModelConfig,
    predict,
    scale_windows,
)
from server.lifecycle.recipe import TrainParams
from server.lifecycle.scoring import insample_seasonal_mae, offline_scores, seasonal_naive_forecast

__all__ = [
    "TrainParams",
    "TrainResult",
    "calibrate",
    "calibration_key",
    "conformal_quantile",
    "interval_pairs",
    "train",
]

GRAD_CLIP_NORM = 1.0
EVAL_CHUNK = 4096  # windows per forward pass when validating and scoring
_ALL = slice(None)


@dataclass(frozen=True)
class TrainResult:
    """A trained model: best-validation weights, test scores and the loss history."""

    config: ModelConfig
    params: TrainParams
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    scores: dict[str, float]
    history: list[dict[str, float]]
    epochs_run: int
    stopped_early: bool


@dataclass(frozen=True)
class _Windows:
    """The windows of one split, pooled over series, as forecast origins into one flat array
    of all values (memory stays linear in the data, whatever the lookback)."""

    values: np.ndarray  # every chosen series, concatenated
    origins: np.ndarray  # (n,) index in `values` of each window's first target
    insample_scale: np.ndarray  # (n,) training-part seasonal-naive MAE of the window's series
    config: ModelConfig

    def __len__(self) -> int:
        return int(self.origins.size)

    def _take(self, idx: np.ndarray | slice, offsets: np.ndarray) -> np.ndarray:
        return self.values[self.origins[idx][:, None] + offsets]

    def inputs(self, idx: np.ndarray | slice = _ALL) -> np.ndarray:
        """(n, lookback) raw histories."""
        return self._take(idx, np.arange(-self.config.lookback, 0))

    def targets(self, idx: np.ndarray | slice = _ALL) -> np.ndarray:
        """(n, horizon) raw actuals."""
        return self._take(idx, np.arange(self.config.horizon))

    def snaive(self, idx: np.ndarray | slice = _ALL) -> np.ndarray:
        """(n, horizon) seasonal-naive forecasts of the targets."""
        m = self.config.season_length
        return seasonal_naive_forecast(self._take(idx, np.arange(-m, 0)), self.config.horizon, m)

    def __add__(self, other: _Windows) -> _Windows:
        """The windows of both (same values and config), self's first."""
        if other.values is not self.values or other.config != self.config:
            raise ValueError("only windows over the same values and config can be pooled")
        return _Windows(
            self.values,
            np.concatenate([self.origins, other.origins]),
            np.concatenate([self.insample_scale, other.insample_scale]),
            self.config,
        )

    def tensors(self, idx: np.ndarray | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets scaled with the inputs' per-window loc/scale, as float32."""
        x, loc, scale = scale_windows(self.inputs(idx))
        y = (self.targets(idx) - loc) / scale
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))


def _build_windows(
    dataset: Dataset,
    config: ModelConfig,
    series_ids: tuple[str, ...] | None,
    holdout: int | None = None,
) -> tuple[_Windows, _Windows, _Windows]:
    """Pooled (train, val, test) windows: a window with first target ``t`` belongs to the
    split holding ``t .. t + horizon - 1``, and needs ``t >= lookback``."""
    chosen = dataset.series if series_ids is None else tuple(dataset.get(s) for s in series_ids)
    lb, h, m = config.lookback, config.horizon, config.season_length
    origins: list[list[np.ndarray]] = [[], [], []]
    scales: list[list[np.ndarray]] = [[], [], []]
    offset = 0
    for s in chosen:
        n = len(s)
        train_end, val_end = split_points(n, holdout=holdout)
        bounds = ((0, train_end), (train_end, val_end), (val_end, n))
        split_origins = [np.arange(max(a, lb), b - h + 1) for a, b in bounds]
        insample = 0.0
        if split_origins[2].size:
            insample = insample_seasonal_mae(s.values[:train_end], m) if train_end > m else 0.0
            if insample <= 0:
                raise DataError(
                    f"series {s.series_id!r}: its training part has no seasonal variation "
                    f"(season_length={m}), so MASE is undefined"
                )
        for k, o in enumerate(split_origins):
            origins[k].append(o + offset)
            scales[k].append(np.full(o.size, insample))
        offset += n
    values = np.concatenate([s.values for s in chosen])
    train_w, val_w, test_w = (
        _Windows(values, np.concatenate(origins[k]), np.concatenate(scales[k]), config)
        for k in range(3)
    )
    for label, w in (("training", train_w), ("validation", val_w), ("test", test_w)):
        if len(w) == 0:
            raise DataError(
                f"dataset {dataset.name!r} gives no {label} windows for lookback "
                f"{lb} and horizon {h}: the series are too short"
            )
    return train_w, val_w, test_w


def _pinball(pred: torch.Tensor, target: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean quantile loss; pred (B, H, Q), target (B, H), q (Q,)."""
    err = target.unsqueeze(-1) - pred
    return torch.maximum(q * err, (q - 1.0) * err).mean()


def _val_loss(net: Forecaster, windows: _Windows, idx: np.ndarray, q: torch.Tensor) -> float:
    """Mean pinball loss (scaled units) over the windows ``idx``, in fixed chunks."""
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, idx.size, EVAL_CHUNK):
            xb, yb = windows.tensors(idx[i : i + EVAL_CHUNK])
            total += float(_pinball(net(xb), yb, q)) * xb.shape[0]
    return total / idx.size


def _test_scores(net: Forecaster, windows: _Windows) -> dict[str, float]:
    """Offline scores of the served path (:func:`predict`) on every test window."""
    idx = np.arange(len(windows))
    forecasts = np.concatenate(
        [
            predict(net, windows.inputs(idx[i : i + EVAL_CHUNK]))
            for i in range(0, idx.size, EVAL_CHUNK)
        ]
    )
    return offline_scores(
        windows.targets(),
        forecasts,
        net.config.quantiles,
        insample_scale=windows.insample_scale,
        snaive=windows.snaive(),
    )


def conformal_quantile(scores: np.ndarray, coverage: float) -> np.ndarray:
    """The CQR correction along axis 0 of ``scores`` (n, ...): their
    ``ceil((n + 1) * coverage) / n`` empirical quantile, that is the k-th smallest score with
    ``k = ceil((n + 1) * coverage)``, or the largest when ``k > n`` (too few scores for the
    finite-sample guarantee). ValueError for no scores or a coverage outside (0, 1).
    """
    e = np.asarray(scores, dtype=np.float64)
    if e.ndim < 1 or e.shape[0] == 0:
        raise ValueError(f"scores must hold at least one row, got shape {e.shape}")
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    n = e.shape[0]
    # The tolerance keeps 0.9 - 0.1 = 0.8000000000000002 from moving k up by one.
    k = min(max(math.ceil((n + 1) * coverage - 1e-9), 1), n)
    return np.sort(e, axis=0)[k - 1]


def interval_pairs(quantiles: tuple[float, ...]) -> list[tuple[int, int]]:
    """Index pairs ``(i, Q - 1 - i)``, ``i < Q // 2``, that straddle the median: the
    intervals that :func:`calibrate` corrects (the median itself never moves)."""
    n = len(quantiles)
    return [(i, n - 1 - i) for i in range(n // 2) if quantiles[i] < 0.5 < quantiles[n - 1 - i]]


def calibration_key(lo: float, hi: float) -> str:
    """``calibration_delta_0.1_0.9``: mean conformal offset of that interval's quantiles."""
    return f"calibration_delta_{lo:g}_{hi:g}"


def calibrate(net: Forecaster, windows: _Windows) -> dict[str, float]:
    """Conformalized quantile regression: set ``net.interval_offset`` from the windows
    (``train`` passes the training and validation windows together) and return
    the calibration figures: ``calibration_windows`` and, per interval, the mean offset.

    For each interval (q_i, q_j) of :func:`interval_pairs`, with nominal coverage
    ``c = q_j - q_i``, and each horizon step h, the conformity scores are
    ``E = max(lo - y, y - hi)`` in the head's normalised units (divided by the window's
    scale and by its seasonal scale ``s``, so the correction is scale-invariant like the
    network; for an ensemble, of its combined output), and
    ``delta[h] = conformal_quantile(E[:, h], c)``: q_i moves by ``-delta``,
    q_j by ``+delta``. A negative delta narrows intervals that were too wide. Any earlier
    offset is replaced; the median's stays zero.
    """
    config = net.config
    pairs = interval_pairs(config.quantiles)
    net.eval()
    with torch.no_grad():
        net.interval_offset.zero_()
    chunks: list[np.ndarray] = []  # (n, horizon, pairs)
    with torch.inference_mode():
        for i in range(0, len(windows), EVAL_CHUNK):
            xb, yb = windows.tensors(np.arange(i, min(i + EVAL_CHUNK, len(windows))))
            out = net(xb).double()
            y = yb.double()
            s = net.seasonal_scale(xb).double()
            chunks.append(
                torch.stack(
                    [torch.maximum(out[..., lo] - y, y - out[..., hi]) / s for lo, hi in pairs],
                    dim=-1,
                ).numpy()
                if pairs
                else np.empty((xb.shape[0], config.horizon, 0))
            )
    errors = np.concatenate(chunks)
    offset = np.zeros((config.horizon, config.n_quantiles))
    figures = {"calibration_windows": float(errors.shape[0])}
    for k, (lo, hi) in enumerate(pairs):
        q_lo, q_hi = config.quantiles[lo], config.quantiles[hi]
        delta = conformal_quantile(errors[..., k], q_hi - q_lo)
        offset[:, lo] -= delta
        offset[:, hi] += delta
        figures[calibration_key(q_lo, q_hi)] = float(delta.mean())
    with torch.no_grad():
        net.interval_offset.copy_(torch.from_numpy(offset))
    return figures


@dataclass(frozen=True)
class _Member:
    """One trained network: best-validation weights loaded, in eval mode."""

    net: LSTMForecaster
    history: list[dict[str, float]]
    stopped_early: bool


def _fit_member(
    train_w: _Windows,
    val_w: _Windows,
    val_idx: np.ndarray,
    config: ModelConfig,
    params: TrainParams,
    seed: int,
    desc: str,
    progress: bool,
) -> _Member:
    """Train one LSTMForecaster from ``seed`` (weights and the order of windows), stop
    early on the validation loss, restore its best weights."""
    q = torch.tensor(config.quantiles, dtype=torch.float32)
    rng = np.random.default_rng(seed)
    n_train = len(train_w)
    cap = params.max_windows_per_epoch
    per_epoch = n_train if cap is None else min(cap, n_train)
    history: list[dict[str, float]] = []
    best_loss = math.inf
    best_state: dict[str, torch.Tensor] = {}
    since_best = 0
    stopped_early = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LSTMForecaster(config)
        opt = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
        bar = tqdm(
            range(1, params.epochs + 1),
            desc=desc,
            unit="epoch",
            disable=not progress,
            file=sys.stderr,
            leave=False,
        )
        for epoch in bar:
            net.train()
            order = rng.permutation(n_train)[:per_epoch]
            total = 0.0
            for i in range(0, per_epoch, params.batch_size):
                xb, yb = train_w.tensors(order[i : i + params.batch_size])
                loss = _pinball(net(xb), yb, q)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP_NORM)
                opt.step()
                total += float(loss.detach()) * xb.shape[0]
            train_loss = total / per_epoch
            val_loss = _val_loss(net, val_w, val_idx, q)
            history.append({"epoch": float(epoch), "train_loss": train_loss, "val_loss": val_loss})
            bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
            if val_loss < best_loss:
                best_loss, since_best = val_loss, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since_best += 1
                if since_best >= params.patience:
                    stopped_early = epoch < params.epochs
                    break
        bar.close()

    if not best_state:
        raise RuntimeError("training diverged: the validation loss was never finite")
    net.load_state_dict(best_state)
    net.eval()
    return _Member(net, history, stopped_early)


def train(
    dataset: Dataset, config: ModelConfig, params: TrainParams, *, progress: bool = True
) -> TrainResult:
    """Train on the dataset's training splits, stop early on validation loss, conformalize
    the intervals on the training and validation windows (unless ``params.calibrate`` is
    False), score on test. The scores then hold the calibrated coverage and the figures of
    :func:`calibrate`.

    With ``config.members`` K > 1, K networks are trained one after another from seeds
    ``params.seed + i`` (each its own weights, window order and early stopping; the
    progress bar names the member), then served as one :class:`EnsembleForecaster`
    (their quantiles averaged), which is calibrated once and scored; its state dict is
    the result's. ``history`` then holds every member's epochs in turn, each record with
    its ``member`` (0-based; absent for K = 1); ``epochs_run`` is their total (the
    training cost in epochs, ``len(history)``); ``stopped_early`` is True when every
    member stopped on its patience (False: at least one ran to ``params.epochs``).

    Raises DataError when a split gets no windows or a series' training part has no
    seasonal variation, ValueError when config.freq is not the dataset's, KeyError for an
    unknown series id, RuntimeError if the validation loss is never finite.
    """
    config.validate()
    if config.freq != dataset.freq:
        raise ValueError(f"config.freq {config.freq!r} differs from the dataset's {dataset.freq!r}")
    train_w, val_w, test_w = _build_windows(
        dataset, config, params.series_ids, params.holdout_points
    )
    cap = params.max_windows_per_epoch
    # A fixed, evenly spread subset keeps validation cheap and comparable across epochs.
    n_val = len(val_w) if cap is None else min(cap, len(val_w))
    val_idx = np.unique(np.linspace(0, len(val_w) - 1, n_val).round().astype(np.int64))

    n_members = config.members
    member_config = replace(config, members=1)
    fitted = [
        _fit_member(
            train_w,
            val_w,
            val_idx,
            member_config,
            params,
            params.seed + i,
            f"train {dataset.name}" + (f" member {i + 1}/{n_members}" if n_members > 1 else ""),
            progress,
        )
        for i in range(n_members)
    ]
    net: Forecaster
    if n_members == 1:
        net = fitted[0].net
        history = fitted[0].history
    else:
        net = EnsembleForecaster.from_members(config, [m.net for m in fitted])
        history = [{"member": float(i), **h} for i, m in enumerate(fitted) for h in m.history]
    calibration = calibrate(net, train_w + val_w) if params.calibrate else {}
    scores = {**_test_scores(net, test_w), **calibration}
    state = {k: v.detach().clone().cpu().contiguous() for k, v in net.state_dict().items()}
    return TrainResult(
        config=config,
        params=params,
        state_dict=state,
        scores=scores,
        history=history,
        epochs_run=len(history),
        stopped_early=all(m.stopped_early for m in fitted),
    )
