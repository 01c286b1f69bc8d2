"""The API against a real broker: no 500 for what a client sent, and a 500 that can be traced."""

import pytest

pytestmark = pytest.mark.integration

BLANK_IDS = (" ", "\t", "\u00a0", "\u3000", "\u200b", " \u200b\n")


@pytest.fixture
def app_settings(make_settings):
    from tests.support import KEY

    return make_settings(pseudonym_key=KEY, api_keys="server=ingest+serve,boss=admin")


@pytest.mark.integration
def test_blank_user_ids_are_refused_with_the_reason_never_500(app_settings):
    from urllib.parse import quote

    from litestar.testing import TestClient

    from api.app import create_app
    from tests.support import SERVE, now_ms

    events = [{"event_id": f"b{i}", "type": "click", "user_id": u, "ts": now_ms()} for i, u in enumerate(BLANK_IDS)]
    events.append({"event_id": "ok", "type": "click", "user_id": "alice", "ts": now_ms()})
    with TestClient(app=create_app(app_settings)) as client:
        response = client.post("/v1/events", json=events, headers=SERVE)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["accepted"] == 1 and [r["index"] for r in body["rejected"]] == list(range(len(BLANK_IDS)))
        assert all("user_id" in r["reason"] and "blank" in r["reason"] for r in body["rejected"])
        for blank in BLANK_IDS:
            got = client.post("/v1/personalize", json={"user_id": blank, "slot": "headline"}, headers=SERVE)
            assert got.status_code == 400 and "blank" in got.json()["detail"], (repr(blank), got.text)
            got = client.get(f"/v1/users/{quote(blank)}/features", headers=SERVE)
            assert got.status_code == 400 and "blank" in got.json()["detail"], (repr(blank), got.text)


DEEP_BODIES = (
    b"[" * 1000 + b"]" * 1000,
    b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b"[" * 5000,
    b'{"user_id": "u", "slot": "cta", "context": ' + b"[" * 3000 + b"]" * 3000 + b"}",
)


@pytest.mark.integration
def test_deeply_nested_json_is_a_400_on_every_post_and_patch_route(app_settings):
    import re

    from litestar.testing import TestClient

    from api.app import create_app
    from tests.support import ADMIN

    app = create_app(app_settings)
    routes = sorted(
        {
            (method, re.sub(r"\{[^}]*\}", "x", route.path))
            for route in app.routes
            for method in getattr(route, "methods", ())
            if method in ("POST", "PATCH", "PUT")
        }
    )
    # events, personalize, templates (create, revise, archive), experiments (create, start, stop, allocate)
    assert len(routes) >= 9 and ("PATCH", "/v1/templates/x") in routes, routes
    with TestClient(app=app) as client:
        for method, path in routes:
            for body in DEEP_BODIES:
                got = client.request(method, path, content=body, headers=ADMIN | {"Content-Type": "application/json"})
                assert got.status_code == 400, (method, path, body[:20], got.status_code, got.text[:200])
                assert "nests too deeply" in got.json()["detail"]
            # Around the decoder's limit (where the check and the route's decoder could disagree): never a 500.
            for depth in range(850, 1100, 25):
                body = b'{"user_id": "u", "slot": "cta", "context": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
                got = client.request(method, path, content=body, headers=ADMIN | {"Content-Type": "application/json"})
                assert got.status_code < 500, (method, path, depth, got.status_code, got.text[:200])


@pytest.mark.integration
def test_a_500_is_logged_with_its_traceback_under_the_request_id_it_answers(app_settings):
    import logging

    from litestar.testing import TestClient

    from api.app import create_app
    from tests.support import SERVE

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    def broken(pseudonym):
        raise RuntimeError("the online store fell over")

    # A handler on the logger itself: Litestar's logging config replaces the root's handlers (and caplog's).
    records: list[logging.LogRecord] = []
    handler = Collect(logging.ERROR)
    logging.getLogger("tailor.api").addHandler(handler)
    try:
        with TestClient(app=create_app(app_settings)) as client:
            client.app.state.reader.features = broken
            got = client.get("/v1/users/alice/features", headers=SERVE)
            traced = client.get("/v1/users/alice/features", headers=SERVE | {"X-Request-ID": "lb-7f3a"})
    finally:
        logging.getLogger("tailor.api").removeHandler(handler)
    assert got.status_code == 500
    request_id = got.headers["x-request-id"]
    assert got.json()["request_id"] == request_id and request_id in got.json()["detail"]
    assert traced.status_code == 500 and traced.headers["x-request-id"] == "lb-7f3a"
    assert [request_id in r.getMessage() for r in records] == [True, False]
    assert "lb-7f3a" in records[1].getMessage()
    trace = logging.Formatter().formatException(records[0].exc_info)
    assert "Traceback" in trace and "the online store fell over" in trace
    assert "/v1/users/{user_id}/features" in records[0].getMessage()
    assert "alice" not in records[0].getMessage(), "a raw user id reached the log"
