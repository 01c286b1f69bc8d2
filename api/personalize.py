"""POST /v1/personalize: features -> segment -> template -> generated copy -> brand rules -> render.

One request, in order:

1. the user's activity features and segment, from the online store (`store.online`);
2. the segment's readable label (its profile), mapped to the copy model's
   segment style (the manifest's map, else `models.train.corpus.segment_style_for_label`);
3. the template for (slot, segment) (`engine.content.personalize.choose_template`) and a tone;
4. each ``ai.<slot>`` the template uses: from the copy cache, else generated
   with control codes (segment style, slot, tone) through the batching
   generator, waiting at most ``TAILOR_GENERATION_BUDGET_MS``;
5. the copy grounded in the featured item (`engine.content.personalize.ground_copy`:
   the model writes catalog names and prices; they become the item's own) and
   checked against the brand rules; copy that is late, failed, cannot be
   grounded or broke a rule is replaced by the template's default copy, and the
   explanation says why (late copy still lands in the cache for the next request);
6. the template rendered with the caller's context (used for this response,
   never stored) and the featured item. A template that cannot render (a filter
   fails on the caller's value, a body stored before save-time checks) is
   replaced by the slot's default template (`engine.content.personalize.default_templates`),
   and ``explanation.fallbacks`` says why: never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from api.cache import CachedCopy, CopyCache, copy_key
from engine.content.brand import BrandRules, Slot, check
from engine.content.personalize import (
    choose_from_catalog,
    choose_item,
    choose_template,
    default_templates,
    explaining_features,
    ground_copy,
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
GENERATOR_BATCH = Histogram(
    "tailor_generator_batch_size", "Prompts per generator batch.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
GENERATOR_WAIT = Histogram(
    "tailor_generator_queue_wait_seconds",
    "Time a prompt waited for its batch to start.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
GENERATOR_SECONDS = Histogram(
    "tailor_generator_batch_seconds",
    "Time to generate one batch.",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)

#: New tokens generated per slot: room for the slot's longest copy, no more.
NEW_TOKENS: dict[str, int] = {"headline": 20, "description": 56, "cta": 10, "email_subject": 24}
#: Sampling: varied copy per item; the cache keeps what was served stable.
SAMPLING = {"greedy": False, "top_p": 0.9, "temperature": 0.8}

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


class Loaded(NamedTuple):
    """A copy model being served: its generator and the batching queue in front of it."""

    generator: Any
    batcher: Any


def open_generator(folder: str | Path):
    """The ONNX generator of an exported model folder, set up for serving.

    As many threads as CPUs this process may use (not the machine's cores: it may be
    pinned), and no spinning between batches: the event loop shares those CPUs.
    """
    from models.serve.runtime import Generator

    return Generator(folder, intra_op_threads=len(os.sched_getaffinity(0)), spinning=False)


class CopyWriter:
    """The generator behind a batching queue, with the copy cache in front and brand rules after.

    ``current`` is the served model (set by its opener, or `swap`); while it is None
    (no model built) every ai slot gets default copy.
    `swap` replaces the served model while requests run (hot swap after a promotion);
    `copy_for` can also generate with another version from the model registry (an
    experiment arm's ``model_version``), loaded on first use.
    """

    #: Seconds an old model's queue keeps running after a swap, for the generations it holds.
    SWAP_GRACE_S = 5.0

    def __init__(
        self,
        cache: CopyCache,
        rules: BrandRules,
        budget_ms: float,
        unavailable: str = "",
        registry: str | Path | None = None,
        make_batcher=None,
    ):
        self.current: Loaded | None = None
        self.cache = cache
        self.rules = rules
        self.budget_s = budget_ms / 1000
        self.unavailable = unavailable
        self.registry = Path(registry) if registry else None
        #: ``make_batcher(generator) -> started BatchingGenerator``; needed by `swap` and other versions.
        self.make_batcher = make_batcher
        self.others: dict[str, Loaded] = {}  # other versions, for experiment arms
        self._loading: dict[str, asyncio.Task] = {}
        self._pending: dict[str, asyncio.Task] = {}
        self._retiring: set[asyncio.Task] = set()

    @property
    def generator(self):
        return self.current.generator if self.current is not None else None

    @property
    def model_version(self) -> str | None:
        return self.generator.version if self.generator is not None else None

    def model_versions(self) -> set[str]:
        """The versions this process can generate with: the served one and the registry's."""
        from models.serve.registry import versions

        known = {self.model_version} - {None}
        return known | set(versions(self.registry)) if self.registry else known

    async def swap(self, generator) -> None:
        """Serve ``generator`` from now on; the old model's queue drains for `SWAP_GRACE_S`, then closes.

        Requests that already queued a prompt on the old model get their copy (cached
        under the old version's keys); new requests use the new model at once.
        """
        old = self.current
        self.current = Loaded(generator, self.make_batcher(generator))
        self.unavailable = ""
        if old is not None and old.batcher is not None:
            task = asyncio.create_task(self._retire(old.batcher))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        log.info(
            "now serving copy model %s (was %s)",
            generator.version,
            old.generator.version if old is not None else "none",
        )

    async def _retire(self, batcher) -> None:
        await asyncio.sleep(self.SWAP_GRACE_S)
        await batcher.close()

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        loaded = [self.current, *self.others.values()]
        for item in loaded:
            if item is not None and item.batcher is not None:
                await item.batcher.close()

    def _for_version(self, version: str | None) -> tuple[Loaded | None, str | None]:
        """The loaded model for ``version`` (None: the served one), or why there is none yet."""
        if version is None or version == self.model_version:
            return self.current, None if self.current is not None else self.unavailable
        loaded = self.others.get(version)
        if loaded is not None:
            return loaded, None
        if version not in self._loading:
            task = self._loading[version] = asyncio.create_task(self._load(version))
            task.add_done_callback(lambda t: self._loading.pop(version, None))
        return None, f"copy model version {version} is loading (the next requests will use it)"

    async def _load(self, version: str) -> None:
        from models.serve.registry import version_dir

        folder = None
        try:
            if self.registry is None:
                raise FileNotFoundError("no model registry is configured (TAILOR_MODEL_REGISTRY)")
            folder = version_dir(self.registry, version)
            generator = await asyncio.get_running_loop().run_in_executor(None, open_generator, folder)
            self.others[version] = Loaded(generator, self.make_batcher(generator))
        except Exception as exc:  # noqa: BLE001 - the arm keeps default copy; logged
            log.warning("cannot load copy model version %s from %s: %s", version, folder, exc)

    def style_for(self, label: str | None) -> str:
        from models.train.corpus import DEFAULT_STYLE, segment_style_for_label

        if label is None:
            return DEFAULT_STYLE
        styles = self.generator.manifest.segment_styles if self.generator is not None else {}
        return styles.get(label) or segment_style_for_label(label)

    async def copy_for(
        self, key: str, style: str, slot: str, tone: str, version: str | None = None
    ) -> tuple[str | None, bool, str | None]:
        """(text or None, from the cache, why not generated copy) for one ai slot.

        ``version``: generate with that model version (an experiment arm's) instead of the served one.
        """
        loaded, why = self._for_version(version)
        if loaded is None:
            return None, False, why
        cached = await self.cache.get(key)
        hit = cached is not None
        _count(hit)
        if cached is None:
            task = self._pending.get(key)
            if task is None:  # one generation per key, however many requests wait for it
                task = self._pending[key] = asyncio.create_task(self._generate(loaded.batcher, key, style, slot, tone))
                task.add_done_callback(lambda t: self._finished(key, t))
            try:
                cached = await asyncio.wait_for(asyncio.shield(task), self.budget_s)
            except TimeoutError:
                return (
                    None,
                    False,
                    (
                        f"generation took longer than {self.budget_s * 1000:g} ms "
                        "(the copy will be cached for the next request)"
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - the request still gets default copy
                return None, False, f"generation failed: {type(exc).__name__}: {exc}"[:200]
        return cached.text, hit, None

    def _finished(self, key: str, task: asyncio.Task) -> None:
        self._pending.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("copy generation for %s failed: %r", key, task.exception())

    async def _generate(self, batcher, key: str, style: str, slot: str, tone: str) -> CachedCopy:
        from models.train.corpus import control_prefix

        result = await batcher.generate(control_prefix(style, slot, tone), max_new_tokens=NEW_TOKENS[slot], **SAMPLING)
        value = CachedCopy(result.text.strip())
        await self.cache.put(key, value)
        return value

    def finish(self, text: str, item: dict | None, slot: str, tone: str) -> tuple[str | None, str | None]:
        """Generated copy grounded in the featured item and checked against the brand rules, or why not."""
        grounded, why = ground_copy(text, item)
        if grounded is None:
            return None, f"generated copy {why}"
        violations = check(self.rules, grounded, slot=slot, tone=tone)
        if violations:
            broken = "; ".join(f"{v.rule}: {v.detail}" for v in violations)
            return None, f"generated copy broke brand rules: {broken}"
        return grounded, None

    def observe_batch(self, size: int, waits_ms: list[float], seconds: float) -> None:
        GENERATOR_BATCH.observe(size)
        GENERATOR_SECONDS.observe(seconds)
        for wait in waits_ms:
            GENERATOR_WAIT.observe(wait / 1000)


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
) -> Personalized:
    """The content for one request (see the module docstring for the steps).

    ``experiments`` (`store.experiments.LiveExperiments`) puts the user in the slot's running
    experiment, if any targets them; ``expose`` logs the impression event of the response.
    ``catalog`` (`store.catalog.LiveCatalog`) resolves ``item_ids`` and, when the request gives no
    candidates, offers the user's top category's items. Raises `TemplateError`,
    `engine.content.personalize.NoTemplate` or `store.catalog.ItemNotFound` with a reason the caller can act on.
    """
    if request.item_ids:  # only these requests, and those with no candidates at all, read the catalog
        if catalog is None:
            raise _no_catalog()
        candidates: list[dict[str, Any]] = [i.facts() for i in catalog.resolve(request.item_ids)]
    else:
        candidates = [msgspec.structs.asdict(i) for i in request.items]
    features, segment = reader.features(pseudonym)
    profile = reader.profiles().get(segment.segment) if segment is not None else None
    label = profile.label if profile is not None else None
    style = writer.style_for(label)
    if segment is None:
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
    if candidates or catalog is None:
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
        key = copy_key(
            version or writer.model_version or "-", template.template_id, template.version, style, slot, tone, item_id
        )
        text, cached, why = await writer.copy_for(key, style, slot, tone, version)
        all_cached = all_cached and cached
        if text is not None:
            text, why = writer.finish(text, item, slot, tone)
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
        ("generation took", "slow"),
        ("generation failed", "error"),
        ("generated copy broke", "brand"),
        ("generated copy", "ungrounded"),
        ("no copy model", "no_model"),
    ):
        if why.startswith(prefix):
            return kind
    return "other"
