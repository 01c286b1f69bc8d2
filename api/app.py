"""The personalization API (first routes): events in, features and segments out.

``create_app(settings)`` builds the Litestar app. Resources (the Feast store,
the Kafka producer, the pseudonymizer) are opened in the lifespan and put on
``app.state``. Every route but ``/healthz`` needs an API key (header
``X-API-Key``) with the route's scope: ``ingest`` to send events, ``serve`` to
read. Raw user ids never go further than this process: the edge turns them
into keyed-HMAC pseudonyms (`engine.privacy`) before Kafka or Feast see them.

``/healthz`` says the process is alive, ``/readyz`` whether the broker and the
store answer, ``/metrics`` serves Prometheus request counts and latency
histograms per route. Still to come (issue 5): /v1/personalize, templates.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.status_codes import HTTP_202_ACCEPTED

from engine.events import InvalidEvent, check_not_ahead, decode_event, encode_event
from engine.privacy import Pseudonymizer
from engine.segments import SegmentProfile
from engine.settings import Settings

SCOPES = ("ingest", "serve", "admin")
#: Most events one POST /v1/events may carry.
MAX_BATCH = 1000
#: Largest request body, in bytes.
MAX_BODY_BYTES = 2 * 1024 * 1024


class Rejected(msgspec.Struct):
    index: int
    reason: str


class EventsAccepted(msgspec.Struct):
    """What POST /v1/events did: how many events went to Kafka, and why the others did not."""

    accepted: int
    rejected: list[Rejected]


class Health(msgspec.Struct):
    status: str


class Readiness(msgspec.Struct):
    """Whether each dependency answers; ``ready`` only if all do."""

    ready: bool
    broker: str
    store: str


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


def require_scope(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard: the request's X-API-Key must hold the route's scope (401 without a key, 403 without the scope)."""
    scope = handler.opt.get("scope")
    if scope is None:
        return
    key = connection.headers.get("x-api-key")
    if not key:
        raise NotAuthorizedException(detail="missing API key: send it in the X-API-Key header")
    scopes = connection.app.state.api_keys.get(key)
    if scopes is None:
        raise NotAuthorizedException(detail="unknown API key")
    if scope not in scopes:
        raise PermissionDeniedException(detail=f"this API key lacks the '{scope}' scope")


@get("/healthz", sync_to_thread=False)
def healthz() -> Health:
    """Alive (says nothing about the broker or the store)."""
    return Health("ok")


@get("/readyz", sync_to_thread=True)
def readyz(request: Request) -> Response[Readiness]:
    """Ready to serve: the broker and the feature store both answer (503 and which failed otherwise)."""
    state = request.app.state
    try:
        state.producer.list_topics(timeout=2)
        broker = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        broker = f"unreachable: {type(exc).__name__}: {exc}"[:200]
    try:
        state.store.get_online_features(features=state.activity_features[:1], entity_rows=[{"user_id": "p_ready"}])
        store = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        store = f"unreachable: {type(exc).__name__}: {exc}"[:200]
    ready = broker == store == "ok"
    return Response(Readiness(ready, broker, store), status_code=200 if ready else 503)


@get("/metrics", sync_to_thread=False)
def metrics() -> Response[bytes]:
    """Prometheus metrics of this process.

    Not Litestar's PrometheusController: importing Feast sets PROMETHEUS_MULTIPROC_DIR,
    and that controller then reads an empty multiprocess directory instead.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


@post("/v1/events", status_code=HTTP_202_ACCEPTED, opt={"scope": "ingest"})
async def post_events(request: Request) -> EventsAccepted:
    """One event (a JSON object) or a batch (a JSON array, at most 1,000).

    Each event is validated on its own: the valid ones go to Kafka with the user
    id pseudonymized; each invalid one is reported with its index and reason.
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
    if not items:
        raise HTTPException(status_code=400, detail="no events: send an object or a non-empty array")
    if len(items) > MAX_BATCH:
        raise HTTPException(status_code=413, detail=f"{len(items)} events in one request; at most {MAX_BATCH}")
    state = request.app.state
    settings: Settings = state.settings
    now_ms = int(time.time() * 1000)
    rejected: list[Rejected] = []
    accepted = 0
    for index, item in enumerate(items):
        try:
            event = check_not_ahead(decode_event(bytes(item)), now_ms, int(settings.max_ahead_s * 1000))
        except InvalidEvent as exc:
            rejected.append(Rejected(index, exc.reason))
            continue
        pseudonym = state.pseudonymizer.pseudonym(event.user_id)
        event = msgspec.structs.replace(event, user_id=pseudonym)
        state.producer.produce(settings.topic, encode_event(event), pseudonym.encode())
        accepted += 1
    state.producer.poll(0)
    return EventsAccepted(accepted, rejected)


@get("/v1/users/{user_id:str}/features", opt={"scope": "serve"}, sync_to_thread=True)
def user_features(user_id: str, request: Request) -> dict[str, Any]:
    """The user's activity features and segment, read through Feast (user id as the client knows it)."""
    state = request.app.state
    pseudonym = state.pseudonymizer.pseudonym(user_id)
    got = state.store.get_online_features(
        features=[*state.activity_features, "user_segment:segment", "user_segment:model_version"],
        entity_rows=[{"user_id": pseudonym}],
    ).to_dict()
    return {name: values[0] for name, values in got.items() if name != "user_id"}


@get("/v1/segments", opt={"scope": "serve"}, sync_to_thread=True)
def segments(request: Request) -> list[SegmentProfile]:
    """The segment profiles the flow keeps in Feast."""
    from flows.segments import read_profiles

    state = request.app.state
    return read_profiles(state.store, state.settings.segments) if state.settings.segments else []


def run_api(settings: Settings, args) -> int:
    """``tailor api``: serve the app with uvicorn until stopped."""
    import sys

    import uvicorn

    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"tailor api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def create_app(settings: Settings | None = None) -> Litestar:
    """The API app for ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    if not settings.pseudonym_key:
        raise ValueError("TAILOR_PSEUDONYM_KEY is not set: generate one with "
                         "python -c \"import secrets; print(secrets.token_hex(32))\"")
    api_keys = parse_api_keys(settings.api_keys)
    pseudonymizer = Pseudonymizer(settings.pseudonym_key)

    @asynccontextmanager
    async def resources(app: Litestar) -> AsyncIterator[None]:
        from confluent_kafka import Producer

        from flows.store import open_store

        app.state.settings = settings
        app.state.api_keys = api_keys
        app.state.pseudonymizer = pseudonymizer
        app.state.store = open_store(settings)
        service = app.state.store.get_feature_service("user_activity_v1")
        app.state.activity_features = [
            f"{projection.name_to_use()}:{feature.name}"
            for projection in service.feature_view_projections
            for feature in projection.features
        ]
        app.state.producer = Producer({"bootstrap.servers": settings.brokers, "linger.ms": 2})
        try:
            yield
        finally:
            app.state.producer.flush(10)
            app.state.producer = None  # frees the client now: no reconnect attempts after shutdown

    from litestar.plugins.prometheus import PrometheusConfig

    # Request counts, errors and latency histograms per route (path templates, not raw paths).
    prometheus = PrometheusConfig(app_name="tailor", prefix="tailor_api", group_path=True,
                                  buckets=[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0])
    return Litestar(
        route_handlers=[healthz, readyz, metrics, post_events, user_features, segments],
        lifespan=[resources],
        guards=[require_scope],
        middleware=[prometheus.middleware],
        request_max_body_size=MAX_BODY_BYTES,
    )
