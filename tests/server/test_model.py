"""The network, its config and inference."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import torch

from server.lifecycle.model import (
    EnsembleForecaster,
    LSTMForecaster,
    ModelConfig,
    build_model,
    predict,
    scale_windows,
)

TINY = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1)


def _random_model(config: ModelConfig = TINY, seed: int = 0) -> LSTMForecaster:
    """A net whose head is not zero, so it does more than seasonal naive."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = LSTMForecaster(config)
        torch.nn.init.normal_(net.head.weight, std=0.5)
        torch.nn.init.normal_(net.head.bias, std=0.5)
    return net


def _windows(n: int, lookback: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(lookback)
    return 20 + 5 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 1, (n, lookback))


def test_config_round_trip_through_json() -> None:
    config = ModelConfig(lookback=48, quantiles=(0.05, 0.5, 0.95), freq="D", season_length=7)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["quantiles"] == [0.05, 0.5, 0.95]
    back = ModelConfig.from_dict(d)
    assert back == config
    assert back.quantiles == (0.05, 0.5, 0.95)
    assert back.point_index == 1


def test_config_defaults_are_valid() -> None:
    config = ModelConfig()
    assert config.horizon == 24 and config.quantiles == (0.1, 0.5, 0.9)
    assert ModelConfig.from_dict({}) == config
    assert ModelConfig.from_dict({"dropout": 0}).dropout == 0.0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lookback": 0}, "lookback"),
        ({"lookback": 24}, "lookback"),  # must exceed season_length
        ({"lookback": 72.0}, "lookback"),
        ({"horizon": True}, "horizon"),
        ({"hidden": -1}, "hidden"),
        ({"layers": 0}, "layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": "0.1"}, "dropout"),
        ({"quantiles": []}, "quantiles"),
        ({"quantiles": [0.1, 0.9]}, "quantiles"),
        ({"quantiles": [0.5, 0.1]}, "quantiles"),
        ({"quantiles": [0.5, 0.5]}, "quantiles"),
        ({"quantiles": [0.0, 0.5]}, "quantiles"),
        ({"quantiles": [0.5, 1.0]}, "quantiles"),
        ({"quantiles": 0.5}, "quantiles"),
        ({"freq": ""}, "freq"),
        ({"freq": "fortnightly"}, "freq"),
        ({"step_seconds": 0}, "step_seconds"),
        ({"season_length": 0}, "season_length"),
        ({"members": 0}, "members"),
        ({"members": 2.0}, "members"),
        ({"members": True}, "members"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_config_validation_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_dict(ModelConfig().to_dict() | change)


def test_forward_shape() -> None:
    net = build_model(TINY)
    out = net(torch.zeros(5, TINY.lookback))
    assert out.shape == (5, TINY.horizon, 3)
    assert not net.training


def test_predict_shapes_and_dtype() -> None:
    net = _random_model()
    out = predict(net, _windows(4, TINY.lookback))
    assert out.shape == (4, TINY.horizon, 3)
    assert out.dtype == np.float64
    assert predict(net, np.empty((0, TINY.lookback))).shape == (0, TINY.horizon, 3)


def test_predict_rejects_bad_windows() -> None:
    net = build_model(TINY)
    with pytest.raises(ValueError, match="36"):
        predict(net, np.zeros((2, TINY.lookback + 1)))
    with pytest.raises(ValueError, match="finite"):
        predict(net, np.full((1, TINY.lookback), np.nan))


def test_untrained_model_is_seasonal_naive() -> None:
    w = _windows(3, TINY.lookback)
    out = predict(build_model(TINY), w)
    expected = w[:, -24 : -24 + TINY.horizon]
    for k in range(3):
        np.testing.assert_allclose(out[..., k], expected, rtol=1e-6)


def test_scaling_invariance() -> None:
    net = _random_model()
    x = _windows(8, TINY.lookback)
    base = predict(net, x)
    np.testing.assert_allclose(predict(net, 10 * x + 1000), 10 * base + 1000, rtol=1e-6, atol=1e-6)
    assert np.abs(base - predict(build_model(TINY), x)).max() > 0.1  # the head matters


def test_constant_window_gives_finite_forecast() -> None:
    net = _random_model()
    for level in (0.0, 7.5, -1e6):
        out = predict(net, np.full((2, TINY.lookback), level))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, level, atol=1e-6 * max(1.0, abs(level)))


