"""The item catalog: the products a shop or CMS writes in bulk, and the shelves personalize picks from.

Items are `engine.content.catalog.Item`, one record per ``item_id``; a write
replaces the whole item. Writing an item exactly as it is stored changes nothing
(``"unchanged"``, no revision bump), so a webhook that sends its whole catalog
again costs reads only. Two stores, one interface (`CatalogStore`):

- SQLite (`SQLiteCatalog`), the embedded default: one file next to the Feast
  data (``<feature_repo>/data/catalog.db``, or ``TAILOR_CATALOG_DB``).
- Redis (`RedisCatalog`) when ``TAILOR_REDIS_URL`` is set, so API replicas share
  one catalog. Each write is one Lua script (items, their id and category indexes
  and the revision move together); every call is bounded (`store.redis_guard`),
  and a Redis that cannot answer is a `StoreUnavailable` (HTTP 503). Unlike the
  templates it keeps no local copy in each replica: the shop is the catalog's
  system of record (a lost catalog comes back with its next webhook, or
  ``tailor catalog load``), and a copy would be re-read whole at every bulk write.

`LiveCatalog` is what the personalize path reads: candidate ids resolved in one
call, and per category a short shelf kept in memory, re-read only when the
store's revision moved. The routes are `api.items`.

Examples
--------
>>> import pathlib, tempfile
>>> from engine.content.catalog import build_catalog
>>> store = SQLiteCatalog(pathlib.Path(tempfile.mkdtemp()) / "catalog.db")
>>> items = build_catalog(seed=1, n_items=3).items
>>> store.upsert(items)
['created', 'created', 'created']
>>> store.upsert(items[:1] + (msgspec.structs.replace(items[1], price=1.0),))
['unchanged', 'updated']
>>> [i.item_id for i in store.list(after="sku-000000", limit=5)]
['sku-000001', 'sku-000002']
>>> store.delete("sku-000002"); store.count()
2
>>> store.close()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import msgspec

from config.settings import Settings
from engine.content.catalog import Item
from store.records import RedisRecords, SQLiteRecords, local_path

log = logging.getLogger(__name__)

#: Where the Redis store keeps its keys, unless told otherwise.
REDIS_PREFIX = "tailor:catalog:"
#: What a write did to one item.
Written = Literal["created", "updated", "unchanged"]
_WRITTEN: tuple[Written, ...] = ("unchanged", "updated", "created")  # the Redis script's codes

_DECODER = msgspec.json.Decoder(Item)
# Deterministic: attributes in any order encode alike, so the same item twice is "unchanged".
_ENCODER = msgspec.json.Encoder(order="deterministic")
#: SQLite binds at most this many ``?`` per statement on older builds: reads go in chunks.
_CHUNK = 500


class ItemNotFound(LookupError):
    """No such item (or items); ``reason`` says which, in one line."""

    def __init__(self, reason: str, missing: Sequence[str] = ()):
        super().__init__(reason)
        self.reason = reason
        self.missing = tuple(missing)


def _not_found(item_id: str) -> ItemNotFound:
    return ItemNotFound(f"there is no item {item_id!r}: check the id (GET /v1/items lists them)", [item_id])


def _decode_all(raws: Iterable[bytes | str | None]) -> list[Item]:
    """Stored items, skipping (and logging) any that no longer decode: one bad row must not fail a page."""
    items = []
    for raw in raws:
        if raw is None:
            continue
        try:
            items.append(_DECODER.decode(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.warning("skipping a stored item that no longer decodes: %s", exc)
    return items


class CatalogStore:
    """Items by id: what both backends share.

    A backend provides `upsert`, `get_many`, `list`, `delete`, `in_category`, `count`,
    `revision` and `close`; `get` is here.
    """

    def upsert(self, items: Sequence[Item]) -> list[Written]:
        """Write ``items`` (each replaces its stored version); what each write did, in order.

        One item given twice in a batch is written in order: the second is
        ``"unchanged"`` if it equals the first. The revision moves once, if anything changed.
        """
        raise NotImplementedError

    def get_many(self, item_ids: Sequence[str]) -> dict[str, Item]:
        """The stored items among ``item_ids``, by id (unknown ids are left out)."""
        raise NotImplementedError

    def list(self, after: str = "", limit: int = 100) -> list[Item]:
        """At most ``limit`` items with ids after ``after``, by id: a page, its last id the next cursor."""
        raise NotImplementedError

    def delete(self, item_id: str) -> None:
        """Remove one item; `ItemNotFound` if there is none."""
        raise NotImplementedError

    def in_category(self, category: str, limit: int = 20) -> list[Item]:
        """At most ``limit`` items of ``category``, by id."""
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def revision(self) -> int:
        """A counter bumped by every write that changed something: changed means re-read."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def get(self, item_id: str) -> Item:
        """One item; `ItemNotFound` if there is none."""
        found = self.get_many([item_id]).get(item_id)
        if found is None:
            raise _not_found(item_id)
        return found


