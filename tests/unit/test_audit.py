"""The hash-chained audit log: the chain, what `verify` catches, the stores' appends that never fork, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
import uuid

import msgspec
import pytest

from cli.main import main
from engine.audit import GENESIS, AuditRecord, Broken, chain, fingerprint, parse_time, record_hash, verify
from store.audit import AuditUnavailable, RedisAuditLog, SQLiteAuditLog
from store.redis_guard import redis_client
from tests.support import ROOT

TS = "2026-03-02T09:00:00.000Z"


def three() -> list[AuditRecord]:
    a = chain(None, "cli", "template.create", "cta-soft", {"version": 1}, ts=TS)
    b = chain(a, fingerprint("ops-key"), "experiment.start", "hero", {"slots": ["headline"]}, ts=TS)
    return [a, b, chain(b, "system", "model.swap", "v2", {"from": "v1"}, ts=TS)]


# -- the chain --------------------------------------------------------------------------------------------


def test_chain_links_each_record_to_the_one_before_and_hashes_every_other_field():
    a, b, c = three()
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    assert a.prev_hash == GENESIS and b.prev_hash == a.hash and c.prev_hash == b.hash
    assert all(r.hash == record_hash(r) and len(r.hash) == 64 for r in (a, b, c))
    assert b.actor == fingerprint("ops-key") == hashlib.sha256(b"ops-key").hexdigest()[:8]
    assert verify([a, b, c]) is None and verify([]) is None
    # Every field is covered, prev_hash included.
    for change in ({"ts": "2026-03-02T09:00:01.000Z"}, {"actor": "cli"}, {"action": "model.promote"},
                   {"target": "x"}, {"detail": {"slots": []}}, {"prev_hash": GENESIS}, {"seq": 7}):  # fmt: skip
        assert record_hash(msgspec.structs.replace(b, **change)) != b.hash, change


def test_detail_is_stored_as_hashed_and_bad_actors_actions_and_details_are_refused():
    r = chain(None, "cli", "experiment.reallocate", "hero", {"weights": {"b": 2, "a": 0.5}, "nan": float("nan")}, ts=TS)
    assert r.detail == {"weights": {"b": 2, "a": 0.5}, "nan": None}  # what JSON keeps is what was hashed
    assert msgspec.json.decode(msgspec.json.encode(r), type=AuditRecord) == r
    with pytest.raises(ValueError, match="fingerprint"):
        chain(None, "my-secret-api-key", "template.create", "t", ts=TS)  # a raw key never lands in the log
    with pytest.raises(ValueError, match="<resource>.<verb>"):
        chain(None, "cli", "DROP TABLE", "t", ts=TS)
    with pytest.raises(ValueError, match="at most"):
        chain(None, "cli", "template.create", "t", {"blob": "x" * 20_000}, ts=TS)


def test_verify_finds_an_edited_a_dropped_a_moved_and_a_replaced_record():
    a, b, c = three()
    assert verify([a, msgspec.structs.replace(b, target="other"), c]) == Broken(
        2, "its hash does not match its contents: the record was edited"
    )
    assert verify([a, c]).seq == 3 and "record 2 is missing" in verify([a, c]).reason
    assert verify([b, c]).seq == 2 and "record 1 is missing" in verify([b, c]).reason
    assert verify([a, c, b]).seq == 3 and "out of order" in verify([a, c, b]).reason
    assert verify([a, b], appended=3) == Broken(
        3, "the log ends at record 2 but 3 were appended: the records after it were dropped"
    )
    # Record 2 replaced by a well-formed record of another chain: its hash holds, its link does not.
    forged = chain(chain(None, "cli", "template.create", "x", ts=TS), "cli", "template.archive", "x", ts=TS)
    assert verify([a, forged, c]).seq == 2 and "prev_hash" in verify([a, forged, c]).reason


def test_parse_time_reads_rfc3339_and_epoch_ms_and_refuses_the_rest():
    assert parse_time("2026-03-02T09:00:00Z") == TS == parse_time("1772442000000")
    for bad in ("2026-03-02T09:00:00", "tomorrow", "", "99999999999999999999"):
        with pytest.raises(ValueError, match="RFC 3339"):
            parse_time(bad)


# -- the SQLite store -------------------------------------------------------------------------------------


def test_sqlite_log_appends_filters_and_pages(tmp_path):
    log = SQLiteAuditLog(tmp_path / "audit.db")
    try:
        log.append("cli", "template.create", "a", {"version": 1})
        log.append(fingerprint("k"), "template.update", "a", {"version": 2})
        log.append(fingerprint("k"), "experiment.start", "hero")
        assert [r.seq for r in log.records(actor=fingerprint("k"))] == [2, 3]
        assert [r.seq for r in log.records(target="a", action="template.update")] == [2]
        assert [r.seq for r in log.records(after_seq=1, limit=1)] == [2]
        assert (
            log.records(since="2999-01-01T00:00:00.000Z") == []
            and len(log.records(until="2999-01-01T00:00:00.000Z")) == 3
        )
        assert log.verify() == (3, None)
    finally:
        log.close()


def test_two_threads_on_two_store_instances_of_one_file_never_fork_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    logs = [SQLiteAuditLog(path), SQLiteAuditLog(path)]

    def append(log, n: int) -> None:
        for i in range(60):
            log.append("system", "experiment.update", f"t{n}-{i}")

    threads = [threading.Thread(target=append, args=(log, n)) for n, log in enumerate(logs * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        records = logs[0].all()
        assert [r.seq for r in records] == list(range(1, 241))
        assert logs[1].verify() == (240, None)
    finally:
        for log in logs:
            log.close()


def test_two_processes_on_one_file_never_fork_the_chain(tmp_path):
    path = tmp_path / "audit.db"
    script = (
        "import sys; from store.audit import SQLiteAuditLog; log = SQLiteAuditLog(sys.argv[1])\n"
        "for i in range(40): log.append('cli', 'template.update', sys.argv[2] + str(i))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}-"], cwd=ROOT) for n in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    log = SQLiteAuditLog(path)
    try:
        assert log.verify() == (80, None)
        assert {r.target[:3] for r in log.all()} == {"p0-", "p1-"}
    finally:
        log.close()


def test_a_log_that_cannot_be_written_is_a_503_error_not_a_crash(tmp_path):
    blocked = SQLiteAuditLog(tmp_path / "audit.db")
    holder = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    blocked._db.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(AuditUnavailable, match="cannot be used"):
            blocked.check()
        with pytest.raises(AuditUnavailable):
            blocked.append("cli", "template.create", "b")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert blocked.verify() == (0, None)  # nothing half-written
    blocked.close()


# -- tampering with the file, seen by `tailor audit verify` -----------------------------------------------


@pytest.fixture
def audit_db(tmp_path, monkeypatch):
    monkeypatch.delenv("TAILOR_REDIS_URL", raising=False)
    path = tmp_path / "audit.db"
    monkeypatch.setenv("TAILOR_AUDIT_DB", str(path))
    log = SQLiteAuditLog(path)
    for n in range(5):
        log.append("cli" if n % 2 else fingerprint("ops"), "template.update", f"t{n}", {"version": n + 1})
    log.close()
    return path


def tamper(path, sql: str) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(sql)
    db.close()


def test_tailor_audit_verify_passes_an_intact_log(audit_db, capsys):
    assert main(["audit", "verify"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"ok": True, "records": 5, "first_broken": None}
    assert "intact, 5 records" in out.err


def test_tailor_audit_verify_finds_an_edited_record(audit_db, capsys):
    tamper(audit_db, "UPDATE audit_log SET target = 'someone-else' WHERE seq = 3")
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr()
    assert json.loads(out.out)["first_broken"] == {
        "seq": 3,
        "reason": "its hash does not match its contents: the record was edited",
    }
    assert "breaks at record 3" in out.err


def test_tailor_audit_verify_finds_a_dropped_record_in_a_subprocess(audit_db):
    tamper(audit_db, "DELETE FROM audit_log WHERE seq = 2")
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "audit", "verify"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    broken = json.loads(done.stdout)["first_broken"]
    assert broken["seq"] == 3 and "record 2 is missing" in broken["reason"]
    assert "breaks at record 3" in done.stderr


def test_tailor_audit_verify_finds_records_dropped_from_the_end_and_unreadable_ones(audit_db, capsys):
    tamper(audit_db, "DELETE FROM audit_log WHERE seq = 5")
    assert main(["audit", "verify"]) == 1
    assert json.loads(capsys.readouterr().out)["first_broken"]["seq"] == 5
    tamper(audit_db, "UPDATE audit_log SET detail = 'not json' WHERE seq = 4")
    assert main(["audit", "verify"]) == 1
    assert json.loads(capsys.readouterr().out)["first_broken"]["seq"] == 4


def test_tailor_audit_list_prints_json_lines_and_refuses_bad_filters(audit_db, capsys):
    assert main(["audit", "list", "--action", "template.update", "--limit", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in lines] == [1, 2] and lines[0]["actor"] == fingerprint("ops")
    assert main(["audit", "list", "--actor", "cli"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [2, 4]
    assert main(["audit", "list", "--since", "last tuesday"]) == 2
    assert "RFC 3339" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["audit", "list", "--limit", "0"])
    assert usage.value.code == 2


# -- the model swap ----------------------------------------------------------------------------------------


class FakeWriter:
    def __init__(self):
        self.current = None
        self.model_version = None

    def serve(self, model) -> None:
        self.current, self.model_version = model, model.version


def model_dir(folder, version: str):
    from models.serve.manifest import Manifest, write_manifest

    folder.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json"):
        (folder / name).write_text("")
    manifest = Manifest(
        version=version, base="scratch", corpus_hash="", eos_token_id=0, pad_token_id=0, vocab_size=1, prompt_format=2
    )
    write_manifest(folder, manifest)
    return folder


def test_a_model_swap_is_audited_first_and_waits_while_the_log_cannot_be_written(tmp_path):
    from api.model_swap import ModelWatcher

    served = tmp_path / "served"
    served.symlink_to(model_dir(tmp_path / "v1", "v1"))
    log = SQLiteAuditLog(tmp_path / "audit.db")
    writer = FakeWriter()
    watcher = ModelWatcher(served, writer, log)
    real_append = log.append

    def failing(*args):
        raise AuditUnavailable("the audit log is down")

    log.append = failing
    assert asyncio.run(watcher.check()) is False and writer.model_version is None  # not swapped unaudited
    log.append = real_append
    assert asyncio.run(watcher.check()) is True and writer.model_version == "v1"
    [record] = log.all()
    assert (record.actor, record.action, record.target, record.detail["from"]) == ("system", "model.swap", "v1", None)
    log.close()


# -- the Redis store ---------------------------------------------------------------------------------------


@pytest.fixture
def redis_log(request):
    url = request.getfixturevalue("redis_server").url
    prefix = f"test-{uuid.uuid4().hex[:8]}:audit:"
    opened = []

    def make():
        opened.append(RedisAuditLog(redis_client(url), prefix=prefix))
        return opened[-1]

    yield make
    for log in opened:
        log.close()


@pytest.mark.integration
def test_redis_log_replicas_appending_at_once_never_fork_the_chain(redis_log):
    logs = [redis_log() for _ in range(3)]

    def append(log, n: int) -> None:
        for i in range(40):
            log.append("system", "experiment.update", f"r{n}-{i}")

    threads = [threading.Thread(target=append, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logs[0].verify() == (120, None)
    assert [r.seq for r in logs[1].all()] == list(range(1, 121))
    assert [r.seq for r in logs[2].records(after_seq=100, limit=5)] == [101, 102, 103, 104, 105]
    assert {r.target for r in logs[0].records(target="r1-7")} == {"r1-7"}


@pytest.mark.integration
def test_redis_log_tampering_is_found_and_a_lost_log_says_so(redis_log):
    log = redis_log()
    for n in range(4):
        log.append("cli", "template.update", f"t{n}")
    client = log._redis
    key = f"{log.prefix}records"
    third = msgspec.json.decode(client.lindex(key, 2))
    client.lset(key, 2, msgspec.json.encode({**third, "target": "else"}))
    assert log.verify() == (4, Broken(3, "its hash does not match its contents: the record was edited"))
    client.lrem(key, 1, client.lindex(key, 1))  # drop record 2
    count, broken = log.verify()
    assert count == 3 and broken.seq == 3  # record 3 (edited, and after a gap) is the first broken
    client.delete(key)  # Redis lost the list
    log.check()  # admin actions go on ...
    after = log.append("cli", "template.update", "t9")
    assert after.seq == 6  # ... audited, after a record saying where the log was cut
    lost, again = log.all()
    assert (lost.seq, lost.action, lost.detail) == (5, "audit.lost", {"redis_ended_at": 0, "this_process_saw": 4})
    assert again == after and after.prev_hash == lost.hash
    count, broken = log.verify()
    assert (count, broken) == (2, Broken(5, "records 1-4 are missing: dropped from the log"))  # reported, not hidden


def test_a_promotion_is_audited_and_refused_while_the_log_cannot_be_written(tmp_path):
    pytest.importorskip("torch")
    from models.serve.registry import RunRecord, current_version
    from models.train.retrain import promote_audited

    versions = tmp_path / "registry" / "versions"
    v1, v2 = model_dir(versions / "v1", "v1"), model_dir(versions / "v2", "v2")
    served = tmp_path / "served"
    served.symlink_to(v1)
    log = SQLiteAuditLog(tmp_path / "audit.db")

    class Down:
        def check(self):
            raise AuditUnavailable("the audit log is unavailable: test")

    run = RunRecord(run_id="r1", started="2026-03-02T09:00:00+00:00", trigger="drift", candidate_version="v2")
    assert promote_audited(run, served, v2, "v1", Down()) is False
    assert current_version(served) == "v1" and not run.promoted
    assert run.decision == "refused at promotion: the audit log is unavailable: test"
    assert promote_audited(run, served, v2, "v1", log) is True
    assert current_version(served) == "v2" and run.promoted
    [record] = log.all()
    assert (record.actor, record.action, record.target) == ("system", "model.promote", "v2")
    assert record.detail == {"from": "v1", "run_id": "r1", "trigger": "drift"}
    log.close()


@pytest.mark.integration
def test_open_audit_picks_redis_with_a_redis_url_and_sqlite_without(redis_server, tmp_path):
    from config.settings import Settings
    from store.audit import REDIS_PREFIX, open_audit

    log = open_audit(Settings.of(redis_url=redis_server.url))
    try:
        assert isinstance(log, RedisAuditLog) and log.prefix == REDIS_PREFIX
        first = log.append("cli", "template.create", "t")
        assert log.verify() == (first.seq, None)
    finally:
        log._redis.delete(f"{REDIS_PREFIX}records", f"{REDIS_PREFIX}appended")
        log.close()
    log = open_audit(Settings.of(feature_repo=str(tmp_path), audit_db=""))
    assert isinstance(log, SQLiteAuditLog) and log.path == tmp_path / "data" / "audit.db"
    log.close()
    log = open_audit(Settings.from_env({"TAILOR_AUDIT_DB": str(tmp_path / "elsewhere.db")}))
    assert log.path == tmp_path / "elsewhere.db"
    log.close()