def test_quantiles_sorted() -> None:
    net = _random_model(seed=3)
    with torch.inference_mode():
        raw = net(torch.from_numpy(scale_windows(_windows(64, TINY.lookback))[0]).float())
    assert (raw.diff(dim=-1) < 0).any()  # the raw head does cross ...
    out = predict(net, _windows(64, TINY.lookback))
    assert (np.diff(out, axis=-1) >= 0).all()  # ... predict never does


def test_scale_windows_rule() -> None:
    scaled, loc, scale = scale_windows(np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(loc, [[2.5], [5.0]])
    np.testing.assert_allclose(scale, [[1.0], [5e-8]])
    np.testing.assert_allclose(scaled, [[-1.5, -0.5, 0.5, 1.5], [0.0, 0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="batch, lookback"):
        scale_windows(np.zeros(4))


def test_build_model_loads_state_dict() -> None:
    net = _random_model()
    clone = build_model(TINY, net.state_dict())
    x = _windows(3, TINY.lookback)
    np.testing.assert_array_equal(predict(clone, x), predict(net, x))
    state = dict(net.state_dict())
    state.pop("head.bias")
    with pytest.raises(RuntimeError, match=r"head\.bias"):
        build_model(TINY, state)


def test_predict_from_threads() -> None:
    nets = [_random_model(seed=s) for s in (1, 2)]
    x = _windows(16, TINY.lookback)
    expected = [predict(n, x) for n in nets]
    results: dict[tuple[int, int], np.ndarray] = {}

    def work(i: int) -> None:
        for r in range(20):
            results[(i, r)] = predict(nets[i], x)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (i, _), out in results.items():
        np.testing.assert_array_equal(out, expected[i])


def _calibrated(config: ModelConfig = TINY, seed: int = 0) -> LSTMForecaster:
    """A random net with a conformal offset on its outer quantiles (not on the median)."""
    net = _random_model(config, seed)
    delta = torch.linspace(-0.3, 0.9, config.horizon)
    with torch.no_grad():
        net.interval_offset[:, 0] = -delta
        net.interval_offset[:, -1] = delta
    return net


def test_interval_offset_is_a_zero_buffer_in_the_state_dict() -> None:
    net = build_model(TINY)
    state = net.state_dict()
    assert "interval_offset" in state
    assert state["interval_offset"].shape == (TINY.horizon, TINY.n_quantiles)
    assert not state["interval_offset"].any()
    assert "interval_offset" not in dict(net.named_parameters())  # not trained by the optimiser


def test_interval_offset_moves_the_outer_quantiles_by_delta_times_s() -> None:
    plain, net = _random_model(), _calibrated()
    x = _windows(16, TINY.lookback)
    before, after = predict(plain, x), predict(net, x)
    scaled, _, scale = scale_windows(x)
    s = plain.seasonal_scale(torch.from_numpy(scaled).float()).double().numpy()  # (16, 1)
    delta = net.interval_offset[:, -1].double().numpy()  # (horizon,)
    # raw outputs: sort the shifted quantiles the way predict does
    with torch.inference_mode():
        raw = plain(torch.from_numpy(scaled.astype(np.float32))).double().numpy()
    raw[..., 0] -= delta * s
    raw[..., -1] += delta * s
    _, loc, _ = scale_windows(x)
    expected = loc[:, :, None] + scale[:, :, None] * np.sort(raw, axis=-1)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(after - before).max() > 0.1
    # the network's median is untouched
    xt = torch.from_numpy(scaled.astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(net(xt)[..., 1], plain(xt)[..., 1], rtol=0, atol=0)


def test_calibrated_scaling_invariance() -> None:
    net = _calibrated()
    x = _windows(8, TINY.lookback)
    base = predict(net, x)
    for a, b in ((10.0, 1000.0), (0.01, -3.0)):
        np.testing.assert_allclose(predict(net, a * x + b), a * base + b, rtol=1e-5, atol=1e-5)


def test_state_dict_without_interval_offset_still_loads() -> None:
    net = _random_model()
    old = {k: v for k, v in net.state_dict().items() if k != "interval_offset"}
    loaded = build_model(TINY, old)
    assert not loaded.interval_offset.any()
    x = _windows(3, TINY.lookback)
    np.testing.assert_array_equal(predict(loaded, x), predict(net, x))
    calibrated = _calibrated()
    again = build_model(TINY, calibrated.state_dict())  # a new one keeps its offsets
    assert torch.equal(again.interval_offset, calibrated.interval_offset)
    np.testing.assert_array_equal(predict(again, x), predict(calibrated, x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_interval_offset_is_in_the_content_hash_and_a_traced_copy() -> None:
    from server.lifecycle.registry import content_digest

    plain, net = _random_model(), _calibrated()
    config = TINY.to_dict()
    assert content_digest(plain.state_dict(), config) != content_digest(net.state_dict(), config)
    x = torch.from_numpy(scale_windows(_windows(4, TINY.lookback))[0]).float()
    with torch.inference_mode():
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), net(x))
        assert not torch.equal(traced(x), plain(x))


# -- seed ensembles ----------------------------------------------------------------------

#: The state-dict keys of a one-layer LSTMForecaster, as saved by every model before ensembles.
SINGLE_KEYS = [
    "interval_offset",
    "lstm.weight_ih_l0",
    "lstm.weight_hh_l0",
    "lstm.bias_ih_l0",
    "lstm.bias_hh_l0",
    "head.weight",
    "head.bias",
]


def test_members_default_to_one_and_stay_out_of_the_dict_at_one() -> None:
    assert ModelConfig().members == 1
    assert "members" not in TINY.to_dict()  # configs and content keys of earlier models hold
    assert ModelConfig.from_dict(TINY.to_dict()).members == 1
    three = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1, members=3)
    assert three.to_dict()["members"] == 3
    assert ModelConfig.from_dict(json.loads(json.dumps(three.to_dict()))) == three


def test_one_member_is_the_lstm_forecaster_with_its_keys() -> None:
    net = build_model(TINY)
    assert type(net) is LSTMForecaster
    assert sorted(net.state_dict()) == sorted(SINGLE_KEYS)


def _random_ensemble(members: int = 3, seed: int = 0) -> EnsembleForecaster:
    config = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1, members=members)
    member_config = ModelConfig(lookback=36, horizon=6, hidden=8, layers=1)
    parts = [_random_model(member_config, seed + i) for i in range(members)]
    return EnsembleForecaster.from_members(config, parts)


def test_ensemble_keys_and_build() -> None:
    net = _random_ensemble()
    assert type(build_model(net.config)) is EnsembleForecaster
    expected = ["interval_offset"] + [
        f"members.{i}.{k}" for i in range(3) for k in SINGLE_KEYS if k != "interval_offset"
    ]
    assert sorted(net.state_dict()) == sorted(expected)
    with pytest.raises(ValueError, match="members"):
        EnsembleForecaster(TINY)


def test_ensemble_forward_is_the_mean_of_its_members_plus_one_offset() -> None:
    members = [_random_model(seed=s) for s in (0, 1, 2)]
    net = _random_ensemble()
    delta = torch.linspace(-0.3, 0.9, TINY.horizon)
    with torch.no_grad():
        net.interval_offset[:, 0] = -delta
        net.interval_offset[:, -1] = delta
    x = torch.from_numpy(scale_windows(_windows(16, TINY.lookback))[0]).float()
    with torch.inference_mode():
        mean = torch.stack([m(x) for m in members]).mean(dim=0)
        s = members[0].seasonal_scale(x)
        torch.testing.assert_close(net.seasonal_scale(x), s)
        torch.testing.assert_close(net(x), mean + s.unsqueeze(-1) * net.interval_offset)
    w = _windows(16, TINY.lookback)
    for a, b in ((10.0, 1000.0), (0.01, -3.0)):  # invariant like one network
        np.testing.assert_allclose(
            predict(net, a * w + b), a * predict(net, w) + b, rtol=1e-5, atol=1e-5
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_ensemble_round_trips_through_the_registry_and_a_traced_copy(tmp_path: Any) -> None:
    from server.lifecycle.model import load_version
    from server.lifecycle.registry import Registry, content_digest

    net = _random_ensemble()
    with torch.no_grad():
        net.interval_offset[:, -1] = 0.5
    registry = Registry(tmp_path)
    version = registry.register("ens", net.state_dict(), net.config.to_dict(), {})
    loaded = load_version(registry, f"ens:{version.version}")
    assert type(loaded.net) is EnsembleForecaster and loaded.config == net.config
    w = _windows(8, TINY.lookback)
    np.testing.assert_array_equal(loaded.predict(w), predict(net, w))
    # the offset is part of the content hash
    plain = _random_ensemble()
    config = net.config.to_dict()
    assert content_digest(plain.state_dict(), config) != content_digest(net.state_dict(), config)
    x = torch.from_numpy(scale_windows(w)[0]).float()
    with torch.inference_mode():
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), net(x))
