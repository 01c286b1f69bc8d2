"""The audit log's storage: append-only, one chain that never forks, in SQLite or Redis.

Every administrative and privacy action appends one `engine.audit.AuditRecord`
(`AuditLog.append`); each record's hash covers the previous one's, so `AuditLog.verify`
finds an edited, dropped or moved record. Appends are serialized so two writers never
chain onto the same record:

- `SQLiteAuditLog`, the embedded default: a row per record in one file next to the other
  stores (``<feature_repo>/data/audit.db``, or ``TAILOR_AUDIT_DB``). An append reads the
  last record and writes the next inside ``BEGIN IMMEDIATE`` (SQLite's write lock), so
  threads and processes sharing the file take turns. A counter of appends, bumped in the
  same transaction, shows records dropped from the end.
- `RedisAuditLog`, with ``TAILOR_REDIS_URL``: a Redis list of records (JSON) shared by
  every API replica. An append reads the last record, chains onto it, and a Lua script
  pushes the new one only if the last is still the one read (else it tries again), so
  replicas appending at once cannot fork the chain. Every call is bounded
  (`store.redis_guard`); a Redis that cannot answer is a `StoreUnavailable` (503). Give
  that Redis persistence (AOF): when a process finds the list shorter than it saw it (a
  restart without persistence, a FLUSHALL), its next append first writes an ``audit.lost``
  record chained on the last record it knew, so admin actions stay audited (templates and
  experiments come back from the replicas' copies; refusing them all would leave the API
  unmanageable) and `verify` reports the records that are gone, never hides them.

Examples
--------
>>> import pathlib, tempfile
>>> log = SQLiteAuditLog(pathlib.Path(tempfile.mkdtemp()) / "audit.db")
>>> log.append("cli", "template.create", "cta-soft", {"version": 1}).seq
1
>>> log.append("a5e7c002", "template.archive", "cta-soft", {"version": 2}).prev_hash == log.all()[0].hash
True
>>> [r.action for r in log.records(actor="a5e7c002")]
['template.archive']
>>> log.verify()
(2, None)
>>> log.close()
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from config.settings import Settings
from engine.audit import AuditRecord, Broken, chain, verify
from store.records import SQLiteRecords, local_path, now_iso
from store.redis_guard import StoreUnavailable, redis_call, redis_client

log = logging.getLogger(__name__)

#: Where the Redis log keeps its keys, unless told otherwise.
REDIS_PREFIX = "tailor:audit:"
#: Records read from Redis per call when listing or verifying.
_CHUNK = 500
#: Tries of a Redis append that lost the race to another writer before giving up (503).
_TRIES = 50

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AuditRecord)


class AuditUnavailable(StoreUnavailable):
    """The audit log cannot be written (or read) now: the API answers 503 with ``detail``, and the action waits."""


class AuditLog:
    """The append-only log both backends implement."""

    def append(self, actor: str, action: str, target: str, detail: dict[str, Any] | None = None) -> AuditRecord:
        """Chain and store the next record; its ``ts`` is now. `StoreUnavailable` when it cannot be stored.

        ``actor`` is an API key's `engine.audit.fingerprint`, ``"cli"`` or ``"system"``; a bad
        actor or action is a `ValueError` (`engine.audit.chain`).
        """
        raise NotImplementedError

    def check(self) -> None:
        """Raise `StoreUnavailable` if an append could not be stored now (before an action that must be audited)."""
        raise NotImplementedError

    def records(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        since: str | None = None,
        until: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Up to ``limit`` records after ``after_seq``, oldest first, matching every filter given.

        ``since`` (inclusive) and ``until`` (exclusive) are times as records write them
        (`engine.audit.parse_time`). A stored record that cannot be read is skipped (and
        logged): `verify` reports it.
        """
        raise NotImplementedError

    def all(self) -> list[AuditRecord]:
        """Every readable record, in stored order."""
        raise NotImplementedError

    def verify(self) -> tuple[int, Broken | None]:
        """(records stored, the first broken one or None): `engine.audit.verify` over the whole log."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _matches(record: AuditRecord, action, actor, target, since, until, after_seq) -> bool:
    return (
        record.seq > after_seq
        and (action is None or record.action == action)
        and (actor is None or record.actor == actor)
        and (target is None or record.target == target)
        and (since is None or record.ts >= since)
        and (until is None or record.ts < until)
    )


def _check_chain(items: Iterable[AuditRecord | Broken], appended: int) -> tuple[int, Broken | None]:
    """`verify` over ``items``; an unreadable one (a `Broken`) ends the check there unless the chain broke before."""
    good: list[AuditRecord] = []
    count = 0
    unreadable: Broken | None = None
    for item in items:
        count += 1
        if unreadable is not None:
            continue
        if isinstance(item, Broken):
            unreadable = item
        else:
            good.append(item)
    if unreadable is not None:
        return count, verify(good) or unreadable
    return count, verify(good, appended=appended)


class SQLiteAuditLog(SQLiteRecords, AuditLog):
    """The log in one SQLite file: a row per record (`store.records.SQLiteRecords`: WAL, ``BEGIN IMMEDIATE``).

    The revision counter of `store.records.SQLiteRecords` counts appends.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, "
        "action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, "
        "hash TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    )
    META = "audit_meta"
    _COLUMNS = "seq, ts, actor, action, target, detail, prev_hash, hash"

    @contextmanager
    def _sqlite(self) -> Iterator[None]:
        """A failing SQLite call (locked past its timeout, read-only, disk full) as `AuditUnavailable`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise AuditUnavailable(
                f"the audit log {self.path} cannot be used: {type(exc).__name__}: {exc}; "
                "nothing was changed, retry once it is writable"
            ) from None

    def append(self, actor, action, target, detail=None):
        with self._sqlite(), self._transaction() as db:
            row = db.execute(f"SELECT {self._COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            prev = _link(row) if row else None
            record = chain(prev, actor, action, target, detail, ts=now_iso())
            db.execute(
                f"INSERT INTO audit_log ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.seq,
                    record.ts,
                    record.actor,
                    record.action,
                    record.target,
                    _ENCODER.encode(record.detail).decode(),
                    record.prev_hash,
                    record.hash,
                ),
            )
            self._bump(db)
        return record

    def check(self) -> None:
        with self._sqlite(), self._transaction():
            pass  # takes the write lock an append needs, and lets it go

    def records(self, *, action=None, actor=None, target=None, since=None, until=None, after_seq=0, limit=100):
        where, params = ["seq > ?"], [after_seq]
        for column, value in (("action", action), ("actor", actor), ("target", target)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        if until is not None:
            where.append("ts < ?")
            params.append(until)
        sql = f"SELECT {self._COLUMNS} FROM audit_log WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?"
        with self._sqlite():
            rows = self._query(sql, (*params, limit))
        return [r for r in map(_from_row, rows) if isinstance(r, AuditRecord)]

    def all(self):
        with self._sqlite():
            rows = self._query(f"SELECT {self._COLUMNS} FROM audit_log ORDER BY seq")
        return [r for r in map(_from_row, rows) if isinstance(r, AuditRecord)]

    def verify(self):
        with self._sqlite():
            appended = self.revision()  # first: appends meanwhile only add rows
            rows = self._query(f"SELECT {self._COLUMNS} FROM audit_log ORDER BY seq")
        return _check_chain(map(_from_row, rows), appended)


def _from_row(row: tuple) -> AuditRecord | Broken:
    """A stored row as a record, or a `Broken` saying why it cannot be one."""
    seq, ts, actor, action, target, detail, prev_hash, hash_ = row
    try:
        return msgspec.convert(
            {
                "seq": seq,
                "ts": ts,
                "actor": actor,
                "action": action,
                "target": target,
                "detail": msgspec.json.decode(detail),
                "prev_hash": prev_hash,
                "hash": hash_,
            },
            AuditRecord,
        )
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
        return Broken(seq if isinstance(seq, int) else 0, f"it cannot be read ({exc}): the record was edited")


def _link(row: tuple) -> AuditRecord:
    """The last stored row as what the next record chains onto (its seq and hash), readable or not."""
    found = _from_row(row)
    if isinstance(found, AuditRecord):
        return found
    return AuditRecord(
        seq=int(row[0]), ts="", actor="", action="", target="", detail={}, prev_hash="", hash=str(row[7])
    )


class RedisAuditLog(AuditLog):
    """The log in a Redis list (``<prefix>records``) shared by API replicas, with a count of appends (``<prefix>appended``).

    ``breaker`` (`store.redis_guard.Breaker`) bounds an outage's cost; every call is bounded.
    """

    WHAT = "audit log (Redis)"
    #: Pushes ARGV[2] only if the list's last record is still ARGV[1] ("" for none), and counts
    #: the append; returns the new count, or 0 when another writer appended first.
    #: KEYS: the list, the count.
    APPEND = """
