"""Segments through the real flow: Tansu -> Bytewax -> Feast, read back like any feature."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import timedelta

import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from cli.commands.segments import run as run_segments
from config.settings import settings_env
from engine.audience.segments import adjusted_rand_index
from engine.features.events import Event
from flows.features import build_flow, flow_command, init_recovery
from flows.kafka import read_topic
from jobs.simulator import DEFAULT_DRIFT_SHARES, Drift, Simulator
from store.feast import open_store, read_profiles
from tests.support import produce_events, uninterrupted_run

pytestmark = pytest.mark.integration

USERS, EVENTS = 500, 300_000


def simulated(settings, n=EVENTS, drift=None, seed=7):
    sim = Simulator(users=USERS, seed=seed, drift=drift)
    produce_events(settings, list(sim.events(n)))
    return sim


def segments_read_back(settings, sim) -> tuple[float, dict]:
    """ARI of the segments Feast serves against the simulator's profiles, and the rows."""
    store = open_store(settings)
    got = store.get_online_features(
        features=store.get_feature_service("user_segment_v1"), entity_rows=[{"user_id": u} for u in sim.users]
    ).to_dict()
    pairs = [(sim.profile_of(u), s) for u, s in zip(got["user_id"], got["segment"]) if s is not None]
    assert len(pairs) >= 0.95 * USERS
    return adjusted_rand_index(*zip(*pairs)), got


def test_segments_recover_profiles_through_feast_with_one_and_two_workers(make_settings, tmp_path, capsys):
    settings = make_settings(tail=False, partitions=4)
    sim = simulated(settings)

    one = uninterrupted_run(settings, tmp_path / "one-worker")
    ari_one, rows = segments_read_back(one, sim)
    assert ari_one >= 0.8
    assert set(rows["model_version"]) - {None} == {1}
    assert all(d >= 0 for d in rows["segment_distance"] if d is not None)

    env = {**os.environ, **settings_env(settings)}
    subprocess.run(flow_command(settings, None, workers=2), env=env, check=True, timeout=300)
    ari_two, _ = segments_read_back(settings, sim)
    # Two workers hand the one shared model its updates in other batches and orders, which vary with
    # timing; on this short stream (300k events) the online fit is sensitive to that: 0.68-0.73
    # measured against ~0.9 for one worker (0.97 before the features of issue 12; see the README),
    # and 0.77 against 0.85 once each user weighed once in the centres (one run each, a loaded machine:
    # not enough to raise the bound). Chance is ~0: the bound says the profiles still show.
    assert ari_two >= 0.5

    # The profiles: in Feast, and printed by `tailor segments`.
    profiles = read_profiles(open_store(settings), settings.audience.segments)
    assert len(profiles) == 4 and sum(p.size for p in profiles) >= 0.95 * USERS
    assert any("email-driven" in p.label for p in profiles)
    assert run_segments(settings, argparse.Namespace(json=False)) == 0
    table = capsys.readouterr().out
    assert all(p.label in table for p in profiles) and "order value" in table
    assert run_segments(settings, argparse.Namespace(json=True)) == 0
    assert {p["segment"] for p in json.loads(capsys.readouterr().out)} == {0, 1, 2, 3}


def test_the_model_survives_a_restart_with_the_recovery_state(make_settings, tmp_path):
    settings = make_settings(tail=False)
    sim = simulated(settings, n=150_000)
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    seen = {}

    def run():
        flow = build_flow(settings, on_audience=lambda audience: seen.__setitem__("audience", audience))
        run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(str(recovery)))
        return seen.pop("audience", None)

    first = run()
    assert first.model.version == 1
    members = dict(first.members)

    # A few users come back: a model starting over would still be warming up (2,000 updates) and assign none.
    late = list(sim.users[:5])
    t = sim.start_ms + 30 * 86_400_000  # well after their last simulated visit
    produce_events(settings, [Event(f"back-{u}-{i}", "app_open", u, t + i) for u in late for i in range(3)])
    second = run()
    assert second is not None, "the flow did not resume: nothing new was read"
    assert second.model.version == 1
    assert set(members) <= set(second.members)  # who is where came back with the model
    store = open_store(settings)
    got = store.get_online_features(features=["user_segment:segment"], entity_rows=[{"user_id": u} for u in late])
    assert None not in got.to_dict()["segment"]