class SQLiteCatalog(SQLiteRecords, CatalogStore):
    """Items in one SQLite file (`store.records.SQLiteRecords`): a row per item, indexed by category."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, category TEXT NOT NULL, item TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS items_by_category ON items (category, item_id)",
        "CREATE TABLE IF NOT EXISTS catalog_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    )
    META = "catalog_meta"

    def upsert(self, items: Sequence[Item]) -> list[Written]:
        encoded = [_ENCODER.encode(i).decode() for i in items]
        out: list[Written] = []
        with self._transaction() as db:
            stored = self._stored(db, [i.item_id for i in items])
            for item, data in zip(items, encoded):
                was = stored.get(item.item_id)
                if was == data:
                    out.append("unchanged")
                    continue
                db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", (item.item_id, item.category, data))
                stored[item.item_id] = data
                out.append("created" if was is None else "updated")
            if any(w != "unchanged" for w in out):
                self._bump(db)
        return out

    def _stored(self, db, item_ids: Sequence[str]) -> dict[str, str]:
        unique = list(dict.fromkeys(item_ids))
        found: dict[str, str] = {}
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(db.execute(f"SELECT item_id, item FROM items WHERE item_id IN ({marks})", chunk).fetchall())
        return found

    def get_many(self, item_ids: Sequence[str]) -> dict[str, Item]:
        with self._lock:
            stored = self._stored(self._db, item_ids)
        return {i.item_id: i for i in _decode_all(stored.values())}

    def list(self, after: str = "", limit: int = 100) -> list[Item]:
        rows = self._query("SELECT item FROM items WHERE item_id > ? ORDER BY item_id LIMIT ?", (after, limit))
        return _decode_all(r[0] for r in rows)

    def delete(self, item_id: str) -> None:
        with self._transaction() as db:
            if db.execute("DELETE FROM items WHERE item_id = ?", (item_id,)).rowcount == 0:
                raise _not_found(item_id)
            self._bump(db)

    def in_category(self, category: str, limit: int = 20) -> list[Item]:
        rows = self._query("SELECT item FROM items WHERE category = ? ORDER BY item_id LIMIT ?", (category, limit))
        return _decode_all(r[0] for r in rows)

    def count(self) -> int:
        return self._query("SELECT COUNT(*) FROM items")[0][0]


class RedisCatalog(RedisRecords, CatalogStore):
    """Items in Redis, shared by API replicas (`store.records.RedisRecords` bounds every call).

    Keys (under ``prefix``): ``items`` a hash of item_id -> item JSON;
    ``category`` a hash of item_id -> its category; ``ids`` a sorted set of every
    id (all scores 0: ordered by id, paged with ZRANGEBYLEX); ``c:<category>`` the
    same for one category; ``revision`` the write counter. A write is one Lua
    script, so replicas writing at once never leave an index behind its items.
    """

    WHAT = "catalog (Redis)"
    RESTORE = "return 0"  # no local copy to restore from (see the module docstring)
    #: KEYS: items, category, ids, revision; ARGV: the category-set prefix, then (id, JSON, category)
    #: triples. Returns per item 0 unchanged, 1 updated, 2 created.
    UPSERT = """