local last = redis.call('LINDEX', KEYS[1], -1)
if (last or '') ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None):
        from store.redis_guard import Breaker

        self._redis = client
        self.prefix = prefix
        self._records_key = f"{prefix}records"
        self._appended_key = f"{prefix}appended"
        self._breaker = breaker or Breaker(prefix, open_s=0)
        self._append = client.register_script(self.APPEND)
        self._seen = 0  # the highest seq this process has read or written ...
        self._known: AuditRecord | None = None  # ... and that record, to chain on should Redis lose the list

    def _call(self):
        return redis_call(self._breaker, self.WHAT)

    def append(self, actor, action, target, detail=None):
        for _ in range(_TRIES):
            raw, prev = self._last()
            last = prev.seq if prev is not None else 0
            if last < self._seen and self._known is not None:
                # Redis lost records (a restart without persistence, a FLUSHALL). Admin actions go on, audited,
                # but never quietly: an `audit.lost` record chains on the last record this process knew, so the
                # log says where it was cut and `verify` reports the records that are gone.
                record = chain(
                    self._known,
                    "system",
                    "audit.lost",
                    self._records_key,
                    {"redis_ended_at": last, "this_process_saw": self._seen},
                    ts=now_iso(),
                )
            else:
                record = chain(prev, actor, action, target, detail, ts=now_iso())
            with self._call():
                done = self._append(
                    keys=[self._records_key, self._appended_key], args=[raw or b"", _ENCODER.encode(record)]
                )
            if done:
                self._seen, self._known = record.seq, record
                if record.action != "audit.lost" or action == "audit.lost":
                    return record
                log.error(
                    "the audit log in Redis ended at record %d, but this process saw record %d: Redis lost records; "
                    "record %d (audit.lost) says so, and `tailor audit verify` reports what is missing: restore %s "
                    "from a backup",
                    last,
                    record.seq - 1,
                    record.seq,
                    self._records_key,
                )
        raise AuditUnavailable(f"the audit log in Redis is busy: {_TRIES} appends in a row lost the race; retry")

    def check(self) -> None:
        self._last()

    def _last(self) -> tuple[bytes | None, AuditRecord | None]:
        """The list's last record (raw, and as what the next chains onto); a 503 if Redis cannot answer."""
        with self._call():
            raw = self._redis.lindex(self._records_key, -1)
        prev = None if raw is None else _redis_link(raw)
        if prev is not None and prev.seq >= self._seen:
            self._seen, self._known = prev.seq, prev
        return raw, prev

    def _scan(self, start: int = 0) -> Iterator[AuditRecord | Broken]:
        """The stored records from index ``start`` on, a bounded call per `_CHUNK`."""
        index = start
        while True:
            with self._call():
                chunk = self._redis.lrange(self._records_key, index, index + _CHUNK - 1)
            for offset, raw in enumerate(chunk):
                try:
                    record = _DECODER.decode(raw)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    yield Broken(index + offset + 1, f"it cannot be read ({exc}): the record was edited")
                    continue
                if record.seq >= self._seen:
                    self._seen, self._known = record.seq, record
                yield record
            if len(chunk) < _CHUNK:
                return
            index += _CHUNK

    def records(self, *, action=None, actor=None, target=None, since=None, until=None, after_seq=0, limit=100):
        found = []
        # Record n sits at index n - 1 while the log is intact: start there.
        for record in self._scan(min(max(0, after_seq), 2**53)):  # LRANGE takes 64-bit indexes
            if isinstance(record, AuditRecord) and _matches(record, action, actor, target, since, until, after_seq):
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    def all(self):
        return [r for r in self._scan() if isinstance(r, AuditRecord)]

    def verify(self):
        with self._call():
            appended = int(self._redis.get(self._appended_key) or 0)  # first: appends meanwhile only add records
        return _check_chain(self._scan(), appended)

    def close(self) -> None:
        self._redis.close()


def _redis_link(raw: bytes) -> AuditRecord:
    """The list's last record as what the next chains onto; one that cannot be read is a 503 that says what to do."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    try:
        fields = msgspec.json.decode(raw)
        return AuditRecord(
            seq=int(fields["seq"]),
            ts="",
            actor="",
            action="",
            target="",
            detail={},
            prev_hash="",
            hash=str(fields["hash"]),
        )
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        raise AuditUnavailable(
            "the last record of the audit log in Redis cannot be read: run `tailor audit verify` and restore the log"
        ) from None


def open_audit(settings: Settings) -> AuditLog:
    """The log ``settings`` name: a Redis list if ``redis_url`` is set, else the SQLite file (``audit_db``)."""
    if settings.redis.url:
        from store.redis_guard import breaker_for

        return RedisAuditLog(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
        )
    return SQLiteAuditLog(local_path(settings.store.audit_db, settings, "audit.db"))
