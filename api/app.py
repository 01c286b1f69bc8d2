"""The personalization API: events in; features, segments and personalized content out; experiments.

``create_app(settings)`` builds the Litestar app. Resources (the Feast store,
the Kafka producer, the pseudonymizer) are opened in the lifespan and put on
``app.state``. Every route but ``/healthz`` needs an API key (header
``X-API-Key``) with the route's scope: ``ingest`` to send events, ``serve`` to
read. Raw user ids never go further than this process: the edge turns them
into keyed-HMAC pseudonyms (`engine.privacy`) before Kafka or Feast see them.

``POST /v1/personalize`` (api/personalize.py) serves a user's content;
``/v1/templates`` (api/templates.py) manages the versioned templates it renders;
``/v1/items`` (api/items.py) the item catalog it picks candidates from;
``/v1/experiments`` (api/experiments.py) runs A/B/n and factorial experiments on
them: personalize assigns each user a variant and logs the impression to Kafka,
the flow counts outcomes per variant, and the results route reads those counters.
``/v1/audit`` (api/audit.py) reads the hash-chained log of admin and privacy actions (``app.state.audit``).
Copy is written ahead of need by the background generator (jobs/copy_generator.py),
never in this process; a promoted model's copy is served without a restart (api/model_swap.py).
``/healthz`` says the process is alive, ``/readyz`` whether the broker and the
store answer (and which copy model is served), ``/metrics`` serves Prometheus request
counts and latency histograms per route, the copy cache's hit ratio, misses queued
for the background generator, events not delivered and impressions dropped.
``POST /v1/events`` answers 202 only once the broker acknowledged every valid
event, and 503 with ``Retry-After`` otherwise (api/delivery.py). Every 500 is
logged with its traceback under a request id that its answer carries (header
``X-Request-ID`` and the body). The OpenAPI document is at
``/docs/openapi.json`` and an interactive reference at ``/docs``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, OpenAPIMediaType, Operation, RequestBody, SecurityScheme
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_500_INTERNAL_SERVER_ERROR
from prometheus_client import Counter

from api.audit import AuditController
from api.consent import Consent, ConsentController
from api.delivery import EXPOSURES_DROPPED, EventProducer  # noqa: F401 - the counter's old home
from api.experiments import ExperimentController
from api.http import TOO_DEEP, ErrorBody, error_responses, refuse_too_deep
from api.items import ItemController
from api.metrics import RequestMetrics
from api.model_swap import ModelWatcher
from api.personalize import Personalized, PersonalizeRequest, personalize
from api.templates import TemplateController
from config.settings import Settings, settings_env
from engine.audience.segments import SegmentProfile
from engine.content.personalize import NoTemplate
from engine.content.templates import TemplateError
from engine.features.events import Event, InvalidEvent, check_not_ahead, decode_event, encode_event
from engine.privacy import InvalidUserId, PropsFilter, Pseudonymizer
from store.audit import open_audit
from store.catalog import ItemNotFound, open_live_catalog
from store.consent import open_consent
from store.experiments import LiveExperiments, open_experiments
from store.redis_guard import StoreUnavailable
from store.templates import open_templates

log = logging.getLogger("tailor.api")

SCOPES = ("ingest", "serve", "privacy", "admin")
#: Most events one POST /v1/events may carry.
MAX_BATCH = 1000
#: Largest request body, in bytes.
MAX_BODY_BYTES = 2 * 1024 * 1024


class Rejected(msgspec.Struct):
    index: int
    reason: str


class EventsAccepted(msgspec.Struct):
    """What POST /v1/events did: how many events the broker acknowledged, and why the others were invalid."""

    accepted: int
    rejected: list[Rejected]


class EventsNotDelivered(msgspec.Struct):
    """A 503 of POST /v1/events: valid events the broker did not acknowledge (``undelivered``, by index).

    ``accepted`` of the batch were acknowledged; sending the whole batch again is
    safe, since the flow counts an ``event_id`` once.
    """

    status_code: int
    detail: str
    accepted: int
    rejected: list[Rejected]
    undelivered: list[Rejected]


class ServerError(msgspec.Struct):
    """A 500: the request id to quote (also in the X-Request-ID header); the log has the traceback."""

    status_code: int
    detail: str
    request_id: str


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct, omit_defaults=True):
    """Whether each dependency answers; ``ready`` only if all do."""

    ready: bool
    broker: str
    store: str
    model: str
    #: Only with TAILOR_REDIS_URL: "ok" (saying what was restored if Redis lately lost its
    #: data), or "unreachable: <why>".
    redis: str = ""


_EVENT_SCHEMA = msgspec.json.schema(Event)["$defs"]["Event"]


@dataclass
class EventsOperation(Operation):
    """POST /v1/events reads its body itself (to judge each event on its own); this documents it.

    A dataclass itself: the generated ``__init__`` calls ``__post_init__`` only then.
    """

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description=f"One event, or an array of at most {MAX_BATCH} (at most {MAX_BODY_BYTES} bytes in all).",
            content={
                "application/json": OpenAPIMediaType(
                    schema={  # type: ignore[arg-type]
                        "oneOf": [
                            _EVENT_SCHEMA,
                            {"type": "array", "items": _EVENT_SCHEMA, "minItems": 1, "maxItems": MAX_BATCH},
                        ],
                    }
                )
            },
        )


def parse_api_keys(text: str) -> dict[str, frozenset[str]]:
    """``"KEY=ingest+serve,OTHER=admin"`` -> {key: scopes}; admin implies every scope.

    >>> parse_api_keys("k1=ingest+serve, k2=admin")["k2"] == frozenset(SCOPES)
    True
    """
    keys: dict[str, frozenset[str]] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        key, _, scopes = entry.partition("=")
        names = frozenset(s.strip() for s in scopes.split("+") if s.strip())
        if not key or not names or not names <= set(SCOPES):
            raise ValueError(f"TAILOR_API_KEYS entry {entry!r} must be KEY=scope[+scope], scopes from {SCOPES}")
        keys[key] = frozenset(SCOPES) if "admin" in names else names
    if not keys:
        raise ValueError("TAILOR_API_KEYS is not set: give each client a key, e.g. 'k3y=ingest+serve'")
    return keys


def check_scope(scope: str, key: str | None, api_keys: dict[str, set[str]]) -> None:
    """The request's X-API-Key must hold the route's ``scope``: 401 without a key, 403 without the scope."""
    if not key:
        raise NotAuthorizedException(detail="missing API key: send it in the X-API-Key header")
    scopes = api_keys.get(key)
    if scopes is None:
        raise NotAuthorizedException(detail="unknown API key")
    if scope not in scopes:
        raise PermissionDeniedException(detail=f"this API key lacks the '{scope}' scope")


class RequireScope:
    """ASGI middleware: every route whose ``opt`` names a ``scope`` needs an API key holding it.

    A middleware, not a Litestar guard: Litestar copies the route handler for each
    guard call, a twentieth of a cached personalize request (profiled), and runs a
    sync guard in a worker thread. Litestar applies it after routing, inside its
    exception handling, so a refusal is the usual 401/403 body.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            needed = scope["route_handler"].opt.get("scope")
            if needed is not None:
                key = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-api-key"), None)
                check_scope(needed, key, scope["app"].state.api_keys)
        await self.app(scope, receive, send)


