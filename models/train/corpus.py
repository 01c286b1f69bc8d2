"""A deterministic marketing-copy corpus: what the copy model learns to write.

Every text is written for one audience segment (a simulator profile), one slot
(headline, description, call to action, email subject), one tone and, mostly,
one catalog item. The model sees it as ``copy_prompt(segment, slot, tone,
item) + " " + text`` (`engine.content.grounding`: the control codes, then
``<facts>`` and the item's facts, then ``<copy>``) and learns to continue a
prompt, so at serving time the codes steer it and the facts feed it.

Texts come from phrase banks: tone templates carry the tone (each has a word of
`TONE_WORDS`), segment phrases carry what the audience cares about (price for
bargain hunters, craft and first access for high spenders, discovery for
window shoppers, "picked for you" for email readers), and the item fills in
title, brand, attributes and prices, written as the prompt writes them (prices
with two decimals, "25%"), so the model learns to copy them from the prompt.
Segment phrases and item fields use no tone word, so a text obeys its own tone
and no other: tone obedience of the model can later be measured with
`obeys_tone` alone. Discount phrases are used only for items on sale, with the
item's own numbers. Headlines and descriptions always name the item.

Real shops send items with few facts, so a share of the items' prompts leave
out their attributes, brand or price (`prompt_item`), and those items' texts
state only what their prompt gives. Generic records (item id `GENERIC`,
facts ``none``) are copy for a request with no item: they name no product,
brand, attribute, price or percentage. Every text passes
`engine.content.grounding.grounding_problem` against its own prompt's facts.

The same seed always gives the same corpus; each item has its own random
stream, so adding items does not change the texts of the others.

Examples
--------
>>> from engine.content.catalog import build_catalog
>>> records = build_corpus(seed=0, catalog=build_catalog(seed=1, n_items=3), per_combination=2)
>>> items = [r for r in records if r.item_id != GENERIC]  # the rest: generic copy, for no item
>>> len(items) == 3 * len(SEGMENT_STYLES) * len(SLOTS) * len(TONES) * 2
True
>>> all(obeys_tone(r.text, r.tone) and obeys_length(r.text, r.slot) for r in records)
True
>>> training_text(records[0]).startswith("<seg=bargain_hunter> <slot=headline> <tone=urgent> <facts> title: ")
True
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

# Slots, tones, their length limits and tone words: one definition, shared with the brand rules.
from engine.content.brand import MAX_CHARS, SLOTS, TONE_WORDS, TONES  # noqa: F401 - re-exported
from engine.content.catalog import (
    CATALOG_SEED,
    CATEGORY_SPECS,
    DISCOUNTED_SHARE,
    DISCOUNTS_PCT,
    Catalog,
    Item,
    build_catalog,
)
from engine.content.grounding import (  # noqa: F401 - re-exported: the prompt is the serving side's too
    CATEGORY_WORDS,
    CONTROL_TOKENS,
    control_prefix,
    copy_prompt,
    grounding_problem,
)

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def _tokens(text: str) -> set[str]:
    """Words and adjacent word pairs of ``text``, lower case (pairs match two-word entries)."""
    words = _WORD.findall(text.lower())
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


def obeys_tone(text: str, tone: str) -> bool:
    """Whether ``text`` has at least one word of ``tone``'s vocabulary.

    >>> obeys_tone("Hurry, 30% off ends tonight", "urgent"), obeys_tone("Hurry!", "premium")
    (True, False)
    >>> obeys_tone("Don't miss it", "urgent")
    True
    """
    if tone not in TONE_WORDS:
        raise ValueError(f"unknown tone {tone!r}; use one of {', '.join(TONES)}")
    return not TONE_WORDS[tone].isdisjoint(_tokens(text))


def _only_tone(text: str, tone: str) -> bool:
    """Whether ``text`` uses ``tone``'s words and no other tone's (what the tone obedience measures rests on)."""
    words = _tokens(text)
    return all(TONE_WORDS[t].isdisjoint(words) != (t == tone) for t in TONES)


def obeys_length(text: str, slot: str) -> bool:
    """Whether ``text`` is non-empty and fits ``slot``'s `MAX_CHARS`.

    >>> obeys_length("Shop now", "cta"), obeys_length("x" * 29, "cta")
    (True, False)
    """
    if slot not in MAX_CHARS:
        raise ValueError(f"unknown slot {slot!r}; use one of {', '.join(SLOTS)}")
    return 0 < len(text.strip()) and len(text) <= MAX_CHARS[slot]


class SegmentStyle(msgspec.Struct, frozen=True):
    """What copy for one audience segment emphasises, and the phrases that say it.

    Phrases are `str.format` patterns over the item's fields (``{title}``,
    ``{noun}``, ``{brand}``, ``{category}``, ``{price}``, ``{was}``, ``{pct}``),
    each as the prompt's facts write it. ``hooks`` are short appositive phrases
    (headlines, subjects), ``lines`` whole sentences (descriptions), ``ctas``
    short imperatives. The ``sale_`` variants name a discount and are used only
    for items on sale; the ``unpriced_`` ones replace the phrases that need a
    price when the prompt gives none. No phrase states the saving in money:
    the prompt does not (the model would have to subtract).
    """

    emphasis: str
    hooks: tuple[str, ...]
    lines: tuple[str, ...]
    ctas: tuple[str, ...]
    sale_hooks: tuple[str, ...] = ()
    sale_lines: tuple[str, ...] = ()
    sale_ctas: tuple[str, ...] = ()
    unpriced_hooks: tuple[str, ...] = ()
    unpriced_lines: tuple[str, ...] = ()
    unpriced_ctas: tuple[str, ...] = ()


#: One style per simulator profile (`jobs.simulator.PROFILES`), keyed by its name.
SEGMENT_STYLES: dict[str, SegmentStyle] = {
    "bargain_hunter": SegmentStyle(
        emphasis="price, discount and saving",
        hooks=(
            "only {price}",
            "just {price}",
            "yours for {price}",
            "a steal at {price}",
            "big value at {price}",
            "priced at {price}",
            "value pick at {price}",
        ),
        lines=(
            "The {title} is only {price}.",
            "Get the {title} for just {price}.",
            "A clever buy: the {title} at {price}.",
            "Big value, small price: {price} for the {title}.",
            "Keep more in your pocket with the {title} at {price}.",
        ),
        ctas=("Shop at {price}", "Get it for {price}", "Pay just {price}", "Grab it for {price}"),
        sale_hooks=(
            "save {pct}%",
            "{pct}% off",
            "{price}, down from {was}",
            "{price} instead of {was}",
            "{pct}% off, only {price}",
            "was {was}, only {price}",
        ),
        sale_lines=(
            "Save {pct}%: the {title} is {price}, down from {was}.",
            "Take {pct}% off the {title} and pay just {price}.",
            "The {title} is down from the usual {was} to {price}.",
            "The {title} was {was}; it is {price} with {pct}% off.",
        ),
        sale_ctas=("Save {pct}%", "Get {pct}% off", "Take {pct}% off", "Shop {pct}% off"),
        unpriced_hooks=("great value", "a bargain find", "big value", "a value pick"),
        unpriced_lines=(
            "The {title} is great value.",
            "A clever buy: the {title}.",
            "Big value, small price: the {title}.",
        ),
        unpriced_ctas=("Shop the deal", "Get the deal", "Grab a bargain", "See the value"),
    ),
    "loyal_high_spender": SegmentStyle(
        emphasis="quality, craft, new arrivals and exclusive first access",
        hooks=(
            "new arrival",
            "exclusive to members",
            "first access for members",
            "new season piece",
            "quality built for years",
            "an exclusive for members",
            "members get first access",
            "the collector's pick",
        ),
        lines=(
            "The {title} is a new arrival, built for years of wear.",
            "Members get first access to the {title}.",
            "An exclusive piece for members: the {title}.",
            "Quality you can feel: the {title}.",
            "The {title} joins our members-only collection.",
        ),
        ctas=(
            "Shop new arrivals",
            "Get first access",
            "Shop the collection",
            "Shop the new season",
            "See the exclusive",
        ),
    ),
    "window_shopper": SegmentStyle(
        emphasis="discovery, browsing and inspiration",
        hooks=(
            "just landed",
            "new in {category}",
            "fresh inspiration",
            "worth a look",
            "something new to discover",
            "a new find in {category}",
            "your next discovery",
        ),
        lines=(
            "The {title} just landed in {category}.",
            "Browse the {title} and more new {category}.",
            "Something new to discover: the {title}.",
            "Fresh inspiration for your {category} wishlist: the {title}.",
            "Take a look around: the {title} is new in {category}.",
        ),
        ctas=(
            "Take a look",
            "Browse {category}",
            "Discover more",
            "See what's new",
            "Explore {category}",
            "Look around",
        ),
        sale_hooks=("{pct}% off this week",),
    ),
    "email_driven": SegmentStyle(
        emphasis="personal picks sent to the inbox",
        hooks=(
            "picked for you",
            "your weekly edit",
            "chosen just for you",
            "in your inbox first",
            "from your weekly edit",
            "a pick with your name on it",
            "saved for you",
        ),
        lines=(
            "We picked the {title} for you.",
            "The {title} is in your weekly edit.",
            "Chosen for you from your favourite {category}: the {title}.",
            "Straight to your inbox: the {title}, picked with you in mind.",
            "Your weekly edit has a new pick: the {title}.",
        ),
        ctas=("See your picks", "Open your edit", "View your picks", "See picks for you", "Open your weekly edit"),
        sale_hooks=("your {pct}% off pick",),
    ),
}

# Tone templates. Headlines and subjects: {hook} is the segment's phrase, {title}
# the item (shortened to brand + noun, then noun, when the text would not fit).
_HEADLINES: dict[str, tuple[str, ...]] = {
    "urgent": (
        "{title}: {hook}, today only",
        "Hurry! {title}, {hook}",
        "{Hook}: {title}, ends tonight",
        "Last chance: {title}, {hook}",
        "Don't miss it: {title}, {hook}",
        "{title} is going fast: {hook}",
        "Today only: the {title}, {hook}",
        "{Hook}: the {title} - act fast",
    ),
    "playful": (
        "Psst, {title}: {hook}",
        "Hello, {noun}! {Hook}",
        "Oh hey, {hook}: the {title}",
        "Yay, {hook}! Meet the {noun}",
        "Treat yourself: {title}, {hook}",
        "Fun find: {title}, {hook}",
        "{Hook}? Yes please, {noun}",
        "Ooh, {hook}: {title}",
    ),
    "premium": (
        "The {title}. Timeless, {hook}",
        "Refined {category}: {title}, {hook}",
        "{title}: exceptional, {hook}",
        "The finest {category}: {title}, {hook}",
        "{Hook}: {title}, simply superb",
        "Crafted by {brand}: the {noun}, {hook}",
        "Elegant {category}: the {noun}, {hook}",
    ),
    "informative": (
        "{title}: {hook}, details inside",
        "Available {attr}: {title}, {hook}",
        "{title} {attr}: {hook}, see details",
        "{Hook}: {title}, key features",
        "{title}, {hook}: what's included",
        "{Hook}. {title}: the details",
    ),
}
_SUBJECTS: dict[str, tuple[str, ...]] = {
    "urgent": (
        "{Hook}: {title}, ends tonight",
        "Last call: {title}, {hook}",
        "Today only: {title}, {hook}",
        "{title}: {hook} (ending soon)",
        "Don't miss the {title}, {hook}",
        "Hurry, {hook}: {title}",
        "Final hours: {hook} on the {noun}",
    ),
    "playful": (
        "Psst... {hook}: {title}",
        "Hello, you! {title}, {hook}",
        "Ooh, {title}: {hook}",
        "A little treat: {title}, {hook}",
        "Hey, {hook}! Say hi to the {noun}",
        "Yay, {hook}: {title}",
    ),
    "premium": (
        "Timeless: {title}, {hook}",
        "The refined {noun} from {brand}, {hook}",
        "{Hook}: the {noun}, crafted by {brand}",
        "Introducing the {title}: elegant, {hook}",
        "Exceptional {category}: {title}, {hook}",
        "{Hook}: the finest from {brand}",
    ),
    "informative": (
        "{title}: {hook}. Features and details",
        "Details inside: {title}, {hook}",
        "{title} ({attr}) is available: {hook}",
        "What's included: {title}, {hook}",
        "{Hook}: {title}, all the details",
        "The {noun} from {brand}: features, {hook}",
    ),
}
_CTAS: dict[str, tuple[str, ...]] = {
    "urgent": (
        "{Core} now",
        "{Core} today",
        "Hurry: {core}",
        "Last chance: {core}",
        "Quick, {core}",
        "{Core} before it's gone",
    ),
    "playful": (
        "Ooh, {core}!",
        "Psst, {core}",
        "Hey, {core}!",
        "{Core}, yay!",
        "Treat yourself: {core}",
        "{Core} for fun",
    ),
    "premium": (
        "{Core}, refined",
        "Refined: {core}",
        "Timeless. {Core}",
        "Elegant. {Core}",
        "Exceptional. {Core}",
        "{Core}: the finest",
    ),
    "informative": (
        "{Core}: details",
        "Details: {core}",
        "{Core}, see details",
        "{Core}: full specs",
        "Features: {core}",
    ),
}
# Descriptions: a tone opener and/or closer around the segment's line and an item fact.
_OPENERS: dict[str, tuple[str, ...]] = {
    "urgent": (
        "Hurry, this one is going fast.",
        "Don't miss out today.",
        "Ends tonight, so be quick.",
        "Last chance before it's gone.",
        "Act fast: stock is low.",
        "Limited time, starting now.",
    ),
    "playful": (
        "Psst, guess what?",
        "Hello, you!",
        "Oh, this is a fun one.",
        "Treat time!",
        "Yay, something to smile about.",
        "Ooh, look what we found.",
    ),
    "premium": (
        "Crafted with care.",
        "Refined, timeless design.",
        "An exceptional piece.",
        "Only the finest will do.",
        "Understated elegance.",
        "A signature piece from {brand}.",
    ),
    "informative": (
        "Here are the details.",
        "What it includes, at a glance.",
        "Key features below.",
        "Available from {brand}.",
        "Made by {brand}.",
        "An overview of the {noun}.",
    ),
}
_CLOSERS: dict[str, tuple[str, ...]] = {
    "urgent": (
        "Shop now.",
        "Order today.",
        "Get it before it's gone.",
        "Ends soon, so act fast.",
        "Don't miss it.",
        "Hurry while stock lasts.",
    ),
    "playful": (
        "Go on, treat yourself!",
        "You deserve a little fun.",
        "Happy shopping!",
        "Love it? We think so.",
        "Yay for good finds!",
        "Hello, new favourite.",
    ),
    "premium": (
        "Timeless, refined, yours.",
        "Simply exceptional.",
        "Elegance in every line.",
        "Crafted to be treasured.",
        "The finest of {brand}.",
        "Quietly luxurious.",
    ),
    "informative": (
        "See the full details on the product page.",
        "Free returns are available.",
        "Full specs are on the product page.",
        "Designed and sold by {brand}.",
        "Sizes and stock details are on the product page.",
    ),
}
_DESCRIPTION_FORMS = (
    "{open} {line} {fact} {close}",
    "{open} {line} {close}",
    "{line} {fact} {close}",
    "{open} {line} {fact}",
    "{line} {close}",
    "{open} {line}",
)

_CATEGORY_WORDS = CATEGORY_WORDS

#: Segment-label phrases (engine.audience.segments.FEATURES words) -> (style, weight). Strong cues weigh 2:
# they match the simulator profile nearly one to one; weak cues 1. "quick looks" and
# "occasional visitor" say nothing a style is about, so they are left out on purpose.
LABEL_CUES: dict[str, tuple[str, float]] = {
    "budget": ("bargain_hunter", 2.0),
    "buys what they cart": ("bargain_hunter", 1.0),
    "high spend": ("loyal_high_spender", 2.0),
    "fills carts": ("loyal_high_spender", 1.0),
    "click-happy": ("loyal_high_spender", 1.0),
    "email-driven": ("email_driven", 2.0),
    "rarely clicks": ("email_driven", 1.0),
    "deep browser": ("window_shopper", 2.0),
    "abandons carts": ("window_shopper", 2.0),
    "app-first": ("window_shopper", 1.0),
    "rarely carts": ("window_shopper", 1.0),
    "clicks to buy": ("loyal_high_spender", 1.0),
    "browses without buying": ("window_shopper", 1.0),
    "frequent visitor": ("window_shopper", 1.0),
}
#: Segment-label words deliberately mapped to no style.
NEUTRAL_LABEL_WORDS = frozenset({"quick looks", "typical", "occasional visitor"})
#: Style of a label with no cue ("typical", "quick looks"): most simulated users browse.
DEFAULT_STYLE = "window_shopper"
# The first phrase of a label is the feature that stands out most (engine.audience.segments.label_of).
_FIRST_PHRASE_BOOST = 1.5


def segment_style_for_label(label: str) -> str:
    """The `SEGMENT_STYLES` key that best fits a readable segment label.

    A label is ``engine.audience.segments.label_of`` output: up to two feature words,
    most distinctive first, maybe with a ``" (3)"`` suffix. Each phrase votes
    for a style:

    ============================================  ======================  ======
    phrase                                        style                   weight
    ============================================  ======================  ======
    budget / buys what they cart                  bargain_hunter          2 / 1
    high spend / fills carts, click-happy         loyal_high_spender      2 / 1
    email-driven / rarely clicks                  email_driven            2 / 1
    deep browser, abandons carts / app-first,     window_shopper          2 / 1
    rarely carts
    ============================================  ======================  ======

    The first phrase's vote counts 1.5 times; the highest total wins (on a tie,
    the style named first). No vote ("typical", "quick looks") gives
    `DEFAULT_STYLE`. A style key itself maps to itself.

    Examples
    --------
    >>> segment_style_for_label("buys what they cart, budget")
    'bargain_hunter'
    >>> segment_style_for_label("high spend, click-happy")
    'loyal_high_spender'
    >>> segment_style_for_label("email-driven, quick looks (2)")
    'email_driven'
    >>> segment_style_for_label("abandons carts, deep browser"), segment_style_for_label("typical")
    ('window_shopper', 'window_shopper')
    """
    cleaned = re.sub(r"\s*\(\d+\)\s*$", "", label).strip().lower()
    if cleaned in SEGMENT_STYLES:
        return cleaned
    scores: dict[str, float] = {}
    for position, phrase in enumerate(p.strip() for p in cleaned.split(",")):
        if phrase in LABEL_CUES:
            style, weight = LABEL_CUES[phrase]
            scores.setdefault(style, 0.0)  # insertion order breaks ties: first named wins
            scores[style] += weight * (_FIRST_PHRASE_BOOST if position == 0 else 1.0)
    if not scores:
        return DEFAULT_STYLE
    return max(scores, key=scores.__getitem__)


class CopyRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One training text, the controls it was written for, and the item facts its prompt carries."""

    segment: str
    slot: str
    tone: str
    item_id: str
    text: str
    #: The item as its prompt states it (`engine.content.catalog.Item.facts`); None: generic copy, no item.
    item: dict | None = None


