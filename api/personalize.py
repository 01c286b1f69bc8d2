"""POST /v1/personalize: features -> segment -> template -> generated copy -> checks -> render.

One request, in order:

1. the user's activity features and segment, from the online store (`store.online`);
2. the segment's readable label (its profile), mapped to the copy model's
   segment style (the manifest's map, else `models.train.corpus.segment_style_for_label`);
3. the template for (slot, segment) (`engine.content.personalize.choose_template`) and a tone;
4. the featured item: a candidate of the request, or one from the catalog;
5. each ``ai.<slot>`` the template uses: the copy the background generator wrote for
   (model, template version, style, slot, tone, the item's facts), read from the copy
   cache (api/cache.py). Generation never runs here: a key not generated yet is
   queued for the generator and served default copy now, with the reason;
6. the copy checked, never rewritten: every price, percentage, name and attribute it
   states must be the featured item's (`engine.content.grounding.grounding_problem`),
   and it must keep the brand rules; else the template's default copy, and why;
7. the template rendered with the caller's context (used for this response,
   never stored) and the featured item. A template that cannot render (a filter
   fails on the caller's value, a body stored before save-time checks) is
   replaced by the slot's default template (`engine.content.personalize.default_templates`),
   and ``explanation.fallbacks`` says why: never a 500.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec
from prometheus_client import Counter, Gauge

from api.cache import CopyCache
from engine.content.brand import BrandRules, Slot, check
from engine.content.grounding import grounding_problem
from engine.content.personalize import (
    choose_from_catalog,
    choose_item,
    choose_template,
    default_templates,
    explaining_features,
    tone_for,
)
from engine.content.templates import ITEM_FIELDS, RenderFailed, TemplateError, render
from engine.features.events import Event
from store.catalog import ItemNotFound

log = logging.getLogger("tailor.api")

COPY_CACHE = Counter("tailor_copy_cache_lookups_total", "Generated-copy cache lookups, by result.", ["result"])
COPY_CACHE_RATIO = Gauge("tailor_copy_cache_hit_ratio", "Share of copy-cache lookups that hit, since start.")
FALLBACKS = Counter(
    "tailor_copy_fallbacks_total",
    "Default copy served instead of generated copy (or, reason 'template', the slot's default "
    "template instead of one that could not render), by reason.",
    ["reason"],
)
QUEUED = Counter(
    "tailor_copy_misses_queued_total", "Copy-cache misses queued for the background generator (once per key)."
)

Text = Annotated[str, msgspec.Meta(max_length=200)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ItemIn(Strict, frozen=True):
    """A candidate item, with the fields a template may show."""

    item_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    title: Text | None = None
    brand: Text | None = None
    category: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    price: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    sale_price: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    discount_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    #: Facts generated copy may state ("colour": "navy"), as the catalog keeps them.
    attributes: Annotated[
        dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Text], msgspec.Meta(max_length=32)
    ] = {}


class PersonalizeRequest(Strict, frozen=True):
    """Who, where, and what the caller knows: ``context`` fills ``user.*`` placeholders for
    this response only (never stored); ``items`` (or ``item_ids`` from the catalog) are
    candidates, one of which is featured; with neither, one is picked from the catalog."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    slot: Slot
    context: Annotated[
        dict[Annotated[str, msgspec.Meta(max_length=64)], Text | int | float | bool | None], msgspec.Meta(max_length=32)
    ] = {}
    items: Annotated[list[ItemIn], msgspec.Meta(max_length=50)] = []
    template_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    #: Candidates by id, read from the catalog (PUT /v1/items) instead of sent whole; not with ``items``.
    item_ids: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=128)]], msgspec.Meta(max_length=50)
    ] = []

    def __post_init__(self):
        if self.items and self.item_ids:
            raise ValueError("send candidates as `items` or as `item_ids`, not both")


