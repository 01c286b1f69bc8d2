"""``tailor simulate`` and ``tailor replay``: files, pacing, bad lines, and a real broker."""

import json
import re
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import msgspec
import pytest

from cli.main import build_parser, main
from config.settings import Settings
from engine.features.events import MIN_TS_MS, decode_event, encode_event
from jobs.produce import paced, parse_start, run_replay, run_simulate, simulated_records
from jobs.simulator import Simulator

START = "2026-01-01T00:00:00Z"
START_MS = 1_767_225_600_000


def args(*argv):
    return build_parser().parse_args(list(argv))


def no_broker():
    return Settings.of(brokers="")


DAY_MS = 86_400_000
JAN_1997_MS = 852_076_800_000  # 1997-01-01T00:00:00Z


def rfc3339(ts_ms):
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restamped(events, times):
    """The events as JSON lines stamped with ``times``, every third as RFC 3339 (the Event type refuses pre-2000)."""
    lines = []
    for n, (event, ts) in enumerate(zip(events, times)):
        stamp = rfc3339(ts) if n % 3 == 0 else ts
        lines.append(json.dumps(msgspec.to_builtins(event) | {"ts": stamp}))
    return lines


def across_2000(n=400):
    """``n`` simulated events a week apart from 1997 on (157 of 400 before 2000): (events, their times)."""
    events = list(Simulator(users=40, seed=3, start_ms=START_MS).events(n))
    times = [JAN_1997_MS + i * 7 * DAY_MS + (i % 5) * 1000 for i in range(n)]
    return events, times


# -- without a broker --------------------------------------------------------


def test_simulate_writes_deterministic_jsonl(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        code = run_simulate(
            no_broker(), args("simulate", "--events", "3000", "--users", "50", "--start", START, "--out", str(out))
        )
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

    assert run_replay(settings, args("replay", str(path))) == 1  # lines were skipped
    err = capsys.readouterr().err
    assert "3 bad line" in err and "--allow-bad-lines" in err
    assert "line 5: " in err and "line 40: " in err and "$.type" in err and "line 41: " in err and "user_id" in err
    messages = consume_all(settings, len(good))
    assert sorted(decode_event(m.value()).event_id for m in messages) == sorted(e.event_id for e in good)
    assert all(m.key() == decode_event(m.value()).user_id.encode() for m in messages)

    allowed = broker_settings(broker)
    assert run_replay(allowed, args("replay", str(path), "--allow-bad-lines")) == 0
    err = capsys.readouterr().err
    assert f"{len(good)} events from events.jsonl" in err and "3 bad line(s) skipped" in err
    assert "line 41: " in err and "exit status 1" not in err
    assert len(consume_all(allowed, len(good))) == len(good)


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


@pytest.mark.integration
def test_replay_rebase_time_produces_every_event_stamped_before_2000(broker, tmp_path, capsys):
    """The bug: each line was checked against the 2000 bound before the shift, so older events were dropped."""
    events, times = across_2000()
    assert sum(ts < MIN_TS_MS for ts in times) == 157
    path = tmp_path / "years.jsonl"
    path.write_text("\n".join(restamped(events, times)) + "\n")
    settings = broker_settings(broker)

    before = time.time() * 1000
    assert run_replay(settings, args("replay", str(path), "--rebase-time")) == 0
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

    assert run_replay(settings, args("replay", str(path))) == 1
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
    assert run_replay(allowed, args("replay", str(path), "--allow-bad-lines")) == 0
    err = capsys.readouterr().err
    assert f"{len(kept)} events from years.jsonl" in err and "157 bad line(s) skipped" in err
    assert len(consume_all(allowed, len(kept))) == len(kept)


# -- tailor replay --dry-run ---------------------------------------------------------

JAN_2001_MS = 978_307_200_000  # 2001-01-01T00:00:00Z
JUN_1998_MS = 896_659_200_000  # 1998-06-01T00:00:00Z


def mixed_file(tmp_path):
    """Good lines (2001-2002), pre-2000 lines (1998-1999), bad and blank lines: (path, good, old, kinds by line)."""
    events = list(Simulator(users=8, seed=4, start_ms=START_MS).events(40))
    good = list(zip(events[10:], [JAN_2001_MS + i * 20 * DAY_MS for i in range(30)]))
    old = list(zip(events[:10], [JUN_1998_MS + i * 30 * DAY_MS for i in range(10)]))
    template = msgspec.to_builtins(events[0]) | {"type": "click"}
    rows = [("old", line) for line in restamped(*zip(*old))] + [("blank", "")]
    bad = [
        ("malformed", "{not json"),
        ("teleport", json.dumps({**template, "type": "teleport", "ts": JAN_2001_MS})),
        ("seconds", json.dumps({**template, "ts": 1_000_000_000})),  # seconds, or a 1970 time: kept out
        ("microseconds", json.dumps({**template, "ts": JAN_2001_MS * 1000})),  # year 33000: never the newest
        ("purchase", json.dumps({**template, "type": "purchase", "value": None, "ts": JUN_1998_MS})),
    ]
    good_lines = restamped(*zip(*good))
    for n, line in enumerate(good_lines):
        rows.append(("good", line))
        if n % 6 == 2:
            rows.append(bad.pop(0))
        if n == 20:
            rows.append(("blank", "   "))
    rows.append(("blank", ""))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(line for _, line in rows) + "\n")
    kinds = {n: kind for n, (kind, _) in enumerate(rows, 1)}
    return path, good, old, kinds


