"""The ``/v1/items`` routes: the catalog a shop or CMS writes in bulk (webhook style), read back and deleted.

``PUT /v1/items`` takes ``{"items": [...]}`` (at most `MAX_ITEMS`) and judges each
item on its own: the answer says per item ``created``, ``updated``, ``unchanged``
(the same item again changes nothing, so a webhook may resend) or ``rejected`` with
the reason; bad items never hold back good ones. Writes need the ``admin`` scope
(the catalog is what every user is shown, as templates are: not for the ``ingest``
keys that SDKs hold), reads ``serve``. The storage and the shelves personalize picks
from are `store.catalog`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Literal

import msgspec
from litestar import Controller, Request, Response, delete, get, put
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody
from litestar.params import FromPath, QueryParameter

from api.dependencies import live_catalog, provide
from api.http import TOO_DEEP, StrictBody, error_responses, http_errors, refuse_too_deep
from engine.content.catalog import Item
from store.catalog import ItemNotFound, LiveCatalog

#: Most items one PUT /v1/items may carry.
MAX_ITEMS = 1000
#: Most items one page of GET /v1/items holds.
MAX_PAGE = 500

ItemId = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$", description="A-Z, a-z, 0-9, . _ : @ -"),
]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
AttributeName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class CatalogItem(StrictBody):
    """One product as a shop sends it: ``discount_pct`` a whole percentage off (none: full price)."""

    item_id: ItemId
    title: Text
    brand: Text
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    price: Annotated[float, msgspec.Meta(ge=0, le=1e9)]
    discount_pct: Annotated[int, msgspec.Meta(ge=0, lt=100)] | None = None
    attributes: Annotated[
        dict[AttributeName, Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(max_length=32)
    ] = {}

    def item(self) -> Item:
        return Item(**msgspec.structs.asdict(self))


class ItemOut(msgspec.Struct, frozen=True):
    """One stored item, every field present, and what a buyer pays today (``sale_price``)."""

    item_id: str
    title: str
    brand: str
    category: str
    price: float
    discount_pct: int | None
    attributes: dict[str, str]
    sale_price: float

    @classmethod
    def of(cls, item: Item) -> ItemOut:
        return cls(**item.facts())


class ItemResult(msgspec.Struct, frozen=True, omit_defaults=True):
    """What PUT /v1/items did with the item at ``index``: its status, and why when it was rejected."""

    index: int
    #: None when the item has no readable id.
    item_id: str | None
    status: Literal["created", "updated", "unchanged", "rejected"]
    reason: str | None = None


class ItemsWritten(msgspec.Struct, frozen=True):
    """A 200 of PUT /v1/items: how many items each status counts, and each item's."""

    created: int
    updated: int
    unchanged: int
    rejected: int
    items: list[ItemResult]


class ItemsRejected(msgspec.Struct, frozen=True):
    """A 422 of PUT /v1/items: no item was valid; each one's reason."""

    status_code: int
    detail: str
    items: list[ItemResult]


class ItemPage(msgspec.Struct, frozen=True):
    """A page of items by id; ``next`` is the ``after`` of the next page (null: this was the last)."""

    items: list[ItemOut]
    next: str | None


_ITEM_DECODER = msgspec.json.Decoder(CatalogItem)


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    items: list[msgspec.Raw]


_BATCH_DECODER = msgspec.json.Decoder(_Batch)
_ITEM_SCHEMA = {**msgspec.json.schema(CatalogItem)["$defs"]["CatalogItem"], "additionalProperties": False}

_errors = partial(
    error_responses,
    {
        400: "the body is malformed: not JSON, not an object with one `items` array, or nested too deeply",
        404: "there is no such item",
        413: f"more than {MAX_ITEMS} items, or the body is over the size limit",
    },
)


@dataclass
class ItemsOperation(Operation):
    """PUT /v1/items reads its body itself (to judge each item on its own); this documents it."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description=f"At most {MAX_ITEMS} items; each is validated on its own.",
            content={
                "application/json": OpenAPIMediaType(
                    schema={  # type: ignore[arg-type]
                        "type": "object",
                        "required": ["items"],
                        "additionalProperties": False,
                        "properties": {
                            "items": {"type": "array", "items": _ITEM_SCHEMA, "minItems": 1, "maxItems": MAX_ITEMS}
                        },
                    }
                )
            },
        )


def _batch(body: bytes) -> list[msgspec.Raw]:
    """The body's items, each undecoded; a malformed body is a 400, too many items a 413."""
    refuse_too_deep(body)  # the route reads its own body, so the app's check skips it
    try:
        raws = _BATCH_DECODER.decode(body).items
    except msgspec.DecodeError as exc:
        raise HTTPException(
            status_code=400, detail=f'the body must be a JSON object {{"items": [...]}}: {exc}'
        ) from None
    except RecursionError:
        raise HTTPException(status_code=400, detail=TOO_DEEP) from None
    if not raws:
        raise HTTPException(status_code=400, detail="no items: send at least one")
    if len(raws) > MAX_ITEMS:
        raise HTTPException(status_code=413, detail=f"{len(raws)} items in one request; at most {MAX_ITEMS}")
    return raws