@get("/healthz", sync_to_thread=False, security=[{}])
def healthz() -> Health:
    """Alive (says nothing about the broker or the store)."""
    return Health("ok")


@get(
    "/readyz",
    security=[{}],
    responses={503: ResponseSpec(Readiness, description="a dependency does not answer: which, and why")},
)
async def readyz(request: Request) -> Response[Readiness]:
    """Ready to serve: the broker takes events and the feature store answers (503 and which otherwise).

    ``model`` says which copy model's copy is served, or why none is (then default copy
    is, which is a correct answer: not a reason to take the replica out of a balancer).

    The broker is not ready while the producer cannot deliver (every broker
    down, a delivery just timed out, or its queue full), even if metadata answers.
    """
    state = request.app.state
    broker = state.events.problem() or "ok"
    if broker == "ok":
        try:
            await asyncio.get_running_loop().run_in_executor(None, lambda: state.producer.list_topics(timeout=2))
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            broker = f"unreachable: {type(exc).__name__}: {exc}"[:200]
    try:
        state.reader.features("p_ready")  # on the event loop: the reader is not thread-safe
        store = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        store = f"unreachable: {type(exc).__name__}: {exc}"[:200]
    # No model yet is not unready: every replica serves default copy until the generator writes some.
    writer = state.writer
    model = "ok" if writer.current is not None else f"none, serving default copy: {writer.unavailable}"[:300]
    redis = ""
    if state.redis_health is not None:  # pings Redis and restores what it lost (api/redis_health.py)
        try:
            redis = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, state.redis_health.check), 3
            )
        except TimeoutError:
            redis = "unreachable: no answer in 3 s"
    ready = broker == store == "ok" and (not redis or redis.startswith("ok"))
    return Response(Readiness(ready, broker, store, model, redis), status_code=200 if ready else 503)