def dry_run(capsys, *argv):
    code = run_replay(no_broker(), args("replay", *argv, "--dry-run"))
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    return code, json.loads(out), err


KEYS = ["lines", "valid", "bad", "blank", "users", "types", "first_ts", "last_ts", "shift_ms", "bad_lines"]


def test_dry_run_reports_the_file_as_it_stands_without_a_broker(tmp_path, capsys):
    path, good, old, kinds = mixed_file(tmp_path)
    code, check, err = dry_run(capsys, str(path))
    assert code == 1
    assert "15 bad line(s)" in err and "--allow-bad-lines" in err
    assert list(check) == KEYS
    assert check | {"bad_lines": None} == {
        "lines": 48,
        "valid": 30,
        "bad": 15,
        "blank": 3,
        "users": len({e.user_id for e, _ in good}),
        "types": dict(sorted(Counter(e.type for e, _ in good).items())),
        "first_ts": "2001-01-01T00:00:00.000Z",
        "last_ts": rfc3339(good[-1][1]),
        "shift_ms": 0,
        "bad_lines": None,
    }
    listed = check["bad_lines"]
    assert [b["line"] for b in listed] == [n for n, kind in kinds.items() if kind not in ("good", "blank")]
    reasons = {kinds[b["line"]]: b["reason"] for b in listed}
    old_reasons = [b["reason"] for b in listed if kinds[b["line"]] == "old"]
    assert len(old_reasons) == 10
    assert re.fullmatch(
        "`ts` 896659200000 is 1998-06-01T00:00:00.000Z, before 2000: --rebase-time would shift it "
        "to 20..-..-..T..:..:..\\....Z with the rest of the file, keeping the gaps",
        old_reasons[0],
    )
    assert all("before 2000: --rebase-time would shift it to " in reason for reason in old_reasons)
    assert "JSON is malformed" in reasons["malformed"] and "$.type" in reasons["teleport"]
    assert reasons["seconds"] == "`ts` 1000000000 is not epoch milliseconds between 2000 and 2100"
    assert reasons["microseconds"] == f"`ts` {JAN_2001_MS * 1000} is not epoch milliseconds between 2000 and 2100"
    assert reasons["purchase"] == "a purchase needs a `value`"


def test_dry_run_with_rebase_time_judges_the_shifted_events(tmp_path, capsys):
    path, good, old, kinds = mixed_file(tmp_path)
    newest = good[-1][1]
    before = int(time.time() * 1000)
    code, check, err = dry_run(capsys, str(path), "--rebase-time")
    after = int(time.time() * 1000)
    assert code == 1 and "5 bad line(s)" in err
    shift = check["shift_ms"]
    assert before - newest <= shift <= after - newest
    assert check | {"bad_lines": None} == {
        "lines": 48,
        "valid": 40,
        "bad": 5,
        "blank": 3,
        "users": len({e.user_id for e, _ in good + old}),
        "types": dict(sorted(Counter(e.type for e, _ in good + old).items())),
        "first_ts": rfc3339(JUN_1998_MS + shift),
        "last_ts": rfc3339(newest + shift),
        "shift_ms": shift,
        "bad_lines": None,
    }
    assert before <= datetime.fromisoformat(check["last_ts"]).timestamp() * 1000 <= after
    reasons = {kinds[b["line"]]: b["reason"] for b in check["bad_lines"]}
    assert sorted(reasons) == ["malformed", "microseconds", "purchase", "seconds", "teleport"]
    assert reasons["seconds"] == (
        f"`ts` 1000000000 shifted by {shift:+} ms is {1_000_000_000 + shift}, "
        "not epoch milliseconds between 2000 and 2100"
    )
    assert reasons["purchase"] == "a purchase needs a `value`"

    code, allowed, err = dry_run(capsys, str(path), "--rebase-time", "--allow-bad-lines")
    assert code == 0 and err == ""
    assert allowed["valid"] == 40 and allowed["bad"] == 5


