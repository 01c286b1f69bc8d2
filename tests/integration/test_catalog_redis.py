"""The Redis catalog against a real redis-server: the SQLite store's behaviour, shared by replicas, bounded."""

from __future__ import annotations

import uuid

import pytest

from config.settings import Settings
from engine.content.catalog import Item, build_catalog
from store.catalog import ItemNotFound, LiveCatalog, RedisCatalog, open_catalog
from store.redis_guard import StoreUnavailable, redis_client

pytestmark = pytest.mark.integration


def item(item_id: str = "sku-1", category: str = "shoes", **changes) -> Item:
    fields = {"title": "Nordvik Trail Runner", "brand": "Nordvik", "price": 85.0, "attributes": {"colour": "navy"}}
    return Item(item_id=item_id, category=category, **(fields | changes))


@pytest.fixture
def replicas(redis_server):
    """Opens catalogs on one Redis prefix: each call another replica's connection."""
    prefix = f"test-{uuid.uuid4().hex[:8]}:catalog:"
    opened = []

    def make() -> RedisCatalog:
        opened.append(RedisCatalog(redis_client(redis_server.url), prefix=prefix))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def test_writes_are_idempotent_with_a_status_per_item(replicas):
    store = replicas()
    start = store.revision()
    assert store.upsert([item("a"), item("b")]) == ["created", "created"]
    assert store.upsert([item("a", attributes={"colour": "navy"}), item("b")]) == ["unchanged", "unchanged"]
    assert store.revision() == start + 1
    assert store.upsert([item("a", price=79.0), item("c"), item("c")]) == ["updated", "created", "unchanged"]
    assert store.revision() == start + 2 and store.count() == 3
    assert store.upsert([]) == []
    other = replicas()  # another replica reads the same catalog
    assert other.get("a").price == 79.0 and sorted(other.get_many(["a", "x", "c"])) == ["a", "c"]


def test_paging_delete_and_shelves_follow_each_write(replicas):
    store = replicas()
    store.upsert([item(f"sku-{n:03d}", "books" if n % 2 else "shoes") for n in (5, 1, 3, 2, 4)])
    first = store.list(limit=2)
    assert [i.item_id for i in first] == ["sku-001", "sku-002"]
    assert [i.item_id for i in store.list(after=first[-1].item_id, limit=5)] == ["sku-003", "sku-004", "sku-005"]
    assert [i.item_id for i in store.in_category("books")] == ["sku-001", "sku-003", "sku-005"]
    store.upsert([item("sku-001", "shoes")])  # moved: off the books shelf
    assert [i.item_id for i in store.in_category("books", limit=5)] == ["sku-003", "sku-005"]
    assert [i.item_id for i in store.in_category("shoes", limit=2)] == ["sku-001", "sku-002"]
    revision = store.revision()
    store.delete("sku-003")
    assert store.revision() == revision + 1 and store.count() == 4
    assert [i.item_id for i in store.in_category("books")] == ["sku-005"]
    assert "sku-003" not in {i.item_id for i in store.list()}
    with pytest.raises(ItemNotFound, match="there is no item 'sku-003'"):
        store.delete("sku-003")
    assert store.revision() == revision + 1


def test_live_catalog_sees_another_replicas_write(replicas):
    live = LiveCatalog(replicas(), check_s=0)
    assert live.shelf("shoes") == ()
    replicas().upsert(build_catalog(seed=1, n_items=40).in_category("shoes"))
    assert live.shelf("shoes") and all(i.category == "shoes" for i in live.shelf("shoes"))
    with pytest.raises(ItemNotFound, match="'nope'"):
        live.resolve([live.shelf("shoes")[0].item_id, "nope"])


def test_open_catalog_uses_redis_and_an_outage_is_a_store_unavailable(redis_server, tmp_path):
    store = open_catalog(Settings.of(feature_repo=str(tmp_path), redis_url=redis_server.url + ",db=8"))
    try:
        assert isinstance(store, RedisCatalog)
        store.upsert([item("a")])
        assert store.get("a") == item("a")
    finally:
        store.close()
    dead = open_catalog(Settings.of(feature_repo=str(tmp_path), redis_url="127.0.0.1:1"))
    try:
        with pytest.raises(StoreUnavailable):
            dead.get("a")
    finally:
        dead.close()