class Content(msgspec.Struct):
    """The rendered text, and its structured parts: the copy per ai slot and the featured item."""

    text: str
    slot: str
    copy: dict[str, str]
    item_id: str | None = None


class Fallback(msgspec.Struct):
    slot: str
    reason: str


class Explanation(msgspec.Struct):
    """Why this content: the segment and the features behind it, each choice, and any fallback."""

    segment: str
    style: str
    template: str
    tone: str
    item: str
    features: dict[str, Any]
    fallbacks: list[Fallback] = []


class Personalized(msgspec.Struct):
    content: Content
    template_id: str
    template_version: int
    #: The experiment the user is in for this slot, and their variant (an arm, a factorial
    #: cell, or "holdout"); both null outside experiments.
    variant: str | None
    experiment: str | None
    segment: int | None
    segment_label: str | None
    model_version: str | None
    cached: bool
    explanation: Explanation
    #: The id of the impression event logged for this response: send it back in a click's
    #: ``props.exposure_id`` to credit the click to exactly this content in the feedback export
    #: (conversions go to the user's latest exposure; experiment counters go by user and variant).
    exposure_id: str | None = None


class ServedModel(NamedTuple):
    """The copy model the generator writes with, as the API needs it: no ONNX session, only its manifest."""

    version: str
    #: Live segment label -> the style to prompt with (the manifest's map).
    segment_styles: dict[str, str]


def read_served_model(folder: str | Path) -> ServedModel:
    """The served model's version and style map, from its manifest; `ModelDirError` says why not."""
    from engine.content.grounding import PROMPT_FORMAT
    from models.serve.manifest import ModelDirError, read_manifest

    manifest = read_manifest(folder)
    if getattr(manifest, "prompt_format", 1) != PROMPT_FORMAT:
        raise ModelDirError(
            f"the copy model in {folder} ({manifest.version}) was trained for the old prompt, without the item's "
            "facts: build a new one with `tailor train && tailor export --quantize`"
        )
    return ServedModel(manifest.version, dict(manifest.segment_styles))


