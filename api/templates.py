"""Content templates, stored and versioned, and the ``/v1/templates`` routes.

Every change is a new version: a template is a row per ``(template_id,
version)`` and nothing is overwritten, so old versions stay readable (and an
experiment report can say which version served). Archiving is a version too:
an archived template is not served but stays readable, and a later update with
``archived=False`` restores it.

Two stores, one interface (`TemplateStore`):

- SQLite (`SQLiteTemplateStore`), the embedded default: one file next to the
  Feast data (``<feature_repo>/data/templates.db``, or ``TAILOR_TEMPLATE_DB``),
  nothing to run, enough for one API process (or a few on one machine).
- Redis (`RedisTemplateStore`) when ``TAILOR_REDIS_URL`` is set: API replicas
  on many machines share one set of templates, so an admin's edit through one
  replica is served by all of them. Each replica keeps a local copy of every
  version in the SQLite file (written through on its own writes, synced from
  Redis when the revision moves), and `RedisTemplateStore.recover` puts them back
  if Redis lost its data (a restart without persistence, a FLUSHALL). Every
  Redis call is bounded (`store.redis_guard`); one Redis cannot answer is a
  `StoreUnavailable` (HTTP 503).

Each store keeps a revision counter, bumped in the same transaction as every
write. The personalize path reads templates through `LiveTemplates`, an
in-memory snapshot that re-reads the store only when that counter moved,
checked at most every ``check_s`` seconds: a request costs a dict lookup, and
another replica's write shows within about half a second.

The routes (`TemplateController`, ``/v1/templates``) read with the ``serve``
scope and write with ``admin``; an invalid template is a 422 whose ``detail``
is the `TemplateError` reason, and nothing is stored.

Examples
--------
>>> import pathlib, tempfile
>>> store = SQLiteTemplateStore(pathlib.Path(tempfile.mkdtemp()) / "templates.db")
>>> t, _ = new_template("cta-soft", "cta", "{{ ai.cta }}", default_copy={"cta": "Have a look"})
>>> store.create(t).version
1
>>> store.update("cta-soft", {"default_copy": {"cta": "Take a look"}}).version
2
>>> [v.default_copy["cta"] for v in store.versions("cta-soft")]
['Have a look', 'Take a look']
>>> live = LiveTemplates(store)
>>> [(t.template_id, t.version) for t in live.for_slot("cta")]
[('cta-soft', 2)]
>>> store.archive("cta-soft").version
3
>>> live.invalidate()
>>> live.for_slot("cta")
[]
>>> store.close()
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from config.settings import Settings
from engine.content.brand import MAX_CHARS, Slot, Tone
from engine.content.templates import (
    DEFAULT_TEMPLATES,
    MAX_BODY_CHARS,
    Template,
    TemplateError,
    check_renders,
    new_template,
    revise,
)
from store.redis_guard import StoreUnavailable, redis_call, redis_client

log = logging.getLogger(__name__)

#: Where the Redis store keeps its keys, unless told otherwise.
REDIS_PREFIX = "tailor:templates:"

_DECODER = msgspec.json.Decoder(Template)
_ENCODER = msgspec.json.Encoder()


class TemplateStoreError(Exception):
    """A store operation that cannot be done; ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TemplateNotFound(TemplateStoreError, LookupError):
    """No such template (or no such version of it)."""


class TemplateConflict(TemplateStoreError):
    """A template with that id exists already."""


class StaleTemplate(TemplateConflict):
    """A stored version that no longer validates (saved before a rule was tightened, or written by hand)."""


class _Stale:
    """What a stale stored version holds, undecoded: enough to replace its body and nothing else."""

    __slots__ = ("fields", "reason")

    def __init__(self, fields: dict[str, Any], reason: str):
        self.fields, self.reason = fields, reason

    def error(self) -> StaleTemplate:
        template_id, version = self.fields.get("template_id"), self.fields.get("version")
        return StaleTemplate(
            f"template {template_id!r} v{version} is stored but no longer validates "
            f"({self.reason}): give it a new body with PATCH /v1/templates/{template_id}"
        )


