"""The audit log through the API: admin actions leave records as the key's fingerprint, /v1/audit reads them."""

from __future__ import annotations

import sqlite3

import pytest
from litestar.testing import TestClient

from api.app import create_app
from config.settings import Settings
from engine.audit import fingerprint
from store.audit import AuditUnavailable

KEY = "0123456789abcdef0123456789abcdef"
ADMIN_KEY, SERVE_KEY = "ops-key-7Qz9", "app-key-3Kx2"
ADMIN = {"X-API-Key": ADMIN_KEY}
SERVE = {"X-API-Key": SERVE_KEY}
TEMPLATE = {"template_id": "cta-soft", "slot": "cta", "body": "{{ ai.cta }}", "default_copy": {"cta": "Have a look"}}
EXPERIMENT = {"id": "hero-copy", "slot": "headline", "arms": [{"name": "a", "copy": "default"}, {"name": "b"}]}


@pytest.fixture
def client(feature_repo):
    # No broker needed: these routes never produce, and the Kafka producer connects lazily.
    settings = Settings.of(
        feature_repo=str(feature_repo),
        pseudonym_key=KEY,
        api_keys=f"{ADMIN_KEY}=admin,{SERVE_KEY}=serve",
        brokers="127.0.0.1:9",
    )
    from store.feast import apply_definitions, open_store

    apply_definitions(open_store(settings))  # create_app's lifespan reads the Feast registry
    with TestClient(app=create_app(settings)) as c:
        yield c


def audit(client, **params) -> dict:
    r = client.get("/v1/audit", params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    return r.json()


def test_admin_actions_are_recorded_as_the_keys_fingerprint_never_the_key(client, feature_repo):
    assert client.post("/v1/templates", json=TEMPLATE, headers=ADMIN).status_code == 201
    assert client.patch("/v1/templates/cta-soft", json={"segments": ["x"]}, headers=ADMIN).status_code == 200
    assert client.post("/v1/templates/cta-soft/archive", headers=ADMIN).status_code == 200
    assert client.post("/v1/experiments", json=EXPERIMENT, headers=ADMIN).status_code == 201
    assert client.post("/v1/experiments/hero-copy/start", headers=ADMIN).status_code == 200
    assert client.patch("/v1/experiments/hero-copy", json={"weights": {"b": 3}}, headers=ADMIN).status_code == 200
    assert client.post("/v1/experiments/hero-copy/stop", headers=ADMIN).status_code == 200
    # Refused actions leave nothing.
    assert client.post("/v1/experiments/hero-copy/start", headers=ADMIN).status_code == 409
    assert client.post("/v1/templates", json=TEMPLATE, headers=ADMIN).status_code == 409

    page = audit(client)
    records = page["records"]
    assert [(r["seq"], r["action"], r["target"]) for r in records] == [
        (1, "template.create", "cta-soft"),
        (2, "template.update", "cta-soft"),
        (3, "template.archive", "cta-soft"),
        (4, "experiment.create", "hero-copy"),
        (5, "experiment.start", "hero-copy"),
        (6, "experiment.reallocate", "hero-copy"),
        (7, "experiment.stop", "hero-copy"),
    ]
    assert page["next_after_seq"] is None
    assert {r["actor"] for r in records} == {fingerprint(ADMIN_KEY)}
    assert records[0]["detail"] == {"version": 1, "slot": "cta"} and records[5]["detail"]["weights"] == {"b": 3.0}
    assert records[1]["prev_hash"] == records[0]["hash"]
    # The key itself is nowhere: not in an answer, not in the file.
    assert ADMIN_KEY not in client.get("/v1/audit", headers=ADMIN).text
    path = feature_repo / "data" / "audit.db"
    db = sqlite3.connect(path)
    assert not any(ADMIN_KEY in str(row) for row in db.execute("SELECT * FROM audit_log"))
    db.close()
    assert client.get("/v1/audit/verify", headers=ADMIN).json() == {"ok": True, "records": 7, "first_broken": None}


def test_audit_filters_pages_and_verify(client, feature_repo):
    client.post("/v1/templates", json=TEMPLATE, headers=ADMIN)
    client.post("/v1/experiments", json=EXPERIMENT, headers=ADMIN)
    client.post("/v1/experiments/hero-copy/start", headers=ADMIN)
    assert [r["seq"] for r in audit(client, action="experiment.start")["records"]] == [3]
    assert [r["seq"] for r in audit(client, target="hero-copy", actor=fingerprint(ADMIN_KEY))["records"]] == [2, 3]
    first = audit(client, limit=2)
    assert [r["seq"] for r in first["records"]] == [1, 2] and first["next_after_seq"] == 2
    assert [r["seq"] for r in audit(client, after_seq=2)["records"]] == [3]
    assert audit(client, since="2999-01-01T00:00:00Z")["records"] == []
    assert len(audit(client, since="1000000000000", until="2999-01-01T00:00:00+02:00")["records"]) == 3
    db = sqlite3.connect(feature_repo / "data" / "audit.db")
    with db:
        db.execute('UPDATE audit_log SET detail = \'{"slots": ["cta"]}\' WHERE seq = 2')
    db.close()
    verdict = client.get("/v1/audit/verify", headers=ADMIN).json()
    assert verdict == {
        "ok": False,
        "records": 3,
        "first_broken": {"seq": 2, "reason": "its hash does not match its contents: the record was edited"},
    }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"since": "yesterday"}, "since: 'yesterday' is not an RFC 3339 time"),
        ({"until": "2026-03-02T09:00:00"}, "until:"),
        ({"since": "2026-03-02T10:00:00Z", "until": "2026-03-02T09:00:00Z"}, "must be before until"),
        ({"action": "DROP"}, "<resource>.<verb>"),
        ({"actor": ADMIN_KEY}, "fingerprint"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"after_seq": -1}, "after_seq"),
    ],
)
def test_bad_filters_are_a_400_that_says_which(client, params, says):
    r = client.get("/v1/audit", params=params, headers=ADMIN)
    assert r.status_code == 400, r.text
    assert says in r.text


