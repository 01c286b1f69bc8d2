"""Content templates, stored and versioned, and the live snapshot the personalize path serves from.

Every change is a new version: a template is a row per ``(template_id,
version)`` and nothing is overwritten, so old versions stay readable (and an
experiment report can say which version served). Archiving is a version too:
an archived template is not served but stays readable, and a later update with
``archived=False`` restores it.

Two stores, one interface (`TemplateStore`), on the plumbing of `store.records`:

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
another replica's write shows within about half a second. The routes are
`api.templates`.

Examples
--------
>>> import pathlib, tempfile
>>> from engine.content.templates import new_template
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
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from config.settings import Settings
from engine.content.templates import DEFAULT_TEMPLATES, Template, TemplateError, check_renders, revise
from store.records import (
    RedisRecords,
    SQLiteRecords,
    local_path,
    now_iso,
    recover_at_start,
    redis_store,
)

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
        new = msgspec.structs.replace(template, version=1, created=template.created or now_iso())

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
                return _replace_stale(current, {**changes, "created": now_iso()})
            return revise(current, **{**changes, "created": now_iso()})

        return self._write(template_id, make)

    def archive(self, template_id: str) -> Template:
        """A new version with ``archived=True`` (not served, still readable); an archived one is returned as is."""

        def make(current: Template | _Stale | None) -> Template:
            if current is None:
                raise _not_found(template_id)
            if isinstance(current, _Stale):
                raise current.error()
            return current if current.archived else revise(current, archived=True, created=now_iso())

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


class SQLiteTemplateStore(SQLiteRecords, TemplateStore):
    """Templates in one SQLite file (`store.records.SQLiteRecords`): a row per version, plus the revision counter."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS template_versions (template_id TEXT NOT NULL, "
        "version INTEGER NOT NULL, template TEXT NOT NULL, PRIMARY KEY (template_id, version))",
        "CREATE TABLE IF NOT EXISTS template_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    )
    META = "template_meta"

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
                self._bump(db)
            return new

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


class RedisTemplateStore(RedisRecords, TemplateStore):
    """Templates in Redis, shared by API replicas (`store.records.RedisRecords`: the local copy, the restore).

    Keys (under ``prefix``): ``v:<template_id>`` a hash of version -> template
    JSON; ``latest`` a hash of template_id -> its latest version's JSON (one
    HGETALL lists them all); ``revision`` the write counter. A write WATCHes
    the template's version hash and commits the new version, ``latest`` and
    the revision in one MULTI, so concurrent writes to one template (two
    creates, two updates) cannot both land on the same version.

    ``copy``, a `SQLiteTemplateStore`, is the local copy `recover` restores from;
    with no copy either, a Redis that lost the templates gets the defaults.
    """

    WHAT = "template store (Redis)"
    #: Puts versions back (HSETNX: what Redis holds wins), points ``latest`` at each one's highest
    #: version, and moves the revision past both its own and the copy's. KEYS: latest, revision;
    #: ARGV: the version-hash prefix, the copy's revision, then (template_id, version, JSON) triples.
    RESTORE = """
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

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None, copy: SQLiteTemplateStore | None = None):
        self._latest_key = f"{prefix}latest"
        super().__init__(client, prefix, breaker=breaker, copy=copy)

    def _versions_key(self, template_id: str) -> str:
        return f"{self.prefix}v:{template_id}"

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

    # -- the restore (`store.records.RedisRecords.recover`) -------------------------------

    def _copy_has_records(self) -> bool:
        return bool(self.copy.list(include_archived=True))

    def _sync_copy(self) -> None:
        self.copy.keep(self._all_versions())

    def _kept(self) -> list[Template]:
        return self.copy.all_versions()

    def _nothing_kept(self, revision: int | None) -> str:
        created = self.seed(DEFAULT_TEMPLATES.values())
        self._copied = None
        if not created:
            return ""
        what = f"seeded the {created} default templates (no local copy to restore)"
        if self._seen:  # not a first start: Redis lost them
            self.recovered = (time.monotonic(), what)
        return what

    def _restore_args(self, kept: list[Template]) -> tuple[list[str], list[Any]]:
        args: list[Any] = [f"{self.prefix}v:", self._copied or 0]
        for t in kept:
            args += [t.template_id, t.version, _ENCODER.encode(t)]
        return [self._latest_key, self._revision_key], args

    def _restored(self, kept: list[Template]) -> str:
        templates = len({t.template_id for t in kept})
        log.warning(
            "Redis had lost the templates: restored %d versions of %d templates from the local copy %s",
            len(kept),
            templates,
            self.copy.path,
        )
        return f"restored {templates} templates ({len(kept)} versions) from the local copy"

    def _all_versions(self) -> list[Template]:
        with self._call():
            ids = self._redis.hkeys(self._latest_key)
            pipe = self._redis.pipeline(transaction=False)
            for template_id in ids:
                pipe.hgetall(self._versions_key(template_id.decode()))
            stored = pipe.execute()
        return _decode_all(raw for versions in stored for raw in versions.values())


def open_template_store(settings: Settings) -> TemplateStore:
    """The store ``settings`` name (Redis if ``redis_url`` is set, else SQLite), with the defaults on a first start."""
    path = local_path(settings.store.template_db, settings, "templates.db")
    if settings.redis.url:
        store: TemplateStore = redis_store(settings, RedisTemplateStore, SQLiteTemplateStore, path)
    else:
        store = SQLiteTemplateStore(path)
    try:
        if isinstance(store, RedisTemplateStore) and not recover_at_start(store):
            return store  # Redis is down: LiveTemplates serves the local copy; /readyz says so
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
