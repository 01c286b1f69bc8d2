"""Consent records: what each pseudonymous user agreed to, per purpose, durably, for every API replica.

The API writes a record on ``PUT /v1/users/{id}/consent`` (and sends the decision
through Kafka so the flow applies it in order with the user's events) and reads it on
every ``/v1/events`` batch and ``/v1/personalize`` request. Records are keyed by the
pseudonym, never the raw id. A user with no record has decided nothing: the policy
(``TAILOR_CONSENT_POLICY``) answers for them (`engine.privacy.record_allows`).

- `SQLiteConsent`, the embedded default: one file (``TAILOR_CONSENT_DB``, default
  ``<feature repo>/data/consent.db``), WAL; reads have their own connection, so a write
  in progress never stalls a request (a read of one user takes tens of microseconds).
- `RedisConsent`, with ``TAILOR_REDIS_URL``: one key per user (MGET for a batch), each
  decision merged in a WATCH/MULTI transaction so two replicas never lose one. Every call is
  bounded (`store.redis_guard`): a Redis that cannot answer is a `StoreUnavailable` (503).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from config.settings import Settings
from engine.privacy import ConsentRecord, apply_decision
from store.records import local_path

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ConsentRecord)


def merged(record: ConsentRecord | None, user_id: str, granted: Iterable[str], revoked: Iterable[str], now_ms: int):
    """``record`` with a decision applied: ``granted`` allowed, ``revoked`` refused, other purposes as they were.

    >>> r = merged(None, "p_aaaaaaaaaaaaaaaaaaaaaaaa", ["analytics"], [], 1)
    >>> merged(r, r.user_id, [], ["analytics", "experiments"], 2).revoked
    ('experiments', 'analytics')
    """
    before = (record.granted, record.revoked) if record is not None else ((), ())
    now_granted, now_revoked = apply_decision(*before, granted_now=granted, revoked_now=revoked)
    return ConsentRecord(user_id=user_id, granted=tuple(now_granted), revoked=tuple(now_revoked), updated_ms=now_ms)


class ConsentStore:
    """Where consent records live (see the module docstring)."""

    def get_many(self, user_ids: Sequence[str]) -> dict[str, ConsentRecord]:
        """The records of those of ``user_ids`` that decided anything."""
        raise NotImplementedError

    def get(self, user_id: str) -> ConsentRecord | None:
        return self.get_many([user_id]).get(user_id)

    def decide(self, user_id: str, granted: Iterable[str], revoked: Iterable[str], now_ms: int) -> ConsentRecord:
        """Apply one decision to the user's record atomically; returns the record as stored."""
        raise NotImplementedError

    def delete(self, user_id: str) -> bool:
        """Forget the user's record (erasure); whether there was one."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SQLiteConsent(ConsentStore):
    """Consent records in one SQLite file, shared by the processes of one machine."""

    SCHEMA = "CREATE TABLE IF NOT EXISTS consent (user_id TEXT PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(self.SCHEMA)
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)

    def get_many(self, user_ids: Sequence[str]) -> dict[str, ConsentRecord]:
        if not user_ids:
            return {}
        with self._read_lock:
            if len(user_ids) == 1:
                row = self._reader.execute("SELECT record FROM consent WHERE user_id = ?", (user_ids[0],)).fetchone()
                return {user_ids[0]: _decoder.decode(row[0])} if row else {}
            unique = list(dict.fromkeys(user_ids))
            out = {}
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for user_id, raw in self._reader.execute(
                    f"SELECT user_id, record FROM consent WHERE user_id IN ({marks})", chunk
                ):
                    out[user_id] = _decoder.decode(raw)
            return out

    def decide(self, user_id: str, granted: Iterable[str], revoked: Iterable[str], now_ms: int) -> ConsentRecord:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT record FROM consent WHERE user_id = ?", (user_id,)).fetchone()
                record = merged(_decoder.decode(row[0]) if row else None, user_id, granted, revoked, now_ms)
                self._db.execute("INSERT OR REPLACE INTO consent VALUES (?, ?)", (user_id, _encoder.encode(record)))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return record

    def delete(self, user_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM consent WHERE user_id = ?", (user_id,)).rowcount > 0

    def count(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM consent").fetchone()[0]

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()


class RedisConsent(ConsentStore):
    """Consent records in Redis: ``<prefix><pseudonym>`` holds the record as JSON."""

    WHAT = "consent store (Redis)"

    def __init__(self, client, prefix: str = "tailor:consent:", *, breaker=None):
        self._redis = client
        self._prefix = prefix
        self._breaker = breaker

    def _call(self):
        from store.redis_guard import redis_call

        return redis_call(self._breaker, self.WHAT)

    def get_many(self, user_ids: Sequence[str]) -> dict[str, ConsentRecord]:
        if not user_ids:
            return {}
        with self._call():
            raws = self._redis.mget([self._prefix + u for u in user_ids])
        return {u: _decoder.decode(raw) for u, raw in zip(user_ids, raws) if raw is not None}

    def decide(self, user_id: str, granted: Iterable[str], revoked: Iterable[str], now_ms: int) -> ConsentRecord:
        key = self._prefix + user_id
        granted, revoked = tuple(granted), tuple(revoked)
        out: list[ConsentRecord] = []

        def merge(pipe) -> None:
            raw = pipe.get(key)
            record = merged(_decoder.decode(raw) if raw is not None else None, user_id, granted, revoked, now_ms)
            pipe.multi()
            pipe.set(key, _encoder.encode(record))
            out[:] = [record]

        with self._call():
            self._redis.transaction(merge, key)
        return out[0]

    def delete(self, user_id: str) -> bool:
        with self._call():
            return bool(self._redis.delete(self._prefix + user_id))

    def count(self) -> int:
        with self._call():
            return sum(1 for _ in self._redis.scan_iter(match=f"{self._prefix}*", count=1000))

    def close(self) -> None:
        self._redis.close()


def open_consent(settings: Settings) -> ConsentStore:
    """The consent store ``settings`` name: Redis if ``redis_url`` is set, else the SQLite file."""
    if settings.redis.url:
        from store.redis_guard import breaker_for, redis_client

        return RedisConsent(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
        )
    return SQLiteConsent(local_path(settings.privacy.consent_db, settings, "consent.db"))
