"""The features dataflow end to end: Tansu broker -> Bytewax -> Feast (SQLite, Redis)."""

from __future__ import annotations

import json

import pytest
from bytewax.testing import run_main

from engine.features.events import Event
from flows.features import build_flow
from tests.support import dead_letters, now_ms, online_features, produce_events, produce_raw

pytestmark = pytest.mark.integration


def story(now: int) -> list[Event]:
    """Two users: one active right now, one who went quiet ten minutes ago."""
    active = [
        Event("a1", "impression", "alice", now - 50_000),
        Event("a2", "impression", "alice", now - 40_000),
        Event("a3", "click", "alice", now - 30_000, item_id="sku-1", category="shoes"),
        Event("a3", "click", "alice", now - 30_000, item_id="sku-1", category="shoes"),  # duplicate
        Event("a4", "add_to_cart", "alice", now - 20_000, item_id="sku-1", category="shoes"),
        Event("a5", "purchase", "alice", now - 10_000, item_id="sku-1", category="shoes", value=59.5),
        Event("a6", "page_view", "alice", now - 40 * 60_000, category="books"),  # 40 min late: > lateness
    ]
    idle = [Event(f"b{i}", "click", "bob", now - 10 * 60_000 - i * 1000, category="books") for i in range(3)]
    return active + idle


def assert_story_features(settings, now):
    got = online_features(settings, ["alice", "bob", "nobody"])
    alice = {k: v[0] for k, v in got.items()}
    assert alice["clicks_5m"] == 1  # duplicate counted once
    assert alice["add_to_carts_5m"] == 1 and alice["purchases_1h"] == 1
    assert alice["spend_24h"] == 59.5 and alice["lifetime_spend"] == 59.5
    assert alice["ctr_24h"] == 0.5
    assert alice["page_views_24h"] == 0 and alice["late_events"] == 1  # too late: counted, not merged
    assert alice["top_category"] == "shoes"
    assert 5 <= alice["seconds_since_last_event"] < 120
    bob = {k: v[1] for k, v in got.items()}
    assert bob["clicks_5m"] == 0  # idle ten minutes: the 5-minute window is empty at read time
    assert bob["clicks_1h"] == 3 and bob["lifetime_events"] == 3
    assert bob["seconds_since_last_event"] >= 600
    nobody = {k: v[2] for k, v in got.items()}
    assert nobody["clicks_24h"] == 0 and nobody["top_category"] is None


def test_events_become_features_read_through_feast_sqlite(make_settings):
    settings = make_settings(lateness_s=600)
    now = now_ms()
    produce_events(settings, story(now))
    run_main(build_flow(settings, tail=False))
    assert_story_features(settings, now)


def test_redis_online_store_by_one_setting(make_settings, redis_server):
    settings = make_settings(lateness_s=600, redis_url=redis_server.url)
    from store.feast import apply_definitions, open_store

    apply_definitions(open_store(settings))  # creates the Redis-side infra
    now = now_ms()
    produce_events(settings, story(now))
    run_main(build_flow(settings, tail=False))
    from feast.infra.online_stores.redis import RedisOnlineStore

    # Feast's Redis store (Tailor's subclass bounds its calls: store/redis_online.py).
    assert isinstance(open_store(settings)._get_provider().online_store, RedisOnlineStore)
    assert_story_features(settings, now)


MALFORMED = {
    "bad json": b'{"event_id": "x1", "type": "click",',
    "not an object": b"[1, 2, 3]",
    "wrong type": json.dumps({"event_id": "x2", "type": "click", "user_id": 42, "ts": 1_750_000_000_000}).encode(),
    "unknown type": json.dumps(
        {"event_id": "x3", "type": "teleport", "user_id": "u", "ts": 1_750_000_000_000}
    ).encode(),
    "missing field": json.dumps({"event_id": "x4", "type": "click", "ts": 1_750_000_000_000}).encode(),
    "huge payload": json.dumps(
        {"event_id": "x5", "type": "click", "user_id": "u", "ts": 1_750_000_000_000, "props": {"blob": "z" * 100_000}}
    ).encode(),
    "seconds not ms": json.dumps({"event_id": "x6", "type": "click", "user_id": "u", "ts": 1_750_000_000}).encode(),
    "bad timestamp": json.dumps({"event_id": "x7", "type": "click", "user_id": "u", "ts": "last tuesday"}).encode(),
    "naive timestamp": json.dumps(
        {"event_id": "x8", "type": "click", "user_id": "u", "ts": "2026-01-01T10:00:00"}
    ).encode(),
    "not utf-8": b"\xff\xfe\x00garbage",
    "empty": b"",
    "from the future": json.dumps(
        {"event_id": "x10", "type": "click", "user_id": "u", "ts": 4_000_000_000_000}
    ).encode(),
    "unknown field": json.dumps(
        {"event_id": "x9", "type": "click", "user_id": "u", "ts": 1_750_000_000_000, "colour": "red"}
    ).encode(),
}


def test_malformed_events_go_to_the_dead_letter_topic_with_reasons(make_settings):
    from engine.features.events import encode_event
    from flows.metrics import EVENTS

    dead_before = EVENTS.labels("dead_letter")._value.get()
    settings = make_settings()
    now = now_ms()
    good = [Event(f"g{i}", "click", "carol", now - i) for i in range(5)]
    records = [(b"k", payload) for payload in MALFORMED.values()]
    records[3:3] = [(e.user_id.encode(), encode_event(e)) for e in good]
    produce_raw(settings, records)
    run_main(build_flow(settings, tail=False))

    letters = dead_letters(settings, expected=len(MALFORMED))
    assert len(letters) == len(MALFORMED)
    assert all(letter["reason"] for letter in letters)
    by_payload_start = {letter["payload"][:20]: letter for letter in letters}
    huge = next(x for x in letters if x["payload_bytes"] > 16384)
    assert "exceeds the limit" in huge["reason"] and len(huge["payload"]) <= 4096
    reasons = " | ".join(x["reason"] for x in letters)
    for fragment in [
        "malformed",
        "Expected `object`",
        "Expected `str`",
        "Invalid enum value 'teleport'",
        "missing required field `user_id`",
        "epoch milliseconds",
        "time zone",
        "colour",
        "ahead of the clock",
    ]:
        assert fragment in reasons, fragment
    assert by_payload_start  # every letter carries (a prefix of) its payload
    assert online_features(settings, ["carol"])["clicks_5m"] == [5]  # the good events were not lost
    assert EVENTS.labels("dead_letter")._value.get() - dead_before == len(MALFORMED)  # and the metric says so