class CopyWriter:
    """Generated copy for a request: looked up, never generated here; checked against the item and the rules.

    ``current`` is the served model (`ServedModel`, set by `serve` on a promotion);
    while it is None (no model built yet) every ai slot gets default copy, and the
    reason says so. An experiment arm's ``model_version`` keys its copy under that
    version; the background generator loads it from the registry.
    """

    def __init__(
        self,
        cache: CopyCache,
        rules: BrandRules,
        *,
        model: ServedModel | None = None,
        unavailable: str = "",
        registry: str | Path | None = None,
    ):
        self.current = model
        self.cache = cache
        self.rules = rules
        self.unavailable = unavailable
        self.registry = Path(registry) if registry else None
        # What a hit would otherwise recompute on every request (profiled): a label's style, and a
        # snippet's verdict against its item's facts and the brand rules (the key fixes both).
        self._styles: dict[str, str] = {}
        self._verdicts: dict[tuple[str, str], tuple[str | None, str | None]] = {}

    @property
    def model_version(self) -> str | None:
        return self.current.version if self.current is not None else None

    def model_versions(self) -> set[str]:
        """The versions copy can be served for: the served one and the registry's."""
        from models.serve.registry import versions

        known = {self.model_version} - {None}
        return known | set(versions(self.registry)) if self.registry else known

    def serve(self, model: ServedModel) -> None:
        """Serve copy of ``model`` from now on (a promotion): one assignment, so no request sees half of it."""
        old = self.model_version
        self.current, self.unavailable, self._styles = model, "", {}
        log.info("now serving copy of model %s (was %s)", model.version, old or "none")

    def style_for(self, label: str | None) -> str:
        style = self._styles.get(label)  # type: ignore[arg-type]
        if style is None:
            from models.train.corpus import DEFAULT_STYLE, segment_style_for_label

            styles = self.current.segment_styles if self.current is not None else {}
            found = DEFAULT_STYLE if label is None else styles.get(label) or segment_style_for_label(label)
            style = self._styles[label] = found  # type: ignore[index]
        return style

    def copy_for(
        self, template, style: str, slot: str, tone: str, item: dict | None, version: str | None = None
    ) -> tuple[str | None, bool, str | None]:
        """(checked text or None, from the cache, why not generated copy) for one ai slot of ``template``.

        A key nobody generated yet is queued for the background generator and answered
        at once without copy; generated copy that states what the item's facts do not
        back or breaks a brand rule is not served (`finish`). ``version``: an experiment
        arm's model version instead of the served one.
        """
        from store.copies import CopyJob, copy_key

        version = version or self.model_version
        if version is None:
            return None, False, self.unavailable or "no copy model loaded"
        key = copy_key(version, template.template_id, template.version, style, slot, tone, item)
        text = self.cache.get(key)
        _count(text is not None)
        if text is not None:
            verdict = self._verdicts.get((key, text))
            if verdict is None:
                if len(self._verdicts) >= VERDICTS:
                    self._verdicts.clear()
                verdict = self._verdicts[(key, text)] = self.finish(text, item, slot, tone)
            return verdict[0], True, verdict[1]
        job = CopyJob(
            key=key,
            model_version=version,
            template_id=template.template_id,
            template_version=template.version,
            style=style,
            slot=slot,
            tone=tone,
            item=item,
            requested_ms=int(time.time() * 1000),
        )
        if self.cache.request(job):
            QUEUED.inc()
        return None, False, NOT_YET

    def finish(self, text: str, item: dict | None, slot: str, tone: str) -> tuple[str | None, str | None]:
        """Generated copy if it states only the featured item's facts and keeps the brand rules, else why not."""
        problem = grounding_problem(text, item)
        if problem is not None:
            return None, f"generated copy {problem}"
        violations = check(self.rules, text, slot=slot, tone=tone)
        if violations:
            broken = "; ".join(f"{v.rule}: {v.detail}" for v in violations)
            return None, f"generated copy broke brand rules: {broken}"
        return text, None


#: Verdicts kept (one per snippet served); past it they are forgotten and recomputed.
VERDICTS = 100_000
#: Why a miss serves default copy: the request never waits for generation.
NOT_YET = "not generated yet: queued for the background copy generator (served from the next request once written)"


_HITS, _MISSES = COPY_CACHE.labels("hit"), COPY_CACHE.labels("miss")
_lookups = {"hit": 0, "miss": 0}


def _count(hit: bool) -> None:
    (_HITS if hit else _MISSES).inc()
    _lookups["hit" if hit else "miss"] += 1
    COPY_CACHE_RATIO.set(_lookups["hit"] / (_lookups["hit"] + _lookups["miss"]))