def training_text(record: CopyRecord) -> str:
    """What the model trains on: the prompt (controls and the item's facts), a space, then the text."""
    return copy_prompt(record.segment, record.slot, record.tone, record.item) + " " + record.text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _money(amount: float) -> str:
    return f"{amount:.2f}"


def _noun_of(item: Item) -> str:
    """The product noun at the end of the title ("Chelsea Boot"), else the category."""
    spec = CATEGORY_SPECS.get(item.category)
    nouns = sorted(spec.nouns, key=len, reverse=True) if spec else ()
    return next((n for n in nouns if item.title.endswith(n)), _CATEGORY_WORDS.get(item.category, item.category))


def _attribute_phrases(attributes: dict[str, str]) -> list[str]:
    """Short prepositional phrases about the item ("in navy", "with a 2-year warranty")."""
    a = attributes
    phrases = [f"in {a[k]}" for k in ("colour", "material", "format", "language") if k in a]
    if "warranty" in a:
        phrases.append(f"with a {a['warranty'].split()[0]}-year warranty")
    if "skin_type" in a:
        phrases.append("for all skin types" if a["skin_type"] == "all" else f"for {a['skin_type']} skin")
    if "size" in a:
        phrases.append(f"in a {a['size']} size")
    if a.get("diet", "none") != "none":
        phrases.append(f"for a {a['diet']} diet")
    if "origin" in a:
        phrases.append("sourced locally" if a["origin"] == "local" else f"from {a['origin']}")
    return phrases


