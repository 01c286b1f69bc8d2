"""Experiment counters through the real flow: Tansu -> Bytewax -> Feast, read back two ways."""

from __future__ import annotations

import pytest
from bytewax.testing import run_main

from engine.experiments.exposures import ArmCounters
from flows.features import build_flow
from flows.metrics import EXPERIMENT_EVENTS
from store.feast import ARM_FEATURES, open_store
from store.online import read_arm_counters
from tests.support import experiment_counters, experiment_story, now_ms, produce_events

pytestmark = pytest.mark.integration

VARIANTS = {"hero": ["a", "b", "c"], "cta": ["x"]}


def story_events(t: int) -> list:
    # Interleave the users, as a producer fleet would; each user's own order is kept.
    per_user = list(experiment_story(t).values())
    return [events[i] for i in range(max(map(len, per_user))) for events in per_user if i < len(events)]


def wanted(t: int) -> dict[str, dict[str, ArmCounters]]:
    arms = experiment_counters(t)
    return {
        experiment: {v: arms.get((experiment, v), ArmCounters(experiment=experiment, variant=v)) for v in variants}
        for experiment, variants in VARIANTS.items()
    }


def read_back(settings) -> dict[str, dict[str, ArmCounters]]:
    store = open_store(settings)
    got = {experiment: read_arm_counters(store, experiment, variants) for experiment, variants in VARIANTS.items()}
    # A plain Feast client reads the same numbers (a row never written reads as None: zero counters).
    for experiment, variants in VARIANTS.items():
        rows = store.get_online_features(
            features=[f"experiment_arm:{name}" for name in ARM_FEATURES],
            entity_rows=[{"experiment_id": experiment, "variant": v} for v in variants],
        ).to_dict()
        for i, v in enumerate(variants):
            plain = {name: rows[name][i] or 0 for name in ARM_FEATURES}
            assert plain == {name: getattr(got[experiment][v], name) for name in ARM_FEATURES}, (experiment, v)
    return got


def outcomes() -> dict[str, float]:
    return {
        k: EXPERIMENT_EVENTS.labels(k)._value.get()
        for k in ("counted", "duplicate", "unexposed", "unattributed", "ignored")
    }


def test_arm_counters_through_the_flow_read_through_feast(make_settings):
    settings = make_settings()
    t = now_ms() - 3_600_000
    produce_events(settings, story_events(t))
    before = outcomes()
    run_main(build_flow(settings, tail=False))
    assert read_back(settings) == wanted(t)
    hero_a = wanted(t)["hero"]["a"]
    assert (hero_a.users, hero_a.clickers, hero_a.converters, hero_a.value_sum, hero_a.value_sum_sq) == (
        2,
        1,
        2,
        67.0,
        2269.0,
    )
    after = outcomes()
    assert {k: after[k] - before[k] for k in after} == {
        "counted": 12,
        "duplicate": 1,
        "unexposed": 3,
        "unattributed": 1,
        "ignored": 1,
    }


def test_a_duplicated_input_counts_once(make_settings):
    settings = make_settings()
    t = now_ms() - 3_600_000
    events = story_events(t)
    before = outcomes()
    # Every event three times, the copies reversed once: u3's early click and u2's early purchase now
    # also come after their users' exposures, but were decided on first sight (not counted).
    produce_events(settings, events + events[::-1] + events)
    run_main(build_flow(settings, tail=False))
    assert read_back(settings) == wanted(t)
    after = outcomes()
    # Repeats of all but u1-v1 and u3-c1 (not experiment events), less what nobody remembers: a user never
    # exposed keeps no ids (u4's two events, twice), and u2-p0 came before u2 had any arm (its first repeat).
    assert after["duplicate"] - before["duplicate"] == 1 + 2 * (len(events) - 2) - 4 - 1


def test_a_second_run_on_the_same_store_writes_the_same_rows(make_settings):
    # No recovery state: the second run starts from zero counters and ends at the same absolute values.
    settings = make_settings()
    t = now_ms() - 3_600_000
    produce_events(settings, story_events(t))
    run_main(build_flow(settings, tail=False))
    first = read_back(settings)
    run_main(build_flow(settings, tail=False))
    assert read_back(settings) == first == wanted(t)


def test_arm_counters_on_redis(make_settings, redis_server):
    from store.feast import apply_definitions

    settings = make_settings(redis_url=redis_server.url)
    apply_definitions(open_store(settings))  # creates the Redis-side infra
    t = now_ms() - 3_600_000
    produce_events(settings, story_events(t))
    run_main(build_flow(settings, tail=False))
    from feast.infra.online_stores.redis import RedisOnlineStore

    assert isinstance(open_store(settings)._get_provider().online_store, RedisOnlineStore)
    assert read_back(settings) == wanted(t)


def test_a_repo_missing_a_view_says_how_to_fix_it(tmp_path):
    from config.settings import Settings
    from store.feast import FeatureWriter, new_repo

    writer = FeatureWriter(new_repo(Settings(), tmp_path / "repo"), offline=False)
    with pytest.raises(RuntimeError, match="'experiment_arm_old' is not registered in .*: run `tailor apply`"):
        writer._view("experiment_arm_old")


def test_each_users_first_arm_is_recorded_for_sticky_assignment(make_settings):
    from store.online import OnlineReader

    settings = make_settings()
    t = now_ms() - 3_600_000
    events = story_events(t)
    produce_events(settings, events + events)  # a replay writes the same rows
    run_main(build_flow(settings, tail=False))
    store = open_store(settings)
    reader = OnlineReader(store, settings.audience.segments)
    # u1 saw "b" after "a": still "a" (first exposure); u4 was never exposed; nobody saw experiment "nope".
    got = {
        (user, experiment): reader.first_arm(user, experiment)
        for user in ("u1", "u2", "u3", "u4")
        for experiment in ("hero", "cta", "nope")
    }
    assert got == {
        ("u1", "hero"): "a",
        ("u1", "cta"): "x",
        ("u2", "hero"): "a",
        ("u3", "hero"): "b",
        **{
            k: None
            for k in [
                ("u1", "nope"),
                ("u2", "cta"),
                ("u2", "nope"),
                ("u3", "cta"),
                ("u3", "nope"),
                ("u4", "hero"),
                ("u4", "cta"),
                ("u4", "nope"),
            ]
        },
    }
    rows = store.get_online_features(
        features=["user_experiment:arm", "user_experiment:exposed_ms"],
        entity_rows=[{"experiment_id": "hero", "user_id": "u1"}, {"experiment_id": "cta", "user_id": "u1"}],
    ).to_dict()
    assert rows["arm"] == ["a", "x"] and rows["exposed_ms"] == [t, t + 10]
