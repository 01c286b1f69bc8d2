"""The ceiling of ``tailor bench api``: bare Litestar + msgspec, one POST route shaped like personalize.

``python -m bench.ceiling --port N`` serves ``POST /v1/personalize`` that decodes the
same JSON body the bench sends the API (user, slot, context, one item) into the API's
own request Struct and answers its response Struct, with no store, template or copy
lookup behind it; and ``GET /healthz``. The bench runs it as it runs ``tailor api``
(uvicorn, one worker, the same settings and CPU pinning) and drives it with the same
wrk script and bodies, so the personalize peak over this one says what Tailor's work
costs against the framework's own floor on this machine.
"""

from __future__ import annotations

import argparse

from litestar import Litestar, get, post

# The API's own request and response Structs: the ceiling decodes and encodes exactly what
# personalize does (the same validation), and does nothing else.
from api.personalize import Content, Explanation, Personalized, PersonalizeRequest


@post("/v1/personalize", status_code=200)
async def personalize(data: PersonalizeRequest) -> Personalized:
    item = data.items[0] if data.items else None
    name = data.context.get("first_name") or "there"
    headline = f"{item.title} for you" if item is not None and item.title else "Picked for you"
    return Personalized(
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
