"""``tailor simulate`` and ``tailor replay``: files, pacing, bad lines, and a real broker."""

import json
import time
import uuid

import pytest

from engine.events import decode_event, encode_event
from engine.settings import Settings
from engine.simulate import Simulator
from flows.cli import build_parser
from flows.produce import paced, parse_start, run_replay, run_simulate, simulated_records

START = "2026-01-01T00:00:00Z"
START_MS = 1_767_225_600_000


def args(*argv):
    return build_parser().parse_args(list(argv))


def no_broker():
    return Settings(brokers="")


# -- without a broker --------------------------------------------------------


def test_simulate_writes_deterministic_jsonl(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        code = run_simulate(no_broker(), args("simulate", "--events", "3000", "--users", "50", "--start", START,
                                              "--out", str(out)))
        assert code == 0
    lines = first.read_bytes().splitlines()
    assert len(lines) == 3000
    assert first.read_bytes() == second.read_bytes()
    events = [decode_event(line) for line in lines]
    assert events[0].ts >= START_MS
    assert events == list(Simulator(users=50, seed=7, start_ms=START_MS).events(3000))


def test_simulated_records_are_keyed_by_user():
    records = list(simulated_records(users=20, seed=1, n=500, start_ms=START_MS))
    assert len(records) == 500
    for key, value in records:
        assert decode_event(value).user_id.encode() == key


def test_paced_simulation_is_stamped_with_the_wall_clock(tmp_path):
    out = tmp_path / "live.jsonl"
    before = time.time() * 1000
    assert run_simulate(no_broker(), args("simulate", "--events", "200", "--rate", "2000", "--out", str(out))) == 0
    ts = [decode_event(line).ts for line in out.read_bytes().splitlines()]
    assert before - 1 <= ts[0] and ts[-1] <= time.time() * 1000 + 1
    assert ts == sorted(ts)


def test_simulate_without_brokers_says_what_to_do(capsys):
    assert run_simulate(no_broker(), args("simulate", "--events", "10")) == 2
    assert "TAILOR_BROKERS" in capsys.readouterr().err


def test_simulate_rejects_a_start_without_time_zone(capsys):
    assert run_simulate(no_broker(), args("simulate", "--start", "2026-01-01T00:00:00", "--out", "x")) == 2
    assert "time zone" in capsys.readouterr().err


def test_replay_of_a_missing_file_fails_clearly(tmp_path, capsys):
    assert run_replay(no_broker(), args("replay", str(tmp_path / "nope.jsonl"))) == 1
    assert "no such file" in capsys.readouterr().err


def test_parse_start():
    assert parse_start(START) == START_MS
    assert parse_start("2026-01-01T01:00:00+01:00") == START_MS
    assert parse_start(str(START_MS)) == START_MS


def test_paced_spaces_items_by_the_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    out = list(paced(range(100), rate=50, clock=lambda: now[0], sleep=sleep))
    assert out == list(range(100))
    assert now[0] == pytest.approx(99 / 50)
    assert list(paced(range(5), rate=0)) == list(range(5))


# -- against the embedded Tansu broker -------------------------------------------


# `broker` is the session's Tansu broker (tests/conftest.py); each test uses its own topics.


def broker_settings(broker):
    suffix = uuid.uuid4().hex[:8]
    return Settings(brokers=broker.address, topic=f"events-{suffix}", dlq_topic=f"dlq-{suffix}", partitions=3)


def consume_all(settings, expected, timeout_s=20.0):
    """Read the topic from the start until ``expected`` messages came and a moment of quiet.

    Partitions are assigned, not subscribed: a consumer-group join on Tansu took
    longer than 15 s here, and these tests only need to read everything once.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.brokers, "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    partitions = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
    consumer.assign([TopicPartition(settings.topic, p, 0) for p in partitions])
    messages = []
    deadline = time.monotonic() + timeout_s
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, timeout=0.5)
            messages.extend(m for m in batch if m.error() is None)
            if len(messages) >= expected:
                # Keep listening briefly: more than expected must show up as a failure.
                quiet_until = quiet_until or time.monotonic() + 1.0
                if time.monotonic() > quiet_until:
                    break
    finally:
        consumer.close()
    return messages


@pytest.mark.integration
def test_simulate_produces_events_keyed_by_user(broker, capsys):
    settings = broker_settings(broker)
    assert run_simulate(settings, args("simulate", "--events", "5000", "--users", "300", "--start", START)) == 0
    assert "5000 events" in capsys.readouterr().err
    messages = consume_all(settings, 5000)
    assert len(messages) == 5000
    events = [decode_event(m.value()) for m in messages]
    assert all(m.key() == e.user_id.encode() for m, e in zip(messages, events))
    assert len({e.event_id for e in events}) == 5000


@pytest.mark.integration
def test_replay_reports_bad_lines_and_produces_the_good_ones(broker, tmp_path, capsys):
    good = list(Simulator(users=30, seed=2, start_ms=START_MS).events(300))
    lines = [encode_event(e).decode() for e in good]
    bad_lines = {
        5: "{not json",
        40: json.dumps({"event_id": "x1", "type": "teleport", "user_id": "u1", "ts": START_MS}),
        41: json.dumps({"event_id": "x2", "type": "click", "ts": START_MS}),
    }
    for number in sorted(bad_lines):  # line numbers are 1-based
        lines.insert(number - 1, bad_lines[number])
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = broker_settings(broker)

    assert run_replay(settings, args("replay", str(path))) == 0
    err = capsys.readouterr().err
    assert "3 bad line" in err
    assert "line 5: " in err and "line 40: " in err and "$.type" in err and "line 41: " in err and "user_id" in err
    messages = consume_all(settings, len(good))
    assert sorted(decode_event(m.value()).event_id for m in messages) == sorted(e.event_id for e in good)
    assert all(m.key() == decode_event(m.value()).user_id.encode() for m in messages)


@pytest.mark.integration
def test_replay_rebase_time_lands_the_last_event_now_keeping_gaps(broker, tmp_path):
    original = list(Simulator(users=20, seed=5, start_ms=START_MS).events(200))
    path = tmp_path / "old.jsonl"
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in original))
    settings = broker_settings(broker)

    before = time.time() * 1000
    assert run_replay(settings, args("replay", str(path), "--rebase-time")) == 0
    after = time.time() * 1000
    replayed = {e.event_id: e for e in (decode_event(m.value()) for m in consume_all(settings, 200))}
    assert len(replayed) == 200
    newest = max(e.ts for e in replayed.values())
    assert before - 1 <= newest <= after + 1
    shift = replayed[original[0].event_id].ts - original[0].ts
    assert all(replayed[e.event_id].ts - e.ts == shift for e in original)