local out, changed = {}, false
for i = 2, #ARGV, 3 do
  local id, json, category = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], id)
  if old == json then
    out[#out + 1] = 0
  else
    local was = redis.call('HGET', KEYS[2], id)
    if was and was ~= category then redis.call('ZREM', ARGV[1] .. was, id) end
    redis.call('HSET', KEYS[1], id, json)
    redis.call('HSET', KEYS[2], id, category)
    redis.call('ZADD', KEYS[3], 0, id)
    redis.call('ZADD', ARGV[1] .. category, 0, id)
    out[#out + 1] = old and 1 or 2
    changed = true
  end
end
if changed then redis.call('INCR', KEYS[4]) end
return out
"""
    #: KEYS: items, category, ids, revision; ARGV: the category-set prefix, the id. Returns 1 if it was there.
    DELETE = """
local category = redis.call('HGET', KEYS[2], ARGV[2])
if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if category then redis.call('ZREM', ARGV[1] .. category, ARGV[2]) end
redis.call('INCR', KEYS[4])
return 1
"""

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None):
        self._items, self._categories, self._ids = f"{prefix}items", f"{prefix}category", f"{prefix}ids"
        self._shelf_prefix = f"{prefix}c:"
        super().__init__(client, prefix, breaker=breaker, copy=None)
        self._upsert = client.register_script(self.UPSERT)
        self._delete = client.register_script(self.DELETE)

    @property
    def _keys(self) -> list[str]:
        return [self._items, self._categories, self._ids, self._revision_key]

    def upsert(self, items: Sequence[Item]) -> list[Written]:
        if not items:
            return []
        args: list[str | bytes] = [self._shelf_prefix]
        for item in items:
            args += [item.item_id, _ENCODER.encode(item), item.category]
        with self._call():
            codes = self._upsert(keys=self._keys, args=args)
        return [_WRITTEN[int(c)] for c in codes]

    def get_many(self, item_ids: Sequence[str]) -> dict[str, Item]:
        if not item_ids:
            return {}
        with self._call():
            raws = self._redis.hmget(self._items, list(item_ids))
        return {i.item_id: i for i in _decode_all(raws)}

    def _by_ids(self, key: str, after: str, limit: int) -> list[Item]:
        with self._call():
            ids = self._redis.zrangebylex(key, f"({after}" if after else "-", "+", start=0, num=limit)
            raws = self._redis.hmget(self._items, ids) if ids else []
        return _decode_all(raws)

    def list(self, after: str = "", limit: int = 100) -> list[Item]:
        return self._by_ids(self._ids, after, limit)

    def delete(self, item_id: str) -> None:
        with self._call():
            deleted = self._delete(keys=self._keys, args=[self._shelf_prefix, item_id])
        if not deleted:
            raise _not_found(item_id)

    def in_category(self, category: str, limit: int = 20) -> list[Item]:
        return self._by_ids(f"{self._shelf_prefix}{category}", "", limit)

    def count(self) -> int:
        with self._call():
            return int(self._redis.hlen(self._items))


#: Items per write when loading many, as one PUT /v1/items carries at most.
LOAD_BATCH = 1000


def load_items(store: CatalogStore, items: Sequence[Item], on_batch=None) -> dict[Written, int]:
    """Write ``items`` in batches of `LOAD_BATCH`; how many were created, updated, unchanged.

    ``on_batch(n)`` is called after each batch of ``n`` items (a progress bar's ``update``).
    """
    counts: dict[Written, int] = {"created": 0, "updated": 0, "unchanged": 0}
    for start in range(0, len(items), LOAD_BATCH):
        batch = items[start : start + LOAD_BATCH]
        for status in store.upsert(batch):
            counts[status] += 1
        if on_batch is not None:
            on_batch(len(batch))
    return counts


def open_catalog(settings: Settings) -> CatalogStore:
    """The store ``settings`` name: Redis if ``redis_url`` is set, else the SQLite file."""
    if settings.redis.url:
        from store.redis_guard import breaker_for, redis_client

        return RedisCatalog(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
        )
    return SQLiteCatalog(local_path(settings.store.catalog_db, settings, "catalog.db"))


class LiveCatalog:
    """The catalog as the personalize path reads it: candidate ids resolved, and shelves by category.

    `resolve` is one store call (``get_many``). `shelf` serves a category's first
    ``shelf_size`` items from memory, re-read only when the store's revision moved
    (checked at most every ``check_s`` seconds); if the store cannot be reached,
    the shelves last read keep serving, and it is tried again every `RETRY_S` seconds.
    """

    RETRY_S = 5.0
    #: Categories kept at most (a feature's top category is the events' free text): then all are dropped.
    MAX_SHELVES = 1024

    def __init__(
        self,
        store: CatalogStore,
        check_s: float = 0.5,
        shelf_size: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        if check_s < 0:
            raise ValueError(f"check_s must be >= 0, got {check_s}")
        if shelf_size < 1:
            raise ValueError(f"shelf_size must be at least 1, got {shelf_size}")
        self.store = store
        self.check_s = check_s
        self.shelf_size = shelf_size
        self._clock = clock
        self._shelves: dict[str, tuple[Item, ...]] = {}
        self._revision: int | None = None
        self._next_check = float("-inf")
        self._failing = False

    def resolve(self, item_ids: Sequence[str]) -> list[Item]:
        """The items of ``item_ids``, in that order; `ItemNotFound` naming every unknown id."""
        found = self.store.get_many(item_ids)
        missing = [i for i in dict.fromkeys(item_ids) if i not in found]
        if missing:
            named = ", ".join(repr(i) for i in missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            raise ItemNotFound(
                f"{len(missing)} of the item_ids {'is' if len(missing) == 1 else 'are'} not in the catalog: "
                f"{named}; write them with PUT /v1/items, or send them as items",
                missing,
            )
        return [found[i] for i in item_ids]

    def shelf(self, category: str) -> tuple[Item, ...]:
        """The first items of ``category`` by id (empty if it has none, or the store cannot answer yet)."""
        if self._clock() >= self._next_check:
            self._check()
        shelf = self._shelves.get(category)
        if shelf is None:
            try:
                shelf = tuple(self.store.in_category(category, self.shelf_size))
            except Exception:  # noqa: BLE001 - no shelf, no pick: the request is still served
                self._failed()
                return ()
            if len(self._shelves) >= self.MAX_SHELVES:
                self._shelves = {}
            self._shelves[category] = shelf
        return shelf

    def invalidate(self) -> None:
        """Re-read the shelves on the next call (after a write of one's own, to see it at once)."""
        self._next_check = float("-inf")
        self._revision = None

    def _check(self) -> None:
        try:
            revision = self.store.revision()
        except Exception:  # noqa: BLE001 - the shelves last read keep serving
            self._failed()
            return
        if revision != self._revision:
            self._shelves, self._revision = {}, revision
        if self._failing:
            log.warning("the catalog answers again")
        self._failing = False
        self._next_check = self._clock() + self.check_s

    def _failed(self) -> None:
        if not self._failing:
            log.warning(
                "could not read the catalog; serving the shelves last read and retrying every %.0f s",
                self.RETRY_S,
                exc_info=True,
            )
        self._failing = True
        self._next_check = self._clock() + max(self.check_s, self.RETRY_S)


def open_live_catalog(settings: Settings, check_s: float = 0.5) -> LiveCatalog:
    """`LiveCatalog` over `open_catalog` ``(settings)``; close with ``live.store.close()``."""
    return LiveCatalog(open_catalog(settings), check_s)
