"""The accuracy section's paired comparison: a bootstrap that knows windows overlap."""

from __future__ import annotations

import numpy as np

from bench.accuracy import paired_difference


def test_paired_difference_interval_holds_the_mean_and_widens_with_dependence() -> None:
    rng = np.random.default_rng(3)
    independent = rng.normal(0.1, 1.0, 600)
    # The same marginal spread, but each value repeated over 12 overlapping windows.
    dependent = np.repeat(rng.normal(0.1, 1.0, 50), 12)
    groups = np.zeros(600, dtype=int)
    a = paired_difference(independent, groups, block=1)
    b = paired_difference(dependent, groups, block=12)
    for d in (a, b):
        assert d["lower"] < d["mean"] < d["upper"]
    assert (b["upper"] - b["lower"]) > 2.5 * (a["upper"] - a["lower"])
    # A block of 1 on the dependent windows would be overconfident by about sqrt(12).
    naive = paired_difference(dependent, groups, block=1)
    assert (naive["upper"] - naive["lower"]) < 0.5 * (b["upper"] - b["lower"])


def test_paired_difference_draws_series_when_blocks_cover_them() -> None:
    # 23 series of 7 windows each, a block longer than a series: series vary, so must the
    # interval (a within-series bootstrap alone would give a zero-width one).
    rng = np.random.default_rng(4)
    per_series = rng.normal(0.04, 0.05, 23)
    diff = np.repeat(per_series, 7)
    groups = np.repeat(np.arange(23), 7)
    d = paired_difference(diff, groups, block=12)
    assert d["upper"] - d["lower"] > 0.02
    assert d["lower"] < per_series.mean() < d["upper"]
