"""Consent end to end: recorded and read back, sent through Kafka, enforced at the API and in the flow."""

from __future__ import annotations

import json
import time

import pytest
from bytewax.testing import run_main
from litestar.testing import TestClient

from api.app import create_app
from engine.features.events import Event
from engine.privacy import Pseudonymizer, consent_props
from flows.features import build_flow
from tests.support import ADMIN, KEY, SERVE, consume_all, now_ms, online_features, produce_events, seed_user

pytestmark = pytest.mark.integration

PRIVACY = {"X-API-Key": "cmp"}
INGEST = {"X-API-Key": "server"}
KEYS = "server=ingest+serve,cmp=privacy,boss=admin"


def consent(client, user, **body):
    return client.put(f"/v1/users/{user}/consent", json=body, headers=PRIVACY)


def click(event_id, user, ts):
    return {"event_id": event_id, "type": "click", "user_id": user, "ts": ts, "category": "shoes"}


@pytest.mark.parametrize("policy", ["opt_out", "opt_in"])
def test_consent_is_recorded_read_back_and_sent_to_the_flow(make_settings, policy):
    settings = make_settings(pseudonym_key=KEY, api_keys=KEYS, consent_policy=policy)
    allowed = policy == "opt_out"
    with TestClient(app=create_app(settings)) as client:
        fresh = client.get("/v1/users/ann@example.com/consent", headers=PRIVACY)
        assert fresh.status_code == 200, fresh.text
        body = fresh.json()
        assert body["policy"] == policy and body["updated"] is None
        assert body["purposes"]["analytics"] == {"allowed": allowed, "by": "policy"}
        put = consent(client, "ann@example.com", granted=["personalization"], revoked=["analytics"])
        assert put.status_code == 200, put.text
        purposes = put.json()["purposes"]
        assert purposes["personalization"] == {"allowed": True, "by": "granted"}
        assert purposes["analytics"] == {"allowed": False, "by": "revoked"}
        assert purposes["experiments"] == {"allowed": allowed, "by": "policy"}
        # A later decision changes only the purposes it names.
        later = consent(client, "ann@example.com", granted=["analytics"]).json()["purposes"]
        assert later["analytics"]["by"] == "granted" and later["personalization"]["by"] == "granted"
        assert client.get("/v1/users/ann@example.com/consent", headers=ADMIN).json()["purposes"] == later
        # Bad decisions are 400s with a reason; other scopes are refused.
        for bad, words in (({}, "at least one purpose"), ({"granted": ["cookies"]}, "cookies")):
            r = consent(client, "ann@example.com", **bad)
            assert r.status_code == 400 and words in r.text, r.text
        both = consent(client, "ann@example.com", granted=["analytics"], revoked=["analytics"])
        assert both.status_code == 400 and "both granted and revoked" in both.json()["detail"]
        assert consent(client, " ", granted=["analytics"]).status_code == 400
        assert client.get("/v1/users/ann/consent", headers=SERVE).status_code == 403
        assert client.get("/v1/users/ann/consent").status_code == 401
        # Each decision is audited under the pseudonym and the key's fingerprint, never the raw id or the key.
        audited = client.get("/v1/audit", params={"action": "consent.change"}, headers=ADMIN).json()["records"]
        ann = Pseudonymizer(KEY).pseudonym("ann@example.com")
        assert [(r["target"], r["detail"]) for r in audited] == [
            (ann, {"granted": ["personalization"], "revoked": ["analytics"]}),
            (ann, {"granted": ["analytics"], "revoked": []}),
        ]
        assert "ann@" not in json.dumps(audited) and "cmp" not in {r["actor"] for r in audited}
    sent = [json.loads(m.value()) for m in consume_all(settings.kafka.brokers, settings.kafka.topic, 2)]
    ann = Pseudonymizer(KEY).pseudonym("ann@example.com")
    assert [(e["type"], e["user_id"]) for e in sent] == [("consent", ann)] * 2
    assert sent[0]["props"] == {"granted": "personalization", "revoked": "analytics"}
    assert all("ann@" not in json.dumps(e) for e in sent)


def test_events_of_a_user_without_analytics_consent_are_not_kept(make_settings):
    settings = make_settings(pseudonym_key=KEY, api_keys=KEYS, consent_policy="opt_in")
    now = now_ms()
    with TestClient(app=create_app(settings)) as client:
        consent(client, "bea", granted=["analytics"])
        batch = [click("e1", "bea", now), click("e2", "cal", now), click("e3", "bea", now)]
        body = client.post("/v1/events", json=batch, headers=INGEST).json()
        assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1]
        reason = body["rejected"][0]["reason"]
        assert "has not granted consent to analytics (TAILOR_CONSENT_POLICY=opt_in)" in reason
        assert reason.endswith("the event is not kept")
        consent(client, "bea", revoked=["analytics"])
        refused = client.post("/v1/events", json=[click("e4", "bea", now)], headers=INGEST).json()
        assert refused["accepted"] == 0 and "revoked consent to analytics" in refused["rejected"][0]["reason"]
        # Consent does not travel as an event: only PUT .../consent records it.
        sneaky = {"event_id": "e5", "type": "consent", "user_id": "cal", "ts": now, "props": {"granted": "analytics"}}
        r = client.post("/v1/events", json=sneaky, headers=INGEST).json()
        assert r["accepted"] == 0 and "PUT /v1/users/{user_id}/consent" in r["rejected"][0]["reason"]
    # consent grant, two clicks of bea, consent revoke: four messages, none of cal's.
    sent = [json.loads(m.value()) for m in consume_all(settings.kafka.brokers, settings.kafka.topic, 4)]
    assert [e["type"] for e in sent] == ["consent", "click", "click", "consent"]
    assert Pseudonymizer(KEY).pseudonym("cal") not in {e["user_id"] for e in sent}