def _facts(attributes: dict[str, str], phrases: list[str]) -> list[str]:
    """Sentences about the item for descriptions: each phrase, and the attributes read together."""
    a = attributes
    facts = [f"{_cap(p)}." for p in phrases]
    if "colour" in a and "material" in a:
        facts.append(f"In {a['colour']} {a['material']}.")
    if "format" in a and "language" in a:
        facts.append(f"A {a['format']} edition in {a['language']}.")
    # Two phrases in one sentence, unless both start with "in" ("in navy, in suede" reads badly).
    facts += [
        f"{_cap(x)}, {y}."
        for x in phrases
        for y in phrases
        if x != y and not (x.startswith("in ") and y.startswith("in "))
    ]
    return facts


class _ItemFields:
    """An item's fill-ins as its prompt states them, at three title lengths (full, brand + noun, noun).

    A fact the prompt leaves out (``shown`` lacks the brand, the attributes or the
    price) has no fill-in: a phrase that needs it raises KeyError and is not used.
    """

    __slots__ = ("tiers", "attrs", "facts", "discounted", "priced")

    def __init__(self, item: Item, shown: dict):
        noun = _noun_of(item)
        brand = shown.get("brand")
        self.priced = shown.get("price") is not None
        base = {"noun": noun, "category": _CATEGORY_WORDS.get(item.category, item.category)}
        if brand:
            base["brand"] = brand
        if self.priced:
            base |= {"price": _money(item.sale_price), "was": _money(item.price), "pct": item.discount_pct or 0}
        shorter = (f"{brand} {noun}", noun) if brand else (noun,)
        titles = dict.fromkeys((item.title, *shorter))  # distinct, in order
        self.tiers = [{**base, "title": t} for t in titles]
        attributes = shown.get("attributes") or {}
        self.attrs = _attribute_phrases(attributes) or ([f"from {brand}"] if brand else [])
        self.facts = _facts(attributes, self.attrs)
        self.discounted = self.priced and bool(item.discount_pct)