def _judge(index: int, raw: msgspec.Raw) -> Item | ItemResult:
    """The item at ``index``, or its rejection saying what was wrong."""
    try:
        return _ITEM_DECODER.decode(raw).item()
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        reason = str(exc)
    except RecursionError:
        reason = "the item nests too deeply"
    item_id = None
    try:
        fields = msgspec.json.decode(raw)
        if isinstance(fields, dict) and isinstance(fields.get("item_id"), str):
            item_id = fields["item_id"][:128]
    except (msgspec.DecodeError, RecursionError):
        pass
    return ItemResult(index, item_id, "rejected", reason)


class ItemController(Controller):
    """The item catalog: bulk write, read, page through, delete."""

    path = "/v1/items"
    tags = ("items",)
    dependencies = {"catalog": provide(live_catalog)}

    @put(
        summary="Write items in bulk",
        opt={"scope": "admin", "reads_body": True},
        operation_class=ItemsOperation,
        responses={
            **_errors(400, 413),
            422: ResponseSpec(ItemsRejected, description="no item was valid: each one's reason"),
        },
    )
    async def put_items(self, catalog: NamedDependency[LiveCatalog], request: Request) -> Response[ItemsWritten]:
        """Create or replace items (at most 1,000). Needs the `admin` scope.

        Send `{"items": [...]}`; each item is judged on its own and replaces the
        stored item with its id. The answer lists, per item (by index), `created`,
        `updated`, `unchanged` (the same item again changes nothing: resending is
        safe) or `rejected` with the reason. 200 when any item was valid, 422 when none was.
        """
        raws = _batch(await request.body())
        judged = [_judge(index, raw) for index, raw in enumerate(raws)]
        valid = [(index, i) for index, i in enumerate(judged) if isinstance(i, Item)]
        results: list[ItemResult] = [r for r in judged if isinstance(r, ItemResult)]
        if not valid:
            detail = f"none of the {len(raws)} items is valid; the first: item {results[0].index}: {results[0].reason}"
            return Response(ItemsRejected(422, detail, results), status_code=422)  # type: ignore[return-value]
        written = await asyncio.get_running_loop().run_in_executor(None, catalog.store.upsert, [i for _, i in valid])
        catalog.invalidate()
        results += [ItemResult(index, item.item_id, status) for (index, item), status in zip(valid, written)]
        results.sort(key=lambda r: r.index)
        counts = {s: sum(r.status == s for r in results) for s in ("created", "updated", "unchanged", "rejected")}
        return Response(ItemsWritten(**counts, items=results), status_code=200)

    @get(summary="List items", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors())
    def list_items(
        self,
        catalog: NamedDependency[LiveCatalog],
        after: Annotated[str, QueryParameter(max_length=128, description="the id the page starts after")] = "",
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="items in the page")] = 100,
    ) -> ItemPage:
        """Items by id, a page at a time: pass the answer's `next` as `after` for the next page."""
        page = catalog.store.list(after=after, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return ItemPage([ItemOut.of(i) for i in page], page[-1].item_id if more else None)

    @get("/{item_id:str}", summary="Get an item", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors(404))
    def get_item(self, catalog: NamedDependency[LiveCatalog], item_id: FromPath[str]) -> ItemOut:
        """One item (404 if the catalog has none with this id)."""
        with http_errors({ItemNotFound: 404}):
            return ItemOut.of(catalog.store.get(item_id))

    @delete(
        "/{item_id:str}", summary="Delete an item", opt={"scope": "admin"}, sync_to_thread=True, responses=_errors(404)
    )
    def delete_item(self, catalog: NamedDependency[LiveCatalog], item_id: FromPath[str]) -> None:
        """Remove one item from the catalog (404 if there is none). Needs the `admin` scope."""
        with http_errors({ItemNotFound: 404}):
            catalog.store.delete(item_id)
        catalog.invalidate()
