"""Experiment results end to end: the API assigns and logs impressions, outcomes arrive through
/v1/events, the real flow counts them into Feast, and /v1/experiments/{id}/results reads them.

Real parts throughout: the session's Tansu broker, the Feast SDK store (SQLite), Bytewax's
``run_main`` over the topic and the Litestar app with the tiny copy model.
"""

from __future__ import annotations

import time

import msgspec
import pytest
from bytewax.testing import run_main
from litestar.testing import TestClient

from api.app import create_app
from flows.features import build_flow
from tests.support import ADMIN, SERVE, consume_all, now_ms

pytestmark = [pytest.mark.integration, pytest.mark.model]

AB = {
    "id": "results-e2e",
    "slot": "headline",
    "holdout": 0.2,
    "primary_metric": "conversion",
    "guardrails": ["click", "value"],
    "arms": [{"name": "control", "copy": "default"}, {"name": "treatment"}],
}
BANDIT = {
    "id": "bandit-e2e",
    "slot": "headline",
    "allocation": "thompson",
    "bandit_floor": 0.1,
    "primary_metric": "conversion",
    "arms": [{"name": "a", "copy": "default"}, {"name": "b", "copy": "default"}],
}
COUNTS = ("users", "impressions", "clickers", "clicks", "converters", "conversions", "value_sum")


