"""What every resource's routes share: the error body and its OpenAPI description, strict bodies, errors as answers.

- `ErrorBody`: what every error answer carries; `error_responses` describes a
  guarded route's error answers for its OpenAPI ``responses``.
- `StrictBody`: the base of request bodies (unknown fields are a 400).
- `http_errors`: store and validation errors raised in a route, as HTTP errors
  whose ``detail`` is the error's one-line reason.

Examples
--------
>>> sorted(error_responses({404: "there is no such thing"}, 404))
[401, 403, 404]
>>> with http_errors({LookupError: 404}):
...     raise LookupError("there is no such thing: GET /v1/things lists them")
Traceback (most recent call last):
...
litestar.exceptions.http_exceptions.NotFoundException: 404: there is no such thing: GET /v1/things lists them
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import msgspec
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.datastructures import ResponseSpec


class ErrorBody(msgspec.Struct):
    """What every error answer of the API carries (validation errors add ``extra``)."""

    status_code: int
    detail: str


#: What a scoped route's 401 and 403 mean (`api.app.RequireScope`).
AUTH_ERRORS = {401: "no API key, or an unknown one", 403: "the API key lacks the route's scope"}


def error_responses(texts: Mapping[int, str], *codes: int) -> dict[int, ResponseSpec]:
    """The OpenAPI ``responses`` of a guarded route: 401, 403 and ``codes``, as ``texts`` describe them."""
    described = {**AUTH_ERRORS, **texts}
    return {code: ResponseSpec(ErrorBody, description=described[code]) for code in (401, 403, *codes)}


class StrictBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


@contextmanager
def http_errors(statuses: Mapping[type[Exception], int | None]) -> Iterator[None]:
    """Errors of the types in ``statuses`` as HTTP errors of the status given, ``detail`` the error's reason.

    The first type the error is an instance of decides (put subclasses first); None
    takes the error's own ``status``. Other errors pass through (a 500, or a handler's).
    """
    try:
        yield
    except tuple(statuses) as exc:
        status = next(code for kind, code in statuses.items() if isinstance(exc, kind))
        if status is None:
            status = exc.status
        if status == 404:
            raise NotFoundException(detail=str(exc)) from None
        raise HTTPException(status_code=status, detail=str(exc)) from None


TOO_DEEP = "the JSON body nests too deeply (the decoder stops near 1,000 levels): send a flatter document"
#: A body with fewer brackets than this cannot nest deep enough to trouble the decoder: it skips the check.
_DEEP_BRACKETS = 200


def refuse_too_deep(body: bytes) -> None:
    """A body nested too deeply for msgspec is a 400 (msgspec raises RecursionError near 1,000 levels).

    Decoded untyped first, and only when the body has many brackets (microseconds a kilobyte); a
    malformed body passes, for the route's own decoding to say how.
    """
    if body.count(b"[") + body.count(b"{") < _DEEP_BRACKETS:
        return
    try:
        msgspec.json.decode(body)
    except RecursionError:
        raise HTTPException(status_code=400, detail=TOO_DEEP) from None
    except msgspec.DecodeError:
        pass
