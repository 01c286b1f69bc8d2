"""POST /v1/personalize: features -> segment -> template -> generated copy -> brand rules -> render.

One request, in order:

1. the user's activity features and segment, from the online store (`api.online`);
2. the segment's readable label (its profile), mapped to the copy model's
   segment style (the manifest's map, else `models.corpus.segment_style_for_label`);
3. the template for (slot, segment) (`engine.personalize.choose_template`) and a tone;
4. each ``ai.<slot>`` the template uses: from the copy cache, else generated
   with control codes (segment style, slot, tone) through the batching
   generator, waiting at most ``TAILOR_GENERATION_BUDGET_MS``;
5. the copy grounded in the featured item (`engine.personalize.ground_copy`:
   the model writes catalog names and prices; they become the item's own) and
   checked against the brand rules; copy that is late, failed, cannot be
   grounded or broke a rule is replaced by the template's default copy, and the
   explanation says why (late copy still lands in the cache for the next request);
6. the template rendered with the caller's context (used for this response,
   never stored) and the featured item.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from api.cache import CachedCopy, CopyCache, copy_key
from engine.brand import BrandRules, Slot, check
from engine.personalize import choose_item, choose_template, explaining_features, ground_copy, tone_for
from engine.templates import ITEM_FIELDS, render

log = logging.getLogger("tailor.api")

COPY_CACHE = Counter("tailor_copy_cache_lookups_total", "Generated-copy cache lookups, by result.", ["result"])
COPY_CACHE_RATIO = Gauge("tailor_copy_cache_hit_ratio", "Share of copy-cache lookups that hit, since start.")
FALLBACKS = Counter("tailor_copy_fallbacks_total", "Default copy served instead of generated copy, by reason.",
                    ["reason"])
GENERATOR_BATCH = Histogram("tailor_generator_batch_size", "Prompts per generator batch.",
                            buckets=(1, 2, 4, 8, 16, 32, 64))
GENERATOR_WAIT = Histogram("tailor_generator_queue_wait_seconds", "Time a prompt waited for its batch to start.",
                           buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25))
GENERATOR_SECONDS = Histogram("tailor_generator_batch_seconds", "Time to generate one batch.",
                              buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0))

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
    this response only (never stored); ``items`` are candidates, one of which is featured."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    slot: Slot
    context: Annotated[dict[Annotated[str, msgspec.Meta(max_length=64)], Text | int | float | bool | None],
                       msgspec.Meta(max_length=32)] = {}
    items: Annotated[list[ItemIn], msgspec.Meta(max_length=50)] = []
    template_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


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
    variant: str
    experiment: str | None
    segment: int | None
    segment_label: str | None
    model_version: str | None
    cached: bool
    explanation: Explanation


class CopyWriter:
    """The generator behind a batching queue, with the copy cache in front and brand rules after.

    ``generator`` may be None (no model built): every ai slot then gets default copy.
    """

    def __init__(self, generator, batcher, cache: CopyCache, rules: BrandRules, budget_ms: float,
                 unavailable: str = ""):
        self.generator = generator
        self.batcher = batcher
        self.cache = cache
        self.rules = rules
        self.budget_s = budget_ms / 1000
        self.unavailable = unavailable
        self._pending: dict[str, asyncio.Task] = {}

    @property
    def model_version(self) -> str | None:
        return self.generator.version if self.generator is not None else None

    def style_for(self, label: str | None) -> str:
        from models.corpus import DEFAULT_STYLE, segment_style_for_label

        if label is None:
            return DEFAULT_STYLE
        styles = self.generator.manifest.segment_styles if self.generator is not None else {}
        return styles.get(label) or segment_style_for_label(label)

    async def copy_for(self, key: str, style: str, slot: str, tone: str) -> tuple[str | None, bool, str | None]:
        """(text or None, from the cache, why not generated copy) for one ai slot."""
        if self.generator is None:
            return None, False, self.unavailable
        cached = await self.cache.get(key)
        hit = cached is not None
        _count(hit)
        if cached is None:
            task = self._pending.get(key)
            if task is None:  # one generation per key, however many requests wait for it
                task = self._pending[key] = asyncio.create_task(self._generate(key, style, slot, tone))
                task.add_done_callback(lambda t: self._finished(key, t))
            try:
                cached = await asyncio.wait_for(asyncio.shield(task), self.budget_s)
            except TimeoutError:
                return None, False, (f"generation took longer than {self.budget_s * 1000:g} ms "
                                     "(the copy will be cached for the next request)")
            except Exception as exc:  # noqa: BLE001 - the request still gets default copy
                return None, False, f"generation failed: {type(exc).__name__}: {exc}"[:200]
        return cached.text, hit, None

    def _finished(self, key: str, task: asyncio.Task) -> None:
        self._pending.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("copy generation for %s failed: %r", key, task.exception())

    async def _generate(self, key: str, style: str, slot: str, tone: str) -> CachedCopy:
        from models.corpus import control_prefix

        result = await self.batcher.generate(control_prefix(style, slot, tone), max_new_tokens=NEW_TOKENS[slot],
                                             **SAMPLING)
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


async def personalize(request: PersonalizeRequest, *, pseudonym: str, reader, templates, writer: CopyWriter
                      ) -> Personalized:
    """The content for one request (see the module docstring for the steps).

    Raises `TemplateError` or `engine.personalize.NoTemplate` with a reason the caller can act on.
    """
    features, segment = reader.features(pseudonym)
    profile = reader.profiles().get(segment.segment) if segment is not None else None
    label = profile.label if profile is not None else None
    style = writer.style_for(label)
    if segment is None:
        segment_why = f"not segmented yet (too few visits); {style} copy"
    elif profile is None:
        segment_why = f"segment {segment.segment} (model v{segment.model_version}), no profile yet; {style} copy"
    else:
        segment_why = (f"segment {segment.segment} '{label}' ({profile.share:.0%} of users, model "
                       f"v{segment.model_version}); {style} copy")

    template, template_why = choose_template(templates.for_slot(request.slot), slot=request.slot, style=style,
                                             label=label, template_id=request.template_id)
    tone, tone_why = tone_for(template, style)
    item, item_why = choose_item([msgspec.structs.asdict(i) for i in request.items], features)
    item_id = item["item_id"] if item else None

    fields = template.fields
    copy: dict[str, str] = {}
    fallbacks: list[Fallback] = []
    all_cached = bool(fields.ai)
    for slot in fields.ai:
        key = copy_key(writer.model_version or "-", template.template_id, template.version, style, slot, tone,
                       item_id)
        text, cached, why = await writer.copy_for(key, style, slot, tone)
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
    rendered = render(template, user=request.context, item=item_values, ai=copy,
                      discount_pct=item.get("discount_pct") if item else None)
    return Personalized(
        content=Content(rendered.text, request.slot, copy, item_id),
        template_id=template.template_id,
        template_version=template.version,
        variant=f"{template.template_id}@{template.version}",
        experiment=None,
        segment=segment.segment if segment is not None else None,
        segment_label=label,
        model_version=writer.model_version,
        cached=all_cached,
        explanation=Explanation(
            segment=segment_why, style=style, template=f"{template.template_id} v{template.version}: {template_why}",
            tone=f"{tone}: {tone_why}", item=f"{item_id}: {item_why}" if item_id else item_why,
            features=explaining_features(features), fallbacks=fallbacks,
        ),
    )


def _reason_kind(why: str | None) -> str:
    if not why:
        return "other"
    for prefix, kind in (("generation took", "slow"), ("generation failed", "error"), ("generated copy broke", "brand"),
                         ("generated copy", "ungrounded"), ("no copy model", "no_model")):
        if why.startswith(prefix):
            return kind
    return "other"

