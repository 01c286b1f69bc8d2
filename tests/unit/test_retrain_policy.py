"""engine/learning/retrain_policy.py: which triggers start a retrain, when, and when a candidate may replace the model."""

from __future__ import annotations

import pytest

from engine.audience.drift import DriftAlert
from engine.learning.retrain_policy import (
    TriggerState,
    debounce,
    drift_reason,
    promotion_decision,
    threshold_reason,
)

CURRENT = {"holdout_perplexity": 20.0, "tone_obedience": 0.9, "length_obedience": 0.95, "brand_pass_rate": 0.85}


def _alert(feature="clicks_5m", method="kl", score=0.6) -> DriftAlert:
    return DriftAlert(
        feature=feature,
        method=method,
        score=score,
        threshold=0.4,
        window=50_000,
        time_ms=0,
        time="2026-01-01T00:00:00Z",
        checks=3,
    )


def test_an_equal_or_better_candidate_is_promoted():
    assert promotion_decision(CURRENT, CURRENT).promote
    better = {**CURRENT, "holdout_perplexity": 12.0, "tone_obedience": 0.95}
    decision = promotion_decision(CURRENT, better)
    assert decision.promote and decision.reason.startswith("promoted: ")
    assert "holdout perplexity 12 <= 20.4" in decision.reason


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("holdout_perplexity", 20.5, "holdout perplexity 20.5 > 20.4"),
        ("tone_obedience", 0.87, "tone obedience 0.87 < 0.88"),
        ("length_obedience", 0.9, "length obedience 0.9 < 0.93"),
        ("brand_pass_rate", 0.5, "brand pass rate 0.5 < 0.83"),
    ],
)
def test_a_candidate_worse_beyond_tolerance_on_any_figure_is_refused(name, value, words):
    decision = promotion_decision(CURRENT, {**CURRENT, name: value})
    assert not decision.promote and decision.reason.startswith("refused: ") and words in decision.reason


def test_tolerances_are_the_edges():
    inside = {**CURRENT, "holdout_perplexity": 20.4, "tone_obedience": 0.88}
    assert promotion_decision(CURRENT, inside).promote
    assert not promotion_decision(CURRENT, inside, ppl_tolerance=0.01).promote
    assert promotion_decision(CURRENT, {**CURRENT, "holdout_perplexity": 29.0}, ppl_tolerance=0.5).promote
    with pytest.raises(ValueError, match="tolerances"):
        promotion_decision(CURRENT, CURRENT, metric_tolerance=-0.1)


def test_missing_or_non_finite_candidate_figures_refuse_and_missing_current_ones_are_skipped():
    assert "no finite brand pass rate" in promotion_decision(CURRENT, {**CURRENT, "brand_pass_rate": None}).reason
    assert not promotion_decision(CURRENT, {**CURRENT, "holdout_perplexity": float("inf")}).promote
    assert promotion_decision({"holdout_perplexity": 5.0}, {"holdout_perplexity": 5.0}).promote
    assert not promotion_decision({}, CURRENT).promote  # nothing to compare is no evidence


def test_debounce_runs_at_most_once_per_interval_and_keeps_the_newest_waiting_reason():
    state, run = debounce(TriggerState(), "a", now_s=0.0, min_interval_s=100)
    assert run == "a"
    state, run = debounce(state, "b", now_s=10.0, min_interval_s=100)
    state, run2 = debounce(state, "c", now_s=20.0, min_interval_s=100)
    assert run is run2 is None and state.pending == "c" and state.coalesced == 2
    state, run = debounce(state, None, now_s=99.9, min_interval_s=100)
    assert run is None
    state, run = debounce(state, None, now_s=100.0, min_interval_s=100)
    assert run == "c (and 1 earlier trigger while waiting)" and state == TriggerState(last_fired_s=100.0)
    assert debounce(state, None, now_s=1e6, min_interval_s=100) == (state, None)  # no pending: a tick does nothing


def test_a_new_reason_after_the_interval_runs_at_once_and_names_the_ones_it_absorbed():
    state, _ = debounce(TriggerState(), "a", now_s=0.0, min_interval_s=10)
    state, _ = debounce(state, "b", now_s=1.0, min_interval_s=10)
    state, run = debounce(state, "c", now_s=50.0, min_interval_s=10)
    assert run == "c (and 1 earlier trigger while waiting)" and state.last_fired_s == 50.0 and not state.pending
    assert debounce(TriggerState(), "x", now_s=0.0, min_interval_s=0)[1] == "x"
    with pytest.raises(ValueError):
        debounce(TriggerState(), "x", now_s=0.0, min_interval_s=-1)


def test_every_drift_alert_counts_unless_features_are_named():
    assert drift_reason(_alert()) == "drift: clicks_5m kl 0.6 > 0.4 for 3 checks at 2026-01-01T00:00:00Z"
    assert drift_reason(_alert("segment_sizes")).startswith("drift: segment_sizes")
    assert drift_reason(_alert("click_through", "adwin")).startswith("drift: click_through adwin")
    assert drift_reason(_alert(), features={"segment_sizes"}) is None
    assert drift_reason(_alert("segment_sizes"), features={"segment_sizes"}) is not None


def test_threshold_rule_on_an_arms_conversion_rates():
    assert threshold_reason([], floor=0.02) is None
    assert threshold_reason([0.05, 0.04], floor=0.03) is None
    assert threshold_reason([0.05, 0.01], floor=0.03) == "threshold: conversion rate 0.01 is under the floor 0.03"
    # Relative: the mean of the last `recent` against the mean before them.
    rates = [0.05, 0.05, 0.05, 0.035, 0.035]
    assert threshold_reason(rates, relative_drop=0.2) is not None
    assert threshold_reason(rates, relative_drop=0.4) is None
    assert threshold_reason([0.05, 0.05, 0.05, 0.02, 0.07], relative_drop=0.2, recent=2) is None
    assert threshold_reason([0.05], relative_drop=0.2) is None  # no past to drop from
    assert threshold_reason([0.0, 0.0], relative_drop=0.2) is None


@pytest.mark.parametrize("kwargs", [{}, {"floor": 1.5}, {"relative_drop": 1.0}, {"floor": 0.1, "recent": 0}])
def test_threshold_rule_rejects_settings_that_cannot_work(kwargs):
    with pytest.raises(ValueError):
        threshold_reason([0.1], **kwargs)


def test_threshold_rule_rejects_rates_that_are_not_rates():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        threshold_reason([0.1, 3.0], floor=0.05)