def test_an_injected_drift_reaches_the_drift_topic(make_settings):
    settings = make_settings(tail=False, drift_warmup=300_000, drift_action="refit")
    simulated(settings, n=800_000, drift=Drift(at_event=600_000, shares=dict(DEFAULT_DRIFT_SHARES)))
    run_main(build_flow(settings))
    alerts = [
        json.loads(m.value()) for m in read_topic(settings.kafka.brokers, settings.kafka.drift_topic, 1, timeout_s=10)
    ]
    assert alerts, "no drift alert on the topic"
    alert = alerts[0]
    assert {"feature", "method", "score", "threshold", "window", "time", "time_ms", "action"} <= set(alert)
    assert alert["score"] > alert["threshold"]
    if alert["method"] != "adwin":
        assert alert["action"] == "refit"
        profiles = read_profiles(open_store(settings), settings.audience.segments)
        assert {p.model_version for p in profiles} == {2}


def test_a_snapshot_from_before_segmentation_resumes():
    from config.settings import Settings
    from engine.features.tiles import UserActivity
    from flows.features import UserActivityLogic

    settings = Settings()
    old = UserActivity(settings.flow.lateness_ms, settings.flow.affinity_half_life_s)
    logic = UserActivityLogic(settings, old)
    assert logic.state is old and logic.behaviour is not None
    out, _ = logic.on_batch([Event("e1", "app_open", "u1", 1_767_225_600_000)])
    assert out[0][1] is old and out[0][2].events == 1


def test_a_clicks_and_purchases_stream_is_segmented_and_its_profiles_settle_when_it_idles(make_settings):
    """A live flow (tailing) over a stream with no opens, impressions, page views or carts:
    users are segmented, and once the stream idles the profiles in Feast count every segmented user."""
    import time

    settings = make_settings(segment_warmup=100, drift_warmup=20_000, drift_reference=10_000, drift_window=5_000)
    sim = Simulator(users=200, seed=7, shape="clicks_purchases")
    produce_events(settings, list(sim.events(40_000)))
    env = {**os.environ, **settings_env(settings)}
    flow = subprocess.Popen(flow_command(settings, None), env=env, stderr=subprocess.DEVNULL)
    try:
        store = open_store(settings)
        deadline = time.monotonic() + 120
        while True:
            got = store.get_online_features(
                features=["user_segment:segment"], entity_rows=[{"user_id": u} for u in sim.users]
            ).to_dict()
            segmented = sum(s is not None for s in got["segment"])
            profiles = read_profiles(store, settings.audience.segments)
            if segmented >= 0.95 * 200 and sum(p.size for p in profiles) == segmented:
                break  # the stream idles: the last profiles were written without another event
            assert flow.poll() is None, "the flow exited"
            assert time.monotonic() < deadline, (segmented, [p.size for p in profiles])
            time.sleep(0.5)
    finally:
        flow.terminate()
        flow.wait(30)
    assert len({p.label for p in profiles}) == len(profiles) == 4
    for p in profiles:
        assert not {"email_share", "ctr", "cart_rate", "purchase_rate"} & set(p.centre), p.centre
        assert all(0.0 <= p.centre[name] <= 1.0 for name in ("conversion",) if name in p.centre)
    pairs = [(sim.profile_of(u), s) for u, s in zip(got["user_id"], got["segment"]) if s is not None]
    assert adjusted_rand_index(*zip(*pairs)) >= 0.3  # far from chance (~0) on 200 users
