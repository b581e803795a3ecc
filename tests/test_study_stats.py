"""The study's statistics (benchmarks/variational_seeds.py), against values worked out by hand."""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from variational_seeds import mean_ci


def test_mean_ci_is_the_t_interval_over_seeds():
    # 3 seeds: mean 0.6, sample std 0.1, t(0.975, 2 df) = 4.303: half-width 4.303 * 0.1 / sqrt(3) = 0.24844
    m, h = mean_ci([0.5, 0.6, 0.7])
    assert m == pytest.approx(0.6) and h == pytest.approx(0.24844, abs=1e-5)
    assert mean_ci([0.42]) == (0.42, 0.0)  # one seed: no interval


def test_mean_ci_of_a_missing_value_is_nan_not_a_crash():
    m, h = mean_ci([0.3, float("nan")])  # a task without d4 / d5 problems has no "hard" accuracy
    assert math.isnan(m) and math.isnan(h)
