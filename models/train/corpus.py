"""A deterministic marketing-copy corpus: what the copy model learns to write.

Every text is written for one catalog item, one audience segment (a simulator
profile), one slot (headline, description, call to action, email subject) and
one tone. The model sees it as ``control_prefix(segment, slot, tone) + " " +
text`` and learns to continue a prefix, so at serving time the prefix steers it.

Texts come from phrase banks: tone templates carry the tone (each has a word of
`TONE_WORDS`), segment phrases carry what the audience cares about (price for
bargain hunters, craft and first access for high spenders, discovery for
window shoppers, "picked for you" for email readers), and the item fills in
title, brand, attributes and prices. Segment phrases and item fields use no
tone word, so a text obeys its own tone and no other: tone obedience of the
model can later be measured with `obeys_tone` alone. Discount phrases are used
only for items on sale, with the item's own numbers.

The same seed always gives the same corpus; each item has its own random
stream, so adding items does not change the texts of the others.

Examples
--------
>>> from engine.content.catalog import build_catalog
>>> records = build_corpus(seed=0, catalog=build_catalog(seed=1, n_items=3), per_combination=2)
>>> len(records) == 3 * len(SEGMENT_STYLES) * len(SLOTS) * len(TONES) * 2
True
>>> all(obeys_tone(r.text, r.tone) and obeys_length(r.text, r.slot) for r in records)
True
>>> training_text(records[0]).startswith("<seg=bargain_hunter> <slot=headline> <tone=urgent> ")
True
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

# Slots, tones, their length limits and tone words: one definition, shared with the brand rules.
from engine.content.brand import MAX_CHARS, SLOTS, TONE_WORDS, TONES  # noqa: F401 - re-exported
from engine.content.catalog import CATALOG_SEED, CATEGORY_SPECS, Catalog, Item, build_catalog

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
    ``{noun}``, ``{brand}``, ``{category}``, ``{price}``, ``{was}``, ``{pct}``,
    ``{saving}``). ``hooks`` are short appositive phrases (headlines, subjects),
    ``lines`` whole sentences (descriptions), ``ctas`` short imperatives. The
    ``sale_`` variants name a discount and are used only for items on sale.
    """

    emphasis: str
    hooks: tuple[str, ...]
    lines: tuple[str, ...]
    ctas: tuple[str, ...]
    sale_hooks: tuple[str, ...] = ()
    sale_lines: tuple[str, ...] = ()
    sale_ctas: tuple[str, ...] = ()


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
            "A smart buy: the {title} at {price}.",
            "Big value, small price: {price} for the {title}.",
            "Keep more in your pocket with the {title} at {price}.",
        ),
        ctas=("Shop at {price}", "Get it for {price}", "Pay just {price}", "Grab it for {price}"),
        sale_hooks=(
            "save {pct}%",
            "{pct}% off",
            "{price}, down from {was}",
            "save {saving}",
            "{pct}% off, only {price}",
            "was {was}, only {price}",
        ),
        sale_lines=(
            "Save {pct}%: the {title} is {price}, down from {was}.",
            "Take {pct}% off the {title} and pay just {price}.",
            "That is {saving} off the usual {was} for the {title}.",
            "The {title} was {was}; it is {price} with {pct}% off.",
        ),
        sale_ctas=("Save {pct}%", "Get {pct}% off", "Save {saving}", "Shop {pct}% off"),
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
        "Today only: {hook}",
        "{Hook} - act fast",
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
        "The finest {category}: {hook}",
        "{Hook}: {title}, simply superb",
        "Crafted by {brand}: the {noun}, {hook}",
        "Elegant {category}, {hook}",
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
        "Final hours: {hook} on {category}",
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

# Readable category names for copy ("new in tech", not "new in electronics").
_CATEGORY_WORDS = {
    "shoes": "shoes",
    "outerwear": "outerwear",
    "electronics": "tech",
    "home": "homeware",
    "beauty": "beauty",
    "sports": "sports gear",
    "books": "books",
    "grocery": "pantry staples",
}

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
    """One training text and the controls it was written for."""

    segment: str
    slot: str
    tone: str
    item_id: str
    text: str


#: Every control token, segments then slots then tones: add them to a tokenizer as special tokens.
CONTROL_TOKENS: list[str] = (
    [f"<seg={s}>" for s in SEGMENT_STYLES] + [f"<slot={s}>" for s in SLOTS] + [f"<tone={t}>" for t in TONES]
)


def control_prefix(segment: str, slot: str, tone: str) -> str:
    """The control tokens that steer the model, in the one order it is trained on.

    >>> control_prefix("bargain_hunter", "headline", "urgent")
    '<seg=bargain_hunter> <slot=headline> <tone=urgent>'
    """
    for kind, value, known in (("segment", segment, SEGMENT_STYLES), ("slot", slot, SLOTS), ("tone", tone, TONES)):
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r}; use one of {', '.join(known)}")
    return f"<seg={segment}> <slot={slot}> <tone={tone}>"


