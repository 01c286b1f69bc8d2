"""The copy model's prompt and the fact check of what it writes.

The copy model is prompted with the featured item's facts beside the segment,
slot and tone codes (`copy_prompt`); it continues with the copy and its end of
text. Its copy is checked, never rewritten: every fact-like token must be
backed by the item's facts (`grounding_problem`), else the API serves default
copy and says why.

The prompt
----------
``<seg=STYLE> <slot=SLOT> <tone=TONE> <facts> FACTS <copy>``, where FACTS is
`fact_text`: ``key: value`` pairs joined by `` | `` in a fixed order (title,
brand, category, price, was, off, then the attributes by name), or ``none``
for no item. ``price`` is what a buyer pays (the sale price, two decimals);
``was`` (the list price) and ``off`` (``"25%"``) appear only for a discount.

Fact-like tokens
----------------
What a text may state only when the facts back it:

- every number: money (``82.99``, ``1,299.00``), whole numbers (``2`` in
  ``2-year``), percentages (``30%``, ``30 percent``);
- product words: any brand, adjective or noun of
  `engine.content.catalog.CATEGORY_SPECS` (the lexicon the model could have
  learnt, phrases such as ``Chelsea Boot`` as one token), any of their
  attribute values (colours, materials, formats, languages, ...), and the
  category names and their readable words (`CATEGORY_WORDS`: "tech" for
  electronics). A few lexicon words are also plain English and are left out
  (`ORDINARY_WORDS`: "down" as in "down from", "all", "none", "local");
- any capitalised word that does not start a sentence (not at the text's
  start, not right after ``. ! ? : ;``, a line break or an opening quote or
  bracket), which covers names the lexicon does not know; "I" is exempt.

A number is backed when one of the same value (a percentage by a percentage)
is in the facts or is the saving (was - price); a word or phrase when it
occurs, case-insensitively and as whole words, in the facts' values (title,
brand, category, its readable word, attributes). With no item, nothing is
backed: generic copy names no product, brand, attribute, price or percentage.

Examples
--------
>>> item = {"title": "Trail Shoe", "category": "electronics", "price": 80, "discount_pct": 20}
>>> fact_text(item)
'title: Trail Shoe | category: electronics | price: 64.00 | was: 80.00 | off: 20%'
>>> grounding_problem("Trail Shoe, now 64.00: save 20% in tech", item) is None
True
>>> unsupported_facts("In terracotta glass.", item)
['terracotta', 'glass']
>>> grounding_problem("In terracotta glass.", item)
"names 'terracotta', which is not in the item's facts"
>>> grounding_problem("Save 30% on the Trail Shoe", {"title": "Trail Shoe", "price": 80})
'states 30% off, but the item is not discounted'
>>> grounding_problem("Get the Nordvik Trail Shoe", item)
"names 'Nordvik', which is not in the item's facts"
>>> grounding_problem("New in: the Chelsea Boot", None)
"names a product ('Chelsea Boot'), but the request featured no item"
>>> grounding_problem("Today only: fresh picks for you", None) is None
True
>>> mentions_item("Psst, Shoe: just landed", item), mentions_item("Today only: just landed", item)
(True, False)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from engine.content.brand import SLOTS, TONES
from engine.content.catalog import CATEGORY_SPECS

#: The copy model's segment styles, in `models.train.corpus.SEGMENT_STYLES` order (a test keeps them equal).
STYLES: tuple[str, ...] = ("bargain_hunter", "loyal_high_spender", "window_shopper", "email_driven")
FACTS_TOKEN = "<facts>"
COPY_TOKEN = "<copy>"
#: Every special token of the prompt: segments, slots, tones, then `FACTS_TOKEN` and `COPY_TOKEN`.
CONTROL_TOKENS: list[str] = [
    *(f"<seg={s}>" for s in STYLES),
    *(f"<slot={s}>" for s in SLOTS),
    *(f"<tone={t}>" for t in TONES),
    FACTS_TOKEN,
    COPY_TOKEN,
]
#: The prompt this module writes (the manifest records it); 1 was control codes only, no facts.
PROMPT_FORMAT = 2
#: New tokens to generate per slot: room for the slot's longest copy and its end of text.
NEW_TOKENS: dict[str, int] = {"headline": 24, "description": 64, "cta": 12, "email_subject": 28}

#: Readable category words, as copy says them ("new in tech", not "new in electronics").
CATEGORY_WORDS: dict[str, str] = {
    "shoes": "shoes",
    "outerwear": "outerwear",
    "electronics": "tech",
    "home": "homeware",
    "beauty": "beauty",
    "sports": "sports gear",
    "books": "books",
    "grocery": "pantry staples",
}
#: Lexicon words that are also plain English in copy ("down from 90.00", "for all"): not fact-like.
ORDINARY_WORDS = frozenset({"all", "none", "down", "local"})

# The fixed keys of the facts, in order; attributes follow by name.
_CORE = ("title", "brand", "category", "price", "was", "off")
# Bounds on what an item may put in the prompt, so it fits the model's context.
_MAX_TITLE, _MAX_VALUE, _MAX_ATTRIBUTES = 80, 40, 6

_NUMBER = re.compile(r"(\d+(?:,\d{3})*)(\.\d+)?(\s?%|\s?[Pp]er\s?[Cc]ent\b)?")
# Runs of what separates words: words keep inner hyphens and apostrophes, and "&" counts as a word.
_SEPARATORS = re.compile(r"[^\w&'’-]+|_")
_POSSESSIVE = ("'s", "’s", "'S", "’S")
_UPPER = "A-ZÀ-ÖØ-Þ"
# A capitalised word after a space that follows no sentence end: "the Nordvik", not ". Nordvik" or ": Nordvik".
_NAME = re.compile(rf"(?<=[^\s.!?:;\"“‘'(«\[…])[ \t]+([{_UPPER}][\w'’-]*)")


def _normal(text: str) -> str:
    """Lower-case words separated by single spaces, possessives dropped: what "whole words" compares."""
    words = _SEPARATORS.split(text.lower())
    return " ".join(w[:-2] if w.endswith(_POSSESSIVE) else w for w in words if w.strip("'’-"))


def _lexicon() -> dict[str, str]:
    """Lexicon phrase (`_normal` form) -> its kind: "product", "attribute" or "category"."""
    out: dict[str, str] = {}
    for category, spec in CATEGORY_SPECS.items():
        for word in (*spec.brands, *spec.adjectives, *spec.nouns):
            out[_normal(word)] = "product"
        for values in spec.attributes.values():
            for value in values:
                if not _NUMBER.search(value):  # "2 years", "50 ml": the numbers rule covers them
                    out.setdefault(_normal(value), "attribute")
        out.setdefault(_normal(category), "category")
    for word in CATEGORY_WORDS.values():
        out.setdefault(_normal(word), "category")
    return {k: v for k, v in out.items() if k and k not in ORDINARY_WORDS}


def _trie_pattern(phrases: list[str]) -> str:
    """One regex alternation for ``phrases``, nested by common prefix so a miss fails on its first letter."""
    trie: dict = {}
    for phrase in phrases:
        node = trie
        for char in phrase:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict) -> str:
        ends = "" in node
        branches = [re.escape(c) + build(child) for c, child in sorted(node.items()) if c]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if ends else body

    return build(trie)


_LEXICON = _lexicon()
# A lexicon phrase as whole words of the lower-cased text (one space between its words, a possessive allowed).
_PHRASE = re.compile(
    r"(?<![\w'’-])(" + _trie_pattern(list(_LEXICON)).replace(r"\ ", r"[ \t]+") + r")(?=['’]s\b|[^\w'’-]|['’-](?!\w)|$)"
)
# Product nouns longest first ("Chelsea Boot" before "Boot"), per category and all together.
_NOUNS = {c: sorted(s.nouns, key=len, reverse=True) for c, s in CATEGORY_SPECS.items()}
_ALL_NOUNS = sorted({n for s in CATEGORY_SPECS.values() for n in s.nouns}, key=len, reverse=True)


class Facts(dict):
    """`item_facts` output (str -> str, in prompt order); passed where an item is expected, it is used as is."""


def _clean(value: Any, limit: int) -> str:
    """One line of at most ``limit`` characters (cut at a word), with no ``|`` to break the facts apart."""
    text = " ".join(str(value).replace("|", "/").split())
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0]
    return text


def _amount(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return None
    return float(value)


def _money(amount: float) -> str:
    return f"{amount:.2f}"


def item_facts(item: Mapping[str, Any] | Any | None) -> Facts:
    """The facts copy may state about ``item``, as strings, in prompt order.

    ``item`` is a mapping with any of ``title``, ``brand``, ``category``,
    ``price`` (the list price), ``discount_pct``, ``sale_price`` and
    ``attributes`` (str -> str), missing or None alike: the API's request items
    and ``engine.content.catalog.Item.facts()``; a catalog `Item` itself works
    too. The sale price is computed from price and discount when absent.
    Keys: title, brand, category, price (what a buyer pays), was and off (only
    when discounted), then the attributes by name (at most six; an attribute
    named like a fixed key is left out). None or {} gives {}.

    >>> item_facts({"title": "Acme Rain Shell", "brand": "Acme", "category": "outerwear", "price": 120,
    ...             "discount_pct": 25, "attributes": {"material": "nylon", "colour": "navy"}})
    {'title': 'Acme Rain Shell', 'brand': 'Acme', 'category': 'outerwear', 'price': '90.00', 'was': '120.00', \
'off': '25%', 'colour': 'navy', 'material': 'nylon'}
    >>> item_facts({"title": "Mug", "price": 10.0, "sale_price": 8.0}), item_facts(None)
    ({'title': 'Mug', 'price': '8.00', 'was': '10.00', 'off': '20%'}, {})
    """
    if isinstance(item, Facts):
        return item
    facts = Facts()
    if item is None:
        return facts
    if not isinstance(item, Mapping) and callable(getattr(item, "facts", None)):
        item = item.facts()
    get = item.get
    for key, limit in (("title", _MAX_TITLE), ("brand", _MAX_VALUE), ("category", _MAX_VALUE)):
        value = get(key)
        if value is not None and (text := _clean(value, limit)):
            facts[key] = text
    price, sale, pct = _amount(get("price")), _amount(get("sale_price")), _amount(get("discount_pct"))
    pct = int(round(pct)) if pct is not None and 0 < pct <= 100 else None
    if price is not None and sale is None and pct:
        sale = round(price * (100 - pct) / 100, 2)
    if price is not None and sale is not None and sale < price:
        facts["price"], facts["was"] = _money(sale), _money(price)
        off = pct or round(100 * (price - sale) / price)
        if off:
            facts["off"] = f"{off}%"
    elif sale is not None or price is not None:
        # Not below the list price: no discount to state, whatever discount_pct says.
        facts["price"] = _money(sale if sale is not None else price)  # type: ignore[arg-type]
    elif pct:
        facts["off"] = f"{pct}%"
    attributes = get("attributes") or {}
    if isinstance(attributes, Mapping):
        kept = 0
        for name in sorted(attributes, key=str):
            key, value = _clean(name, _MAX_VALUE).replace(":", ""), attributes[name]
            if kept == _MAX_ATTRIBUTES or not key or key in _CORE or isinstance(value, (dict, list, bool)):
                continue
            if value is not None and (text := _clean(value, _MAX_VALUE)):
                facts[key] = text
                kept += 1
    return facts


def render_facts(facts: Mapping[str, str]) -> str:
    """The facts part of the prompt for facts already gathered (`item_facts`); "none" when empty."""
    return " | ".join(f"{k}: {v}" for k, v in facts.items()) or "none"


def fact_text(item) -> str:
    """The facts part of the prompt, "none" for no item.

    >>> fact_text({"title": "Acme Rain Shell", "brand": "Acme", "category": "outerwear", "price": 120.0,
    ...            "discount_pct": 25, "attributes": {"colour": "navy"}})
    'title: Acme Rain Shell | brand: Acme | category: outerwear | price: 90.00 | was: 120.00 | off: 25% | colour: navy'
    >>> fact_text(None), fact_text({"title": None})
    ('none', 'none')
    """
    return render_facts(item_facts(item))


def facts_digest(item) -> str:
    """10 hex characters that change whenever the prompt's facts do; "-" for no item (cache keys use it).

    >>> facts_digest(None), len(facts_digest({"title": "Mug"}))
    ('-', 10)
    >>> facts_digest({"title": "Mug", "price": 8}) != facts_digest({"title": "Mug", "price": 9})
    True
    """
    facts = item_facts(item)
    if not facts:
        return "-"
    return hashlib.blake2b(render_facts(facts).encode(), digest_size=5).hexdigest()


def control_prefix(style: str, slot: str, tone: str) -> str:
    """The control tokens that steer the model, in the one order it is trained on.

    >>> control_prefix("bargain_hunter", "headline", "urgent")
    '<seg=bargain_hunter> <slot=headline> <tone=urgent>'
    """
    for kind, value, known in (("segment", style, STYLES), ("slot", slot, SLOTS), ("tone", tone, TONES)):
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r}; use one of {', '.join(known)}")
    return f"<seg={style}> <slot={slot}> <tone={tone}>"


def copy_prompt(style: str, slot: str, tone: str, item) -> str:
    """The whole prompt: control codes, the item's facts, then `COPY_TOKEN` (the model continues with the copy).

    >>> copy_prompt("window_shopper", "cta", "playful", None)
    '<seg=window_shopper> <slot=cta> <tone=playful> <facts> none <copy>'
    """
    return f"{control_prefix(style, slot, tone)} {FACTS_TOKEN} {fact_text(item)} {COPY_TOKEN}"


# -- checking copy against the facts ---------------------------------------------


class _Backing:
    """What an item's facts back: their words (`_normal`, padded) and their numbers (value, is a percentage)."""

    __slots__ = ("words", "numbers")

    def __init__(self, facts: Facts):
        values = [v for k, v in facts.items() if k not in ("price", "was", "off")]
        category = facts.get("category")
        if category:
            values.append(CATEGORY_WORDS.get(category.lower(), category))
        self.words = " " + " | ".join(map(_normal, values)) + " "
        numbers = {(value, pct) for value, pct, _ in _numbers(" | ".join(values))}
        if "price" in facts:
            numbers.add((float(facts["price"]), False))
        if "was" in facts:
            numbers.add((float(facts["was"]), False))
            numbers.add((round(float(facts["was"]) - float(facts.get("price", 0)), 2), False))
        if "off" in facts:
            numbers.add((float(facts["off"][:-1]), True))
        self.numbers = numbers

    def backs(self, words: str) -> bool:
        return f" {words} " in self.words


