"""The event contract: what a user did, when, as it travels through Kafka.

Events are JSON on the wire and `Event` structs in code. `decode_event` is the
single gate every byte string passes through: it returns an `Event` or raises
`InvalidEvent` with a one-line reason, and nothing else. A replay that shifts a
file's times (``tailor replay --rebase-time``) passes through
`decode_shifted_event` instead, which judges each event as it will be produced.

Examples
--------
>>> e = decode_event(b'{"event_id": "e1", "type": "click", "user_id": "u1", "ts": 1700000000000}')
>>> e.type, e.ts
('click', 1700000000000)
>>> decode_event(b'{"event_id": "e1", "type": "clik", "user_id": "u1", "ts": 1}')
Traceback (most recent call last):
...
engine.features.events.InvalidEvent: Invalid enum value 'clik' - at `$.type`
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

import msgspec

from engine.privacy import consent_change

EventType = Literal[
    "page_view",
    "click",
    "add_to_cart",
    "purchase",
    "email_open",
    "email_click",
    "app_open",
    "impression",
    "conversion",
    # A consent decision, written by the API (`PUT /v1/users/{id}/consent`) into the same
    # topic as the user's events, under the same key, so the flow applies it in order with them.
    "consent",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

#: Payloads above this many bytes are rejected before parsing.
MAX_EVENT_BYTES = 16 * 1024

# Event times outside [2000-01-01, 2100-01-01) are almost always seconds sent
# as milliseconds (or the reverse) and would poison windows for years.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Label = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Money = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
PropValue = str | int | float | bool
Props = Annotated[dict[Label, PropValue], msgspec.Meta(max_length=32)]


class InvalidEvent(ValueError):
    """An event that cannot enter the pipeline; `reason` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _TimeOutOfBounds(ValueError):
    """An event time outside [2000, 2100): the one check a replay's shift can change."""


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Event(Base, frozen=True):
    """One thing a (pseudonymous) user did.

    `ts` accepts epoch milliseconds or an RFC 3339 string with a time zone and
    is always epoch milliseconds (UTC) once decoded.
    """

    event_id: Id
    type: EventType
    user_id: Id
    ts: int | datetime
    item_id: Id | None = None
    category: Label | None = None
    value: Money | None = None
    experiment: Label | None = None
    variant: Label | None = None
    props: Props | None = None

    def __post_init__(self) -> None:
        ts = self.ts
        if isinstance(ts, datetime):
            if ts.tzinfo is None:
                raise ValueError("`ts` needs a time zone, e.g. 2026-01-01T12:00:00Z")
            ts = int(ts.timestamp() * 1000)
            msgspec.structs.force_setattr(self, "ts", ts)
        if self.value is not None and not math.isfinite(self.value):
            raise ValueError("`value` must be a finite number")
        if self.type == "purchase" and self.value is None:
            raise ValueError("a purchase needs a `value`")
        if self.type == "consent":
            consent_change(self.props)  # raises ValueError saying what is wrong
        # Last: `_UnboundedEvent` ignores this one error and so knows every other check passed.
        if not MIN_TS_MS <= ts < MAX_TS_MS:
            raise _TimeOutOfBounds(f"`ts` {ts} is not epoch milliseconds between 2000 and 2100")


class _UnboundedEvent(Event, frozen=True):
    """An `Event` checked in every respect but the 2000-2100 bound: a replay shifts its time first."""

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except _TimeOutOfBounds:
            pass


_decoder = msgspec.json.Decoder(Event)
_unbounded_decoder = msgspec.json.Decoder(_UnboundedEvent)
_encoder = msgspec.json.Encoder()


def decode_event(data: bytes | bytearray | memoryview | str | None) -> Event:
    """Parse and validate one JSON event, or raise `InvalidEvent` saying why."""
    if data is None:
        raise InvalidEvent("empty message: no value")
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"payload of {len(data)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidEvent(str(exc)) from None


def decode_shifted_event(data: bytes | bytearray | memoryview | str | None, shift_ms: int) -> Event:
    """`decode_event` for an event whose time moves by ``shift_ms`` (a replay's ``--rebase-time``).

    The event must pass every check but the time bound as it stands; then its
    shifted time gets every check of `Event`, the 2000-2100 bound included.
    What comes out is the event as it will be produced, and `decode_event`
    accepts it. ``shift_ms=0`` judges like `decode_event`.

    >>> old = b'{"event_id": "e1", "type": "click", "user_id": "u1", "ts": "1996-06-01T00:00:00Z"}'
    >>> decode_shifted_event(old, shift_ms=10 * 365 * 86_400_000).ts  # 2006-05-30
    1148947200000
    >>> decode_shifted_event(old, shift_ms=0)
    Traceback (most recent call last):
    ...
    engine.features.events.InvalidEvent: `ts` 833587200000 shifted by +0 ms is 833587200000, not epoch milliseconds between 2000 and 2100
    """
    event = _decode_unbounded(data)
    ts = event.ts + shift_ms
    try:
        return Event(**(msgspec.structs.asdict(event) | {"ts": ts}))
    except _TimeOutOfBounds:
        raise InvalidEvent(
            f"`ts` {event.ts} shifted by {shift_ms:+} ms is {ts}, not epoch milliseconds between 2000 and 2100"
        ) from None
    except ValueError as exc:  # not reached: the shift changes the time only
        raise InvalidEvent(str(exc)) from None


def unbounded_event_time(data: bytes | bytearray | memoryview | str | None) -> int:
    """The time (epoch ms) of an event that passes every check but the 2000-2100 bound.

    A replay reads it to find the newest event before it shifts the file;
    anything else wrong raises `InvalidEvent`, as in `decode_event`.

    >>> unbounded_event_time(b'{"event_id": "e1", "type": "click", "user_id": "u1", "ts": "1996-06-01T00:00:00Z"}')
    833587200000
    """
    return _decode_unbounded(data).ts


def _decode_unbounded(data: bytes | bytearray | memoryview | str | None) -> _UnboundedEvent:
    # `decode_event`'s steps with the unbounded decoder; not shared with it, since a
    # call more costs every message on the plain path about 4% (measured).
    if data is None:
        raise InvalidEvent("empty message: no value")
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"payload of {len(data)} bytes exceeds the limit of {MAX_EVENT_BYTES}")
    try:
        return _unbounded_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, OverflowError) as exc:
        raise InvalidEvent(str(exc)) from None


def check_not_ahead(event: Event, now_ms: int, max_ahead_ms: int) -> Event:
    """Reject an event stamped further in the future than clocks can disagree.

    One bogus future time would make every later event of that user look late.

    >>> e = Event("e1", "click", "u1", 1_700_000_600_000)
    >>> check_not_ahead(e, now_ms=1_700_000_000_000, max_ahead_ms=300_000)
    Traceback (most recent call last):
    ...
    engine.features.events.InvalidEvent: `ts` is 600 s ahead of the clock (limit 300 s): check the producer's clock
    """
    ahead_ms = event.ts - now_ms
    if ahead_ms > max_ahead_ms:
        raise InvalidEvent(
            f"`ts` is {ahead_ms / 1000:.0f} s ahead of the clock (limit {max_ahead_ms / 1000:.0f} s): "
            "check the producer's clock"
        )
    return event


def encode_event(event: Event) -> bytes:
    """Encode an event as compact JSON (epoch-millisecond `ts`)."""
    return _encoder.encode(event)


def ts_to_datetime(ts_ms: int) -> datetime:
    """Epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
