"""The ``/v1/templates`` routes: create, read, revise and archive versioned content templates.

The routes (`TemplateController`) read with the ``serve`` scope and write with
``admin``; an invalid template is a 422 whose ``detail`` is the `TemplateError`
reason, and nothing is stored. Every write is recorded in the audit log
(`api.audit`). The templates themselves, their versions, their SQLite and Redis
stores and the live snapshot the personalize path serves from are `store.templates`.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import msgspec
from litestar import Controller, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.params import FromPath, JSONBody, QueryParameter

from api.audit import Auditor, provide_auditor
from api.dependencies import live_templates, provide
from api.http import StrictBody, error_responses, http_errors
from engine.content.brand import MAX_CHARS, Slot, Tone
from engine.content.templates import MAX_BODY_CHARS, Template, TemplateError, new_template
from store.templates import LiveTemplates, TemplateConflict, TemplateNotFound

#: The error answers a template route gives, for its OpenAPI ``responses``.
_errors = partial(
    error_responses,
    {
        404: "there is no such template (or version)",
        409: "a template with that id exists already",
        413: "the body is over the size limit",
        422: "the template is invalid or cannot render: the reason says why",
    },
)
#: Store and validation errors as HTTP answers whose ``detail`` says what to do.
_STATUSES = {TemplateNotFound: 404, TemplateConflict: 409, TemplateError: 422}


#: Largest version a store can hold (SQLite's INTEGER): a larger one in a request is a 400, not a 500.
MAX_VERSION = 2**63 - 1
TemplateId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, description="a-z, 0-9, - and _")]
Body = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS)]
Copy = Annotated[str, msgspec.Meta(min_length=1, max_length=max(MAX_CHARS.values()))]
Segment = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Segments = Annotated[list[Segment], msgspec.Meta(max_length=64)]


class TemplateIn(StrictBody):
    """A new template: its id, slot, body, and default copy for each ``ai.<slot>`` the body uses."""

    template_id: TemplateId
    slot: Slot
    body: Body
    default_copy: dict[Slot, Copy] = {}
    segments: Segments = []
    tone: Tone | None = None


class TemplatePatch(StrictBody):
    """Fields to change (any of them); the others keep their values. ``tone: null`` clears the tone."""

    body: Body | msgspec.UnsetType = msgspec.UNSET
    default_copy: dict[Slot, Copy] | msgspec.UnsetType = msgspec.UNSET
    segments: Segments | msgspec.UnsetType = msgspec.UNSET
    tone: Tone | None | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET


class TemplateOut(msgspec.Struct, frozen=True):
    """One version of a template, every field present."""

    template_id: str
    version: int
    slot: Slot
    body: str
    default_copy: dict[str, str]
    segments: list[str]
    tone: Tone | None
    archived: bool
    created: str

    @classmethod
    def of(cls, template: Template) -> TemplateOut:
        return cls(**{**msgspec.structs.asdict(template), "segments": list(template.segments)})


class TemplateController(Controller):
    """Versioned content templates: create, read, revise, archive."""

    path = "/v1/templates"
    tags = ("templates",)
    dependencies = {"templates": provide(live_templates), "auditor": provide_auditor}

    @post(summary="Create a template", opt={"scope": "admin"}, sync_to_thread=True, responses=_errors(409, 413, 422))
    def create_template(
        self, templates: NamedDependency[LiveTemplates], data: JSONBody[TemplateIn], auditor: NamedDependency[Auditor]
    ) -> TemplateOut:
        """Create a template (version 1). Needs the `admin` scope.

        The body is checked before it is saved: placeholders are `user.<field>`,
        `item.<field>`, `ai.<slot>` and `discount_pct`, with a few filters and
        `{% if %}`; each `ai.<slot>` used needs `default_copy` for that slot. It is
        then rendered with sample values and must render (user fields as text or
        as numbers, an item on sale and one at full price).
        Answers 409 if the id is taken, 422 with the reason if the template is invalid or cannot render.
        Recorded in the audit log (503, nothing created, when it cannot be written: `api.audit`).
        """
        auditor.check()
        with http_errors(_STATUSES):
            template, _ = new_template(
                data.template_id,
                data.slot,
                data.body,
                default_copy=data.default_copy,
                segments=data.segments,
                tone=data.tone,
            )
            created = templates.store.create(template)
        templates.invalidate()
        auditor.record("template.create", created.template_id, {"version": created.version, "slot": created.slot})
        return TemplateOut.of(created)

    @get(summary="List templates", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors())
    def list_templates(
        self,
        templates: NamedDependency[LiveTemplates],
        slot: Annotated[Slot | None, QueryParameter(description="only this slot's templates")] = None,
        segment: Annotated[str | None, QueryParameter(description="only those meant for this segment")] = None,
        include_archived: Annotated[bool, QueryParameter(description="archived ones too")] = False,
    ) -> list[TemplateOut]:
        """The latest version of each template, sorted by id.

        Filter by `slot`, or by `segment` (templates tagged with it, or with no
        segments); archived templates are left out unless `include_archived=true`.
        """
        listed = templates.store.list(slot=slot, segment=segment, include_archived=include_archived)
        return [TemplateOut.of(t) for t in listed]

    @get(
        "/{template_id:str}",
        summary="Get a template",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def get_template(
        self,
        templates: NamedDependency[LiveTemplates],
        template_id: FromPath[str],
        version: Annotated[int | None, QueryParameter(ge=1, le=MAX_VERSION, description="a past version")] = None,
    ) -> TemplateOut:
        """One template: its latest version, or the `version` asked for (404 if there is none)."""
        with http_errors(_STATUSES):
            return TemplateOut.of(templates.store.get(template_id, version))

    @get(
        "/{template_id:str}/versions",
        summary="List a template's versions",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def template_versions(
        self, templates: NamedDependency[LiveTemplates], template_id: FromPath[str]
    ) -> list[TemplateOut]:
        """Every version of a template, oldest first (404 if there is no such template)."""
        with http_errors(_STATUSES):
            return [TemplateOut.of(t) for t in templates.store.versions(template_id)]

    @patch(
        "/{template_id:str}",
        summary="Revise a template",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(404, 413, 422),
    )
    def update_template(
        self,
        templates: NamedDependency[LiveTemplates],
        template_id: FromPath[str],
        data: JSONBody[TemplatePatch],
        auditor: NamedDependency[Auditor],
    ) -> TemplateOut:
        """Change a template: saves a new version (earlier ones stay readable). Needs the `admin` scope.

        Send only the fields to change; `archived: false` restores an archived
        template. Answers 400 for an empty change, 404 for an unknown id, 422
        with the reason if the changed template is invalid (a new body must render, as on create).
        """
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        if not changes:
            raise HTTPException(
                status_code=400,
                detail="nothing to change: send at least one of " + ", ".join(TemplatePatch.__struct_fields__),
            )
        auditor.check()
        with http_errors(_STATUSES):
            updated = templates.store.update(template_id, changes)
        templates.invalidate()
        auditor.record("template.update", template_id, {"version": updated.version, "changed": sorted(changes)})
        return TemplateOut.of(updated)

    @post(
        "/{template_id:str}/archive",
        summary="Archive a template",
        status_code=200,
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def archive_template(
        self, templates: NamedDependency[LiveTemplates], template_id: FromPath[str], auditor: NamedDependency[Auditor]
    ) -> TemplateOut:
        """Stop serving a template: saves a version with `archived: true`. Needs the `admin` scope.

        It stays readable, and `PATCH` with `archived: false` restores it.
        Archiving an archived template changes nothing and returns it.
        """
        auditor.check()
        with http_errors(_STATUSES):
            archived = templates.store.archive(template_id)
        templates.invalidate()
        auditor.record("template.archive", template_id, {"version": archived.version})
        return TemplateOut.of(archived)
