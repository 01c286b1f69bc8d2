"""The ``/v1/audit`` routes, and how an admin route writes to the hash-chained audit log.

- ``GET /v1/audit`` (admin): records oldest first, filtered by ``action``, ``actor`` (a
  key's fingerprint, ``cli`` or ``system``), ``target``, ``since`` / ``until`` (RFC 3339
  or epoch ms) and paged with ``after_seq`` (the page's ``next_after_seq``).
- ``GET /v1/audit/verify`` (admin): whether the chain is intact, how many records it
  holds, and the first broken record's seq and why.

Admin routes take an `Auditor` (``provide_auditor``): the app's log (``app.state.audit``,
`store.audit`) and the caller's actor, the SHA-256 fingerprint of its X-API-Key
(`actor_of`), never the key. A route calls `Auditor.check` before its change and
`Auditor.record` once it is made. An admin action never happens unaudited in silence:
when the log cannot be written, `Auditor.check` raises `store.redis_guard.StoreUnavailable`
and the answer is 503 with nothing changed. Should the log fail in the moment between
the check and the record, the change stands but the answer is still 503 saying so, and
the record that could not be written is logged at ERROR, every field, to be re-entered.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.params import QueryParameter

from api.dependencies import provide
from api.http import error_responses
from engine.audit import AuditRecord, check_action, check_actor, fingerprint, parse_time
from store.audit import AuditLog, AuditUnavailable
from store.redis_guard import StoreUnavailable

log = logging.getLogger("tailor.api")

#: Most records one ``GET /v1/audit`` returns.
MAX_LIMIT = 1000


def actor_of(request: Request) -> str:
    """The audit actor of a request: its X-API-Key's fingerprint (`engine.audit.fingerprint`), "system" with none."""
    key = request.headers.get("x-api-key")
    return fingerprint(key) if key else "system"


class Auditor:
    """The audit log as one request's admin route writes to it: as the caller (``actor``)."""

    def __init__(self, audit: AuditLog, actor: str):
        self.audit = audit
        self.actor = actor

    def check(self) -> None:
        """Before a change: `StoreUnavailable` (a 503, nothing changed) if the log cannot be written."""
        self.audit.check()

    def record(self, action: str, target: str, detail: dict[str, Any] | None = None) -> AuditRecord:
        """After a change: append its record; a 503 that says the change was made if the log failed meanwhile."""
        try:
            return self.audit.append(self.actor, action, target, detail)
        except StoreUnavailable as exc:
            log.error(
                "UNAUDITED: %s on %r by %s was done, but the audit log could not record it (%s); detail %s",
                action,
                target,
                self.actor,
                exc.detail,
                msgspec.json.encode(detail or {}).decode(),
            )
            raise AuditUnavailable(
                f"{action} on {target!r} was done, but the audit log could not record it ({exc.detail}); "
                "the record is in the API's log: have an operator restore the audit log"
            ) from None


def audit_log(state: State) -> AuditLog:
    """The app's audit log (`store.audit.open_audit`)."""
    return state.audit


def auditor(request: Request) -> Auditor:
    """The audit log as this request writes to it (its key's fingerprint as the actor)."""
    return Auditor(request.app.state.audit, actor_of(request))


#: The dependency an admin route names ``auditor``.
provide_auditor = Provide(auditor, sync_to_thread=False)


class AuditPage(msgspec.Struct):
    """Records oldest first; ``next_after_seq``: the ``after_seq`` of the next page (None: this is the last)."""

    records: list[AuditRecord]
    next_after_seq: int | None


class BrokenRecord(msgspec.Struct):
    """The first record where the chain breaks, and why."""

    seq: int
    reason: str


class AuditVerdict(msgspec.Struct):
    """Whether the chain is intact (``ok``), how many records it holds, and where it first breaks."""

    ok: bool
    records: int
    first_broken: BrokenRecord | None


_ERROR_TEXTS = {400: "a filter is malformed: the reason says which", 503: "the audit log cannot be read"}


def _time(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"{name}: {exc}") from None


class AuditController(Controller):
    """The hash-chained audit log of administrative and privacy actions (admin only)."""

    path = "/v1/audit"
    tags = ("audit",)
    dependencies = {"audit": provide(audit_log)}

    @get(
        summary="List audit records",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=error_responses(_ERROR_TEXTS, 400, 503),
    )
    def list_audit(
        self,
        audit: NamedDependency[AuditLog],
        action: Annotated[str | None, QueryParameter(description="e.g. template.create")] = None,
        actor: Annotated[str | None, QueryParameter(description="an API key's fingerprint, cli or system")] = None,
        target: Annotated[str | None, QueryParameter(description="a template or experiment id, a version")] = None,
        since: Annotated[str | None, QueryParameter(description="RFC 3339 or epoch ms, inclusive")] = None,
        until: Annotated[str | None, QueryParameter(description="RFC 3339 or epoch ms, exclusive")] = None,
        after_seq: Annotated[int, QueryParameter(ge=0, le=2**53, description="records after this seq")] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 100,
    ) -> AuditPage:
        """Audit records oldest first, each with its hash chain; every filter given must match.

        `actor` is the first 8 hex digits of the SHA-256 of an API key
        (`python -c "import hashlib; print(hashlib.sha256(b'KEY').hexdigest()[:8])"`), or `cli`
        or `system`. `since` is inclusive, `until` exclusive. Page on with `after_seq=<next_after_seq>`.
        Answers 400 saying which filter is malformed. Needs the `admin` scope.
        """
        try:
            if action is not None:
                check_action(action)
            if actor is not None:
                check_actor(actor)
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        since_ts, until_ts = _time("since", since), _time("until", until)
        if since_ts is not None and until_ts is not None and since_ts >= until_ts:
            raise HTTPException(status_code=400, detail=f"since ({since}) must be before until ({until})")
        found = audit.records(
            action=action,
            actor=actor,
            target=target,
            since=since_ts,
            until=until_ts,
            after_seq=after_seq,
            limit=limit + 1,  # one more says whether there is a next page
        )
        page = found[:limit]
        return AuditPage(page, page[-1].seq if len(found) > limit else None)

    @get(
        "/verify",
        summary="Verify the audit chain",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=error_responses(_ERROR_TEXTS, 503),
    )
    def verify_audit(self, audit: NamedDependency[AuditLog]) -> AuditVerdict:
        """Re-compute every record's hash and its link to the one before: `ok`, or the first broken record.

        An edited record breaks at itself, a dropped one at the record after it. Needs the `admin` scope.
        """
        count, broken = audit.verify()
        return AuditVerdict(broken is None, count, None if broken is None else BrokenRecord(*broken))