_BACKINGS: dict[str, _Backing] = {}
_BACKINGS_KEPT = 4096  # items checked again soon (a shelf, a page of copy) skip rebuilding theirs


def _backing(facts: Facts) -> _Backing:
    key = render_facts(facts)
    found = _BACKINGS.get(key)
    if found is None:
        if len(_BACKINGS) >= _BACKINGS_KEPT:
            _BACKINGS.clear()
        found = _BACKINGS[key] = _Backing(facts)
    return found


def _numbers(text: str):
    """(value, is a percentage, (start, end)) of each number in ``text``."""
    for m in _NUMBER.finditer(text):
        whole, fraction, percent = m.groups()
        yield round(float(whole.replace(",", "") + (fraction or "")), 2), percent is not None, m.span()


def _fact_tokens(text: str) -> list[tuple[int, str, str, Any]]:
    """(start, surface, kind, key) of each fact-like token of ``text``, in order.

    ``kind`` is "number" or "percent" (key: the value), or "product", "attribute",
    "category" or "name" (key: the words, `_normal`).
    """
    found = [
        (start, text[start:end].strip(), "percent" if pct else "number", value)
        for value, pct, (start, end) in _numbers(text)
    ]
    lowered = text.lower()
    if len(lowered) != len(text):  # a letter whose lower case is longer: positions would not line up
        lowered = text
    spans = []
    for m in _PHRASE.finditer(lowered):
        words = " ".join(m.group(1).split())
        found.append((m.start(), text[m.start() : m.end()], _LEXICON.get(words, "product"), words))
        spans.append(m.span())
    for m in _NAME.finditer(text):
        start, word = m.start(1), m.group(1).rstrip("'’-")
        if word.endswith(_POSSESSIVE):
            word = word[:-2]
        if word == "I" or any(a <= start < b for a, b in spans):
            continue
        found.append((start, word, "name", _normal(word)))
    found.sort(key=lambda f: f[0])
    return found