def _pool(style: SegmentStyle, kind: str, fields: _ItemFields) -> tuple[str, ...]:
    if not fields.priced:
        unpriced = getattr(style, f"unpriced_{kind}")
        return unpriced or getattr(style, kind)
    regular, sale = getattr(style, kind), getattr(style, f"sale_{kind}")
    return sale + regular if fields.discounted else regular


def _candidate(rng: random.Random, fields: _ItemFields, style: SegmentStyle, slot: str, tone: str) -> str | None:
    """One random text for the combination, at the longest title that fits; None if none does."""
    limit = MAX_CHARS[slot]
    extra = {"attr": rng.choice(fields.attrs)} if fields.attrs else {}
    if slot == "description":
        pattern = rng.choice(_DESCRIPTION_FORMS)
        parts = {
            "open": rng.choice(_OPENERS[tone]),
            "close": rng.choice(_CLOSERS[tone]),
            "line": rng.choice(_pool(style, "lines", fields)),
        }
        if fields.facts:
            parts["fact"] = rng.choice(fields.facts)
    elif slot == "cta":
        pattern = rng.choice(_CTAS[tone])
        core = rng.choice(_pool(style, "ctas", fields))
        parts = {"Core": core, "core": core[:1].lower() + core[1:]}
    else:
        pattern = rng.choice(_HEADLINES[tone] if slot == "headline" else _SUBJECTS[tone])
        hook = rng.choice(_pool(style, "hooks", fields))
        parts = {"hook": hook, "Hook": _cap(hook)}
    try:
        for tier in fields.tiers:
            filled = {name: part.format_map(tier) for name, part in parts.items()}
            text = pattern.format_map({**tier, **filled, **extra})
            if len(text) <= limit:
                return text
    except KeyError:  # the phrase needs a fact this prompt does not give
        return None
    return None