def _decode_stored(raw: bytes | str) -> Template:
    """One stored version; `StaleTemplate` (a 409 that says what to do) when it no longer validates."""
    template = _decode_current(raw)
    if isinstance(template, _Stale):
        raise template.error()
    return template


def _decode_current(raw: bytes | str) -> Template | _Stale:
    """The latest version for a write: a stale one comes back as `_Stale`, so a new body can replace it."""
    try:
        return _DECODER.decode(raw)
    except (msgspec.ValidationError, TemplateError) as exc:
        return _Stale(_fields_of(raw), str(exc))


def _fields_of(raw: bytes | str) -> dict[str, Any]:
    try:
        fields = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return fields if isinstance(fields, dict) else {}


def _replace_stale(stale: _Stale, changes: dict[str, Any]) -> Template:
    """The next version of a stale template: only a new body makes it whole (it is then checked as any body is)."""
    if "body" not in changes:
        raise stale.error()
    fields = {**stale.fields, **changes, "version": int(stale.fields.get("version", 0)) + 1}
    try:
        template = msgspec.convert(fields, Template)
    except msgspec.ValidationError as exc:
        raise TemplateError(str(exc)) from None
    check_renders(template)
    return template


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _not_found(template_id: str) -> TemplateNotFound:
    return TemplateNotFound(f"there is no template {template_id!r}: check the id (GET /v1/templates lists them)")


def _decode_all(raws: Iterable[bytes | str]) -> list[Template]:
    """Decode stored templates, skipping (and logging) any that no longer validate.

    One stale row (saved before a rule was tightened) must not take every slot off the air.
    """
    templates = []
    for raw in raws:
        try:
            templates.append(_DECODER.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError, TemplateError) as exc:
            log.warning("skipping a stored template that no longer validates: %s", exc)
    return templates


