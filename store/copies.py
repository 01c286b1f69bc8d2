"""Generated copy, and the misses waiting for it: what the background generator and every API replica share.

The API never generates copy. The background generator (jobs/copy_generator.py) writes
each snippet here under its key (`copy_key`: model version, template version, style,
slot, tone, item id and a digest of the item's facts), and every API process reads it
from here (behind its own LRU, api/cache.py). A key an API process found missing is
queued here (`CopyStore.enqueue`, once per key) and the generator takes it first
(`CopyStore.take`), before the warm work it plans itself.

- `SQLiteCopies`, the embedded default: one file (``TAILOR_COPY_DB``, default
  ``<feature repo>/data/copy.db``), WAL, so the generator's writes are read at once by
  the API processes on the same machine; a read of one key takes tens of microseconds.
- `RedisCopies`, with ``TAILOR_REDIS_URL``: copy as plain keys (MGET), the queue as a
  list with a set beside it for de-duplication, for replicas on many machines. Every
  call is bounded (`store.redis_guard`): a Redis that cannot answer is a
  `StoreUnavailable`, which the API reads as a miss.

Examples
--------
>>> copy_key("m1", "headline-ai", 2, "bargain_hunter", "headline", "urgent", None)
'm1|headline-ai@2|bargain_hunter|headline|urgent|-#-'
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from config.settings import Settings
from engine.content.grounding import facts_digest
from store.records import local_path


class CopyJob(msgspec.Struct, frozen=True, kw_only=True):
    """One snippet to generate: its key, the model version, and what its prompt is made of."""

    key: str
    model_version: str
    template_id: str
    template_version: int
    style: str
    slot: str
    tone: str
    #: The featured item's facts (`engine.content.catalog.Item.facts`, or a request's item); None: generic copy.
    item: dict[str, Any] | None = None
    #: When a request missed it (epoch ms); 0 for warm work.
    requested_ms: int = 0


def copy_key(
    model_version: str,
    template_id: str,
    template_version: int,
    style: str,
    slot: str,
    tone: str,
    item: Mapping[str, Any] | None,
) -> str:
    """The key of one snippet: a new model, template version or item facts (a price change) is a new key."""
    item_id = (item or {}).get("item_id") or "-"
    return f"{model_version}|{template_id}@{template_version}|{style}|{slot}|{tone}|{item_id}#{facts_digest(item)}"


_encoder = msgspec.msgpack.Encoder()
_job_decoder = msgspec.msgpack.Decoder(CopyJob)


class CopyStore:
    """Generated copy by key, and the queue of missed keys (see the module docstring)."""

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        """The generated text of each key that has one."""
        raise NotImplementedError

    def put_many(self, texts: Mapping[str, str]) -> None:
        """Write snippets (one transaction); a key written again takes the new text."""
        raise NotImplementedError

    def enqueue(self, jobs: Sequence[CopyJob]) -> int:
        """Queue missed keys for the generator; a key already queued or generated is not queued again.

        Returns how many were queued now.
        """
        raise NotImplementedError

    def take(self, limit: int) -> list[CopyJob]:
        """At most ``limit`` queued jobs, oldest first, off the queue (a generator that dies loses them:
        the API queues a key again after `api.cache.REQUEUE_S`)."""
        raise NotImplementedError

    def queued(self) -> int:
        raise NotImplementedError

    def count(self) -> int:
        """Snippets stored."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class SQLiteCopies(CopyStore):
    """The copy store in one SQLite file, shared by the processes of one machine."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS copy (key TEXT PRIMARY KEY, text TEXT NOT NULL) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS copy_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, "
        "job BLOB NOT NULL)",
    )

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Writes (the API's worker thread queueing misses, the generator) wait for SQLite's write
        # lock, up to the busy timeout, while another process holds it. Reads (the API's event
        # loop, on every miss of its LRU) have their own connection and lock: in WAL mode a
        # reader never waits for a writer, so a write in progress never stalls personalize.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in self.SCHEMA:
                self._db.execute(statement)
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        with self._read_lock:
            if len(keys) == 1:  # the API's call, on every miss of its LRU: the one-row statement
                row = self._reader.execute("SELECT text FROM copy WHERE key = ?", (keys[0],)).fetchone()
                return {keys[0]: row[0]} if row is not None else {}
            out: dict[str, str] = {}
            for start in range(0, len(keys), 500):  # SQLite's bound on parameters
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                out.update(self._reader.execute(f"SELECT key, text FROM copy WHERE key IN ({marks})", chunk).fetchall())
            return out

    def put_many(self, texts: Mapping[str, str]) -> None:
        if not texts:
            return
        with self._lock, self._write():
            self._db.executemany("INSERT OR REPLACE INTO copy (key, text) VALUES (?, ?)", list(texts.items()))

    def enqueue(self, jobs: Sequence[CopyJob]) -> int:
        if not jobs:
            return 0
        with self._lock, self._write():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO copy_queue (key, job) SELECT ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM copy WHERE key = ?)",
                [(job.key, _encoder.encode(job), job.key) for job in jobs],
            )
            return self._db.total_changes - before

    def take(self, limit: int) -> list[CopyJob]:
        with self._lock, self._write():
            rows = self._db.execute("SELECT seq, job FROM copy_queue ORDER BY seq LIMIT ?", (limit,)).fetchall()
            if rows:
                self._db.execute("DELETE FROM copy_queue WHERE seq <= ?", (rows[-1][0],))
        return [_job_decoder.decode(job) for _, job in rows]

    def queued(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM copy_queue").fetchone()[0]

    def count(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM copy").fetchone()[0]

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    def _write(self):
        return _Immediate(self._db)


class _Immediate:
    """A write transaction that takes SQLite's write lock first, so processes sharing the file do not race."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, *_):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class RedisCopies(CopyStore):
    """The copy store in Redis, shared by replicas on many machines.

    Keys (under ``prefix``): ``t:<copy key>`` the text (expiring after ``ttl_s`` when
    set); ``queue`` a list of queued jobs (msgpack), oldest first; ``queued`` the set of
    their keys, so a key is queued once.
    """

    WHAT = "copy store (Redis)"

    def __init__(self, client, prefix: str = "tailor:copy:", *, breaker=None, ttl_s: int = 0):
        self._redis = client
        self._prefix = prefix
        self._queue, self._queued = f"{prefix}queue", f"{prefix}queued"
        self._breaker = breaker
        self._ttl_s = ttl_s

    def _call(self):
        from store.redis_guard import redis_call

        return redis_call(self._breaker, self.WHAT)

    def _text_keys(self, keys: Iterable[str]) -> list[str]:
        return [f"{self._prefix}t:{key}" for key in keys]

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        with self._call():
            raws = self._redis.mget(self._text_keys(keys))
        return {k: (r.decode() if isinstance(r, bytes) else r) for k, r in zip(keys, raws) if r is not None}

    def put_many(self, texts: Mapping[str, str]) -> None:
        if not texts:
            return
        with self._call():
            pipe = self._redis.pipeline(transaction=False)
            for key, text in zip(self._text_keys(texts), texts.values()):
                pipe.set(key, text, ex=self._ttl_s or None)
            pipe.execute()

    def enqueue(self, jobs: Sequence[CopyJob]) -> int:
        if not jobs:
            return 0
        have = self.get_many([job.key for job in jobs])
        fresh = [job for job in jobs if job.key not in have]
        if not fresh:
            return 0
        with self._call():
            pipe = self._redis.pipeline(transaction=False)
            for job in fresh:
                pipe.sadd(self._queued, job.key)
            added = pipe.execute()
            pipe = self._redis.pipeline(transaction=False)
            new = [job for job, was_added in zip(fresh, added) if was_added]
            for job in new:
                pipe.rpush(self._queue, _encoder.encode(job))
            pipe.execute()
        return len(new)

    def take(self, limit: int) -> list[CopyJob]:
        with self._call():
            raws = self._redis.lpop(self._queue, limit) or []
            jobs = [_job_decoder.decode(raw) for raw in raws]
            if jobs:
                self._redis.srem(self._queued, *[job.key for job in jobs])
        return jobs

    def queued(self) -> int:
        with self._call():
            return int(self._redis.llen(self._queue))

    def count(self) -> int:
        with self._call():
            return sum(1 for _ in self._redis.scan_iter(match=f"{self._prefix}t:*", count=1000))

    def close(self) -> None:
        self._redis.close()


def open_copies(settings: Settings) -> CopyStore:
    """The copy store ``settings`` name: Redis if ``redis_url`` is set, else the SQLite file."""
    if settings.redis.url:
        from store.redis_guard import breaker_for, redis_client

        return RedisCopies(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
            ttl_s=settings.generation.copy_ttl_s,
        )
    return SQLiteCopies(local_path(settings.generation.copy_db, settings, "copy.db"))