#: Shares of items whose prompt leaves a fact out (real shops send few facts); their texts do not state it.
NO_ATTRIBUTES_SHARE = 0.15
NO_BRAND_SHARE = 0.1
NO_PRICE_SHARE = 0.05


def prompt_item(rng: random.Random, item: Item) -> dict:
    """What the prompt says about ``item`` (``Item.facts()``), now and then without its attributes, brand or price."""
    shown = item.facts()
    if item.attributes and rng.random() < NO_ATTRIBUTES_SHARE:
        shown["attributes"] = {}
    if rng.random() < NO_BRAND_SHARE:
        del shown["brand"]
    if rng.random() < NO_PRICE_SHARE:
        for key in ("price", "sale_price", "discount_pct"):
            shown.pop(key, None)
    return shown


#: Share of item records whose prompt states the item's own price, discount and attributes. The others
#: state a variant (another price and discount, another colour or size: the product at another time),
#: so the model learns to copy facts from the prompt, not to remember them by product.
OWN_FACTS_SHARE = 0.25
# Spread of a variant's price around the item's (log-normal).
_VARIANT_PRICE_SIGMA = 0.4


def _shop_price(raw: float) -> float:
    """A price a shop would print (4.49, 19.99, 129.00), as the catalog rounds its own."""
    if raw < 10:
        return max(0.99, round(round(raw * 2) / 2 - 0.01, 2))
    if raw < 100:
        return round(round(raw) - 0.01, 2)
    return float(round(raw / 5) * 5)


