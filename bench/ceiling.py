"""The ceiling of ``tailor bench api``: bare Litestar + msgspec, one POST route shaped like personalize.

``python -m bench.ceiling --port N`` serves ``POST /v1/personalize`` that decodes the
same JSON body the bench sends the API (user, slot, context, one item) into a msgspec
Struct and answers a Struct of the API's response shape, with no store, template or
copy lookup behind it; and ``GET /healthz``. The bench runs it as it runs ``tailor api``
(uvicorn, one worker, the same settings and CPU pinning) and drives it with the same
wrk script and bodies, so the personalize peak over this one says what Tailor's work
costs against the framework's own floor on this machine.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import msgspec
from litestar import Litestar, get, post

Text = Annotated[str, msgspec.Meta(max_length=200)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ItemIn(Strict, frozen=True):
    item_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    title: Text | None = None
    brand: Text | None = None
    category: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    price: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    discount_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None


class CeilingRequest(Strict, frozen=True):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    slot: str
    context: dict[str, Text | int | float | bool | None] = {}
    items: Annotated[list[ItemIn], msgspec.Meta(max_length=50)] = []


class Content(msgspec.Struct):
    text: str
    slot: str
    copy: dict[str, str]
    item_id: str | None = None


class Explanation(msgspec.Struct):
    segment: str
    style: str
    template: str
    tone: str
    item: str
    features: dict[str, Any]


class CeilingResponse(msgspec.Struct):
    """The API's response shape (api.personalize.Personalized), filled with constants."""

    content: Content
    template_id: str
    template_version: int
    variant: str | None
    experiment: str | None
    segment: int | None
    segment_label: str | None
    model_version: str | None
    cached: bool
    explanation: Explanation


@post("/v1/personalize", status_code=200)
async def personalize(data: CeilingRequest) -> CeilingResponse:
    item = data.items[0] if data.items else None
    name = data.context.get("first_name") or "there"
    headline = f"{item.title} for you" if item is not None and item.title else "Picked for you"
    return CeilingResponse(
        content=Content(f"Hi {name}: {headline}", data.slot, {data.slot: headline}, item.item_id if item else None),
        template_id=f"{data.slot}-ai",
        template_version=1,
        variant=None,
        experiment=None,
        segment=None,
        segment_label=None,
        model_version="ceiling",
        cached=True,
        explanation=Explanation(
            segment="not segmented (the ceiling reads no features)",
            style="window_shopper",
            template=f"the default {data.slot} template",
            tone="informative",
            item="the first candidate",
            features={"top_category": item.category if item else None, "events_1h": 0},
        ),
    )


@get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def create_app() -> Litestar:
    return Litestar(route_handlers=[personalize, healthz])


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # As api.app.run_api serves one worker: the same uvicorn settings, so only the app differs.
    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