async def personalize(
    request: PersonalizeRequest,
    *,
    pseudonym: str,
    reader,
    templates,
    writer: CopyWriter,
    experiments=None,
    expose: Callable[[Event], None] | None = None,
    catalog=None,
    consent=None,
    consent_why: str = "",
) -> Personalized:
    """The content for one request (see the module docstring for the steps).

    ``experiments`` (`store.experiments.LiveExperiments`) puts the user in the slot's running
    experiment, if any targets them; ``expose`` logs the impression event of the response.
    ``catalog`` (`store.catalog.LiveCatalog`) resolves ``item_ids`` and, when the request gives no
    candidates, offers the user's top category's items. Raises `TemplateError`,
    `engine.content.personalize.NoTemplate` or `store.catalog.ItemNotFound` with a reason the caller can act on.
    ``consent`` (`api.consent.Consent`; None: everything allowed): without ``personalization`` the user's
    features and segment are not read and the content is what anyone would get (``consent_why`` says why);
    without ``experiments`` (or ``analytics``) the user is in no experiment and no impression is logged.
    """
    if request.item_ids:  # only these requests, and those with no candidates at all, read the catalog
        if catalog is None:
            raise _no_catalog()
        candidates: list[dict[str, Any]] = [i.facts() for i in catalog.resolve(request.item_ids)]
    else:
        candidates = [msgspec.structs.asdict(i) for i in request.items]
    personalized = consent is None or consent.personalization
    if personalized:
        features, segment = reader.features(pseudonym)
    else:
        features, segment = {}, None
    if consent is not None and not (consent.experiments and consent.analytics):
        experiments = expose = None
    profile = reader.profiles().get(segment.segment) if segment is not None else None
    label = profile.label if profile is not None else None
    style = writer.style_for(label)
    if not personalized:
        segment_why = f"not personalized: {consent_why}; no features or segment read, {style} copy"
    elif segment is None:
        segment_why = f"not segmented yet (too few visits); {style} copy"
    elif profile is None:
        segment_why = f"segment {segment.segment} (model v{segment.model_version}), no profile yet; {style} copy"
    else:
        segment_why = (
            f"segment {segment.segment} '{label}' ({profile.share:.0%} of users, model "
            f"v{segment.model_version}); {style} copy"
        )

    # A caller that names its template opts out of experiments on the slot.
    assignment = None
    if experiments is not None and request.template_id is None:
        assignment = experiments.assign(
            request.slot, pseudonym, segment.segment if segment is not None else None, label, first_arm=reader.first_arm
        )
    arm = assignment.content if assignment is not None else None
    live = templates.for_slot(request.slot)
    if assignment is not None and arm is None:  # the holdout: the slot's default content
        template, why = choose_template(live, slot=request.slot, style="", label=None)
        template_why = f"holdout of experiment {assignment.experiment}: default content ({why})"
    elif arm is not None and arm.template_id is not None:
        template = _pinned(templates, arm.template_id, arm.template_version, request.slot)
        template_why = f"arm {arm.name} of experiment {assignment.experiment}"
    else:
        template, template_why = choose_template(
            live, slot=request.slot, style=style, label=label, template_id=request.template_id
        )
        if assignment is not None:
            template_why += f" (arm {arm.name} of experiment {assignment.experiment})"
    tone, tone_why = tone_for(template, style)
    if not personalized:
        item = candidates[0] if candidates else None
        item_why = "the first candidate (not personalized)" if item else "no candidates given (not personalized)"
    elif candidates or catalog is None:
        item, item_why = choose_item(candidates, features)
    else:
        top = features.get("top_category")
        picked, item_why = choose_from_catalog(catalog.shelf(top) if top else (), top, pseudonym)
        item = picked.facts() if picked is not None else None
    item_id = item["item_id"] if item else None

    fields = template.fields
    copy: dict[str, str] = {}
    fallbacks: list[Fallback] = []
    default_copy = assignment is not None and (arm is None or arm.copy == "default")
    version = arm.model_version if arm is not None else None
    all_cached = bool(fields.ai) and not default_copy
    for slot in fields.ai:
        if default_copy:  # by design (holdout, or a default-copy arm): not a fallback
            copy[slot] = template.default_copy[slot]
            continue
        text, cached, why = writer.copy_for(template, style, slot, tone, item, version)
        all_cached = all_cached and cached
        if text is None:
            copy[slot] = template.default_copy[slot]
            fallbacks.append(Fallback(slot, why or "no copy"))
            FALLBACKS.labels(_reason_kind(why)).inc()
        else:
            copy[slot] = text

    item_values = {k: v for k, v in item.items() if k in ITEM_FIELDS and v is not None} if item else None
    discount_pct = item.get("discount_pct") if item else None
    try:
        rendered = render(template, user=request.context, item=item_values, ai=copy, discount_pct=discount_pct)
    except RenderFailed as failed:
        template, rendered = _render_default(failed, template, live, request, item_values, copy, discount_pct)
        template_why = f"the slot's default template, because {failed.reason}"
        fallbacks.append(
            Fallback(request.slot, f"{failed.reason}: served {template.template_id} v{template.version} instead")
        )
        FALLBACKS.labels("template").inc()
        copy = {
            slot: template.default_copy[slot] if slot in rendered.used_defaults else copy[slot]
            for slot in rendered.fields.ai
        }
    model_version = None if default_copy else (version or writer.model_version)
    experiment = assignment.experiment if assignment is not None else None
    variant = assignment.variant if assignment is not None else None
    exposure_id = None
    if expose is not None:
        exposure_id = uuid.uuid4().hex
        props: dict[str, Any] = {
            "slot": request.slot,
            "template": f"{template.template_id}@{template.version}",
            "style": style,
            "tone": tone,
            "generated": bool(fields.ai) and not default_copy and not fallbacks,
        }
        if segment is not None:
            props["segment"] = segment.segment
        if label is not None:
            props["label"] = label
        if model_version is not None:
            props["model_version"] = model_version
        for slot, text in copy.items():
            props[f"copy.{slot}"] = text
        expose(
            Event(
                event_id=exposure_id,
                type="impression",
                user_id=pseudonym,
                ts=int(time.time() * 1000),
                item_id=item_id,
                category=item.get("category") if item else None,
                experiment=experiment,
                variant=variant,
                props=props,
            )
        )
    return Personalized(
        content=Content(rendered.text, request.slot, copy, item_id),
        template_id=template.template_id,
        template_version=template.version,
        variant=variant,
        experiment=experiment,
        segment=segment.segment if segment is not None else None,
        segment_label=label,
        model_version=model_version,
        cached=all_cached,
        explanation=Explanation(
            segment=segment_why,
            style=style,
            template=f"{template.template_id} v{template.version}: {template_why}",
            tone=f"{tone}: {tone_why}",
            item=f"{item_id}: {item_why}" if item_id else item_why,
            features=explaining_features(features),
            fallbacks=fallbacks,
        ),
        exposure_id=exposure_id,
    )