def item_variant(rng: random.Random, item: Item) -> Item:
    """``item`` itself (`OWN_FACTS_SHARE` of the time), else the same product with another price, discount and attributes."""
    spec = CATEGORY_SPECS.get(item.category)
    if spec is None or rng.random() < OWN_FACTS_SHARE:
        return item
    return msgspec.structs.replace(
        item,
        price=_shop_price(item.price * math.exp(rng.gauss(0.0, _VARIANT_PRICE_SIGMA))),
        discount_pct=rng.choice(DISCOUNTS_PCT) if rng.random() < DISCOUNTED_SHARE else None,
        attributes={name: rng.choice(values) for name, values in spec.attributes.items()},
    )


def _item_texts(rng: random.Random, item: Item, per_combination: int) -> list[CopyRecord]:
    records = []
    for segment, style in SEGMENT_STYLES.items():
        for slot in SLOTS:
            for tone in TONES:
                texts: set[str] = set()
                for _ in range(per_combination):
                    # Each text its own prompt: a variant of the item, maybe with facts left out.
                    variant = item_variant(rng, item)
                    shown = prompt_item(rng, variant)
                    fields = _ItemFields(variant, shown)
                    for _ in range(60):
                        text = _candidate(rng, fields, style, slot, tone)
                        if text is not None and text not in texts and _only_tone(text, tone):
                            break
                    else:
                        raise ValueError(
                            f"only {len(texts)} distinct {tone} {slot} texts for {item.item_id} ({segment}); "
                            f"ask for per_combination <= {len(texts)}"
                        )
                    texts.add(text)
                    records.append(CopyRecord(segment, slot, tone, item.item_id, text, shown))
    return records