def _unsupported(text: str, item) -> list[tuple[str, str]]:
    backing = _backing(item_facts(item))
    out: dict[str, tuple[str, str]] = {}
    for _, surface, kind, key in _fact_tokens(text):
        if kind in ("number", "percent"):
            backed = (key, kind == "percent") in backing.numbers
        else:
            backed = backing.backs(key)
        if not backed:
            out.setdefault(surface.lower(), (surface, kind))
    return list(out.values())


def unsupported_facts(text: str, item) -> list[str]:
    """The fact-like tokens of ``text`` that ``item``'s facts do not back, in order, no duplicates.

    >>> item = {"title": "Nordvik Trail Runner", "brand": "Nordvik", "price": 85.99, "attributes": {"colour": "navy"}}
    >>> unsupported_facts("The Nordvik Runner in navy, only 85.99", item)
    []
    >>> unsupported_facts("The Kestrel Runner in olive suede, only 79.99 (save 20%)", item)
    ['Kestrel', 'olive', 'suede', '79.99', '20%']
    >>> unsupported_facts("Hurry! Meet Acme, the Runner from Oslo", item)  # "Meet" starts a sentence
    ['Acme', 'Oslo']
    """
    return [surface for surface, _ in _unsupported(text, item)]


_KIND_WORDS = {"product": "a product", "category": "a category"}


