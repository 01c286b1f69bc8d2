"""The /v1/items routes (bulk write with an answer per item, read, page, delete) and the catalog in /v1/personalize."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from api.app import create_app
from config.settings import Settings
from engine.content.catalog import build_catalog
from store.catalog import LiveCatalog
from tests.support import KEY

API_KEYS = "boss=admin,reader=serve,sdk=ingest"
ADMIN = {"X-API-Key": "boss"}
READER = {"X-API-Key": "reader"}
SHOE = {"item_id": "sku-1", "title": "Nordvik Trail Runner", "brand": "Nordvik", "category": "shoes", "price": 85.0}


@pytest.fixture
def client(feature_repo):
    # No broker needed: these routes never produce, and the Kafka producer connects lazily.
    from store.feast import apply_definitions, open_store

    settings = Settings.of(feature_repo=str(feature_repo), pseudonym_key=KEY, api_keys=API_KEYS, brokers="127.0.0.1:9")
    apply_definitions(open_store(settings))  # create_app's lifespan reads the Feast registry
    with TestClient(app=create_app(settings)) as c:
        yield c


def put(client, *items, headers=ADMIN):
    return client.put("/v1/items", json={"items": list(items)}, headers=headers)


def test_bad_items_get_their_own_errors_and_good_ones_land(client):
    r = put(
        client,
        SHOE,
        SHOE | {"item_id": "sku-2", "price": -1},
        {"item_id": "sku-3", "title": "No brand", "category": "shoes", "price": 10},
        SHOE | {"item_id": "sku-4", "colour": "red"},
        "not an item",
        SHOE | {"item_id": "sku-5", "discount_pct": 20, "attributes": {"colour": "navy"}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["created"], body["updated"], body["unchanged"], body["rejected"]) == (2, 0, 0, 4)
    results = body["items"]
    assert [(x["index"], x["item_id"], x["status"]) for x in results] == [
        (0, "sku-1", "created"),
        (1, "sku-2", "rejected"),
        (2, "sku-3", "rejected"),
        (3, "sku-4", "rejected"),
        (4, None, "rejected"),
        (5, "sku-5", "created"),
    ]
    assert "reason" not in results[0]
    assert results[1]["reason"] == "Expected `float` >= 0.0 - at `$.price`"
    assert results[2]["reason"] == "Object missing required field `brand`"
    assert results[3]["reason"] == "Object contains unknown field `colour`"
    assert results[4]["reason"] == "Expected `object`, got `str`"
    got = client.get("/v1/items/sku-5", headers=READER)
    assert got.status_code == 200 and got.json() == SHOE | {
        "item_id": "sku-5",
        "discount_pct": 20,
        "attributes": {"colour": "navy"},
        "sale_price": 68.0,
    }
    assert client.get("/v1/items/sku-2", headers=READER).status_code == 404


def test_writing_again_is_idempotent_and_a_change_is_an_update(client):
    assert put(client, SHOE).json()["items"][0]["status"] == "created"
    again = put(client, SHOE, SHOE | {"item_id": "sku-2"}).json()
    assert [x["status"] for x in again["items"]] == ["unchanged", "created"]
    changed = put(client, SHOE | {"price": 79.0}).json()
    assert changed["updated"] == 1 and client.get("/v1/items/sku-1", headers=READER).json()["price"] == 79.0


def test_all_bad_is_a_422_and_a_malformed_or_huge_body_is_refused(client):
    r = put(client, SHOE | {"price": "cheap"}, {"item_id": ""})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("none of the 2 items is valid; the first: item 0: Expected `float`")
    assert [x["status"] for x in r.json()["items"]] == ["rejected", "rejected"]
    assert client.get("/v1/items", headers=READER).json() == {"items": [], "next": None}
    for body, detail in (
        (b"not json", "the body must be a JSON object"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b'{"items": [], "extra": 1}', "Object contains unknown field `extra`"),
        (b"{}", "Object missing required field `items`"),
        (b'{"items": []}', "no items: send at least one"),
    ):
        r = client.put("/v1/items", content=body, headers=ADMIN | {"Content-Type": "application/json"})
        assert r.status_code == 400 and detail in r.json()["detail"], (body, r.text)
    too_many = put(client, *[SHOE | {"item_id": f"sku-{n}"} for n in range(1001)])
    assert too_many.status_code == 413 and "1001 items in one request; at most 1000" in too_many.json()["detail"]
    deep = client.put("/v1/items", content=b'{"items": [' + b"[" * 1200 + b"]" * 1200 + b"]}", headers=ADMIN)
    assert deep.status_code == 400, deep.text


def test_list_pages_by_id_and_delete_is_404_once_gone(client):
    put(client, *[SHOE | {"item_id": f"sku-{n}"} for n in (3, 1, 2)])
    first = client.get("/v1/items", params={"limit": 2}, headers=READER).json()
    assert [i["item_id"] for i in first["items"]] == ["sku-1", "sku-2"] and first["next"] == "sku-2"
    rest = client.get("/v1/items", params={"after": first["next"], "limit": 2}, headers=READER).json()
    assert [i["item_id"] for i in rest["items"]] == ["sku-3"] and rest["next"] is None
    assert client.get("/v1/items", params={"limit": 0}, headers=READER).status_code == 400
    assert client.delete("/v1/items/sku-2", headers=ADMIN).status_code == 204
    gone = client.delete("/v1/items/sku-2", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["detail"].startswith("there is no item 'sku-2'")
    missing = client.get("/v1/items/sku-2", headers=READER)
    assert missing.status_code == 404 and "GET /v1/items lists them" in missing.json()["detail"]


def test_writes_need_the_admin_scope_and_reads_the_serve_scope(client):
    assert put(client, SHOE, headers=READER).status_code == 403
    assert put(client, SHOE, headers={"X-API-Key": "sdk"}).status_code == 403  # an SDK's ingest key cannot
    assert client.delete("/v1/items/sku-1", headers=READER).status_code == 403
    assert client.get("/v1/items", headers={"X-API-Key": "sdk"}).status_code == 403
    assert client.get("/v1/items").status_code == 401


def test_openapi_documents_the_item_routes(client):
    document = client.get("/docs/openapi.json").json()
    items = document["paths"]["/v1/items"]
    body = items["put"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["items"]["maxItems"] == 1000
    assert body["properties"]["items"]["items"]["required"] == ["item_id", "title", "brand", "category", "price"]
    assert set(items["put"]["responses"]) == {"200", "400", "401", "403", "413", "422"}
    assert set(document["paths"]["/v1/items/{item_id}"]) == {"get", "delete"}


# -- the catalog in /v1/personalize ------------------------------------------------------------------------


def personalize(client, **body):
    return client.post("/v1/personalize", json={"user_id": "u1", "slot": "cta"} | body, headers=READER)


def with_top_category(client, category: str | None) -> None:
    reader = client.app.state.reader
    features = reader.features
    reader.features = lambda pseudonym, now_ms=None: (
        {**features(pseudonym, now_ms)[0], "top_category": category},
        None,
    )


def test_item_ids_are_read_from_the_catalog_and_unknown_ones_named(client):
    put(client, SHOE, SHOE | {"item_id": "sku-2", "category": "books", "title": "Quiet Novel"})
    with_top_category(client, "books")
    served = personalize(client, item_ids=["sku-1", "sku-2"])
    assert served.status_code == 200, served.text
    assert served.json()["content"]["item_id"] == "sku-2"
    assert served.json()["explanation"]["item"] == "sku-2: in the user's top category (books)"
    unknown = personalize(client, item_ids=["sku-1", "nope", "gone"])
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["detail"].startswith("2 of the item_ids are not in the catalog: 'nope', 'gone'")
    both = personalize(client, item_ids=["sku-1"], items=[{"item_id": "x"}])
    assert both.status_code == 400 and "not both" in both.text, both.text


def test_given_items_never_touch_the_catalog(client):
    live: LiveCatalog = client.app.state.catalog

    def untouchable(*args):
        raise AssertionError("the catalog was read")

    live.resolve = live.shelf = untouchable  # type: ignore[method-assign]
    served = personalize(client, items=[{"item_id": "x1", "category": "shoes"}])
    assert served.status_code == 200 and served.json()["content"]["item_id"] == "x1", served.text


def test_no_candidates_picks_from_the_catalog_in_the_users_top_category(client):
    with_top_category(client, "shoes")
    empty = personalize(client).json()  # an empty catalog: no item, as before
    assert empty["content"]["item_id"] is None
    assert "the catalog has no item in the user's top category 'shoes'" in empty["explanation"]["item"]
    catalog = build_catalog(seed=1, n_items=40)
    put(client, *[{k: v for k, v in i.facts().items() if k != "sale_price"} for i in catalog.items])
    shoes = {i.item_id for i in catalog.in_category("shoes")}
    served = personalize(client).json()
    assert served["content"]["item_id"] in shoes
    assert served["explanation"]["item"].startswith(
        f"{served['content']['item_id']}: picked from the catalog: top category 'shoes'"
    )
    assert personalize(client).json()["content"]["item_id"] == served["content"]["item_id"]  # stable per user
    with_top_category(client, None)
    plain = personalize(client).json()
    assert plain["content"]["item_id"] is None and "no category stands out" in plain["explanation"]["item"]
