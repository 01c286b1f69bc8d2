"""The SQLite catalog: idempotent bulk writes with a status per item, paging, delete, shelves by category."""

from __future__ import annotations

import msgspec
import pytest

from config.settings import Settings
from engine.content.catalog import Item, build_catalog
from engine.content.personalize import choose_from_catalog
from store.catalog import ItemNotFound, LiveCatalog, SQLiteCatalog, open_catalog


def item(item_id: str = "sku-1", category: str = "shoes", **changes) -> Item:
    fields = {"title": "Nordvik Trail Runner", "brand": "Nordvik", "price": 85.0, "attributes": {"colour": "navy"}}
    return Item(item_id=item_id, category=category, **(fields | changes))


@pytest.fixture
def store(tmp_path):
    opened = SQLiteCatalog(tmp_path / "catalog.db")
    yield opened
    opened.close()


def test_the_same_item_twice_changes_nothing_and_each_item_says_what_happened(store):
    start = store.revision()
    assert store.upsert([item("a"), item("b")]) == ["created", "created"]
    assert store.revision() == start + 1  # once per write, not per item
    # Attributes in another order are the same item.
    same = item("a", attributes={"colour": "navy"})
    assert store.upsert([same, item("b")]) == ["unchanged", "unchanged"]
    assert store.revision() == start + 1
    assert store.upsert([item("a", price=79.0), item("b"), item("c")]) == ["updated", "unchanged", "created"]
    assert store.revision() == start + 2
    assert store.get("a").price == 79.0 and store.count() == 3
    # Given twice in one batch: written in order.
    assert store.upsert([item("d"), item("d"), item("d", price=1.0)]) == ["created", "unchanged", "updated"]
    assert store.get("d").price == 1.0


def test_items_survive_a_reopen_and_get_many_leaves_unknown_ids_out(tmp_path):
    first = SQLiteCatalog(tmp_path / "catalog.db")
    first.upsert([item("a", discount_pct=20), item("b")])
    first.close()
    again = SQLiteCatalog(tmp_path / "catalog.db")
    try:
        assert again.get("a") == item("a", discount_pct=20) and again.get("a").sale_price == 68.0
        assert sorted(again.get_many(["b", "nope", "a"])) == ["a", "b"]
        assert again.get_many([]) == {}
        with pytest.raises(ItemNotFound, match=r"there is no item 'nope': check the id \(GET /v1/items"):
            again.get("nope")
    finally:
        again.close()


def test_list_pages_by_item_id(store):
    store.upsert([item(f"sku-{n:03d}") for n in (5, 1, 3, 2, 4)])
    first = store.list(limit=2)
    assert [i.item_id for i in first] == ["sku-001", "sku-002"]
    second = store.list(after=first[-1].item_id, limit=2)
    assert [i.item_id for i in second] == ["sku-003", "sku-004"]
    assert [i.item_id for i in store.list(after="sku-004", limit=2)] == ["sku-005"]
    assert store.list(after="sku-005") == []


def test_delete_removes_one_item_and_a_missing_one_is_not_found(store):
    store.upsert([item("a"), item("b")])
    revision = store.revision()
    store.delete("a")
    assert store.revision() == revision + 1 and store.count() == 1 and store.get_many(["a"]) == {}
    with pytest.raises(ItemNotFound, match="there is no item 'a'"):
        store.delete("a")
    assert store.revision() == revision + 1
    assert store.upsert([item("a")]) == ["created"]  # deleted, then written again: new


def test_in_category_follows_a_category_change(store):
    store.upsert([item("a", "shoes"), item("b", "books"), item("c", "shoes"), item("d", "shoes")])
    assert [i.item_id for i in store.in_category("shoes")] == ["a", "c", "d"]
    assert [i.item_id for i in store.in_category("shoes", limit=2)] == ["a", "c"]
    store.upsert([item("a", "books")])
    assert [i.item_id for i in store.in_category("shoes")] == ["c", "d"]
    assert [i.item_id for i in store.in_category("books")] == ["a", "b"]
    assert store.in_category("garden") == []


def test_a_stored_row_that_no_longer_decodes_is_skipped_not_a_failure(store):
    store.upsert([item("a"), item("b")])
    with store._transaction() as db:
        db.execute("UPDATE items SET item = '{\"item_id\": \"a\"}' WHERE item_id = 'a'")
    assert [i.item_id for i in store.list()] == ["b"]
    assert store.get_many(["a", "b"]).keys() == {"b"}


def test_catalog_db_setting_places_the_file(tmp_path):
    opened = open_catalog(Settings.of(feature_repo=str(tmp_path), catalog_db=str(tmp_path / "x" / "c.db")))
    try:
        assert opened.path == tmp_path / "x" / "c.db" and opened.path.exists()
    finally:
        opened.close()
    default = open_catalog(Settings.of(feature_repo=str(tmp_path)))
    try:
        assert default.path == tmp_path / "data" / "catalog.db"
    finally:
        default.close()


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_live_catalog_resolves_in_order_and_names_every_unknown_id(store):
    store.upsert([item("a"), item("b")])
    live = LiveCatalog(store)
    assert [i.item_id for i in live.resolve(["b", "a", "b"])] == ["b", "a", "b"]
    with pytest.raises(ItemNotFound) as raised:
        live.resolve(["a", "x", "y"])
    assert raised.value.missing == ("x", "y")
    assert raised.value.reason.startswith("2 of the item_ids are not in the catalog: 'x', 'y'; write them with PUT")


def test_live_shelves_reread_only_when_the_revision_moved(store):
    clock = FakeClock()
    live = LiveCatalog(store, check_s=0.5, shelf_size=2, clock=clock)
    assert live.shelf("shoes") == ()  # an empty catalog: no shelf
    store.upsert([item("a"), item("b"), item("c")])
    assert live.shelf("shoes") == ()  # not checked again yet
    clock.now += 0.6
    assert [i.item_id for i in live.shelf("shoes")] == ["a", "b"]
    calls = []
    store.in_category = lambda *a: calls.append(a) or []  # type: ignore[method-assign]
    clock.now += 0.6
    assert [i.item_id for i in live.shelf("shoes")] == ["a", "b"] and calls == []  # same revision: from memory
    live.invalidate()
    assert live.shelf("shoes") == () and calls == [("shoes", 2)]


def test_live_shelves_keep_serving_when_the_store_fails(store, caplog):
    store.upsert([item("a")])
    clock = FakeClock()
    live = LiveCatalog(store, clock=clock)
    assert [i.item_id for i in live.shelf("shoes")] == ["a"]

    def down(*args):
        raise ConnectionError("catalog down")

    store.revision = store.in_category = down  # type: ignore[method-assign]
    clock.now += 1
    assert [i.item_id for i in live.shelf("shoes")] == ["a"]  # the shelf last read
    assert live.shelf("books") == ()  # never read: no pick, no failure
    assert "could not read the catalog" in caplog.text


def test_the_simulators_catalog_fills_every_shelf(store):
    catalog = build_catalog(seed=1, n_items=40)
    assert set(store.upsert(catalog.items)) == {"created"}
    live = LiveCatalog(store)
    for category in catalog.categories:
        shelf = live.shelf(category)
        picked, why = choose_from_catalog([i.facts() for i in shelf], category, "p_user")
        assert picked["category"] == category and why.startswith(f"picked from the catalog: top category {category!r}")
    assert msgspec.json.decode(msgspec.json.encode(shelf[0]), type=Item) == shelf[0]