# Generic copy: for a request with no item. It names no product, brand, attribute, price or discount.
_GENERIC_HOOKS: dict[str, tuple[str, ...]] = {
    "bargain_hunter": ("big savings", "deals for you", "prices cut", "more for less", "value picks", "clever buys"),
    "loyal_high_spender": tuple(h for h in SEGMENT_STYLES["loyal_high_spender"].hooks if "{" not in h),
    "window_shopper": tuple(h for h in SEGMENT_STYLES["window_shopper"].hooks if "{" not in h),
    "email_driven": tuple(h for h in SEGMENT_STYLES["email_driven"].hooks if "{" not in h),
}
_GENERIC_CTAS: dict[str, tuple[str, ...]] = {
    "bargain_hunter": ("Shop the deals", "See the savings", "Grab a deal", "Shop value picks"),
    **{s: tuple(c for c in style.ctas if "{" not in c) for s, style in SEGMENT_STYLES.items() if s != "bargain_hunter"},
}
_GENERIC_LINES: dict[str, tuple[str, ...]] = {
    "bargain_hunter": (
        "Big value, small prices, all week.",
        "Keep more in your pocket with this week's deals.",
        "Smart buys at prices you will like.",
    ),
    "loyal_high_spender": (
        "Members get first access to the new season.",
        "Quality you can feel, built for years of wear.",
        "New arrivals, chosen for our members.",
    ),
    "window_shopper": (
        "Something new to discover, just landed.",
        "Fresh inspiration for your wishlist.",
        "Take a look around: new finds are in.",
    ),
    "email_driven": (
        "We picked these for you.",
        "Your weekly edit has new picks.",
        "Chosen for you, straight to your inbox.",
    ),
}
_GENERIC_HEADLINES: dict[str, tuple[str, ...]] = {
    "urgent": (
        "Today only: {hook}",
        "{Hook} - act fast",
        "Hurry: {hook}, today only",
        "Last chance: {hook}",
        "{Hook}, ends tonight",
        "Don't miss it: {hook}",
    ),
    "playful": (
        "Psst, {hook}!",
        "Ooh, {hook}",
        "Yay, {hook}!",
        "Hey, {hook}",
        "{Hook}? Yes please",
        "Treat time: {hook}",
    ),
    "premium": (
        "{Hook}: simply superb",
        "Timeless: {hook}",
        "Refined picks, {hook}",
        "{Hook}, crafted for you",
        "Exceptional: {hook}",
    ),
    "informative": (
        "{Hook}: details inside",
        "{Hook}, see the details",
        "{Hook}: what's included",
        "Available here: {hook}",
        "{Hook}. The details",
    ),
}


def _generic_candidate(rng: random.Random, segment: str, slot: str, tone: str) -> str:
    if slot == "description":
        opener = rng.choice([o for o in _OPENERS[tone] if "{" not in o])
        closer = rng.choice([c for c in _CLOSERS[tone] if "{" not in c])
        line = rng.choice(_GENERIC_LINES[segment])
        return rng.choice((f"{opener} {line} {closer}", f"{line} {closer}", f"{opener} {line}"))
    if slot == "cta":
        core = rng.choice(_GENERIC_CTAS[segment])
        return rng.choice(_CTAS[tone]).format(Core=core, core=core[:1].lower() + core[1:])
    hook = rng.choice(_GENERIC_HOOKS[segment])
    return rng.choice(_GENERIC_HEADLINES[tone]).format(hook=hook, Hook=_cap(hook))


def _generic_texts(rng: random.Random, per_combination: int) -> list[CopyRecord]:
    records = []
    for segment in SEGMENT_STYLES:
        for slot in SLOTS:
            for tone in TONES:
                texts: dict[str, None] = {}
                for _ in range(60 * per_combination):
                    text = _generic_candidate(rng, segment, slot, tone)
                    if _only_tone(text, tone) and obeys_length(text, slot) and grounding_problem(text, None) is None:
                        texts[text] = None
                        if len(texts) == per_combination:
                            break
                records.extend(CopyRecord(segment, slot, tone, GENERIC, t) for t in texts)
    return records