def start(client, body) -> None:
    r = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    r = client.post(f"/v1/experiments/{body['id']}/start", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "running", r.text


def variant_of(client, user: str, experiment: str) -> str:
    r = client.post("/v1/personalize", json={"user_id": user, "slot": "headline"}, headers=SERVE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["experiment"] == experiment and body["exposure_id"], body
    return body["variant"]


def results(client, experiment: str) -> dict:
    r = client.get(f"/v1/experiments/{experiment}/results", headers=SERVE)
    assert r.status_code == 200, r.text
    return r.json()


def send_events(client, events: list[dict]) -> None:
    r = client.post("/v1/events", json=events, headers=SERVE)
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": len(events), "rejected": []}


def count_through_the_flow(settings, messages: int) -> None:
    """Wait until the API's producer delivered ``messages`` records, then run the flow to the topic's end."""
    landed = consume_all(settings.kafka.brokers, settings.kafka.topic, messages, timeout_s=30)
    assert len(landed) == messages, f"{len(landed)} of {messages} records reached {settings.kafka.topic}"
    run_main(build_flow(settings, tail=False))


def by_variant(body: dict) -> dict[str, dict]:
    return {row["variant"]: row for row in body["variants"]}


def test_results_count_what_the_api_served_and_the_users_did(api_settings):
    settings = api_settings()
    experiment = AB["id"]
    users = [f"e2e-{n}" for n in range(40)]
    with TestClient(app=create_app(settings)) as client:
        start(client, AB)
        t_served = now_ms()
        assigned: dict[str, str] = {}
        impressions = 0
        for n, user in enumerate(users):
            assigned[user] = variant_of(client, user, experiment)
            impressions += 1
            if n % 5 == 0:  # a second look: one more impression, still one user, same arm
                assert variant_of(client, user, experiment) == assigned[user]
                impressions += 1
        groups = {v: [u for u in users if assigned[u] == v] for v in ("control", "treatment", "holdout")}
        assert all(len(g) >= 3 for g in groups.values()), {v: len(g) for v, g in groups.items()}

        # Before the flow has counted anything: a readable page that says so, not an error.
        early = results(client, experiment)
        assert early["primary"] is None and early["users"] == 0 and early["guardrails"] == []
        assert any(note.startswith("not enough data yet") for note in early["notes"]), early["notes"]
        assert {row["variant"]: row["users"] for row in early["variants"]} == {
            "control": 0,
            "treatment": 0,
            "holdout": 0,
        }

        # Outcomes, sent as a client would (raw user ids; the API pseudonymizes them).
        t = now_ms()
        assert t >= t_served
        want = {v: dict.fromkeys(COUNTS, 0) for v in groups}
        for v, g in groups.items():
            want[v]["users"] = len(g)
            want[v]["impressions"] = sum(1 + (users.index(u) % 5 == 0) for u in g)
        events: list[dict] = []

        def outcome(user: str, kind: str, n: int, **fields) -> dict:
            event = {"event_id": f"{user}-{kind}-{n}", "type": kind, "user_id": user, "ts": t + n, **fields}
            events.append(event)
            return event

        treatment, control, holdout = groups["treatment"], groups["control"], groups["holdout"]
        for user in treatment[::2]:  # half of the treatment converts, naming the experiment
            outcome(user, "conversion", 1, experiment=experiment)
            want["treatment"]["converters"] += 1
            want["treatment"]["conversions"] += 1
        # One treatment converter converts again (two conversions, still one converter) ...
        outcome(treatment[0], "conversion", 2, experiment=experiment)
        want["treatment"]["conversions"] += 1
        # ... and one conversion is re-sent with the same id (counted once).
        events.append(dict(events[0]))
        for user in control[::3]:  # some of the control buys, naming no experiment: attributed by exposure
            outcome(user, "purchase", 1, value=20.0)
            want["control"]["converters"] += 1
            want["control"]["conversions"] += 1
            want["control"]["value_sum"] += 20.0
        outcome(holdout[0], "purchase", 1, value=5.0)
        want["holdout"].update(converters=1, conversions=1, value_sum=5.0)
        for v, g in groups.items():  # the first user of each group clicks twice (one clicker, two clicks)
            outcome(g[0], "click", 1, experiment=experiment)
            outcome(g[0], "click", 2, experiment=experiment)
            want[v]["clickers"] += 1
            want[v]["clicks"] += 2
        # Not counted: a conversion stamped before the user's impression, a click naming no
        # experiment, and a purchase by someone never served.
        events.append(
            {
                "event_id": "early-conversion",
                "type": "conversion",
                "user_id": control[1],
                "ts": t_served - 60_000,
                "experiment": experiment,
            }
        )
        events.append({"event_id": "plain-click", "type": "click", "user_id": control[-1], "ts": t})
        events.append(
            {"event_id": "stranger-buys", "type": "purchase", "user_id": "never-served", "ts": t, "value": 99.0}
        )
        send_events(client, events)

        count_through_the_flow(settings, impressions + len(events))
        body = results(client, experiment)

    assert body["experiment"] == experiment and body["status"] == "running"
    assert body["primary_metric"] == "conversion" and body["control"] == "control"
    rows = by_variant(body)
    assert set(rows) == {"control", "treatment", "holdout"}
    assert {v: {k: rows[v][k] for k in COUNTS} for v in rows} == want
    assert {v: rows[v]["expected_share"] for v in rows} == pytest.approx(
        {"control": 0.4, "treatment": 0.4, "holdout": 0.2}
    )
    assert body["users"] == len(users)
    assert not any(note.startswith("not enough data") for note in body["notes"]), body["notes"]

    primary = body["primary"]
    assert primary is not None and primary["control"] == "control"
    assert [a["arm"] for a in primary["arms"]] == ["control", "treatment"]
    for arm in primary["arms"]:
        counted = want[arm["arm"]]
        assert (arm["n"], arm["conversions"]) == (counted["users"], counted["converters"])
        assert arm["rate"] == pytest.approx(counted["converters"] / counted["users"])
        assert 0.0 <= arm["ci_low"] <= arm["rate"] <= arm["ci_high"] <= 1.0
    control_row, treatment_row = primary["arms"]
    assert "lift" not in control_row and "p_value" not in control_row  # the control is not compared to itself
    assert treatment_row["lift"] == pytest.approx(treatment_row["rate"] / control_row["rate"] - 1)
    for name in ("p_value", "p_adjusted", "sequential_p_value", "chance_to_beat_control"):
        assert 0.0 <= treatment_row[name] <= 1.0, name
    assert 0.0 <= primary["srm_p_value"] <= 1.0 and isinstance(primary["srm_alarm"], bool)

    assert [g["metric"] for g in body["guardrails"]] == ["click", "value"]
    clicks = body["guardrails"][0]["report"]["arms"]
    assert [(a["arm"], a["n"], a["conversions"]) for a in clicks] == [
        (v, want[v]["users"], want[v]["clickers"]) for v in ("control", "treatment")
    ]
    assert body["guardrails"][0]["harmed"] == []
    # Only the control's buyers spent money: the treatment is significantly worse on value, and the page says so.
    value = body["guardrails"][1]["report"]["arms"]
    assert value[0]["value_mean"] == pytest.approx(want["control"]["value_sum"] / want["control"]["users"])
    assert value[1]["value_mean"] == 0.0
    assert body["guardrails"][1]["harmed"] == ["treatment"]
    assert "guardrail value: treatment significantly worse than control" in body["notes"]

    held = body["holdout"]
    assert held is not None and [a["arm"] for a in held["arms"]] == ["holdout", "experiment"]
    assert [(a["n"], a["conversions"]) for a in held["arms"]] == [
        (want["holdout"]["users"], want["holdout"]["converters"]),
        (
            want["control"]["users"] + want["treatment"]["users"],
            want["control"]["converters"] + want["treatment"]["converters"],
        ),
    ]
    assert body["bandit_weights"] is None and body["factors"] == [] and body["interactions"] == []


def test_thompson_weights_follow_the_counters_and_steer_new_users(api_settings):
    settings = api_settings(bandit_every_s=0.2)
    experiment = BANDIT["id"]
    floor = BANDIT["bandit_floor"]
    with TestClient(app=create_app(settings)) as client:
        start(client, BANDIT)
        first = results(client, experiment)
        assert first["bandit_weights"] is not None
        # No data yet: the two arms are alike, so each is best about half of the time.
        assert first["bandit_weights"]["a"] == pytest.approx(0.5, abs=0.05)
        assert any("Thompson allocation" in note for note in first["notes"])

        early_users = [f"bandit-{n}" for n in range(30)]
        assigned = {u: variant_of(client, u, experiment) for u in early_users}
        winners = [u for u in early_users if assigned[u] == "b"]
        losers = [u for u in early_users if assigned[u] == "a"]
        assert len(winners) >= 5 and len(losers) >= 5, assigned
        # Every user who saw "b" converts; nobody who saw "a" does.
        t = now_ms()
        send_events(
            client,
            [
                {"event_id": f"{u}-conv", "type": "conversion", "user_id": u, "ts": t, "experiment": experiment}
                for u in winners
            ],
        )
        count_through_the_flow(settings, len(early_users) + len(winners))

        # The API re-weighs the arms from the counters on its own schedule: wait for it.
        deadline = time.monotonic() + 20
        body = results(client, experiment)
        while body["bandit_weights"]["b"] < 0.5 + floor and time.monotonic() < deadline:
            time.sleep(0.1)
            body = results(client, experiment)
        weights = body["bandit_weights"]
        assert set(weights) == {"a", "b"}
        assert weights["b"] > weights["a"] >= floor - 1e-9, weights
        assert weights["a"] == pytest.approx(floor)  # a sure loser keeps exactly the floor
        assert sum(weights.values()) == pytest.approx(1.0)
        rows = by_variant(body)
        assert (rows["b"]["users"], rows["b"]["converters"]) == (len(winners), len(winners))
        assert (rows["a"]["users"], rows["a"]["converters"]) == (len(losers), 0)
        assert rows["b"]["expected_share"] == pytest.approx(weights["b"], abs=1e-6)
        assert body["primary"]["arms"][1]["arm"] == "b" and body["primary"]["arms"][1]["rate"] == 1.0
        assert body["primary"]["arms"][1]["chance_to_beat_control"] > 0.95

        # New users follow the weights; users already in the growing arm stay there.
        newcomers = [f"bandit-new-{n}" for n in range(60)]
        picks = [variant_of(client, u, experiment) for u in newcomers]
        assert picks.count("b") >= 42, picks  # 0.9 expected; equal weights would give these users 27
        assert picks.count("a") >= 1, picks  # the floor keeps the loser measured
        assert all(variant_of(client, u, experiment) == "b" for u in winners)


def test_the_bandit_refresh_interval_comes_from_the_settings(tmp_path):
    from config.settings import Settings
    from store.experiments import open_experiments

    settings = Settings.of(feature_repo=str(tmp_path), bandit_every_s=0.2)
    live = open_experiments(settings, feature_store=None)
    try:
        assert live.bandit_every_s == settings.api.bandit_every_s
    finally:
        live.store.close()


def test_users_already_assigned_keep_their_arm_when_the_allocation_changes(api_settings):
    from engine.experiments.designs import ExperimentSpec
    from engine.experiments.designs import variant_of as hashed_variant

    settings = api_settings()
    body = {
        "id": "realloc",
        "slot": "headline",
        "holdout": 0.1,
        "arms": [{"name": "a", "copy": "default"}, {"name": "b", "copy": "default"}, {"name": "c", "copy": "default"}],
    }
    users = [f"r-{n}" for n in range(60)]
    with TestClient(app=create_app(settings)) as client:
        state = client.app.state
        start(client, body)
        before = {user: variant_of(client, user, "realloc") for user in users}
        count_through_the_flow(settings, len(users))  # the flow records each user's first arm

        r = client.patch("/v1/experiments/realloc", json={"weights": {"b": 9}, "holdout": 0.3}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["reallocated"], r.text
        spec = msgspec.convert(r.json(), ExperimentSpec)
        state.experiments.refresh(force=True)
        # By the hash alone some of these users would now move (into b or the holdout): the check can fail.
        pseudonyms = {user: state.pseudonymizer.pseudonym(user) for user in users}
        moved = [u for u in users if hashed_variant(spec, pseudonyms[u]) != before[u]]
        assert len(moved) >= 5, moved
        assert {user: variant_of(client, user, "realloc") for user in users} == before
        # New users follow the new allocation.
        fresh = [variant_of(client, f"new-{n}", "realloc") for n in range(60)]
        assert fresh.count("b") > fresh.count("a") + fresh.count("c")

        # Pausing an arm moves its users (only them) to the open arms.
        r = client.patch("/v1/experiments/realloc", json={"weights": {"c": 0}}, headers=ADMIN)
        assert r.status_code == 200, r.text
        state.experiments.refresh(force=True)
        after = {user: variant_of(client, user, "realloc") for user in users}
        was_c = [u for u in users if before[u] == "c"]
        assert was_c and all(after[u] in ("a", "b", "holdout") for u in was_c)
        assert {u: after[u] for u in users if u not in was_c} == {u: before[u] for u in users if u not in was_c}

        results = client.get("/v1/experiments/realloc/results", headers=SERVE).json()
        assert any("allocation changed while running" in note for note in results["notes"]), results["notes"]
