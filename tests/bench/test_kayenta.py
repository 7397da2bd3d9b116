"""bench.kayenta: the Kayenta-style Mann-Whitney baseline the judge is compared with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.kayenta import mann_whitney_baseline, mann_whitney_z
from router.rollout.judge import Verdict


def _reference_z(stable: np.ndarray, canary: np.ndarray) -> float:
    """U by counting pairs, variance with the textbook tie correction."""
    u = sum(float(c > s) + 0.5 * float(c == s) for c in canary for s in stable)
    n1, n2 = len(canary), len(stable)
    n = n1 + n2
    _, counts = np.unique(np.concatenate([canary, stable]), return_counts=True)
    ties = float(np.sum(counts**3 - counts))
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    return (u - n1 * n2 / 2) / math.sqrt(var)


def test_mann_whitney_z_with_ties_matches_a_reference() -> None:
    rng = np.random.default_rng(6)
    s = rng.integers(0, 5, 23).astype(float)
    c = rng.integers(1, 6, 17).astype(float)
    assert mann_whitney_z(s, c) == pytest.approx(_reference_z(s, c))
    assert mann_whitney_z(np.array([1.0, 2, 3]), np.array([4.0, 5, 6])) == pytest.approx(
        4.5 / math.sqrt(5.25)
    )


def test_mann_whitney_baseline_obvious_cases() -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(1.0, 0.1, 50)
    assert mann_whitney_baseline(s, rng.normal(2.0, 0.1, 50)) is Verdict.ROLLBACK
    assert mann_whitney_baseline(s, rng.normal(1.0, 0.1, 50)) is Verdict.PROMOTE
    assert mann_whitney_baseline(s, rng.normal(0.5, 0.1, 50)) is Verdict.PROMOTE
    assert mann_whitney_baseline(s, np.empty(0)) is Verdict.INCONCLUSIVE
    assert mann_whitney_baseline(np.ones(10), np.ones(10)) is Verdict.PROMOTE