#: The item id of generic records (no item): they always train, never go to the holdout.
GENERIC = "-"
#: Generic texts per (segment, slot, tone), for every `per_combination` of item texts.
GENERIC_PER_COMBINATION = 6


def build_corpus(
    seed: int = 0, *, catalog: Catalog | Iterable[Item] | None = None, per_combination: int = 3
) -> list[CopyRecord]:
    """Generate the training corpus: texts for every item, segment, slot and tone.

    Parameters
    ----------
    seed
        Seed of the phrasing; the same seed gives the same corpus, another seed other texts.
    catalog
        The items to write for (a `Catalog` or items); default the shared catalog
        ``build_catalog(CATALOG_SEED)``.
    per_combination
        Distinct texts per (item, segment, slot, tone).

    Returns
    -------
    list of CopyRecord
        In item order, then segment, slot and tone in `SEGMENT_STYLES`, `SLOTS`, `TONES` order;
        then the generic records (no item), ``GENERIC_PER_COMBINATION * per_combination`` per
        (segment, slot, tone) where the phrase banks have that many.

    Examples
    --------
    >>> from engine.content.catalog import build_catalog
    >>> small = build_catalog(seed=1, n_items=2)
    >>> build_corpus(3, catalog=small) == build_corpus(3, catalog=small) != build_corpus(4, catalog=small)
    True
    """
    if isinstance(per_combination, bool) or not isinstance(per_combination, int) or per_combination < 1:
        raise ValueError(f"per_combination must be a positive integer, got {per_combination!r}")
    if catalog is None:
        catalog = build_catalog(CATALOG_SEED)
    items = catalog.items if isinstance(catalog, Catalog) else tuple(catalog)
    records: list[CopyRecord] = []
    for item in items:
        # One stream per item: an item's texts do not depend on the items before it.
        records.extend(_item_texts(random.Random(f"corpus-{seed}-{item.item_id}"), item, per_combination))
    generic = GENERIC_PER_COMBINATION * per_combination
    return records + _generic_texts(random.Random(f"corpus-{seed}-generic"), generic)


def split_holdout(
    records: Sequence[CopyRecord], fraction: float = 0.1, seed: int = 0
) -> tuple[list[CopyRecord], list[CopyRecord]]:
    """Split into (train, holdout) by item, so the holdout measures unseen items.

    About ``fraction`` of the distinct items (at least one) go to the holdout
    with all their records; the choice depends on the seed and the set of item
    ids, not on the order of ``records``. Both sides keep the input order.
    Generic records (item id `GENERIC`: no item) always train.

    Examples
    --------
    >>> recs = [CopyRecord("email_driven", "cta", "urgent", f"sku-{i}", "Shop now") for i in range(10)]
    >>> train, holdout = split_holdout(recs, fraction=0.2)
    >>> len(train), len(holdout), {r.item_id for r in train} & {r.item_id for r in holdout}
    (8, 2, set())
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    item_ids = sorted({r.item_id for r in records} - {GENERIC})
    if len(item_ids) < 2:
        raise ValueError(f"a holdout by item needs records of at least 2 items, got {len(item_ids)}")
    random.Random(f"holdout-{seed}").shuffle(item_ids)
    n_holdout = min(len(item_ids) - 1, max(1, round(fraction * len(item_ids))))
    held = set(item_ids[:n_holdout])
    return [r for r in records if r.item_id not in held], [r for r in records if r.item_id in held]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CopyRecord)


def _jsonl(records: Iterable[CopyRecord]) -> bytes:
    return b"".join(_encoder.encode(r) + b"\n" for r in records)


def corpus_hash(records: Iterable[CopyRecord]) -> str:
    """sha256 (hex) of the records as JSON lines, in order: equals the hash of `write_jsonl`'s file.

    >>> corpus_hash([]) == hashlib.sha256(b"").hexdigest()
    True
    """
    return hashlib.sha256(_jsonl(records)).hexdigest()


def write_jsonl(records: Iterable[CopyRecord], path: str | Path) -> None:
    """Write one JSON object per line (fields in `CopyRecord` order)."""
    Path(path).write_bytes(_jsonl(records))


def read_jsonl(path: str | Path) -> list[CopyRecord]:
    """Read records written by `write_jsonl`; a bad line raises ValueError naming its number."""
    records = []
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(_decoder.decode(line))
            except msgspec.DecodeError as error:
                raise ValueError(f"{path}:{number}: not a copy record ({error}); regenerate the corpus") from error
    return records