def test_dry_run_of_a_clean_file_exits_0_and_lists_at_most_20_bad_lines(tmp_path, capsys):
    path = tmp_path / "clean.jsonl"
    events = Simulator(users=5, seed=1, start_ms=START_MS).events(50)
    path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    code, check, err = dry_run(capsys, str(path))
    assert (code, check["valid"], check["bad"], check["bad_lines"], err) == (0, 50, 0, [], "")
    path.write_text("{}\n" * 25)
    code, check, _ = dry_run(capsys, str(path))
    assert code == 1 and check["bad"] == 25 and len(check["bad_lines"]) == 20
    assert (check["valid"], check["users"], check["types"]) == (0, 0, {})
    assert check["first_ts"] is None and check["last_ts"] is None


def test_dry_run_needs_no_tailor_brokers(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TAILOR_BROKERS", raising=False)
    path, _, _, _ = mixed_file(tmp_path)
    assert main(["replay", str(path), "--dry-run", "--rebase-time", "--allow-bad-lines"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] == 40
    assert main(["replay", str(path), "--rebase-time"]) == 2  # a real replay does need a broker
    assert "TAILOR_BROKERS" in capsys.readouterr().err


@pytest.mark.integration
def test_dry_run_produces_nothing(broker, tmp_path, capsys):
    from confluent_kafka.admin import AdminClient

    events, times = across_2000(100)
    path = tmp_path / "years.jsonl"
    path.write_text("\n".join(restamped(events, times)) + "\n")
    settings = broker_settings(broker)
    assert run_replay(settings, args("replay", str(path), "--rebase-time", "--dry-run")) == 0
    assert json.loads(capsys.readouterr().out)["valid"] == 100
    topics = AdminClient({"bootstrap.servers": broker.address}).list_topics(timeout=10).topics
    assert settings.kafka.topic not in topics


# -- user ids: as given, or pseudonymized as the API does (issue 13) ----------------------------

PSEUDONYM_KEY = "0123456789abcdef0123456789abcdef"


def test_help_says_ids_are_produced_as_given_without_pseudonymize(capsys):
    for command in ("replay", "simulate"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--pseudonymize" in text and "without it user ids are produced as given" in text, text


def test_pseudonymize_needs_the_apis_key(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_text(encode_event(next(Simulator(users=1, seed=1, start_ms=START_MS).events(1))).decode() + "\n")
    assert run_replay(no_broker(), args("replay", str(path), "--pseudonymize", "--dry-run")) == 2
    assert "TAILOR_PSEUDONYM_KEY" in capsys.readouterr().err
    assert run_simulate(no_broker(), args("simulate", "--events", "5", "--pseudonymize", "--out", "x")) == 2
    assert "TAILOR_PSEUDONYM_KEY" in capsys.readouterr().err


def test_simulate_pseudonymize_writes_the_apis_pseudonyms(tmp_path, capsys):
    from engine.privacy import Pseudonymizer

    raw, pseudo = tmp_path / "raw.jsonl", tmp_path / "pseudo.jsonl"
    settings = Settings.of(brokers="", pseudonym_key=PSEUDONYM_KEY)
    common = ("simulate", "--events", "200", "--users", "20", "--start", START)
    assert run_simulate(settings, args(*common, "--out", str(raw))) == 0
    assert "user ids as given" in capsys.readouterr().err
    assert run_simulate(settings, args(*common, "--out", str(pseudo), "--pseudonymize")) == 0
    assert "user ids pseudonymized" in capsys.readouterr().err
    given = [decode_event(line) for line in raw.read_bytes().splitlines()]
    made = [decode_event(line) for line in pseudo.read_bytes().splitlines()]
    p = Pseudonymizer(PSEUDONYM_KEY)
    assert [e.user_id for e in made] == [p.pseudonym(e.user_id) for e in given]
    assert [msgspec.structs.replace(e, user_id="") for e in made] == [
        msgspec.structs.replace(e, user_id="") for e in given
    ]


@pytest.mark.integration
def test_replay_pseudonymize_produces_the_ids_the_api_produces(make_settings, tmp_path, capsys):
    from litestar.testing import TestClient

    from api.app import create_app

    settings = make_settings(pseudonym_key=PSEUDONYM_KEY, api_keys="in=ingest", model_dir=str(tmp_path / "none"))
    raw = list(Simulator(users=12, seed=3, start_ms=START_MS).events(300))
    path = tmp_path / "events.jsonl"
    path.write_text("".join(encode_event(e).decode() + "\n" for e in raw))
    assert run_replay(settings, args("replay", str(path), "--pseudonymize")) == 0
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


def now_ms():
    return int(time.time() * 1000)