def training_text(record: CopyRecord) -> str:
    """What the model trains on: the control prefix, a space, then the text."""
    return control_prefix(record.segment, record.slot, record.tone) + " " + record.text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _money(amount: float) -> str:
    return f"{amount:.2f}"


def _noun_of(item: Item) -> str:
    """The product noun at the end of the title ("Chelsea Boot"), else the category."""
    spec = CATEGORY_SPECS.get(item.category)
    nouns = sorted(spec.nouns, key=len, reverse=True) if spec else ()
    return next((n for n in nouns if item.title.endswith(n)), _CATEGORY_WORDS.get(item.category, item.category))


def _attribute_phrases(item: Item) -> list[str]:
    """Short prepositional phrases about the item ("in navy", "with a 2-year warranty")."""
    a = item.attributes
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
    return phrases or [f"from {item.brand}"]


def _facts(item: Item, phrases: list[str]) -> list[str]:
    """Sentences about the item for descriptions: each phrase, and the attributes read together."""
    a = item.attributes
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
    """An item's fill-ins, at three title lengths (full, brand + noun, noun)."""

    __slots__ = ("tiers", "attrs", "facts", "discounted")

    def __init__(self, item: Item):
        noun = _noun_of(item)
        base = {
            "brand": item.brand,
            "noun": noun,
            "category": _CATEGORY_WORDS.get(item.category, item.category),
            "price": _money(item.sale_price),
            "was": _money(item.price),
            "pct": item.discount_pct or 0,
            "saving": _money(round(item.price - item.sale_price, 2)),
        }
        titles = dict.fromkeys((item.title, f"{item.brand} {noun}", noun))  # distinct, in order
        self.tiers = [{**base, "title": t} for t in titles]
        self.attrs = _attribute_phrases(item)
        self.facts = _facts(item, self.attrs)
        self.discounted = bool(item.discount_pct)


def _pool(style: SegmentStyle, kind: str, discounted: bool) -> tuple[str, ...]:
    regular, sale = getattr(style, kind), getattr(style, f"sale_{kind}")
    return sale + regular if discounted else regular


def _candidate(rng: random.Random, fields: _ItemFields, style: SegmentStyle, slot: str, tone: str) -> str | None:
    """One random text for the combination, at the longest title that fits; None if none does."""
    limit = MAX_CHARS[slot]
    attr = rng.choice(fields.attrs)
    if slot == "description":
        pattern = rng.choice(_DESCRIPTION_FORMS)
        parts = {
            "open": rng.choice(_OPENERS[tone]),
            "close": rng.choice(_CLOSERS[tone]),
            "line": rng.choice(_pool(style, "lines", fields.discounted)),
            "fact": rng.choice(fields.facts),
        }
    elif slot == "cta":
        pattern = rng.choice(_CTAS[tone])
        core = rng.choice(_pool(style, "ctas", fields.discounted))
        parts = {"Core": core, "core": core[:1].lower() + core[1:]}
    else:
        pattern = rng.choice(_HEADLINES[tone] if slot == "headline" else _SUBJECTS[tone])
        hook = rng.choice(_pool(style, "hooks", fields.discounted))
        parts = {"hook": hook, "Hook": _cap(hook)}
    for tier in fields.tiers:
        filled = {name: part.format_map(tier) for name, part in parts.items()}
        text = pattern.format_map({**tier, **filled, "attr": attr})
        if len(text) <= limit:
            return text
    return None


def _item_texts(rng: random.Random, item: Item, per_combination: int) -> list[CopyRecord]:
    fields = _ItemFields(item)
    records = []
    for segment, style in SEGMENT_STYLES.items():
        for slot in SLOTS:
            for tone in TONES:
                texts: dict[str, None] = {}
                for _ in range(40 * per_combination):
                    text = _candidate(rng, fields, style, slot, tone)
                    if text is not None and obeys_tone(text, tone):
                        texts[text] = None
                        if len(texts) == per_combination:
                            break
                else:
                    raise ValueError(
                        f"only {len(texts)} distinct {tone} {slot} texts for {item.item_id} ({segment}); "
                        f"ask for per_combination <= {len(texts)}"
                    )
                records.extend(CopyRecord(segment, slot, tone, item.item_id, t) for t in texts)
    return records


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
        In item order, then segment, slot and tone in `SEGMENT_STYLES`, `SLOTS`, `TONES` order.

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
    return records


def split_holdout(
    records: Sequence[CopyRecord], fraction: float = 0.1, seed: int = 0
) -> tuple[list[CopyRecord], list[CopyRecord]]:
    """Split into (train, holdout) by item, so the holdout measures unseen items.

    About ``fraction`` of the distinct items (at least one) go to the holdout
    with all their records; the choice depends on the seed and the set of item
    ids, not on the order of ``records``. Both sides keep the input order.

    Examples
    --------
    >>> recs = [CopyRecord("email_driven", "cta", "urgent", f"sku-{i}", "Shop now") for i in range(10)]
    >>> train, holdout = split_holdout(recs, fraction=0.2)
    >>> len(train), len(holdout), {r.item_id for r in train} & {r.item_id for r in holdout}
    (8, 2, set())
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    item_ids = sorted({r.item_id for r in records})
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
