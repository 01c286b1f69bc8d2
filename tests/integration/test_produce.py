"""``tailor simulate`` and ``tailor replay`` on the embedded broker: keys, bad lines, rebased times, pseudonyms."""

import json
import re
import time
import uuid

import msgspec
import pytest

from config.settings import Settings
from engine.features.events import MIN_TS_MS, decode_event, encode_event
from jobs.produce import run_replay, run_simulate
from jobs.simulator import Simulator
from tests.support import DAY_MS, KEY, SIM_START, SIM_START_MS, cli_args, now_ms, restamped

pytestmark = pytest.mark.integration

JAN_1997_MS = 852_076_800_000  # 1997-01-01T00:00:00Z


def across_2000(n=400):
    """``n`` simulated events a week apart from 1997 on (157 of 400 before 2000): (events, their times)."""
    events = list(Simulator(users=40, seed=3, start_ms=SIM_START_MS).events(n))
    times = [JAN_1997_MS + i * 7 * DAY_MS + (i % 5) * 1000 for i in range(n)]
    return events, times


# -- against the embedded Tansu broker -------------------------------------------


# `broker` is the session's Tansu broker (tests/conftest.py); each test uses its own topics.


def broker_settings(broker):
    suffix = uuid.uuid4().hex[:8]
    return Settings.of(brokers=broker.address, topic=f"events-{suffix}", dlq_topic=f"dlq-{suffix}", partitions=3)


