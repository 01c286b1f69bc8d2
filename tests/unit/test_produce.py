"""``tailor simulate`` and ``tailor replay`` without a broker: files, pacing, bad lines, the dry run, pseudonyms."""

import json
import re
import time
from collections import Counter
from datetime import datetime

import msgspec
import pytest

from cli.main import build_parser, main
from config.settings import Settings
from engine.features.events import decode_event, encode_event
from jobs.produce import paced, parse_start, run_replay, run_simulate, simulated_records
from jobs.simulator import Simulator
from tests.support import DAY_MS, KEY, SIM_START, SIM_START_MS, cli_args, restamped, rfc3339


def no_broker():
    return Settings.of(brokers="")


# -- without a broker --------------------------------------------------------


def test_simulate_writes_deterministic_jsonl(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (first, second):
        code = run_simulate(
            no_broker(),
            cli_args("simulate", "--events", "3000", "--users", "50", "--start", SIM_START, "--out", str(out)),
        )
        assert code == 0
    lines = first.read_bytes().splitlines()
    assert len(lines) == 3000
    assert first.read_bytes() == second.read_bytes()
    events = [decode_event(line) for line in lines]
    assert events[0].ts >= SIM_START_MS
    assert events == list(Simulator(users=50, seed=7, start_ms=SIM_START_MS).events(3000))


def test_simulated_records_are_keyed_by_user():
    records = list(simulated_records(users=20, seed=1, n=500, start_ms=SIM_START_MS))
    assert len(records) == 500
    for key, value in records:
        assert decode_event(value).user_id.encode() == key


def test_paced_simulation_is_stamped_with_the_wall_clock(tmp_path):
    out = tmp_path / "live.jsonl"
    before = time.time() * 1000
    assert run_simulate(no_broker(), cli_args("simulate", "--events", "200", "--rate", "2000", "--out", str(out))) == 0
    ts = [decode_event(line).ts for line in out.read_bytes().splitlines()]
    assert before - 1 <= ts[0] and ts[-1] <= time.time() * 1000 + 1
    assert ts == sorted(ts)


def test_simulate_without_brokers_says_what_to_do(capsys):
    assert run_simulate(no_broker(), cli_args("simulate", "--events", "10")) == 2
    assert "TAILOR_BROKERS" in capsys.readouterr().err


def test_simulate_rejects_a_start_without_time_zone(capsys):
    assert run_simulate(no_broker(), cli_args("simulate", "--start", "2026-01-01T00:00:00", "--out", "x")) == 2
    assert "time zone" in capsys.readouterr().err


def test_replay_of_a_missing_file_fails_clearly(tmp_path, capsys):
    assert run_replay(no_broker(), cli_args("replay", str(tmp_path / "nope.jsonl"))) == 1
    assert "no such file" in capsys.readouterr().err


def test_parse_start():
    assert parse_start(SIM_START) == SIM_START_MS
    assert parse_start("2026-01-01T01:00:00+01:00") == SIM_START_MS
    assert parse_start(str(SIM_START_MS)) == SIM_START_MS


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


# -- tailor replay --dry-run ---------------------------------------------------------

JAN_2001_MS = 978_307_200_000  # 2001-01-01T00:00:00Z
JUN_1998_MS = 896_659_200_000  # 1998-06-01T00:00:00Z


def mixed_file(tmp_path):
    """Good lines (2001-2002), pre-2000 lines (1998-1999), bad and blank lines: (path, good, old, kinds by line)."""
    events = list(Simulator(users=8, seed=4, start_ms=SIM_START_MS).events(40))
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
    code = run_replay(no_broker(), cli_args("replay", *argv, "--dry-run"))
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
    events = Simulator(users=5, seed=1, start_ms=SIM_START_MS).events(50)
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


# -- user ids: as given, or pseudonymized as the API does (issue 13) ----------------------------


def test_help_says_ids_are_produced_as_given_without_pseudonymize(capsys):
    for command in ("replay", "simulate"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--pseudonymize" in text and "without it user ids are produced as given" in text, text


def test_pseudonymize_needs_the_apis_key(tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    path.write_text(encode_event(next(Simulator(users=1, seed=1, start_ms=SIM_START_MS).events(1))).decode() + "\n")
    assert run_replay(no_broker(), cli_args("replay", str(path), "--pseudonymize", "--dry-run")) == 2
    assert "TAILOR_PSEUDONYM_KEY" in capsys.readouterr().err
    assert run_simulate(no_broker(), cli_args("simulate", "--events", "5", "--pseudonymize", "--out", "x")) == 2
    assert "TAILOR_PSEUDONYM_KEY" in capsys.readouterr().err


def test_simulate_pseudonymize_writes_the_apis_pseudonyms(tmp_path, capsys):
    from engine.privacy import Pseudonymizer

    raw, pseudo = tmp_path / "raw.jsonl", tmp_path / "pseudo.jsonl"
    settings = Settings.of(brokers="", pseudonym_key=KEY)
    common = ("simulate", "--events", "200", "--users", "20", "--start", SIM_START)
    assert run_simulate(settings, cli_args(*common, "--out", str(raw))) == 0
    assert "user ids as given" in capsys.readouterr().err
    assert run_simulate(settings, cli_args(*common, "--out", str(pseudo), "--pseudonymize")) == 0
    assert "user ids pseudonymized" in capsys.readouterr().err
    given = [decode_event(line) for line in raw.read_bytes().splitlines()]
    made = [decode_event(line) for line in pseudo.read_bytes().splitlines()]
    p = Pseudonymizer(KEY)
    assert [e.user_id for e in made] == [p.pseudonym(e.user_id) for e in given]
    assert [msgspec.structs.replace(e, user_id="") for e in made] == [
        msgspec.structs.replace(e, user_id="") for e in given
    ]
