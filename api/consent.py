"""``/v1/users/{user_id}/consent``: what a user agreed to, per purpose, recorded and enforced.

``PUT`` records a decision (``{"granted": [...], "revoked": [...]}``; purposes
``personalization``, ``experiments``, ``analytics``; a purpose left out keeps its last
decision) and ``GET`` reads the user's state: per purpose whether it is allowed and
why (``granted``, ``revoked`` or the ``policy``, ``TAILOR_CONSENT_POLICY``). Both need
the ``privacy`` scope (or admin): a site's consent banner backend holds such a key.

A decision is stored first (`store.consent`: every API replica enforces it from the
next request) and then sent through Kafka, as a ``consent`` event on the events topic
under the user's pseudonym, so the flow applies it in order with the user's events.
If the broker does not acknowledge it, the answer is 503 with ``Retry-After``: the
decision is in force at the API but the flow has not seen it; sending it again is safe.

What each purpose gates (`Consent`): ``analytics`` keeping the user's events and
features (``POST /v1/events`` answers each refused event with the reason; the flow
drops the ones other producers send, counted in ``tailor_flow_events_without_consent_total``);
``personalization`` reading them to personalize (without it ``/v1/personalize`` serves
non-personalized content and says so); ``experiments`` being put in an experiment and
logged as exposed.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Literal

import msgspec
from litestar import Controller, Request, Response, get, put
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody

from api.audit import Auditor, actor_of
from api.http import StrictBody, error_responses
from engine.features.events import Event, encode_event
from engine.privacy import PURPOSES, ConsentRecord, InvalidUserId, consent_props, record_allows

Purpose = Literal["personalization", "experiments", "analytics"]


class ConsentDecision(StrictBody):
    """Purposes the user agrees to (``granted``) and refuses or withdraws (``revoked``); others keep their state."""

    granted: list[Purpose] = []
    revoked: list[Purpose] = []


class PurposeState(msgspec.Struct, frozen=True):
    """Whether the purpose is allowed, and by what: the user's ``granted`` or ``revoked``, or the ``policy``."""

    allowed: bool
    by: Literal["granted", "revoked", "policy"]


class ConsentView(msgspec.Struct, frozen=True):
    """A user's consent: every purpose's state, the policy for undecided ones, and when they last decided."""

    user_id: str
    policy: str
    purposes: dict[str, PurposeState]
    updated: str | None


class Consent(msgspec.Struct, frozen=True):
    """What one request may do with the user's data (personalize reads it)."""

    personalization: bool = True
    experiments: bool = True
    analytics: bool = True

    @classmethod
    def of(cls, record: ConsentRecord | None, policy: str) -> Consent:
        return cls(*(record_allows(record, purpose, policy) for purpose in PURPOSES))

    def why_not(self, purpose: str, record: ConsentRecord | None, policy: str) -> str:
        """Why ``purpose`` is refused, in words for an explanation or a rejected event."""
        if record is not None and purpose in record.revoked:
            return f"the user revoked consent to {purpose}"
        return f"the user has not granted consent to {purpose} (TAILOR_CONSENT_POLICY={policy})"


def consent_view(user_id: str, record: ConsentRecord | None, policy: str) -> ConsentView:
    purposes = {}
    for purpose in PURPOSES:
        by = "policy"
        if record is not None and purpose in record.granted:
            by = "granted"
        elif record is not None and purpose in record.revoked:
            by = "revoked"
        purposes[purpose] = PurposeState(record_allows(record, purpose, policy), by)
    updated = None
    if record is not None and record.updated_ms:
        updated = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.updated_ms / 1000))
        updated += f".{record.updated_ms % 1000:03d}Z"
    return ConsentView(user_id, policy, purposes, updated)


class ConsentNotSent(msgspec.Struct):
    """A 503 of PUT consent: the decision is recorded and enforced by the API, but the flow has not received it."""

    status_code: int
    detail: str
    consent: ConsentView


def _pseudonym(request: Request, user_id: str) -> str:
    try:
        return request.app.state.pseudonymizer.pseudonym(user_id)
    except InvalidUserId as exc:
        raise HTTPException(status_code=400, detail=f"user id in the path: {exc}") from None


class ConsentController(Controller):
    path = "/v1/users/{user_id:str}/consent"
    opt = {"scope": "privacy"}

    @get(responses=error_responses({400: "the user id is empty, blank or too long"}, 400), sync_to_thread=False)
    def get_consent(self, user_id: FromPath[str], request: Request) -> ConsentView:
        """The user's consent per purpose (user id as the client knows it)."""
        state = request.app.state
        pseudonym = _pseudonym(request, user_id)
        return consent_view(user_id, state.consent.get(pseudonym), state.settings.privacy.consent_policy)

    @put(
        status_code=200,
        responses=error_responses(
            {400: "the body names no purpose, an unknown one, or one both granted and revoked", 503: "not sent"},
            400,
        ),
    )
    async def put_consent(self, user_id: FromPath[str], data: JSONBody[ConsentDecision], request: Request) -> Response:
        """Record a consent decision; it is enforced from the next request, and the flow is told through Kafka."""
        state = request.app.state
        settings = state.settings
        pseudonym = _pseudonym(request, user_id)
        if not data.granted and not data.revoked:
            raise HTTPException(status_code=400, detail="name at least one purpose in `granted` or `revoked`")
        both = sorted(set(data.granted) & set(data.revoked))
        if both:
            raise HTTPException(status_code=400, detail=f"{', '.join(both)} is both granted and revoked: pick one")
        now_ms = int(time.time() * 1000)
        loop = asyncio.get_running_loop()
        audit = Auditor(state.audit, actor_of(request))
        await loop.run_in_executor(None, audit.check)  # a 503 with nothing changed if it cannot be audited
        record = await loop.run_in_executor(None, state.consent.decide, pseudonym, data.granted, data.revoked, now_ms)
        # The audit record names the pseudonym, never the raw id.
        detail = {"granted": list(data.granted), "revoked": list(data.revoked)}
        await loop.run_in_executor(None, audit.record, "consent.change", pseudonym, detail)
        view = consent_view(user_id, record, settings.privacy.consent_policy)
        event = Event(
            event_id=uuid.uuid4().hex,
            type="consent",
            user_id=pseudonym,
            ts=now_ms,
            props=consent_props(data.granted, data.revoked),
        )
        (why,) = await state.events.deliver(settings.kafka.topic, [(pseudonym.encode(), encode_event(event))])
        if why is None:
            return Response(view, status_code=200)
        retry_after = max(1, math.ceil(settings.kafka.produce_timeout_ms / 1000))
        detail = (
            f"the decision is recorded and in force at the API, but Kafka did not acknowledge it ({why.text}), so "
            f"the flow has not seen it: send it again after {retry_after} s"
        )
        return Response(ConsentNotSent(503, detail, view), status_code=503, headers={"Retry-After": str(retry_after)})