def consume_all(settings, expected, timeout_s=20.0):
    """Read the topic from the start until ``expected`` messages came and a moment of quiet.

    Partitions are assigned, not subscribed: a consumer-group join on Tansu took
    longer than 15 s here, and these tests only need to read everything once.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.brokers,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    partitions = consumer.list_topics(settings.kafka.topic, timeout=10).topics[settings.kafka.topic].partitions
    consumer.assign([TopicPartition(settings.kafka.topic, p, 0) for p in partitions])
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
    assert run_simulate(settings, cli_args("simulate", "--events", "5000", "--users", "300", "--start", SIM_START)) == 0
    assert "5000 events" in capsys.readouterr().err
    messages = consume_all(settings, 5000)
    assert len(messages) == 5000
    events = [decode_event(m.value()) for m in messages]
    assert all(m.key() == e.user_id.encode() for m, e in zip(messages, events))
    assert len({e.event_id for e in events}) == 5000


@pytest.mark.integration
def test_replay_reports_bad_lines_and_produces_the_good_ones(broker, tmp_path, capsys):
    good = list(Simulator(users=30, seed=2, start_ms=SIM_START_MS).events(300))
    lines = [encode_event(e).decode() for e in good]
    bad_lines = {
        5: "{not json",
        40: json.dumps({"event_id": "x1", "type": "teleport", "user_id": "u1", "ts": SIM_START_MS}),
        41: json.dumps({"event_id": "x2", "type": "click", "ts": SIM_START_MS}),
    }
    for number in sorted(bad_lines):  # line numbers are 1-based
        lines.insert(number - 1, bad_lines[number])
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    settings = broker_settings(broker)

    assert run_replay(settings, cli_args("replay", str(path))) == 1  # lines were skipped
    err = capsys.readouterr().err
    assert "3 bad line" in err and "--allow-bad-lines" in err
    assert "line 5: " in err and "line 40: " in err and "$.type" in err and "line 41: " in err and "user_id" in err
    messages = consume_all(settings, len(good))
    assert sorted(decode_event(m.value()).event_id for m in messages) == sorted(e.event_id for e in good)
    assert all(m.key() == decode_event(m.value()).user_id.encode() for m in messages)

    allowed = broker_settings(broker)
    assert run_replay(allowed, cli_args("replay", str(path), "--allow-bad-lines")) == 0
    err = capsys.readouterr().err
    assert f"{len(good)} events from events.jsonl" in err and "3 bad line(s) skipped" in err
    assert "line 41: " in err and "exit status 1" not in err
    assert len(consume_all(allowed, len(good))) == len(good)


@pytest.mark.integration
def test_replay_rebase_time_lands_the_last_event_now_keeping_gaps(broker, tmp_path):
    original = list(Simulator(users=20, seed=5, start_ms=SIM_START_MS).events(200))
    path = tmp_path / "old.jsonl"
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in original))
    settings = broker_settings(broker)

    before = time.time() * 1000
    assert run_replay(settings, cli_args("replay", str(path), "--rebase-time")) == 0
    after = time.time() * 1000
    replayed = {e.event_id: e for e in (decode_event(m.value()) for m in consume_all(settings, 200))}
    assert len(replayed) == 200
    newest = max(e.ts for e in replayed.values())
    assert before - 1 <= newest <= after + 1
    shift = replayed[original[0].event_id].ts - original[0].ts
    assert all(replayed[e.event_id].ts - e.ts == shift for e in original)


@pytest.mark.integration
def test_replay_rebase_time_produces_every_event_stamped_before_2000(broker, tmp_path, capsys):
    """The bug: each line was checked against the 2000 bound before the shift, so older events were dropped."""
    events, times = across_2000()
    assert sum(ts < MIN_TS_MS for ts in times) == 157
    path = tmp_path / "years.jsonl"
    path.write_text("\n".join(restamped(events, times)) + "\n")
    settings = broker_settings(broker)

    before = time.time() * 1000
    assert run_replay(settings, cli_args("replay", str(path), "--rebase-time")) == 0
    after = time.time() * 1000
    err = capsys.readouterr().err
    assert "400 events from years.jsonl" in err and "times shifted by +" in err and "bad line" not in err
    messages = consume_all(settings, len(events))
    assert len(messages) == len(events)
    replayed = {e.event_id: e for e in (decode_event(m.value()) for m in messages)}
    assert sorted(replayed) == sorted(e.event_id for e in events)
    assert all(m.key() == replayed[decode_event(m.value()).event_id].user_id.encode() for m in messages)
    shift = replayed[events[0].event_id].ts - times[0]
    assert all(replayed[e.event_id].ts - ts == shift for e, ts in zip(events, times))  # the gaps are kept
    assert before - 1 <= times[-1] + shift <= after + 1  # the newest lands at now
    assert all(replayed[e.event_id] == msgspec.structs.replace(e, ts=ts + shift) for e, ts in zip(events, times))


@pytest.mark.integration
def test_replay_without_rebase_time_lists_events_before_2000_and_exits_1(broker, tmp_path, capsys):
    events, times = across_2000()
    path = tmp_path / "years.jsonl"
    path.write_text("\n".join(restamped(events, times)) + "\n")
    kept = sorted(e.event_id for e, ts in zip(events, times) if ts >= MIN_TS_MS)
    settings = broker_settings(broker)

    assert run_replay(settings, cli_args("replay", str(path))) == 1
    err = capsys.readouterr().err
    assert "157 bad line(s)" in err and "... and 137 more" in err and "pass --allow-bad-lines" in err
    listed = [line for line in err.splitlines() if line.startswith("  line ")]
    assert [line.split(":")[0] for line in listed] == [f"  line {n}" for n in range(1, 21)]
    assert re.fullmatch(
        f"  line 1: `ts` {times[0]} is 1997-01-01T00:00:00.000Z, before 2000: --rebase-time would "
        "shift it to 20..-..-..T..:..:..\\....Z with the rest of the file, keeping the gaps",
        listed[0],
    )
    assert all("before 2000: --rebase-time would shift it to 20" in line for line in listed)
    assert sorted(decode_event(m.value()).event_id for m in consume_all(settings, len(kept))) == kept

    allowed = broker_settings(broker)
    assert run_replay(allowed, cli_args("replay", str(path), "--allow-bad-lines")) == 0
    err = capsys.readouterr().err
    assert f"{len(kept)} events from years.jsonl" in err and "157 bad line(s) skipped" in err
    assert len(consume_all(allowed, len(kept))) == len(kept)


@pytest.mark.integration
def test_dry_run_produces_nothing(broker, tmp_path, capsys):
    from confluent_kafka.admin import AdminClient

    events, times = across_2000(100)
    path = tmp_path / "years.jsonl"
    path.write_text("\n".join(restamped(events, times)) + "\n")
    settings = broker_settings(broker)
    assert run_replay(settings, cli_args("replay", str(path), "--rebase-time", "--dry-run")) == 0
    assert json.loads(capsys.readouterr().out)["valid"] == 100
    topics = AdminClient({"bootstrap.servers": broker.address}).list_topics(timeout=10).topics
    assert settings.kafka.topic not in topics


@pytest.mark.integration
def test_replay_pseudonymize_produces_the_ids_the_api_produces(make_settings, tmp_path, capsys):
    from litestar.testing import TestClient

    from api.app import create_app

    settings = make_settings(pseudonym_key=KEY, api_keys="in=ingest", model_dir=str(tmp_path / "none"))
    raw = list(Simulator(users=12, seed=3, start_ms=SIM_START_MS).events(300))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(encode_event(e).decode() + "\n" for e in raw))
    assert run_replay(settings, cli_args("replay", str(path), "--pseudonymize")) == 0
    assert "user ids pseudonymized" in capsys.readouterr().err
    # The same raw users through the API's edge, once each, under another event id.
    firsts = {e.user_id: e for e in raw}
    with TestClient(app=create_app(settings)) as client:
        posted = [
            {**json.loads(encode_event(e)), "event_id": f"api-{e.event_id}", "ts": now_ms()} for e in firsts.values()
        ]
        r = client.post("/v1/events", json=posted, headers={"X-API-Key": "in"})
        assert r.status_code == 202 and r.json()["accepted"] == len(posted), r.text
    messages = consume_all(settings, len(raw) + len(firsts))
    events = [(m.key(), decode_event(m.value())) for m in messages]
    replayed = {e.event_id: (key, e.user_id) for key, e in events if not e.event_id.startswith("api-")}
    from_api = {e.event_id.removeprefix("api-"): (key, e.user_id) for key, e in events if e.event_id.startswith("api-")}
    assert len(replayed) == len(raw) and len(from_api) == len(firsts)
    for raw_id, event in firsts.items():
        assert replayed[event.event_id] == from_api[event.event_id]  # same key, same pseudonym
        assert replayed[event.event_id][1].startswith("p_") and raw_id not in replayed[event.event_id][1]