class TemplateStore:
    """Versioned templates: what both backends share.

    A backend provides `_write` (an atomic read-modify-write of one template's
    latest version that bumps the revision), `_latest_all`, `_versions`,
    `_get_version`, `revision` and `close`; the rest is here.
    """

    # -- what a backend provides ------------------------------------------------

    def _write(self, template_id: str, make: Callable[[Template | None], Template]) -> Template:
        """Atomically: read the latest version (None if none), ``make`` the next one, store it, bump the revision.

        When ``make`` returns the version it was given, nothing is written.
        Whatever ``make`` raises aborts the write and propagates.
        """
        raise NotImplementedError

    def _latest_all(self) -> list[Template]:
        raise NotImplementedError

    def _versions(self, template_id: str) -> list[Template]:
        raise NotImplementedError

    def _get_version(self, template_id: str, version: int | None) -> Template | None:
        raise NotImplementedError

    def revision(self) -> int:
        """A counter bumped by every write (atomically with it): changed means re-read."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- the interface ------------------------------------------------------------

    def create(self, template: Template) -> Template:
        """Store ``template`` as version 1 (``created`` set to now if empty); `TemplateConflict` if the id exists."""
        new = msgspec.structs.replace(template, version=1, created=template.created or _now())

        def make(current: Template | None) -> Template:
            if current is not None:
                raise TemplateConflict(
                    f"template {template.template_id!r} already exists: change it with "
                    f"PATCH /v1/templates/{template.template_id}, or pick another id"
                )
            return new

        return self._write(template.template_id, make)

    def get(self, template_id: str, version: int | None = None) -> Template:
        """One version of a template (the latest when ``version`` is None); `TemplateNotFound` if absent."""
        found = self._get_version(template_id, version)
        if found is not None:
            return found
        if version is None or not (versions := self._versions(template_id)):
            raise _not_found(template_id)
        raise TemplateNotFound(
            f"template {template_id!r} has no version {version}: it has versions 1 to {versions[-1].version}"
        )

    def versions(self, template_id: str) -> list[Template]:
        """Every version of a template, oldest first; `TemplateNotFound` if there is none."""
        found = self._versions(template_id)
        if not found:
            raise _not_found(template_id)
        return found

    def list(
        self, *, slot: str | None = None, segment: str | None = None, include_archived: bool = False
    ) -> list[Template]:
        """The latest version of each template, sorted by id.

        ``slot`` keeps that slot's; ``segment`` keeps those meant for that
        segment (tagged with it, or with no segments: for any); archived ones
        only with ``include_archived``.
        """
        return [
            t
            for t in sorted(self._latest_all(), key=lambda t: t.template_id)
            if (slot is None or t.slot == slot)
            and (segment is None or not t.segments or segment in t.segments)
            and (include_archived or not t.archived)
        ]

    def update(self, template_id: str, changes: dict[str, Any]) -> Template:
        """A new version with ``changes`` (`engine.content.templates.revise`); earlier versions stay readable.

        Raises `TemplateNotFound`, or `TemplateError` when the changed template is invalid.
        """
        if not changes:
            raise TemplateError("nothing to change: give at least one field")

        def make(current: Template | _Stale | None) -> Template:
            if current is None:
                raise _not_found(template_id)
            if isinstance(current, _Stale):
                return _replace_stale(current, {**changes, "created": _now()})
            return revise(current, **{**changes, "created": _now()})

        return self._write(template_id, make)

    def archive(self, template_id: str) -> Template:
        """A new version with ``archived=True`` (not served, still readable); an archived one is returned as is."""

        def make(current: Template | _Stale | None) -> Template:
            if current is None:
                raise _not_found(template_id)
            if isinstance(current, _Stale):
                raise current.error()
            return current if current.archived else revise(current, archived=True, created=_now())

        return self._write(template_id, make)

    def seed(self, templates: Iterable[Template]) -> int:
        """Create ``templates`` if the store has none at all (a first start); returns how many were created.

        Replicas starting together may both seed: a conflict only means another one was first.
        """
        if self._latest_all():
            return 0
        created = 0
        for template in templates:
            try:
                self.create(template)
                created += 1
            except TemplateConflict:
                pass
        return created


class SQLiteTemplateStore(TemplateStore):
    """Templates in one SQLite file (WAL): a row per version, plus the revision counter.

    One connection serialized by a lock: the API calls the store from worker
    threads, and every call is a few microseconds. Writes take SQLite's write
    lock first (``BEGIN IMMEDIATE``), so processes sharing the file do not race.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS template_versions (template_id TEXT NOT NULL, "
                "version INTEGER NOT NULL, template TEXT NOT NULL, PRIMARY KEY (template_id, version))"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS template_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO template_meta VALUES ('revision', 0)")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, template_id: str, make: Callable[[Template | None], Template]) -> Template:
        with self._transaction() as db:
            row = db.execute(
                "SELECT template FROM template_versions WHERE template_id = ? ORDER BY version DESC LIMIT 1",
                (template_id,),
            ).fetchone()
            current = _decode_current(row[0]) if row else None
            new = make(current)
            if new is not current:
                db.execute(
                    "INSERT INTO template_versions VALUES (?, ?, ?)",
                    (new.template_id, new.version, _ENCODER.encode(new).decode()),
                )
                db.execute("UPDATE template_meta SET value = value + 1 WHERE key = 'revision'")
            return new

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _latest_all(self) -> list[Template]:
        rows = self._query(
            "SELECT t.template FROM template_versions t JOIN (SELECT template_id, MAX(version) AS v "
            "FROM template_versions GROUP BY template_id) m "
            "ON t.template_id = m.template_id AND t.version = m.v"
        )
        return _decode_all(r[0] for r in rows)

    def _versions(self, template_id: str) -> list[Template]:
        rows = self._query(
            "SELECT template FROM template_versions WHERE template_id = ? ORDER BY version", (template_id,)
        )
        return [_decode_stored(r[0]) for r in rows]

    def _get_version(self, template_id: str, version: int | None) -> Template | None:
        if version is None:
            rows = self._query(
                "SELECT template FROM template_versions WHERE template_id = ? ORDER BY version DESC LIMIT 1",
                (template_id,),
            )
        else:
            rows = self._query(
                "SELECT template FROM template_versions WHERE template_id = ? AND version = ?", (template_id, version)
            )
        return _decode_stored(rows[0][0]) if rows else None

    def revision(self) -> int:
        return self._query("SELECT value FROM template_meta WHERE key = 'revision'")[0][0]

    # -- as the local copy of a Redis store -------------------------------------------

    def all_versions(self) -> list[Template]:
        """Every version of every template, by id then version."""
        rows = self._query("SELECT template FROM template_versions ORDER BY template_id, version")
        return _decode_all(r[0] for r in rows)

    def keep(self, versions: Iterable[Template]) -> None:
        """Add ``versions`` (those already here stay: a version never changes)."""
        rows = [(t.template_id, t.version, _ENCODER.encode(t).decode()) for t in versions]
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO template_versions VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RedisTemplateStore(TemplateStore):
    """Templates in Redis, shared by API replicas.

    Keys (under ``prefix``): ``v:<template_id>`` a hash of version -> template
    JSON; ``latest`` a hash of template_id -> its latest version's JSON (one
    HGETALL lists them all); ``revision`` the write counter. A write WATCHes
    the template's version hash and commits the new version, ``latest`` and
    the revision in one MULTI, so concurrent writes to one template (two
    creates, two updates) cannot both land on the same version.

    ``breaker`` (`store.redis_guard.Breaker`) bounds an outage's cost; ``copy``, a
    `SQLiteTemplateStore`, is the local copy `recover` restores from.
    """

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None, copy: SQLiteTemplateStore | None = None):
        from store.redis_guard import Breaker

        self._redis = client
        self.prefix = prefix
        self._latest_key = f"{prefix}latest"
        self._revision_key = f"{prefix}revision"
        self._breaker = breaker or Breaker(prefix, open_s=0)
        self.copy = copy
        self._copied: int | None = None  # the Redis revision the copy holds
        self._recovering = threading.Lock()  # one restore at a time in this process
        # Whether Redis should hold templates (it did, or this replica's copy has some): then an empty one lost them.
        self._seen = copy is not None and bool(copy.list(include_archived=True))
        #: (time.monotonic(), what) of the last restore (what: "" if none yet), for /readyz.
        self.recovered: tuple[float, str] = (0.0, "")
        self._restore = client.register_script(_RESTORE_TEMPLATES)

    def _versions_key(self, template_id: str) -> str:
        return f"{self.prefix}v:{template_id}"

    def _call(self):
        return redis_call(self._breaker, "template store (Redis)")

    def _write(self, template_id: str, make: Callable[[Template | None], Template]) -> Template:
        with self._call():
            new = self._write_redis(template_id, make)
        if self.copy is not None:
            self.copy.keep([new])  # written through: this replica's own writes are kept at once
        return new

    def _write_redis(self, template_id: str, make: Callable[[Template | None], Template]) -> Template:
        key = self._versions_key(template_id)

        def attempt(pipe) -> Template:  # re-run by redis-py when the watched hash changed meanwhile
            latest = pipe.hlen(key)  # versions are 1..n, so the count is the latest
            current = _decode_current(pipe.hget(key, str(latest))) if latest else None
            new = make(current)
            if new is not current:
                data = _ENCODER.encode(new)
                pipe.multi()
                pipe.hset(key, str(new.version), data)
                pipe.hset(self._latest_key, template_id, data)
                pipe.incr(self._revision_key)
            return new

        return self._redis.transaction(attempt, key, value_from_callable=True)

    def _latest_all(self) -> list[Template]:
        with self._call():
            return _decode_all(self._redis.hvals(self._latest_key))

    def _versions(self, template_id: str) -> list[Template]:
        with self._call():
            stored = self._redis.hgetall(self._versions_key(template_id))
        return [_decode_stored(stored[v]) for v in sorted(stored, key=int)]

    def _get_version(self, template_id: str, version: int | None) -> Template | None:
        with self._call():
            if version is None:
                raw = self._redis.hget(self._latest_key, template_id)
            else:
                raw = self._redis.hget(self._versions_key(template_id), str(version))
        return None if raw is None else _decode_stored(raw)

    def revision(self) -> int:
        with self._call():
            raw = self._redis.get(self._revision_key)
        if raw is not None:
            self._seen = True
        elif self._seen:
            # Redis lost the templates since this process saw them: put them back before anyone reads an empty set.
            self.recover()
            with self._call():
                raw = self._redis.get(self._revision_key)
        return int(raw or 0)

    def recover(self) -> str:
        """Keep the local copy in step with Redis, or restore Redis from it; returns what was done ("" if nothing).

        Redis lost the templates when its revision counter is gone or went back (a
        restart without persistence, FLUSHALL, an older snapshot): every version of
        the copy is put back, versions Redis holds winning (one Lua script: replicas
        restoring at once agree), else, with no copy, the default templates are seeded.
        """
        if self.copy is None:
            return ""
        with self._recovering:
            return self._recover()

    def _recover(self) -> str:
        with self._call():
            raw = self._redis.get(self._revision_key)
        revision = None if raw is None else int(raw)
        if revision is not None and (self._copied is None or revision >= self._copied):
            if revision != self._copied:
                self.copy.keep(self._all_versions())
                self._copied = revision
            self._seen = True
            return ""
        kept = self.copy.all_versions()
        if not kept:
            created = self.seed(DEFAULT_TEMPLATES.values())
            self._copied = None
            if not created:
                return ""
            what = f"seeded the {created} default templates (no local copy to restore)"
            if self._seen:  # not a first start: Redis lost them
                self.recovered = (time.monotonic(), what)
            return what
        args: list[Any] = [f"{self.prefix}v:", self._copied or 0]
        for t in kept:
            args += [t.template_id, t.version, _ENCODER.encode(t)]
        with self._call():
            self._copied = int(self._restore(keys=[self._latest_key, self._revision_key], args=args))
        self._seen = True
        log.warning(
            "Redis had lost the templates: restored %d versions of %d templates from the local copy %s",
            len(kept),
            len({t.template_id for t in kept}),
            self.copy.path,
        )
        self.recovered = (
            time.monotonic(),
            f"restored {len({t.template_id for t in kept})} templates ({len(kept)} versions) from the local copy",
        )
        return self.recovered[1]

    def _all_versions(self) -> list[Template]:
        with self._call():
            ids = self._redis.hkeys(self._latest_key)
            pipe = self._redis.pipeline(transaction=False)
            for template_id in ids:
                pipe.hgetall(self._versions_key(template_id.decode()))
            stored = pipe.execute()
        return _decode_all(raw for versions in stored for raw in versions.values())

    def close(self) -> None:
        self._redis.close()
        if self.copy is not None:
            self.copy.close()