@get("/metrics", sync_to_thread=False, include_in_schema=False)
def metrics() -> Response[bytes]:
    """Prometheus metrics of this process.

    Not Litestar's PrometheusController: importing Feast sets PROMETHEUS_MULTIPROC_DIR,
    and that controller then reads an empty multiprocess directory instead.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


async def refuse_deep_json(request: Request) -> None:
    """Before every route: a POST, PUT or PATCH body nested too deeply for msgspec is a 400.

    msgspec raises RecursionError on JSON nested about a thousand levels deep, which
    Litestar would answer 500. The body is decoded untyped here first (microseconds a
    kilobyte, and only for bodies with many brackets); `too_deep` answers the rare body
    that passes here but not in the route, whose decoder runs a few frames deeper.
    POST /v1/events (``reads_body``) splits its own body and catches the error there.
    """
    if request.method not in _BODY_METHODS or request.route_handler.opt.get("reads_body"):
        return
    refuse_too_deep(await request.body())


def too_deep(request: Request, exc: RecursionError) -> Response:
    """A RecursionError decoding a body is the client's 400; anywhere else it is a 500 like any other."""
    if request.method in _BODY_METHODS:
        # Logged all the same: were it not the body's nesting, this is where the bug shows.
        log.warning(
            "RecursionError on %s %s answered 400 (body nested too deeply)",
            request.method,
            request.scope.get("path_template", "?"),
            exc_info=exc,
        )
        return Response(ErrorBody(400, TOO_DEEP), status_code=400)
    return server_error(request, exc)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    """A store in Redis did not answer: 503, and the detail says which and to retry."""
    return Response(ErrorBody(503, exc.detail), status_code=503)


def server_error(request: Request, exc: Exception) -> Response[ServerError]:
    """Every 500: logged with its traceback under a request id that the answer carries (header and body).

    A sane ``X-Request-ID`` from the caller (a load balancer's) is kept, so both logs meet.
    The route's template is logged, not its path: a path can hold a raw user id.
    """
    given = request.headers.get("x-request-id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    log.error(
        "500 on %s %s, request id %s", request.method, request.scope.get("path_template", "?"), request_id, exc_info=exc
    )
    return Response(
        ServerError(
            HTTP_500_INTERNAL_SERVER_ERROR,
            f"internal server error: quote request id {request_id} when you report it",
            request_id,
        ),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        headers={"X-Request-ID": request_id},
    )


_ERRORS = {
    400: ResponseSpec(
        ErrorBody, description="the body is malformed: not JSON, wrong types, unknown fields or nested too deeply"
    ),
    **error_responses({}),
}


