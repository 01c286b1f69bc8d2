"""KL and JS against hand-computed values and scipy, and their edge cases."""

import math

import numpy as np
import pytest
from scipy.stats import entropy

from engine.audience.drift import histogram, js_distance, kl_divergence


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


# -- DriftMonitor -------------------------------------------------------------------

from engine.audience.drift import CLICK_THROUGH, SEGMENT_SIZES, DriftMonitor, _adwin_update  # noqa: E402


def feed(monitor, values, segments=None, weights=None, time_ms=0):
    vectors = [{"x": float(v)} for v in values]
    segments = [0] * len(vectors) if segments is None else segments
    weights = [1] * len(vectors) if weights is None else weights
    return monitor.observe(vectors, segments, weights, time_ms=time_ms)


def test_reference_is_the_end_of_the_warmup_with_quantile_bins():
    monitor = DriftMonitor(["x"], n_segments=2, warmup=2000, reference=1000, window=100, blocks=2, bins=4)
    feed(monitor, np.full(1000, 50.0))  # early warm-up: forgotten
    assert not monitor.ready
    feed(monitor, np.arange(1000) / 1000)
    assert monitor.ready
    assert monitor.edges["x"].tolist() == pytest.approx([0.25, 0.5, 0.75], abs=0.002)
    assert monitor.reference["x"].tolist() == [250, 250, 250, 250]
    assert monitor.reference[SEGMENT_SIZES].tolist() == [1000, 0]


def test_weights_count_like_copies():
    a = DriftMonitor(["x"], n_segments=2, warmup=30, window=10, blocks=1, bins=2)
    b = DriftMonitor(["x"], n_segments=2, warmup=30, window=10, blocks=1, bins=2)
    feed(a, [0.1, 0.9, 0.5], segments=[0, 1, 1], weights=[10, 10, 10])
    feed(b, [0.1] * 10 + [0.9] * 10 + [0.5] * 10, segments=[0] * 10 + [1] * 20)
    assert {k: v.tolist() for k, v in a.reference.items()} == {k: v.tolist() for k, v in b.reference.items()}


def test_alert_after_patience_checks_then_rearm():
    monitor = DriftMonitor(["x"], n_segments=1, warmup=1000, window=200, blocks=2, bins=4, kl_threshold=0.5, patience=3)
    rng = np.random.default_rng(1)
    feed(monitor, rng.uniform(0, 1, 1000))
    fired = []
    for step in range(12):  # each feed completes one block: one check once the window is full
        shifted = step < 6
        fired.append(feed(monitor, rng.uniform(0.9, 1.0, 100) if shifted else rng.uniform(0, 1, 100), time_ms=step))
    steps = [i for i, alerts in enumerate(fired) if alerts]
    assert steps == [3]  # checks at steps 1, 2, 3 above the threshold: the third alerts, once
    alert = fired[3][0]
    assert (alert.feature, alert.method, alert.checks, alert.threshold, alert.window) == ("x", "kl", 3, 0.5, 200)
    assert alert.score == pytest.approx(monitor.peak_scores[("x", "kl")], rel=0.5) and alert.time.startswith("1970")
    # Back to normal, then shifted again: a new alert after three more checks.
    for step in range(6):
        fired.append(feed(monitor, rng.uniform(0.9, 1.0, 100), time_ms=20 + step))
    assert sum(bool(a) for a in fired[12:]) == 1


def test_js_scores_are_kept_but_alert_only_with_a_threshold():
    monitor = DriftMonitor(["x"], n_segments=1, warmup=100, window=100, blocks=1, bins=4, kl_threshold=0, patience=1)
    feed(monitor, np.linspace(0, 1, 100))
    assert feed(monitor, np.full(100, 0.99)) == []
    assert monitor.scores[("x", "js")] > 0.5 and monitor.scores[("x", "kl")] > 1
    monitor.thresholds["js"] = 0.3
    assert [a.method for a in feed(monitor, np.full(100, 0.99))] == ["js"]


def test_explicit_reference_and_rebase():
    monitor = DriftMonitor(["x"], n_segments=2, warmup=10, window=10, blocks=1, bins=2)
    monitor.set_reference({"x": [0.5]}, {"x": [5, 5], SEGMENT_SIZES: [9, 1]})
    assert monitor.ready
    with pytest.raises(ValueError, match="lacks"):
        monitor.set_reference({"x": [0.5]}, {"x": [5, 5]})
    with pytest.raises(ValueError, match="inner edges"):
        monitor.set_reference({"x": [0.5]}, {"x": [5, 5, 5], SEGMENT_SIZES: [1, 1]})
    monitor.rebase()
    assert not monitor.ready and monitor.peak_scores == {}


def test_bad_monitor_settings_are_clear_errors():
    with pytest.raises(ValueError, match="reference <= warmup"):
        DriftMonitor(["x"], 2, warmup=10, reference=20)
    with pytest.raises(ValueError, match="patience"):
        DriftMonitor(["x"], 2, patience=0)
    with pytest.raises(ValueError, match="at least one feature"):
        DriftMonitor([], 2)


def test_adwin_fast_path_matches_rivers_public_api():
    from river.drift import ADWIN

    rng = np.random.default_rng(5)
    bits = np.concatenate([rng.random(20_000) < 0.15, rng.random(20_000) < 0.05, rng.random(20_000) < 0.2])
    fast, public = ADWIN(delta=1e-5), ADWIN(delta=1e-5)
    update = _adwin_update(fast)
    got_fast, got_public = [], []
    for i, bit in enumerate(bits.astype(int)):
        if update(bit):
            got_fast.append(i)
        public.update(bit)
        if public.drift_detected:
            got_public.append(i)
    assert got_fast == got_public and len(got_fast) >= 2
    assert fast.estimation == public.estimation


def test_click_through_alerts_carry_before_and_after():
    monitor = DriftMonitor(["x"], n_segments=1, adwin_delta=1e-3)
    alerts = []
    for i in range(400):
        clicks = 15 if i < 200 else 2
        alerts += monitor.observe_clicks(clicks, 100 - clicks, time_ms=i)
    assert alerts and alerts[0].feature == CLICK_THROUGH and alerts[0].method == "adwin"
    assert alerts[0].reference > alerts[0].score  # click-through fell
    assert 200 <= alerts[0].time_ms < 230


def test_a_refit_of_the_segments_relearns_only_their_sizes():
    # After a re-fit of matured histories the features did not move: their reference (and the
    # checks on them) stay, segment sizes are skipped until a new reference of them is learned.
    rng = np.random.default_rng(3)
    monitor = DriftMonitor(["x"], n_segments=2, warmup=400, reference=200, window=100, blocks=2, bins=4)
    feed(monitor, rng.normal(size=400), [0, 1] * 200)
    assert monitor.ready
    edges, x_reference = monitor.edges["x"].copy(), monitor.reference["x"].copy()
    monitor.rebase_segment_sizes()
    feed(monitor, rng.normal(size=100), [1] * 100)  # one window: a check, the sizes still being learned
    assert SEGMENT_SIZES in monitor.no_data and ("x", "kl") in monitor.scores
    assert (monitor.edges["x"] == edges).all() and (monitor.reference["x"] == x_reference).all()
    feed(monitor, rng.normal(size=200), [1] * 200)  # the new reference: every observation in segment 1
    assert list(monitor.reference[SEGMENT_SIZES]) == [0.0, 200.0]
    assert SEGMENT_SIZES not in monitor.no_data and (SEGMENT_SIZES, "kl") in monitor.scores
    assert monitor.scores[(SEGMENT_SIZES, "kl")] < 0.01  # the new sizes match the new segments