def test_the_flow_keeps_only_what_consent_allows_in_event_order(make_settings):
    """Other producers write straight to Kafka: the flow applies each user's decisions in order with their events."""
    settings = make_settings(consent_policy="opt_in")
    now = now_ms()

    def decision(eid, user, ts, **purposes):
        return Event(eid, "consent", user, ts, props=consent_props(**purposes))

    events = [
        Event("n1", "click", "never", now - 9000, category="books"),  # never consented: dropped
        decision("c1", "late", now - 8000, granted=["analytics"]),
        Event("l1", "click", "late", now - 7000, category="shoes"),
        Event("l2", "click", "late", now - 6000, category="shoes"),
        decision("c2", "late", now - 5000, revoked=["analytics"]),
        Event("l3", "click", "late", now - 4000, category="shoes"),  # after the revocation: dropped
        Event("x1", "click", "early", now - 3000, category="bags"),  # before the grant: dropped
        decision("c3", "early", now - 2000, granted=["analytics", "experiments"]),
        Event("x2", "click", "early", now - 1000, category="bags"),
    ]
    produce_events(settings, events)
    run_main(build_flow(settings, tail=False))
    got = online_features(settings, ["never", "late", "early"])
    assert got["lifetime_events"] == [0, 2, 1]
    assert got["clicks_1h"] == [0, 2, 1] and got["top_category"] == [None, "shoes", "bags"]


def test_the_flow_under_opt_out_keeps_everyone_but_who_revoked(make_settings):
    settings = make_settings()  # the default policy
    now = now_ms()
    events = [
        Event("a1", "click", "ann", now - 3000),
        Event("c1", "consent", "bob", now - 2500, props=consent_props(revoked=["analytics"])),
        Event("b1", "click", "bob", now - 2000),
        Event("a2", "click", "ann", now - 1000),
    ]
    produce_events(settings, events)
    run_main(build_flow(settings, tail=False))
    assert online_features(settings, ["ann", "bob"])["lifetime_events"] == [2, 0]


@pytest.mark.model
def test_personalize_follows_each_purpose_and_a_revocation_at_once(api_settings):
    settings = api_settings(api_keys=KEYS)
    seed_user(settings, "dee", clicks=4)
    with TestClient(app=create_app(settings)) as client:

        def serve():
            r = client.post("/v1/personalize", json={"user_id": "dee", "slot": "headline"}, headers=INGEST)
            assert r.status_code == 200, r.text
            return r.json()

        client.post(
            "/v1/experiments",
            json={
                "id": "hero",
                "slot": "headline",
                "holdout": 0,
                "primary_metric": "click",
                "arms": [{"name": "a", "copy": "default"}, {"name": "b"}],
            },
            headers=ADMIN,
        )
        started = client.post("/v1/experiments/hero/start", headers=ADMIN)
        assert started.status_code in (200, 201), started.text
        personal = serve()
        assert personal["segment"] == 2 and personal["experiment"] == "hero" and personal["exposure_id"]
        assert personal["explanation"]["features"]["clicks_1h"] == 4

        consent(client, "dee", revoked=["personalization"])
        t0 = time.perf_counter()
        plain = serve()
        assert time.perf_counter() - t0 < 1.0
        assert plain["segment"] is None and plain["segment_label"] is None
        why = plain["explanation"]
        assert why["segment"].startswith("not personalized: the user revoked consent to personalization")
        assert why["features"]["clicks_1h"] is None and why["style"] == "window_shopper"
        assert plain["experiment"] == "hero"  # still in the experiment: that purpose is allowed

        consent(client, "dee", granted=["personalization"], revoked=["experiments"])
        unexposed = serve()
        assert unexposed["segment"] == 2 and unexposed["experiment"] is None and unexposed["exposure_id"] is None

        consent(client, "dee", granted=["experiments"])
        assert serve()["experiment"] == "hero"


def test_replicas_share_consent_through_redis(make_settings, redis_server):
    settings = make_settings(pseudonym_key=KEY, api_keys=KEYS, consent_policy="opt_in", redis_url=redis_server.url)
    now = now_ms()
    with TestClient(app=create_app(settings)) as one, TestClient(app=create_app(settings)) as two:
        assert consent(one, "eve", granted=["analytics"]).status_code == 200
        assert two.get("/v1/users/eve/consent", headers=PRIVACY).json()["purposes"]["analytics"]["by"] == "granted"
        assert two.post("/v1/events", json=click("r1", "eve", now), headers=INGEST).json()["accepted"] == 1
        consent(two, "eve", revoked=["analytics"])
        assert one.post("/v1/events", json=click("r2", "eve", now), headers=INGEST).json()["accepted"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_concurrent_decisions_are_merged_not_lost(tmp_path, redis_server, backend):
    from concurrent.futures import ThreadPoolExecutor

    from config.settings import Settings
    from engine.privacy import PURPOSES
    from store.consent import open_consent

    values = {"consent_db": str(tmp_path / "consent.db"), "feature_repo": str(tmp_path)}
    if backend == "redis":
        values["redis_url"] = redis_server.url
    stores = [open_consent(Settings.of(**values)) for _ in range(2)]
    user = "p_" + backend.ljust(24, "q")
    try:
        stores[0].delete(user)
        # Two writers, each granting one purpose per call, interleaved: every grant survives.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: stores[i % 2].decide(user, [PURPOSES[i % 3]], [], i), range(30)))
        assert set(stores[1].get(user).granted) == set(PURPOSES)
        assert stores[0].delete(user) and stores[1].get(user) is None and not stores[1].delete(user)
    finally:
        for store in stores:
            store.close()