@post(
    "/v1/events",
    status_code=HTTP_202_ACCEPTED,
    opt={"scope": "ingest", "reads_body": True},
    operation_class=EventsOperation,
    responses={
        **_ERRORS,
        413: ResponseSpec(ErrorBody, description="too many events or bytes"),
        503: ResponseSpec(
            EventsNotDelivered,
            description="the broker did not acknowledge some valid "
            "events: which, and why; send them again after Retry-After seconds",
        ),
    },
)
async def post_events(request: Request) -> Response[EventsAccepted]:
    """One event (a JSON object) or a batch (a JSON array, at most 1,000).

    Each event is validated on its own, the whole batch before any of it is sent:
    each invalid one is reported with its index and reason, the valid ones go to
    Kafka with the user id pseudonymized. 202 once the broker acknowledged every
    valid event; 503 (with Retry-After) listing those it did not, within
    TAILOR_PRODUCE_TIMEOUT_MS. Sending an event again is safe: the flow counts an
    ``event_id`` once.
    """
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(status_code=413, detail=f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        if body.lstrip()[:1] == b"[":
            items = msgspec.json.decode(body, type=list[msgspec.Raw])
        else:
            items = [msgspec.json.decode(body, type=msgspec.Raw)]
    except msgspec.DecodeError as exc:
        raise HTTPException(status_code=400, detail=f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(status_code=400, detail=TOO_DEEP) from None
    if not items:
        raise HTTPException(status_code=400, detail="no events: send an object or a non-empty array")
    if len(items) > MAX_BATCH:
        raise HTTPException(status_code=413, detail=f"{len(items)} events in one request; at most {MAX_BATCH}")
    state = request.app.state
    settings: Settings = state.settings
    now_ms = int(time.time() * 1000)
    rejected: list[Rejected] = []
    indices: list[int] = []
    records: list[tuple[bytes, bytes]] = []
    for index, item in enumerate(items):
        try:
            event = check_not_ahead(decode_event(bytes(item)), now_ms, int(settings.flow.max_ahead_s * 1000))
            pseudonym = state.pseudonymizer.pseudonym(event.user_id)
        except InvalidEvent as exc:
            rejected.append(Rejected(index, exc.reason))
            continue
        except InvalidUserId as exc:
            rejected.append(Rejected(index, f"`user_id`: {exc}"))
            continue
        if event.type == "consent":
            rejected.append(Rejected(index, CONSENT_BY_PUT))
            continue
        if event.props:
            props, dropped = state.props_filter(event.props)
            if dropped:
                PROPS_DROPPED.inc(dropped)
                event = msgspec.structs.replace(event, props=props)
        indices.append(index)
        records.append((pseudonym.encode(), encode_event(msgspec.structs.replace(event, user_id=pseudonym))))
    if records:
        indices, records = _with_analytics_consent(state, indices, records, rejected)
    results = await state.events.deliver(settings.kafka.topic, records) if records else []
    undelivered = [Rejected(index, why.text) for index, why in zip(indices, results) if why is not None]
    accepted = len(records) - len(undelivered)
    if not undelivered:
        return Response(EventsAccepted(accepted, rejected), status_code=HTTP_202_ACCEPTED)
    retry_after = max(1, math.ceil(settings.kafka.produce_timeout_ms / 1000))
    detail = (
        f"{len(undelivered)} of {len(records)} valid events were not delivered to Kafka "
        f"({undelivered[0].reason}): send them again, with the same event_id, after {retry_after} s"
    )
    return Response(
        EventsNotDelivered(503, detail, accepted, rejected, undelivered),
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


PROPS_DROPPED = Counter(
    "tailor_event_props_dropped_total",
    "Event props keys POST /v1/events dropped because TAILOR_PROPS_ALLOWED does not list them (personal data "
    "such as an email put in props never reaches Kafka).",
)
CONSENT_BY_PUT = "consent decisions are recorded with PUT /v1/users/{user_id}/consent, not sent as events"


def _with_analytics_consent(state, indices: list[int], records: list[tuple[bytes, bytes]], rejected: list[Rejected]):
    """The events whose users allow ``analytics`` (one store read a batch); the others rejected, saying why.

    ``rejected`` stays in index order. A refused event is not kept anywhere: it never reaches Kafka.
    """
    policy = state.settings.privacy.consent_policy
    users = [key.decode() for key, _ in records]
    found = state.consent.get_many(users)
    if not found and policy == "opt_out":
        return indices, records
    kept_indices, kept = [], []
    for index, record, user in zip(indices, records, users):
        decision = found.get(user)
        consent = Consent.of(decision, policy)
        if consent.analytics:
            kept_indices.append(index)
            kept.append(record)
        else:
            reason = consent.why_not("analytics", decision, policy)
            rejected.append(Rejected(index, f"{reason}: the event is not kept"))
    rejected.sort(key=lambda r: r.index)
    return kept_indices, kept


@get("/v1/users/{user_id:str}/features", opt={"scope": "serve"}, sync_to_thread=False, responses=_ERRORS)
def user_features(user_id: FromPath[str], request: Request) -> dict[str, Any]:
    """The user's activity features and segment as of now (user id as the client knows it).

    The same values a Feast client reads through the ``user_activity_v1`` service
    and the ``user_segment`` view, for the user's pseudonym.
    """
    state = request.app.state
    try:
        pseudonym = state.pseudonymizer.pseudonym(user_id)
    except InvalidUserId as exc:
        raise HTTPException(status_code=400, detail=f"user id in the path: {exc}") from None
    features, segment = state.reader.features(pseudonym)
    features["segment"] = segment.segment if segment is not None else None
    features["model_version"] = segment.model_version if segment is not None else None
    return features


@post(
    "/v1/personalize",
    opt={"scope": "serve"},
    status_code=200,
    responses={
        **_ERRORS,
        404: ResponseSpec(ErrorBody, description="no live template for the slot"),
        413: ResponseSpec(ErrorBody, description=f"the body is over {MAX_BODY_BYTES} bytes"),
        422: ResponseSpec(
            ErrorBody,
            description="the template needs context or an item the request lacks, or item_ids the catalog lacks",
        ),
    },
)
async def post_personalize(data: JSONBody[PersonalizeRequest], request: Request) -> Personalized:
    """Personalized content for one user and slot, with why it was chosen.

    Reads the user's features and segment, picks the template for the slot and
    segment, fills its AI copy (written ahead of need by the background generator,
    checked against the item's facts and the brand rules; default copy otherwise, with
    the reason in ``explanation.fallbacks``: a key not generated yet is queued, never
    waited for) and renders it with ``context`` and the featured item.
    Candidates come as `items`, or as `item_ids` read from the catalog (422 naming the
    unknown ones); with neither, one of the catalog's items in the user's top category.
    """
    state = request.app.state
    try:
        pseudonym = state.pseudonymizer.pseudonym(data.user_id)
    except InvalidUserId as exc:
        raise HTTPException(status_code=400, detail=f"`user_id`: {exc}") from None
    policy = state.settings.privacy.consent_policy
    decision = state.consent.get(pseudonym)
    consent = Consent.of(decision, policy) if decision is not None or policy == "opt_in" else None
    try:
        return await personalize(
            data,
            pseudonym=pseudonym,
            reader=state.reader,
            templates=state.templates,
            writer=state.writer,
            experiments=state.experiments,
            expose=state.expose,
            catalog=state.catalog,
            consent=consent,
            consent_why=consent.why_not("personalization", decision, policy)
            if consent is not None and not consent.personalization
            else "",
        )
    except NoTemplate as exc:
        raise NotFoundException(detail=exc.reason) from None
    except ItemNotFound as exc:
        raise HTTPException(status_code=422, detail=exc.reason) from None
    except TemplateError as exc:
        raise HTTPException(status_code=422, detail=exc.reason) from None


@get("/v1/segments", opt={"scope": "serve"}, sync_to_thread=False, responses=_ERRORS)
def segments(request: Request) -> list[SegmentProfile]:
    """The segment profiles the flow keeps in Feast (re-read at most every 2 s)."""
    return sorted(request.app.state.reader.profiles().values(), key=lambda p: p.segment)


async def _refresh_experiments(experiments: LiveExperiments, every_s: float = 0.5) -> None:
    """Re-read the running experiments when the store changed (and re-weigh bandits), off the event loop."""
    loop = asyncio.get_running_loop()
    failing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            await loop.run_in_executor(None, experiments.refresh)
        except Exception:  # noqa: BLE001 - keep serving the last snapshot
            if not failing:  # once per outage, not twice a second
                log.warning("could not re-read the experiments; serving the last ones", exc_info=True)
            failing = True
            continue
        if failing:
            log.warning("the experiment store answers again")
        failing = False


def run_api(settings: Settings, args) -> int:
    """``tailor api``: serve the app with uvicorn until stopped; ``--workers N`` runs N processes on one port.

    Each worker is a whole API (its own producer, caches and metrics); they share the
    stores and the copy the background generator writes, so any worker answers alike.
    """
    import os
    import sys

    import uvicorn

    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"tailor api: {exc}", file=sys.stderr)
        return 2
    workers = getattr(args, "workers", 1)
    if workers > 1:
        # Workers are spawned and build their app from the environment: hand them these settings.
        os.environ.update(settings_env(settings))
        uvicorn.run(
            "api.app:create_app", factory=True, workers=workers, host=args.host, port=args.port, log_level="warning"
        )
        return 0
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def open_copy_writer(settings: Settings):
    """The copy the background generator writes, as this process reads it; no model yet serves default copy."""
    from api.cache import CopyCache
    from api.personalize import CopyWriter, read_served_model
    from models.serve.manifest import ModelDirError
    from store.brand import brand_rules
    from store.copies import open_copies

    model, unavailable = None, ""
    try:
        model = read_served_model(settings.generation.model_dir)
    except ModelDirError as exc:
        unavailable = f"no copy model loaded: {exc}"
        log.warning("%s; serving default copy", unavailable)
    cache = CopyCache(open_copies(settings), settings.generation.copy_cache_size)
    return CopyWriter(
        cache, brand_rules(settings), model=model, unavailable=unavailable, registry=settings.retrain.model_registry
    )


def create_app(settings: Settings | None = None) -> Litestar:
    """The API app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    if not settings.api.pseudonym_key:
        raise ValueError(
            "TAILOR_PSEUDONYM_KEY is not set: generate one with "
            'python -c "import secrets; print(secrets.token_hex(32))"'
        )
    api_keys = parse_api_keys(settings.api.api_keys)
    pseudonymizer = Pseudonymizer(settings.api.pseudonym_key)

    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        from store.feast import open_store
        from store.online import OnlineReader

        app.state.settings = settings
        app.state.api_keys = api_keys
        app.state.pseudonymizer = pseudonymizer
        app.state.store = open_store(settings)
        app.state.reader = OnlineReader(app.state.store, settings.audience.segments)
        app.state.templates = open_templates(settings)
        app.state.audit = open_audit(settings)  # admin and privacy actions: app.state.audit.append(...)
        app.state.catalog = open_live_catalog(settings)
        app.state.consent = open_consent(settings)
        app.state.props_filter = PropsFilter(settings.privacy.props_allowed)
        app.state.writer = open_copy_writer(settings)
        app.state.experiments = open_experiments(settings, app.state.store)
        app.state.experiment_store = app.state.experiments.store
        app.state.redis_health = None
        if settings.redis.url:
            from api.redis_health import open_redis_health

            app.state.redis_health = open_redis_health(
                settings, [app.state.templates.store, app.state.experiment_store]
            )
        app.state.events = events = EventProducer(settings)
        app.state.producer = events.producer

        def expose(event: Event) -> None:
            """Log an impression to Kafka (the flow counts it; `tailor feedback export` learns from it).

            Never waits: one that cannot be queued or delivered is counted in tailor_exposures_dropped_total.
            """
            events.expose(settings.kafka.topic, event.user_id.encode(), encode_event(event))

        app.state.expose = expose
        # The imports above (Feast, pandas, ONNX Runtime) leave about a million objects
        # that live as long as the process; every full garbage collection walked them
        # all, a pause of tens of milliseconds that showed as p99 latency (profiled).
        gc.collect()
        gc.freeze()
        watcher = asyncio.create_task(
            ModelWatcher(settings.generation.model_dir, app.state.writer, app.state.audit).run(
                settings.generation.model_reload_s
            )
        )
        refresher = asyncio.create_task(_refresh_experiments(app.state.experiments))
        flusher = asyncio.create_task(app.state.writer.cache.flush_forever())
        redis_watch = asyncio.create_task(app.state.redis_health.watch()) if app.state.redis_health else None
        try:
            yield
        finally:
            watcher.cancel()
            refresher.cancel()
            flusher.cancel()
            if redis_watch is not None:
                redis_watch.cancel()
                app.state.redis_health.close()
            app.state.writer.cache.flush()  # misses of the last moments still reach the generator
            app.state.writer.cache.store.close()
            app.state.experiment_store.close()
            app.state.templates.store.close()
            app.state.audit.close()
            app.state.catalog.store.close()
            app.state.consent.close()
            events.close(10)
            # Frees the client now (expose holds it too): no reconnect attempts after shutdown.
            app.state.producer = app.state.expose = app.state.events = events = None

    openapi = OpenAPIConfig(
        title="Tailor",
        version="0.1.0",
        path="/docs",
        use_handler_docstrings=True,
        render_plugins=[SwaggerRenderPlugin(path="/")],
        description="Events in, personalized content out. Send your API key in the X-API-Key header.",
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
            }
        ),
        security=[{"apiKey": []}],
    )
    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            post_events,
            user_features,
            post_personalize,
            segments,
            TemplateController,
            ExperimentController,
            ItemController,
            ConsentController,
            AuditController,
        ],
        lifespan=[resources],
        before_request=refuse_deep_json,
        # Litestar hands this every exception that is not an HTTPException below 500.
        exception_handlers={
            HTTP_500_INTERNAL_SERVER_ERROR: server_error,
            RecursionError: too_deep,
            StoreUnavailable: store_unavailable,
        },
        # Request counts, errors and latency histograms per route (path templates, not raw paths).
        middleware=[RequestMetrics, RequireScope],
        request_max_body_size=MAX_BODY_BYTES,
        openapi_config=openapi,
    )
