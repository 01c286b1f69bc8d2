"""What the template and experiment stores share: a SQLite file of records, and Redis with that file as its copy.

Both stores keep their records in SQLite by default (one file next to the Feast
data, nothing to run, enough for one API process or a few on one machine) or,
with ``TAILOR_REDIS_URL``, in Redis, so that API replicas on many machines share
them. Each keeps a revision counter bumped in the same transaction as every
write: a reader re-reads only when it moved.

- `SQLiteRecords`, the file: one connection serialized by a lock (the API calls
  a store from worker threads, and every call is a few microseconds), WAL, and
  writes that take SQLite's write lock first (``BEGIN IMMEDIATE``), so processes
  sharing the file do not race.
- `RedisRecords`, Redis with a local copy: each replica keeps every record in its
  SQLite file too (written through on its own writes, synced from Redis when the
  revision moves), and `RedisRecords.recover` puts them back when Redis lost its
  data (a restart without persistence, a FLUSHALL, an older snapshot). Every
  Redis call is bounded (`store.redis_guard`); one Redis cannot answer is a
  `StoreUnavailable` (HTTP 503).

A store says what its records are (tables, keys, how to read, write and
restore them); this module holds the plumbing around them, written once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from config.settings import Settings
from store.redis_guard import StoreUnavailable, redis_call, redis_client

log = logging.getLogger(__name__)


def now_iso() -> str:
    """Now in UTC, RFC 3339 to the millisecond (``2026-03-02T09:01:00.123Z``): when a record was written."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SQLiteRecords:
    """One SQLite file (WAL) of a store's records, with its revision counter in the ``META`` table.

    A subclass names its tables: ``SCHEMA`` (``CREATE TABLE IF NOT EXISTS``
    statements, the ``META`` table's among them) and ``META``.
    """

    SCHEMA: tuple[str, ...] = ()
    META = ""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()  # re-entrant: a write's ``make`` may read the store
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                self._db.execute(statement)
            self._db.execute(f"INSERT OR IGNORE INTO {self.META} VALUES ('revision', 0)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside ``BEGIN IMMEDIATE``: committed on exit, rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _bump(self, db: sqlite3.Connection) -> None:
        """Move the revision on, inside a write's transaction."""
        db.execute(f"UPDATE {self.META} SET value = value + 1 WHERE key = 'revision'")

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def revision(self) -> int:
        """A counter bumped by every write (atomically with it): changed means re-read."""
        return self._query(f"SELECT value FROM {self.META} WHERE key = 'revision'")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisRecords:
    """A store's records in Redis under ``prefix``, its revision at ``<prefix>revision``, and ``copy`` to restore from.

    ``breaker`` (`store.redis_guard.Breaker`) bounds an outage's cost; ``copy``, the
    store's `SQLiteRecords`, is the local copy `recover` restores from (None: no copy,
    nothing to restore). A subclass says what it holds (``WHAT``, for errors) and how
    to restore it: ``RESTORE``, a Lua script that puts the copy's records back (what
    Redis holds winning) and returns the new revision, and the hooks below.
    """

    WHAT = ""
    RESTORE = ""

    def __init__(self, client, prefix: str, *, breaker=None, copy: Any = None):
        from store.redis_guard import Breaker

        self._redis = client
        self.prefix = prefix
        self._revision_key = f"{prefix}revision"
        self._breaker = breaker or Breaker(prefix, open_s=0)
        self.copy = copy
        self._copied: int | None = None  # the Redis revision the copy holds
        self._recovering = threading.Lock()  # one restore at a time in this process
        # Whether Redis should hold records (it did, or this replica's copy has some): then an empty one lost them.
        self._seen = copy is not None and self._copy_has_records()
        #: (time.monotonic(), what) of the last restore (what: "" if none yet), for /readyz.
        self.recovered: tuple[float, str] = (0.0, "")
        self._restore = client.register_script(self.RESTORE)

    # -- what a store provides -------------------------------------------------------

    def _copy_has_records(self) -> bool:
        raise NotImplementedError

    def _sync_copy(self) -> None:
        """Bring the local copy up to what Redis holds (Redis answered, with its data)."""
        raise NotImplementedError

    def _kept(self) -> list:
        """What the local copy holds, to put back."""
        raise NotImplementedError

    def _nothing_kept(self, revision: int | None) -> str:
        """Redis lost its data and the copy holds nothing: what to do instead, and what was done ("" if nothing)."""
        raise NotImplementedError

    def _restore_args(self, kept: list) -> tuple[list[str], list[Any]]:
        """The ``RESTORE`` script's KEYS and ARGV for ``kept``."""
        raise NotImplementedError

    def _restored(self, kept: list) -> str:
        """Log a restore of ``kept`` and say what it did, for /readyz."""
        raise NotImplementedError

    # -- the plumbing -----------------------------------------------------------------

    def _call(self):
        return redis_call(self._breaker, self.WHAT)

    def revision(self) -> int:
        """A counter bumped by every write (atomically with it): changed means re-read."""
        with self._call():
            raw = self._redis.get(self._revision_key)
        if raw is not None:
            self._seen = True
        elif self._seen:
            # Redis lost the records since this process saw them: put them back before anyone reads an empty set.
            self.recover()
            with self._call():
                raw = self._redis.get(self._revision_key)
        return int(raw or 0)

    def recover(self) -> str:
        """Keep the local copy in step with Redis, or restore Redis from it; returns what was done ("" if nothing).

        Redis lost the records when its revision counter is gone or went back (a
        restart without persistence, FLUSHALL, an older snapshot): the copy's records
        are put back, those Redis holds winning (one Lua script: replicas restoring at
        once agree). The copy lags another replica's change by at most one check.
        """
        if self.copy is None:
            return ""
        with self._recovering:
            with self._call():
                raw = self._redis.get(self._revision_key)
            revision = None if raw is None else int(raw)
            if revision is not None and (self._copied is None or revision >= self._copied):
                if revision != self._copied:
                    self._sync_copy()
                    self._copied = revision
                self._seen = True
                return ""
            kept = self._kept()
            if not kept:
                return self._nothing_kept(revision)
            keys, args = self._restore_args(kept)
            with self._call():
                self._copied = int(self._restore(keys=keys, args=args))
            self._seen = True
            self.recovered = (time.monotonic(), self._restored(kept))
            return self.recovered[1]

    def close(self) -> None:
        self._redis.close()
        if self.copy is not None:
            self.copy.close()


def local_path(configured: str, settings: Settings, name: str) -> Path:
    """A store's SQLite file: ``configured``, else ``<feature repo>/data/<name>``; its folder is made."""
    path = Path(configured or Path(settings.store.feature_repo) / "data" / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


R = TypeVar("R", bound=RedisRecords)


def redis_store(settings: Settings, store: type[R], copy: type[SQLiteRecords], path: Path) -> R:
    """``store`` on ``settings.redis.url`` (bounded, behind the server's breaker), with the file ``path`` as its copy."""
    from store.redis_guard import breaker_for

    return store(
        redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
        breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
        copy=copy(path),
    )


def recover_at_start(store: RedisRecords) -> bool:
    """`RedisRecords.recover` as a store opens; False (and logged) when Redis cannot be reached.

    A Redis that lost the records gets this replica's copy back, not only defaults. When it is down
    at start, the store's live cache serves the copy and /readyz says so.
    """
    try:
        store.recover()
    except StoreUnavailable as exc:
        log.warning("%s: starting from the local copy %s", exc.detail, store.copy.path)
        return False
    return True
