"""The API's first routes against a real broker and Feast: auth, events in, features and segments out."""

from __future__ import annotations

import json

import pytest
from litestar.testing import TestClient

from api.app import create_app, parse_api_keys
from engine.privacy import Pseudonymizer
from tests.support import consume_all, now_ms

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef0123456789abcdef"
HEADERS = {"X-API-Key": "ingester"}


@pytest.fixture
def api_settings(make_settings):
    return make_settings(pseudonym_key=KEY, api_keys="ingester=ingest+serve,reader=serve,boss=admin")


def test_auth_401_and_403_with_clear_bodies(api_settings):
    with TestClient(app=create_app(api_settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        missing = client.get("/v1/segments")
        assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
        assert client.get("/v1/segments", headers={"X-API-Key": "nope"}).status_code == 401
        denied = client.post("/v1/events", content=b"{}", headers={"X-API-Key": "reader"})
        assert denied.status_code == 403 and "'ingest' scope" in denied.json()["detail"]
        assert client.get("/v1/segments", headers={"X-API-Key": "boss"}).status_code == 200


def test_events_are_pseudonymized_and_bad_ones_get_a_reason(api_settings):
    now = now_ms()
    batch = [
        {"event_id": "a1", "type": "click", "user_id": "alice@example.com", "ts": now},
        {"event_id": "a2", "type": "purchase", "user_id": "alice@example.com", "ts": now},  # no value
        {"event_id": "a3", "type": "teleport", "user_id": "bob", "ts": now},
        {"event_id": "a4", "type": "page_view", "user_id": "bob", "ts": now, "unknown": 1},
        {"event_id": "a5", "type": "app_open", "user_id": "bob", "ts": now},
    ]
    with TestClient(app=create_app(api_settings)) as client:
        response = client.post("/v1/events", json=batch, headers=HEADERS)
        assert response.status_code == 202
        body = response.json()
        assert body["accepted"] == 2 and [r["index"] for r in body["rejected"]] == [1, 2, 3]
        assert "value" in body["rejected"][0]["reason"] and "unknown" in body["rejected"][2]["reason"]
        one = client.post("/v1/events", json=batch[0] | {"event_id": "a6"}, headers=HEADERS)
        assert one.status_code == 202 and one.json()["accepted"] == 1
        for bad, status in ((b"{not json", 400), (b"[]", 400), (json.dumps([batch[0]] * 1001).encode(), 413)):
            assert client.post("/v1/events", content=bad, headers=HEADERS).status_code == status
    sent = [json.loads(m.value()) for m in consume_all(api_settings.kafka.brokers, api_settings.kafka.topic, 3)]
    assert len(sent) == 3
    alice = Pseudonymizer(KEY).pseudonym("alice@example.com")
    assert {e["user_id"] for e in sent} == {alice, Pseudonymizer(KEY).pseudonym("bob")}
    assert all("alice" not in m and "bob" not in m for m in (json.dumps(e) for e in sent))


def test_features_of_a_user_come_through_feast_by_their_own_id(api_settings):
    from bytewax.testing import run_main

    from flows.features import build_flow

    now = now_ms()
    events = [{"event_id": f"c{i}", "type": "click", "user_id": "carol", "ts": now - 1000 + i} for i in range(3)]
    with TestClient(app=create_app(api_settings)) as client:
        assert client.post("/v1/events", json=events, headers=HEADERS).json()["accepted"] == 3
    run_main(build_flow(api_settings, tail=False))
    with TestClient(app=create_app(api_settings)) as client:
        got = client.get("/v1/users/carol/features", headers={"X-API-Key": "reader"}).json()
        assert got["clicks_5m"] == 3 and got["lifetime_events"] == 3
        nobody = client.get("/v1/users/nobody/features", headers={"X-API-Key": "reader"}).json()
        assert nobody["clicks_5m"] == 0 and nobody["segment"] is None


def test_missing_keys_are_clear_errors(make_settings):
    with pytest.raises(ValueError, match="TAILOR_PSEUDONYM_KEY"):
        create_app(make_settings(api_keys="k=serve"))
    with pytest.raises(ValueError, match="TAILOR_API_KEYS"):
        create_app(make_settings(pseudonym_key=KEY))
    with pytest.raises(ValueError, match="scope"):
        parse_api_keys("k=superuser")


def test_readiness_and_metrics(api_settings, make_settings, tmp_path):
    # No copy model in tmp_path: the API serves default copy, and is ready to (test_personalize has one).
    api_settings = api_settings.replace(model_dir=str(tmp_path / "no-model"))
    with TestClient(app=create_app(api_settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() | {"model": "-"} == {"ready": True, "broker": "ok", "store": "ok", "model": "-"}
        assert "no copy model loaded" in ready.json()["model"]
        client.get("/v1/segments", headers=HEADERS)
        response = client.get("/metrics")
        assert response.status_code == 200, (response.status_code, response.text[:200])
        metrics = response.text
        assert "tailor_api_requests_total" in metrics and 'path="/v1/segments"' in metrics
        assert "tailor_api_request_duration_seconds_bucket" in metrics
    from dev.services import free_port

    down = make_settings(pseudonym_key=KEY, api_keys="k=serve")
    down = down.replace(brokers=f"127.0.0.1:{free_port()}")
    with TestClient(app=create_app(down)) as client:
        not_ready = client.get("/readyz")
        # Either the metadata request failed, or the producer already knows it cannot deliver (api/delivery.py).
        assert not_ready.status_code == 503, not_ready.json()
        assert not_ready.json()["broker"].startswith(("unreachable", "cannot deliver")), not_ready.json()