def _no_catalog() -> ItemNotFound:
    return ItemNotFound("this server has no catalog to read item_ids from: send the candidates as items")


_PINNED: dict[tuple[str, int], Any] = {}
_WARNED: set[tuple[str, int]] = set()


def _render_default(failed: RenderFailed, template, live, request: PersonalizeRequest, item_values, copy, discount_pct):
    """(template, RenderResult) of the first of the slot's defaults that renders this request, else the reason."""
    if (template.template_id, template.version) not in _WARNED:  # once per version: not a log line per request
        _WARNED.add((template.template_id, template.version))
        log.warning("%s; serving the slot's default template instead: fix or archive it", failed.reason)
    why = "there is none"
    for candidate in default_templates(live, slot=request.slot, failed=template):
        try:
            return candidate, render(
                candidate, user=request.context, item=item_values, ai=copy, discount_pct=discount_pct
            )
        except TemplateError as exc:
            why = exc.reason
    raise TemplateError(f"{failed.reason}; no default {request.slot} template could serve instead ({why})")


def _pinned(templates, template_id: str, version: int | None, slot: str):
    """An arm's template: a fixed version (versions never change: cached), or the live latest one."""
    from engine.content.personalize import NoTemplate

    if version is None:
        template = templates.by_id(template_id)
        if template is None or template.slot != slot:
            raise NoTemplate(
                f"the experiment's template {template_id!r} is not live for {slot}: unarchive it or stop the experiment"
            )
        return template
    template = _PINNED.get((template_id, version))
    if template is None:
        template = _PINNED[(template_id, version)] = templates.store.get(template_id, version)
    return template


def _reason_kind(why: str | None) -> str:
    if not why:
        return "other"
    for prefix, kind in (
        ("not generated yet", "pending"),
        ("generated copy broke", "brand"),
        ("generated copy", "ungrounded"),
        ("no copy model", "no_model"),
    ):
        if why.startswith(prefix):
            return kind
    return "other"
