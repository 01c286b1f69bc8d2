"""Experiment counting without a flow: per-user exposures, per-arm counters, the flow's logic classes."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from engine.experiments.exposures import SEEN_IDS_PER_USER, ArmCounters, FirstExposure, UserExposures
from engine.experiments.statistics import welch_ttest_from_sums
from engine.features.events import Event
from flows.experiments import ArmLogic, ExposureLogic, arm_key, experiment_events
from tests.support import STORY_T, experiment_counters, experiment_story, impression

T = STORY_T  # 2026-01-01, the story's start


def totals(deltas_per_user: list[list[ArmCounters]]) -> dict[tuple[str, str], ArmCounters]:
    """What the arm step makes of the deltas: absolute counters per arm."""
    arms: dict[tuple[str, str], ArmCounters] = {}
    for deltas in deltas_per_user:
        for d in deltas:
            arms.setdefault((d.experiment, d.variant), ArmCounters(experiment=d.experiment, variant=d.variant)).add(d)
    return arms


EXPECTED = experiment_counters()


def test_the_story_counts_exactly_per_arm_with_every_rule():
    tallies = {}
    deltas = []
    for user_id, events in experiment_story().items():
        user = UserExposures()
        d, tallies[user_id] = user.update(events)
        deltas.append(d)
    assert totals(deltas) == EXPECTED
    assert tallies == {
        "u1": {"counted": 7, "duplicate": 1, "ignored": 1},
        "u2": {"unattributed": 1, "counted": 3},
        "u3": {"counted": 2, "unexposed": 1, "ignored": 1},
        "u4": {"unexposed": 2},
    }


def test_batching_does_not_change_the_counts():
    for user_id, events in experiment_story().items():
        whole, _ = UserExposures().update(events)
        user, one_by_one = UserExposures(), []
        for event in events:
            one_by_one.append(user.update([event])[0])
        assert totals([whole]) == totals(one_by_one), user_id


def test_value_sums_are_over_user_totals():
    user = UserExposures()
    deltas, _ = user.update(
        [
            impression("i", "u", T),
            Event("p1", "purchase", "u", T + 1, value=3.0),
            Event("p2", "purchase", "u", T + 2, value=4.0),
        ]
    )
    (arm,) = deltas
    assert (arm.converters, arm.conversions, arm.value_sum, arm.value_sum_sq) == (1, 2, 7.0, 49.0)
    (later,), _ = user.update([Event("p3", "purchase", "u", T + 3, value=1.0)])
    assert (later.converters, later.value_sum, later.value_sum_sq) == (0, 1.0, 64.0 - 49.0)


def test_a_later_impression_with_an_earlier_time_moves_the_exposure_back_but_not_the_variant():
    user = UserExposures()
    user.update([impression("i1", "u", T + 100, variant="a"), impression("i0", "u", T, variant="b")])
    (delta,), _ = user.update([Event("c", "click", "u", T + 50, experiment="hero")])
    assert (delta.variant, delta.clicks, delta.clickers) == ("a", 1, 1)


def test_an_outcome_at_the_exposure_time_counts():
    deltas, tally = UserExposures().update([impression("i", "u", T), Event("k", "conversion", "u", T)])
    assert tally == {"counted": 2} and deltas[0].conversions == 1


def test_impressions_without_an_experiment_or_variant_are_ignored():
    deltas, tally = UserExposures().update(
        [
            Event("i1", "impression", "u", T),
            Event("i2", "impression", "u", T, experiment="hero"),
            Event("p", "purchase", "u", T + 1, value=1.0),
        ]
    )
    assert deltas == [] and tally == {"ignored": 2, "unattributed": 1}


def test_seen_ids_are_bounded_and_forget_the_oldest_first():
    user = UserExposures()
    user.update([impression("i", "u", T)])
    user.update([Event(f"c{i}", "click", "u", T + i, experiment="hero") for i in range(SEEN_IDS_PER_USER)])
    assert len(user.seen) == SEEN_IDS_PER_USER and "i" not in user.seen
    _, tally = user.update([Event(f"c{SEEN_IDS_PER_USER - 1}", "click", "u", T, experiment="hero")])
    assert tally == {"duplicate": 1}  # recent: still remembered
    (delta,), tally = user.update([impression("i", "u", T)])  # forgotten: counted again
    assert tally == {"counted": 1} and (delta.users, delta.impressions) == (0, 1)


def test_state_survives_pickle_and_msgpack():
    user = UserExposures()
    user.update(experiment_story()["u1"])
    again = pickle.loads(pickle.dumps(user))
    assert again == user
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(user), type=UserExposures) == user
    _, tally = again.update([Event("u1-p2", "purchase", "u1", T + 11, value=7.0)])
    assert tally == {"duplicate": 1}


def test_arm_counters_feed_the_statistics():
    arm = EXPECTED[("hero", "a")]
    clicks, conversions = arm.stats("click"), arm.stats("conversion")
    assert (clicks.arm, clicks.n, clicks.conversions) == ("a", 2, 1)
    assert (conversions.n, conversions.conversions, conversions.value_mean) == (2, 2, 33.5)
    assert conversions.value_variance == pytest.approx(((37 - 33.5) ** 2 + (30 - 33.5) ** 2) / 1)
    t, _ = welch_ttest_from_sums(2, 67.0, 2269.0, 2, arm.value_sum, arm.value_sum_sq)
    assert t == 0.0
    with pytest.raises(ValueError, match="'click' or 'conversion'"):
        arm.stats("revenue")


def test_the_flow_logic_classes_without_a_flow():
    events = [e for user_events in experiment_story().values() for e in user_events]
    assert [e.type for e in experiment_events(events)].count("page_view") == 0
    arms, firsts = {}, []
    for user, user_events in experiment_story().items():
        logic = ExposureLogic(None)
        out, discard = logic.on_batch(experiment_events(user_events))
        assert discard is (user == "u4") and isinstance(logic.snapshot(), UserExposures)  # u4: never exposed
        for key, item in out:
            if isinstance(item, FirstExposure):
                assert key == item.user_id
                firsts.append(item)
                continue
            assert key == arm_key(item.experiment, item.variant)
            arms.setdefault(key, ArmLogic(None)).on_batch([item])
    got = {(a.counters.experiment, a.counters.variant): a.counters for a in arms.values()}
    assert got == EXPECTED
    # One first exposure per (user, experiment) entered: u1 stays in "a" though it later saw "b".
    assert firsts == [
        FirstExposure("u1", "hero", "a", T),
        FirstExposure("u1", "cta", "x", T + 10),
        FirstExposure("u2", "hero", "a", T),
        FirstExposure("u3", "hero", "b", T),
    ]
    again = ExposureLogic(None)
    again.on_batch(experiment_events(experiment_story()["u1"]))
    assert not [
        i for _, i in again.on_batch(experiment_events(experiment_story()["u1"]))[0] if isinstance(i, FirstExposure)
    ]
    # A resumed arm adds onto its snapshot and emits a copy of its totals.
    arm = ArmLogic(pickle.loads(pickle.dumps(arms[arm_key("hero", "b")].snapshot())))
    ((key, emitted),) = arm.on_batch([ArmCounters(experiment="hero", variant="b", clicks=1, updated_ms=T + 50)])[0]
    assert key == '["hero","b"]' and emitted is not arm.counters
    assert (emitted.users, emitted.clicks, emitted.updated_ms) == (1, 1, T + 50)


def test_arm_keys_never_collide():
    assert arm_key("a/b", "c") != arm_key("a", "b/c")
    assert arm_key('a","b', "c") != arm_key("a", 'b","c')


def test_a_user_never_exposed_keeps_no_state():
    user = UserExposures()
    events = [Event(f"p{i}", "purchase", "u9", T + i, value=1.0) for i in range(50)]
    events += [
        Event("k1", "conversion", "u9", T + 60, experiment="hero"),
        Event("c1", "click", "u9", T + 61, experiment="hero"),
    ]
    deltas, tally = user.update(events + events[:3])
    assert deltas == [] and tally == {"unattributed": 53, "unexposed": 2}
    assert user.arms == {} and user.seen == {}
    logic = ExposureLogic(None)
    assert logic.on_batch(events) == ([], True)  # Bytewax drops the state
    # Once exposed, the user's events are remembered again.
    _, tally = user.update([impression("i1", "u9", T + 100), Event("p99", "purchase", "u9", T + 101, value=2.0)])
    assert tally == {"counted": 2} and len(user.seen) == 2
