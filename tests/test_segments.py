"""Segments and drift on simulated traffic, engine only (no Kafka): quality, alarms, delays."""

from __future__ import annotations

import math
import pickle

import pytest

from engine.audience import Audience
from engine.events import Event
from engine.segments import (
    FEATURE_NAMES,
    Behaviour,
    SegmentModel,
    adjusted_rand_index,
    label_of,
    unique_labels,
)
from engine.simulate import DEFAULT_DRIFT_SHARES, Drift, Simulator
from tests.support import feed_audience

T0 = 1_767_225_600_000
DAY_MS = 86_400_000


def ev(i, kind, ts, value=None):
    return Event(f"e{i}", kind, "u1", ts, value=value)


# -- Behaviour -----------------------------------------------------------------


def test_behaviour_halves_per_half_life_and_weighs_late_events():
    b = Behaviour(half_life_s=86_400)
    b.update(ev(1, "app_open", T0))
    b.update(ev(2, "app_open", T0 + DAY_MS))
    assert b.sessions == pytest.approx(1.5)  # the first visit is one half-life old
    b.update(ev(3, "email_open", T0 + DAY_MS // 2))  # late: half a half-life old
    assert b.sessions == pytest.approx(1.5 + 2 ** -0.5)
    assert b.vector()["email_share"] == pytest.approx((2 ** -0.5 + 0.25 * 2) / (1.5 + 2 ** -0.5 + 2))


def test_behaviour_rebases_without_changing_values_and_pickles():
    b = Behaviour(half_life_s=3600)
    for i in range(200):  # 200 hours: past REBASE_HALF_LIVES, so the base moves
        b.update(ev(i, "impression", T0 + i * 3_600_000))
        b.update(ev(i, "click", T0 + i * 3_600_000))
    assert b.base_ms > T0
    expected = sum(2.0 ** -k for k in range(200))
    assert b.decayed()[1] == pytest.approx(expected)  # clicks
    assert all(math.isfinite(c) for c in b.counts)
    assert b.take_clicks() == (200, 200) and b.take_clicks() == (0, 0)
    assert pickle.loads(pickle.dumps(b)) == b


def test_behaviour_needs_enough_visits_and_ignores_conversions():
    b = Behaviour(half_life_s=86_400)
    b.update(ev(1, "conversion", T0))
    assert b.decayed() == [0.0] * 9 and b.vector(min_sessions=1) is None
    b.update(ev(2, "purchase", T0, value=80.0))
    assert b.vector()["order_value"] == pytest.approx((80 + 50) / 2)


def test_bad_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="half_life_s"):
        Behaviour(0)
    with pytest.raises(ValueError, match="n_segments"):
        SegmentModel(1)
    with pytest.raises(ValueError, match="warmup"):
        SegmentModel(4, warmup=2)
    with pytest.raises(ValueError, match="drift_action"):
        Audience(drift_action="panic")


# -- model, labels, ARI ----------------------------------------------------------


def blobs(n, seed=0):
    import random

    rng = random.Random(seed)
    centres = [0.1, 0.4, 0.7, 1.0]
    out = []
    for i in range(n):
        k = i % 4
        out.append((k, {name: centres[k] + rng.gauss(0, 0.03) for name in FEATURE_NAMES}))
    return out


def test_model_fits_after_warmup_and_refit_keeps_segment_ids():
    model = SegmentModel(4, warmup=400, seed=3)
    points = blobs(400)
    results = [model.learn(x, f"u{i}") for i, (_, x) in enumerate(points)]
    assert results[0] == (-1, pytest.approx(math.nan, nan_ok=True)) and model.version == 1
    before = [model.assign(x)[0] for _, x in points]
    assert adjusted_rand_index([k for k, _ in points], before) == 1.0
    model.refit()
    assert model.version == 2
    assert [model.assign(x)[0] for _, x in points] == before  # same clusters, same ids
    centres = model.centres()
    assert sorted(round(c["ctr"], 1) for c in centres.values()) == [0.1, 0.4, 0.7, 1.0]  # own units


def test_labels_name_what_stands_out_and_stay_unique():
    assert label_of({"order_value": -2.0, "cart_rate": 0.7}) == "budget, fills carts"
    assert unique_labels({0: "budget", 1: "budget", 2: "typical"}) == {0: "budget (0)", 1: "budget (1)", 2: "typical"}


def test_adjusted_rand_index_hand_cases():
    assert adjusted_rand_index(["a", "a", "b", "b"], [7, 7, 3, 3]) == 1.0
    # Contingency [[2, 1], [0, 2]]: same-cell pairs 1 + 0 + 1, row pairs 3 + 1, column pairs 1 + 3,
    # 10 pairs in all; expected 4 * 4 / 10 = 1.6, maximum (4 + 4) / 2
    assert adjusted_rand_index([0, 0, 0, 1, 1], [0, 0, 1, 1, 1]) == pytest.approx((2 - 1.6) / (4 - 1.6))
    with pytest.raises(ValueError):
        adjusted_rand_index([1], [1])


# -- on simulated traffic ----------------------------------------------------------

USERS, BURN_IN, MEASURED = 500, 300_000, 600_000


def run(drift_at=None, action="alert", seed=7):
    drift = Drift(at_event=drift_at, shares=dict(DEFAULT_DRIFT_SHARES)) if drift_at is not None else None
    sim = Simulator(users=USERS, seed=seed, drift=drift)
    audience = Audience(4, drift_warmup=BURN_IN, drift_action=action)
    alerts = []
    for seen, result in feed_audience(audience, sim.events(BURN_IN + MEASURED)):
        alerts += [(seen, a) for a in result.alerts]
    return sim, audience, alerts


@pytest.fixture(scope="module")
def stationary():
    return run()


def test_segments_recover_the_four_profiles(stationary):
    sim, audience, _ = stationary
    users = sorted(audience.members)
    assert len(users) >= 0.95 * USERS
    ari = adjusted_rand_index([sim.profile_of(u) for u in users], [audience.segment_of(u) for u in users])
    assert ari >= 0.8
    profiles = audience.profiles()
    assert sum(p.size for p in profiles) == len(users)
    assert len({p.label for p in profiles}) == 4
    email = max(profiles, key=lambda p: p.centre["email_share"])
    assert "email-driven" in email.label and 0.1 < email.share < 0.3  # the email_driven profile: 20% of users


def test_a_stationary_stream_raises_no_alert(stationary):
    _, audience, alerts = stationary
    assert audience.monitor.ready  # the reference was frozen and checks ran ...
    assert audience.monitor.peak_scores[("segment_sizes", "kl")] > 0
    assert alerts == []  # ... and nothing crossed a threshold for long enough


def test_an_injected_shift_is_detected_within_a_bounded_number_of_events():
    drift_at = BURN_IN + MEASURED // 2
    _, audience, alerts = run(drift_at=drift_at)
    assert alerts, "the drift was not detected"
    first_seen, first = alerts[0]
    assert first_seen > drift_at  # nothing before the drift
    assert first_seen - drift_at <= 100_000
    assert first.feature == "segment_sizes" and first.method == "kl" and first.score > first.threshold
    assert first.checks == audience.monitor.patience and first.action == "alert"
    assert audience.model.version == 1  # alert only: no re-fit


def test_refit_on_drift_bumps_the_model_version_and_rebases_the_reference():
    drift_at = BURN_IN + MEASURED // 2
    _, audience, alerts = run(drift_at=drift_at, action="refit")
    refits = [a for _, a in alerts if a.action == "refit"]
    assert refits and audience.model.version == 1 + len({a.time_ms for a in refits})
    assert all(p.model_version == audience.model.version for p in audience.profiles())


def test_update_many_equals_one_by_one():
    events = list(Simulator(users=20, seed=2).events(3000))
    one, many = {}, {}
    for e in events:
        one.setdefault(e.user_id, Behaviour(3600)).update(e)
    by_user = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    for user_id, user_events in by_user.items():
        many.setdefault(user_id, Behaviour(3600)).update_many(user_events)
    assert one.keys() == many.keys()
    for user_id in one:
        assert one[user_id].decayed() == pytest.approx(many[user_id].decayed())
        assert one[user_id].take_clicks() == many[user_id].take_clicks()
