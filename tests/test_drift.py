"""KL and JS against hand-computed values and scipy, and their edge cases."""

import math

import numpy as np
import pytest
from scipy.stats import entropy

from engine.drift import histogram, js_distance, kl_divergence


def test_kl_hand_computed():
    # KL([0.5, 0.5] || [0.9, 0.1]) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence([90, 10], [50, 50], smoothing=0.0) == pytest.approx(expected)


def test_kl_is_zero_for_identical_and_matches_scipy_entropy():
    assert kl_divergence([3, 1, 6], [30, 10, 60], smoothing=0.0) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(4)
    ref, cur = rng.integers(1, 100, 12), rng.integers(1, 100, 12)
    assert kl_divergence(ref, cur, smoothing=0.0) == pytest.approx(entropy(cur / cur.sum(), ref / ref.sum()))


def test_empty_bins_never_give_infinity():
    value = kl_divergence([10, 0, 0], [0, 0, 10])
    assert math.isfinite(value) and value > 1.0


def test_js_hand_computed_and_bounded():
    # Disjoint supports: JS divergence = ln 2, distance = sqrt(ln 2).
    assert js_distance([1, 0], [0, 1], smoothing=0.0) == pytest.approx(math.sqrt(math.log(2)))
    assert js_distance([5, 5], [5, 5]) == pytest.approx(0.0, abs=1e-12)
    assert js_distance([1, 2, 3], [3, 2, 1]) == pytest.approx(js_distance([3, 2, 1], [1, 2, 3]))


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [([1, 2], [1, 2, 3], "same bins"), ([], [], "non-empty"), ([1, -1], [1, 1], ">= 0"), ([0, 0], [0, 0], "no counts")],
)
def test_bad_histograms_are_clear_errors(reference, current, message):
    with pytest.raises(ValueError, match=message):
        kl_divergence(reference, current, smoothing=0.0)


def test_histogram_outer_bins_catch_outliers():
    assert histogram([-5, 0.1, 0.9, 1.0, 7], [0, 1, 2]).tolist() == [3, 2]
    with pytest.raises(ValueError, match="increasing"):
        histogram([1], [1, 1])