def grounding_problem(text: str, item) -> str | None:
    """None when every fact-like token of ``text`` is backed by ``item``'s facts; else one sentence on the first.

    >>> item = {"title": "Acme Rain Shell", "brand": "Acme", "price": 120.0, "discount_pct": 25}
    >>> grounding_problem("The Acme Rain Shell: 90.00, down from 120.00 (25% off)", item) is None
    True
    >>> grounding_problem("Only 82.99 for the Acme Rain Shell", item)
    'states 82.99, but the item costs 90.00 (was 120.00)'
    >>> grounding_problem("Take 30% off the Shell", item)
    'states 30% off, but the item is 25% off'
    >>> grounding_problem("Only 9.99: hurry", None)
    'states a price (9.99), but the request featured no item'
    """
    problems = _unsupported(text, item)
    if not problems:
        return None
    surface, kind = problems[0]
    facts = item_facts(item)
    if kind == "percent":
        if not facts:
            return f"states {surface} off, but the request featured no item"
        if "off" not in facts:
            return f"states {surface} off, but the item is not discounted"
        return f"states {surface} off, but the item is {facts['off']} off"
    if kind == "number":
        if not facts:
            what = "a price" if "." in surface else "a number"
            return f"states {what} ({surface}), but the request featured no item"
        if "price" not in facts:
            return f"states {surface}, which is not in the item's facts (it has no price)"
        was = f" (was {facts['was']})" if "was" in facts else ""
        return f"states {surface}, but the item costs {facts['price']}{was}"
    if facts:
        return f"names '{surface}', which is not in the item's facts"
    if kind in ("product", "category"):
        return f"names {_KIND_WORDS[kind]} ('{surface}'), but the request featured no item"
    return f"names '{surface}', but the request featured no item"


def product_noun(title: str, category: str | None = None) -> str:
    """The product noun a title ends with ("Chelsea Boot"): the longest lexicon noun, else its last word.

    >>> product_noun("Nordvik Trail Chelsea Boot", "shoes"), product_noun("Acme Rain Shell")
    ('Chelsea Boot', 'Shell')
    """
    for noun in _NOUNS.get(category or "", _ALL_NOUNS):
        if title.endswith(noun) and (len(title) == len(noun) or not title[-len(noun) - 1].isalnum()):
            return noun
    words = title.split()
    return words[-1] if words else title


def mentions_item(text: str, item) -> bool:
    """Whether ``text`` names the item: its title, or the shortened title the corpus uses (brand + noun, noun).

    >>> item = {"title": "Nordvik Trail Chelsea Boot", "brand": "Nordvik", "category": "shoes"}
    >>> [mentions_item(t, item) for t in ("The Nordvik Chelsea Boot, just landed", "New boots!", "Just landed")]
    [True, False, False]
    """
    facts = item_facts(item)
    title = facts.get("title")
    if not title:
        return False
    said = f" {_normal(text)} "
    noun = product_noun(title, facts.get("category"))
    return any(f" {name} " in said for name in (_normal(title), _normal(noun)) if name)
