"""The event decoder: precise reasons, and nothing but InvalidEvent on bad bytes."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.features.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    Event,
    InvalidEvent,
    decode_event,
    decode_shifted_event,
    encode_event,
    unbounded_event_time,
)

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


# -- the lenient gate of a shifting replay (tailor replay --rebase-time) --------

YEAR_MS = 365 * 86_400_000
OLD = {**GOOD, "ts": 820_454_400_000}  # 1996-01-01T00:00:00Z, before the 2000 bound


def test_a_shift_brings_an_event_before_2000_into_range():
    data = json.dumps(OLD).encode()
    with pytest.raises(InvalidEvent, match="between 2000 and 2100"):
        decode_event(data)
    event = decode_shifted_event(data, 30 * YEAR_MS)
    assert event.ts == OLD["ts"] + 30 * YEAR_MS
    assert type(event) is Event
    assert event == decode_event(json.dumps({**OLD, "ts": event.ts}).encode())


def test_a_shifted_rfc3339_time_is_epoch_ms():
    data = json.dumps({**OLD, "ts": "1996-01-01T01:00:00+01:00"}).encode()
    assert decode_shifted_event(data, YEAR_MS * 10).ts == OLD["ts"] + YEAR_MS * 10


def test_the_bound_is_checked_after_the_shift():
    in_range = json.dumps(GOOD).encode()
    with pytest.raises(InvalidEvent) as info:
        decode_shifted_event(in_range, -30 * YEAR_MS)
    assert info.value.reason == (
        f"`ts` {GOOD['ts']} shifted by {-30 * YEAR_MS} ms is {GOOD['ts'] - 30 * YEAR_MS}, "
        "not epoch milliseconds between 2000 and 2100"
    )
    with pytest.raises(InvalidEvent, match="shifted by \\+1 ms"):
        decode_shifted_event(json.dumps({**GOOD, "ts": MAX_TS_MS - 1}).encode(), 1)
    assert decode_shifted_event(json.dumps({**GOOD, "ts": MIN_TS_MS - 1}).encode(), 1).ts == MIN_TS_MS


def test_shift_zero_judges_like_the_plain_gate():
    data = json.dumps(GOOD).encode()
    assert decode_shifted_event(data, 0) == decode_event(data)
    with pytest.raises(InvalidEvent, match="between 2000 and 2100"):
        decode_shifted_event(json.dumps(OLD).encode(), 0)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "malformed"),
        (json.dumps({**OLD, "type": "teleport"}).encode(), "$.type"),
        (json.dumps({k: v for k, v in OLD.items() if k != "user_id"}).encode(), "user_id"),
        (json.dumps({**OLD, "value": -1}).encode(), "$.value"),
        (json.dumps({**OLD, "ts": "yesterday"}).encode(), "$.ts"),
        (json.dumps({**OLD, "ts": "1996-01-01T00:00:00"}).encode(), "time zone"),
        (json.dumps({**OLD, "colour": "red"}).encode(), "colour"),
        (json.dumps({**OLD, "props": {"x": "y" * (MAX_EVENT_BYTES + 1)}}).encode(), "exceeds the limit"),
        (json.dumps({**OLD, "value": None}).encode(), "purchase needs"),
        (None, "empty"),
    ],
)
def test_every_other_check_still_applies_to_a_shifted_event(payload, reason):
    """Only the time bound waits for the shift; an event stamped before 2000 is checked for the rest."""
    for judge in (lambda: decode_shifted_event(payload, 30 * YEAR_MS), lambda: unbounded_event_time(payload)):
        with pytest.raises(InvalidEvent) as info:
            judge()
        assert reason in info.value.reason


def test_unbounded_event_time_reads_times_outside_the_bound():
    assert unbounded_event_time(json.dumps(OLD).encode()) == OLD["ts"]
    assert unbounded_event_time(json.dumps({**OLD, "ts": "1969-12-31T23:59:59Z"}).encode()) == -1000
    assert unbounded_event_time(json.dumps({**GOOD, "ts": MAX_TS_MS}).encode()) == MAX_TS_MS
    assert unbounded_event_time(json.dumps(GOOD).encode()) == GOOD["ts"]


events_at_any_time = st.fixed_dictionaries(
    {
        "event_id": st.just("e1"),
        "type": st.sampled_from([t for t in EVENT_TYPES if t != "consent"]),  # a consent event needs props
        "user_id": st.just("u1"),
        "ts": st.integers(min_value=-(10**13), max_value=10**13),
    },
    optional={"value": st.none() | st.floats(min_value=0, max_value=1e9), "item_id": st.just("i1")},
)


@settings(max_examples=1000, deadline=None)
@given(events_at_any_time, st.integers(min_value=-200 * YEAR_MS, max_value=200 * YEAR_MS))
def test_a_shifted_event_is_valid_exactly_when_its_shifted_time_is(obj, shift_ms):
    data = json.dumps(obj).encode()
    in_range = MIN_TS_MS <= obj["ts"] + shift_ms < MAX_TS_MS
    valid_otherwise = obj["type"] != "purchase" or obj.get("value") is not None
    try:
        event = decode_shifted_event(data, shift_ms)
    except InvalidEvent as exc:
        assert not (in_range and valid_otherwise), exc.reason
        assert ("shifted by" in exc.reason) == valid_otherwise
        return
    assert in_range and valid_otherwise
    assert event.ts == obj["ts"] + shift_ms == unbounded_event_time(data) + shift_ms
    assert decode_event(encode_event(event)) == event  # what a replay produces passes the plain gate


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=512), st.integers())
def test_arbitrary_bytes_shifted_raise_only_invalid_event(data, shift_ms):
    try:
        assert isinstance(decode_shifted_event(data, shift_ms), Event)
    except InvalidEvent:
        pass
