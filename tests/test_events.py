"""The event decoder: precise reasons, and nothing but InvalidEvent on bad bytes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.events import MAX_EVENT_BYTES, Event, InvalidEvent, decode_event, encode_event

GOOD = {"event_id": "e1", "type": "purchase", "user_id": "u1", "ts": 1_750_000_000_000, "value": 9.5}


def test_round_trip():
    event = decode_event(json.dumps(GOOD).encode())
    assert decode_event(encode_event(event)) == event


def test_rfc3339_time_becomes_epoch_ms():
    event = decode_event(json.dumps({**GOOD, "ts": "2025-06-15T16:26:40+00:00"}).encode())
    assert event.ts == 1_750_004_800_000


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed"),
        (json.dumps({**GOOD, "type": "teleport"}).encode(), "$.type"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "user_id"),
        (json.dumps({**GOOD, "value": "ten"}).encode(), "$.value"),
        (json.dumps({**GOOD, "ts": 1_750_000_000}).encode(), "epoch milliseconds"),
        (json.dumps({**GOOD, "ts": "yesterday"}).encode(), "$.ts"),
        (json.dumps({**GOOD, "ts": "2025-06-15T16:26:40"}).encode(), "time zone"),
        (json.dumps({**GOOD, "colour": "red"}).encode(), "colour"),
        (json.dumps({**GOOD, "value": -1}).encode(), "$.value"),
        (json.dumps({**GOOD, "props": {"x": "y" * (MAX_EVENT_BYTES + 1)}}).encode(), "exceeds the limit"),
        (json.dumps({**GOOD, "type": "purchase", "value": None}).encode(), "purchase needs"),
        (None, "empty"),
    ],
)
def test_rejections_say_why(payload, reason):
    with pytest.raises(InvalidEvent, match=None) as info:
        decode_event(payload)
    assert reason in info.value.reason


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_invalid_event(data):
    try:
        assert isinstance(decode_event(data), Event)
    except InvalidEvent:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=1000, deadline=None)
@given(st.fixed_dictionaries({}, optional={k: json_values for k in [*GOOD, "item_id", "props", "category"]}))
def test_arbitrary_json_objects_raise_only_invalid_event(obj):
    try:
        decode_event(json.dumps(obj).encode())
    except InvalidEvent:
        pass