#: Puts versions back (HSETNX: what Redis holds wins), points ``latest`` at each one's highest
#: version, and moves the revision past both its own and the copy's. KEYS: latest, revision;
#: ARGV: the version-hash prefix, the copy's revision, then (template_id, version, JSON) triples.
_RESTORE_TEMPLATES = """
local touched = {}
for i = 3, #ARGV, 3 do
  redis.call('HSETNX', ARGV[1] .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  touched[ARGV[i]] = true
end
for id in pairs(touched) do
  local key = ARGV[1] .. id
  redis.call('HSET', KEYS[1], id, redis.call('HGET', key, tostring(redis.call('HLEN', key))))
end
local revision = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2]))
redis.call('SET', KEYS[2], revision + 1)
return revision + 1
"""


def open_template_store(settings: Settings) -> TemplateStore:
    """The store ``settings`` name (Redis if ``redis_url`` is set, else SQLite), with the defaults on a first start."""
    path = Path(settings.store.template_db or Path(settings.store.feature_repo) / "data" / "templates.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.redis.url:
        from store.redis_guard import breaker_for

        store: TemplateStore = RedisTemplateStore(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
            copy=SQLiteTemplateStore(path),
        )
    else:
        store = SQLiteTemplateStore(path)
    try:
        if isinstance(store, RedisTemplateStore):
            try:
                store.recover()  # a Redis that lost them gets this replica's copy back, not only the defaults
            except StoreUnavailable as exc:  # down at start: LiveTemplates serves the copy; /readyz says so
                log.warning("%s: starting from the local copy %s", exc.detail, path)
                return store
        store.seed(DEFAULT_TEMPLATES.values())
    except BaseException:
        store.close()
        raise
    return store


class LiveTemplates:
    """The templates being served, from an in-memory snapshot of a store.

    `for_slot` is what the personalize path calls per request: a dict lookup,
    plus (at most every ``check_s`` seconds) one ``store.revision()`` read; the
    snapshot is re-read only when the revision moved. If the store cannot be
    reached, the last snapshot keeps serving, the failure is logged once, and
    the store is tried again every `RETRY_S` seconds (not every request: the
    personalize path calls this on the event loop, and a dead Redis must not stall it).
    """

    RETRY_S = 5.0

    def __init__(self, store: TemplateStore, check_s: float = 0.5, clock: Callable[[], float] = time.monotonic):
        if check_s < 0:
            raise ValueError(f"check_s must be >= 0, got {check_s}")
        self.store = store
        self.check_s = check_s
        self._clock = clock
        self._lock = threading.Lock()
        self._by_slot: dict[str, list[Template]] | None = None
        self._by_id: dict[str, Template] = {}
        self._revision: int | None = None
        self._next_check = float("-inf")
        self._failing = False
        # invalidate() bumps _wanted; a reload records the generation it started at, so an
        # invalidate that lands during a reload still forces the next one.
        self._wanted = 0
        self._loaded = -1

    def for_slot(self, slot: str) -> list[Template]:
        """The latest non-archived version of each template for ``slot``, sorted by id."""
        return list(self._snapshot().get(slot, ()))

    def by_id(self, template_id: str) -> Template | None:
        """The latest version of ``template_id`` if it is being served (not archived), else None."""
        self._snapshot()
        return self._by_id.get(template_id)

    def invalidate(self) -> None:
        """Re-read the store on the next call (after a write of one's own, to see it at once)."""
        self._wanted += 1

    def _snapshot(self) -> dict[str, list[Template]]:
        snapshot = self._by_slot
        if snapshot is not None and self._loaded == self._wanted and self._clock() < self._next_check:
            return snapshot
        with self._lock:
            if self._by_slot is None or self._loaded != self._wanted or self._clock() >= self._next_check:
                self._reload()  # (else another thread just did)
            return self._by_slot

    def _reload(self) -> None:
        wanted = self._wanted
        try:
            # Revision first: a write landing between the two reads is seen now, and again next check.
            revision = self.store.revision()
            if self._by_slot is None or wanted != self._loaded or revision != self._revision:
                self._set(self.store.list(), revision)
        except Exception:
            if self._by_slot is None and not self._load_copy():
                raise
            if not self._failing:
                log.warning(
                    "could not re-read the template store; serving the last snapshot and retrying every %.0f s",
                    self.RETRY_S,
                    exc_info=True,
                )
            self._failing = True
            self._loaded = wanted
            self._next_check = self._clock() + max(self.check_s, self.RETRY_S)
            return
        if self._failing:
            log.warning("the template store answers again")
        self._failing = False
        self._loaded = wanted
        self._next_check = self._clock() + self.check_s

    def _set(self, served: list[Template], revision: int | None) -> None:
        by_slot: dict[str, list[Template]] = {}
        for template in served:
            by_slot.setdefault(template.slot, []).append(template)
        self._by_id = {t.template_id: t for t in served}
        self._by_slot, self._revision = by_slot, revision

    def _load_copy(self) -> bool:
        """A first snapshot from the store's local copy (a Redis store's) when the store cannot answer at start."""
        copy = getattr(self.store, "copy", None)
        served = copy.list() if copy is not None else []
        if not served:
            return False
        self._set(served, None)  # no revision: the first check that reaches the store reloads
        log.warning(
            "the template store cannot be reached: serving its local copy (%d templates) until it answers", len(served)
        )
        return True


def open_templates(settings: Settings, check_s: float = 0.5) -> LiveTemplates:
    """`LiveTemplates` over `open_template_store` ``(settings)``; close with ``live.store.close()``."""
    return LiveTemplates(open_template_store(settings), check_s)


# -- the routes -----------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct):
    """What every error answer of the API carries (validation errors add ``extra``)."""

    status_code: int
    detail: str


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers a template route gives, for its OpenAPI ``responses``."""
    texts = {
        401: "no API key, or an unknown one",
        403: "the API key lacks the route's scope",
        404: "there is no such template (or version)",
        409: "a template with that id exists already",
        413: "the body is over the size limit",
        422: "the template is invalid or cannot render: the reason says why",
    }
    return {code: ResponseSpec(ErrorBody, description=texts[code]) for code in (401, 403, *codes)}


class _Body(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


#: Largest version a store can hold (SQLite's INTEGER): a larger one in a request is a 400, not a 500.
MAX_VERSION = 2**63 - 1
TemplateId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a-z, 0-9, - and _")]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS)]
Copy = Annotated[str, msgspec.Meta(min_length=1, max_length=max(MAX_CHARS.values()))]
Segment = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Segments = Annotated[list[Segment], msgspec.Meta(max_length=64)]


class TemplateIn(_Body):
    """A new template: its id, slot, body, and default copy for each ``ai.<slot>`` the body uses."""

    template_id: TemplateId
    slot: Slot
    body: Body
    default_copy: dict[Slot, Copy] = {}
    segments: Segments = []
    tone: Tone | None = None


class TemplatePatch(_Body):
    """Fields to change (any of them); the others keep their values. ``tone: null`` clears the tone."""

    body: Body | msgspec.UnsetType = msgspec.UNSET
    default_copy: dict[Slot, Copy] | msgspec.UnsetType = msgspec.UNSET
    segments: Segments | msgspec.UnsetType = msgspec.UNSET
    tone: Tone | None | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET


class TemplateOut(msgspec.Struct, frozen=True):
    """One version of a template, every field present."""

    template_id: str
    version: int
    slot: Slot
    body: str
    default_copy: dict[str, str]
    segments: list[str]
    tone: Tone | None
    archived: bool
    created: str

    @classmethod
    def of(cls, template: Template) -> TemplateOut:
        return cls(**{**msgspec.structs.asdict(template), "segments": list(template.segments)})


@contextmanager
def _http_errors() -> Iterator[None]:
    """Store and validation errors as HTTP answers whose ``detail`` says what to do."""
    try:
        yield
    except TemplateNotFound as exc:
        raise NotFoundException(detail=exc.reason) from None
    except TemplateConflict as exc:
        raise HTTPException(status_code=409, detail=exc.reason) from None
    except TemplateError as exc:
        raise HTTPException(status_code=422, detail=exc.reason) from None


def _live(request: Request) -> LiveTemplates:
    return request.app.state.templates


class TemplateController(Controller):
    """Versioned content templates: create, read, revise, archive."""

    path = "/v1/templates"
    tags = ("templates",)

    @post(summary="Create a template", opt={"scope": "admin"}, sync_to_thread=True, responses=_errors(409, 413, 422))
    def create_template(self, request: Request, data: JSONBody[TemplateIn]) -> TemplateOut:
        """Create a template (version 1). Needs the `admin` scope.

        The body is checked before it is saved: placeholders are `user.<field>`,
        `item.<field>`, `ai.<slot>` and `discount_pct`, with a few filters and
        `{% if %}`; each `ai.<slot>` used needs `default_copy` for that slot. It is
        then rendered with sample values and must render (user fields as text or
        as numbers, an item on sale and one at full price).
        Answers 409 if the id is taken, 422 with the reason if the template is invalid or cannot render.
        """
        live = _live(request)
        with _http_errors():
            template, _ = new_template(
                data.template_id,
                data.slot,
                data.body,
                default_copy=data.default_copy,
                segments=data.segments,
                tone=data.tone,
            )
            created = live.store.create(template)
        live.invalidate()
        return TemplateOut.of(created)

    @get(summary="List templates", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors())
    def list_templates(
        self,
        request: Request,
        slot: Annotated[Slot | None, QueryParameter(description="only this slot's templates")] = None,
        segment: Annotated[str | None, QueryParameter(description="only those meant for this segment")] = None,
        include_archived: Annotated[bool, QueryParameter(description="archived ones too")] = False,
    ) -> list[TemplateOut]:
        """The latest version of each template, sorted by id.

        Filter by `slot`, or by `segment` (templates tagged with it, or with no
        segments); archived templates are left out unless `include_archived=true`.
        """
        templates = _live(request).store.list(slot=slot, segment=segment, include_archived=include_archived)
        return [TemplateOut.of(t) for t in templates]

    @get(
        "/{template_id:str}",
        summary="Get a template",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def get_template(
        self,
        request: Request,
        template_id: FromPath[str],
        version: Annotated[int | None, QueryParameter(ge=1, le=MAX_VERSION, description="a past version")] = None,
    ) -> TemplateOut:
        """One template: its latest version, or the `version` asked for (404 if there is none)."""
        with _http_errors():
            return TemplateOut.of(_live(request).store.get(template_id, version))

    @get(
        "/{template_id:str}/versions",
        summary="List a template's versions",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def template_versions(self, request: Request, template_id: FromPath[str]) -> list[TemplateOut]:
        """Every version of a template, oldest first (404 if there is no such template)."""
        with _http_errors():
            return [TemplateOut.of(t) for t in _live(request).store.versions(template_id)]

    @patch(
        "/{template_id:str}",
        summary="Revise a template",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(404, 413, 422),
    )
    def update_template(
        self, request: Request, template_id: FromPath[str], data: JSONBody[TemplatePatch]
    ) -> TemplateOut:
        """Change a template: saves a new version (earlier ones stay readable). Needs the `admin` scope.

        Send only the fields to change; `archived: false` restores an archived
        template. Answers 400 for an empty change, 404 for an unknown id, 422
        with the reason if the changed template is invalid (a new body must render, as on create).
        """
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if not changes:
            raise HTTPException(
                status_code=400,
                detail="nothing to change: send at least one of " + ", ".join(TemplatePatch.__struct_fields__),
            )
        live = _live(request)
        with _http_errors():
            updated = live.store.update(template_id, changes)
        live.invalidate()
        return TemplateOut.of(updated)

    @post(
        "/{template_id:str}/archive",
        summary="Archive a template",
        status_code=200,
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def archive_template(self, request: Request, template_id: FromPath[str]) -> TemplateOut:
        """Stop serving a template: saves a version with `archived: true`. Needs the `admin` scope.

        It stays readable, and `PATCH` with `archived: false` restores it.
        Archiving an archived template changes nothing and returns it.
        """
        live = _live(request)
        with _http_errors():
            archived = live.store.archive(template_id)
        live.invalidate()
        return TemplateOut.of(archived)