def test_the_audit_routes_need_the_admin_scope(client):
    for path in ("/v1/audit", "/v1/audit/verify"):
        assert client.get(path, headers=SERVE).status_code == 403
        assert client.get(path).status_code == 401


def test_an_action_the_log_cannot_record_is_a_503_and_does_not_happen(client):
    log = client.app.state.audit

    class Down:
        def check(self):
            raise AuditUnavailable("the audit log is unavailable: test")

        def __getattr__(self, name):
            return getattr(log, name)

    client.app.state.audit = Down()
    try:
        r = client.post("/v1/templates", json=TEMPLATE, headers=ADMIN)
        assert r.status_code == 503 and "audit log is unavailable" in r.json()["detail"]
        assert client.get("/v1/templates/cta-soft", headers=SERVE).status_code == 404  # not created
        assert client.post("/v1/experiments", json=EXPERIMENT, headers=ADMIN).status_code == 503
        assert client.get("/v1/experiments/hero-copy", headers=SERVE).status_code == 404
    finally:
        client.app.state.audit = log
    assert log.verify() == (0, None)


def test_a_log_that_fails_after_the_change_says_so_in_a_503(client, caplog):
    log = client.app.state.audit

    class FailsLate:
        def check(self):
            pass

        def append(self, *args):
            raise AuditUnavailable("the audit log is unavailable: test")

        def __getattr__(self, name):
            return getattr(log, name)

    client.app.state.audit = FailsLate()
    try:
        r = client.post("/v1/templates", json=TEMPLATE, headers=ADMIN)
    finally:
        client.app.state.audit = log
    assert r.status_code == 503 and "was done, but the audit log could not record it" in r.json()["detail"]
    assert client.get("/v1/templates/cta-soft", headers=SERVE).status_code == 200
    assert any("UNAUDITED: template.create on 'cta-soft'" in m for m in caplog.messages)
