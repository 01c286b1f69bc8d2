"""Copy about an item, grounded in its facts: the prompt the copy model reads, and the check of what it wrote.

The copy model is prompted with the item's facts beside the control codes
(`copy_prompt`): title, brand, category, the price a buyer pays, the list price and
the discount when it is on sale, and the attributes the catalog has. What it writes
is checked, never rewritten (`grounding_problem`): every fact-like token of the copy
must come from those facts, else the API serves default copy and says why.

Fact-like tokens, and when one is backed:

- **numbers** (``82.99``, ``30``, the ``2`` of "2-year"): backed when equal to a
  number of the facts (the price, the list price, the saving between them, the
  discount, a number in an attribute such as ``50 ml``). A percentage (``30%``,
  ``30 %``) must be the item's discount itself.
- **product names** the copy model could have learnt: every brand, product adjective
  and noun of the catalog's categories (`engine.content.catalog.CATEGORY_SPECS`),
  matched as written (capitalised), and every attribute value there (colours,
  materials, formats, languages, ...), matched in any case, but for a few words
  common in copy ("down" as in "down from", "all", "none", "local").
- **any other capitalised word** that does not start a sentence (the text's start,
  or after ``.``, ``!``, ``?``, ``:`` or an opening quote): names the lexicon does
  not know, from a fine-tuned base model or a real shop's items.

A name or an attribute value is backed when it occurs, as whole words and in any
case, in the facts' text (title, brand, category and its readable word, attribute
values). Copy for no item (a generic headline) is backed by nothing: it may name no
product, brand, attribute, price or percentage.

Examples
--------
>>> shoe = {"item_id": "i-77", "title": "Trail Shoe", "category": "electronics", "price": 80, "discount_pct": 20}
>>> fact_text(shoe)
'title: Trail Shoe | category: electronics | price: 64.00 | was: 80.00 | off: 20%'
>>> grounding_problem("Hurry! The Trail Shoe, 20% off: only 64.00", shoe) is None
True
>>> grounding_problem("Straight to your inbox: the Trail Shoe, picked with you in mind. In terracotta glass.", shoe)
"names 'terracotta', which is not in the item's facts"
>>> grounding_problem("Save 30% on the Trail Shoe", shoe)
'states 30% off, but the item is 20% off'
>>> grounding_problem("New season picks, just for you", None) is None
True
>>> grounding_problem("Only 9.99 today", None)
'states 9.99, but the request featured no item'
>>> mentions_item("The Trail Shoe is going fast", shoe), mentions_item("Hurry, today only", shoe)
(True, False)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from engine.content.brand import SLOTS, TONES
from engine.content.catalog import CATEGORY_SPECS

#: The copy model's segment styles (one per simulator profile), in `models.train.corpus.SEGMENT_STYLES` order.
STYLES: tuple[str, ...] = ("bargain_hunter", "loyal_high_spender", "window_shopper", "email_driven")
FACTS_TOKEN = "<facts>"
COPY_TOKEN = "<copy>"
#: Every control token, styles then slots then tones, then the facts and copy markers: special tokens.
CONTROL_TOKENS: list[str] = (
    [f"<seg={s}>" for s in STYLES]
    + [f"<slot={s}>" for s in SLOTS]
    + [f"<tone={t}>" for t in TONES]
    + [FACTS_TOKEN, COPY_TOKEN]
)
#: The prompt this module writes; 1 was the control codes alone (models/serve/manifest.py records it).
PROMPT_FORMAT = 2
#: New tokens generated per slot: room for the slot's longest copy, no more.
NEW_TOKENS: dict[str, int] = {"headline": 20, "description": 56, "cta": 10, "email_subject": 24}
#: Readable category names for copy ("new in tech", not "new in electronics").
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
# Attribute values that are everyday words in copy ("down from", "for all"): not read as facts.
_COMMON_WORDS = frozenset({"down", "all", "none", "local"})


def control_prefix(style: str, slot: str, tone: str) -> str:
    """The control tokens that steer the model, in the one order it is trained on.

    >>> control_prefix("bargain_hunter", "headline", "urgent")
    '<seg=bargain_hunter> <slot=headline> <tone=urgent>'
    """
    for kind, value, known in (("segment", style, STYLES), ("slot", slot, SLOTS), ("tone", tone, TONES)):
        if value not in known:
            raise ValueError(f"unknown {kind} {value!r}; use one of {', '.join(known)}")
    return f"<seg={style}> <slot={slot}> <tone={tone}>"


def _money(amount: float) -> str:
    return f"{amount:.2f}"


def item_facts(item: Mapping[str, Any] | None) -> dict[str, str]:
    """What copy about ``item`` may state, as text, in the prompt's order.

    ``price`` is what a buyer pays (the sale price); ``was`` and ``off`` only when the
    item is discounted; then the attributes by name.

    >>> item_facts({"item_id": "s1", "title": "Acme Rain Shell", "brand": "Acme", "price": 120.0,
    ...             "discount_pct": 25, "attributes": {"colour": "navy"}})
    {'title': 'Acme Rain Shell', 'brand': 'Acme', 'price': '90.00', 'was': '120.00', 'off': '25%', 'colour': 'navy'}
    >>> item_facts(None)
    {}
    """
    if not item:
        return {}
    facts: dict[str, str] = {}
    for name in ("title", "brand", "category"):
        value = item.get(name)
        if value:
            facts[name] = str(value)
    price, pct = item.get("price"), item.get("discount_pct") or 0
    if price is not None:
        sale = item.get("sale_price")
        if sale is None:
            sale = round(price * (100 - pct) / 100, 2)
        facts["price"] = _money(sale)
        if pct and sale < price:
            facts["was"] = _money(price)
            facts["off"] = f"{pct}%"
    elif pct:
        facts["off"] = f"{pct}%"
    for name, value in sorted((item.get("attributes") or {}).items()):
        if value not in (None, ""):
            facts[name] = str(value)
    return facts


def fact_text(item: Mapping[str, Any] | None) -> str:
    """The facts part of the prompt: ``name: value`` pairs joined by `` | ``, or ``none``."""
    facts = item_facts(item)
    return " | ".join(f"{name}: {value}" for name, value in facts.items()) or "none"


def facts_digest(item: Mapping[str, Any] | None) -> str:
    """Ten hex digits of the item's facts ("-" for no item): a changed price or title gives new copy keys.

    >>> facts_digest(None), len(facts_digest({"title": "Trail Shoe"}))
    ('-', 10)
    """
    if not item_facts(item):
        return "-"
    return hashlib.blake2b(fact_text(item).encode(), digest_size=5).hexdigest()


def copy_prompt(style: str, slot: str, tone: str, item: Mapping[str, Any] | None) -> str:
    """What the copy model continues: the control codes, the item's facts, then the copy marker.

    >>> copy_prompt("window_shopper", "cta", "playful", None)
    '<seg=window_shopper> <slot=cta> <tone=playful> <facts> none <copy>'
    """
    return f"{control_prefix(style, slot, tone)} {FACTS_TOKEN} {fact_text(item)} {COPY_TOKEN}"


# -- checking copy against the facts ---------------------------------------------------------

_NAMES = sorted(
    {w for spec in CATEGORY_SPECS.values() for w in (*spec.brands, *spec.adjectives, *spec.nouns)},
    key=len,
    reverse=True,
)
_ATTRIBUTES = sorted(
    {
        v.lower()
        for spec in CATEGORY_SPECS.values()
        for values in spec.attributes.values()
        for v in values
        if not any(c.isdigit() for c in v)
    }
    - _COMMON_WORDS,
    key=len,
    reverse=True,
)
# Longest first, so "Chelsea Boot" wins over "Boot" and "forest green" over "green".
_NAME = re.compile(r"(?<![\w'-])(?:" + "|".join(map(re.escape, _NAMES)) + r")(?![\w'-])")
_ATTRIBUTE = re.compile(r"(?<![\w'-])(?:" + "|".join(map(re.escape, _ATTRIBUTES)) + r")(?![\w'-])", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:[.,]\d+)?)(\s?%)?")
_CAPITAL = re.compile(r"(?<![\w'-])[A-Z][\w'-]*")
# A capital right after these (and white space) starts a sentence.
_SENTENCE_START = re.compile(r"(?:^|[.!?:\"“(]|\.\.\.)\s*$")
_WORDS = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


class _Backing:
    """The facts of one item, read for checking: their words (and word runs) and their numbers."""

    __slots__ = ("text", "numbers", "pct", "has_item")

    def __init__(self, item: Mapping[str, Any] | None):
        facts = item_facts(item)
        self.has_item = bool(facts)
        words = list(facts.values())
        category = facts.get("category")
        if category in CATEGORY_WORDS:
            words.append(CATEGORY_WORDS[category])
        # Spaces around every word: "whole words" is then a substring test.
        self.text = " " + " ".join(_WORDS.findall(" ".join(words).lower())) + " "
        numbers = {float(n.replace(",", "")) for value in facts.values() for n, _ in _NUMBER.findall(value)}
        if "was" in facts:
            numbers.add(round(float(facts["was"]) - float(facts["price"]), 2))
        self.numbers = numbers
        self.pct = int(facts["off"][:-1]) if "off" in facts else None

    def backs(self, phrase: str) -> bool:
        words = _WORDS.findall(phrase.lower())
        return bool(words) and f" {' '.join(words)} " in self.text


def unsupported_facts(text: str, item: Mapping[str, Any] | None) -> list[str]:
    """The fact-like tokens of ``text`` that ``item``'s facts do not back, in order, once each.

    >>> unsupported_facts("Nordvik Chelsea Boot, only 12.99: 50% off", {"title": "Trail Shoe", "price": 80.0})
    ['Nordvik', 'Chelsea Boot', '12.99', '50%']
    """
    return [token for token, _ in _unsupported(text, _Backing(item))]


def _unsupported(text: str, backing: _Backing) -> list[tuple[str, str]]:
    """(token, kind) of each unbacked token; kind is "percent", "number" or "name"."""
    found: dict[str, str] = {}
    for match in _NUMBER.finditer(text):
        number, percent = match.group(1), match.group(2)
        value = float(number.replace(",", ""))
        if percent:
            if backing.pct is None or value != backing.pct:
                found.setdefault(f"{number}%", "percent")
        elif value not in backing.numbers:
            found.setdefault(number, "number")
    for match in _NAME.finditer(text):
        if not backing.backs(match.group()):
            found.setdefault(match.group(), "name")
    for match in _ATTRIBUTE.finditer(text):
        if not backing.backs(match.group()):
            found.setdefault(match.group(), "name")
    for match in _CAPITAL.finditer(text):
        word = match.group()
        if _SENTENCE_START.search(text[: match.start()]) or backing.backs(word):
            continue
        if not any(word in token for token in found):  # a lexicon name already reported
            found.setdefault(word, "name")
    order = {token: text.find(token.rstrip("%")) for token in found}
    return sorted(found.items(), key=lambda pair: order[pair[0]])


def grounding_problem(text: str, item: Mapping[str, Any] | None) -> str | None:
    """None when every fact-like token of ``text`` comes from ``item``'s facts; else one sentence saying which does not.

    >>> grounding_problem("Hurry! The Nordvik Parka, ends tonight", {"title": "Acme Rain Shell", "brand": "Acme"})
    "names 'Nordvik', which is not in the item's facts"
    >>> grounding_problem("Only 12.99 for the Acme Rain Shell", {"title": "Acme Rain Shell", "price": 90.0})
    "states 12.99, which is not among the item's facts (its price is 90.00)"
    """
    backing = _Backing(item)
    problems = _unsupported(text, backing)
    if not problems:
        return None
    token, kind = problems[0]
    if not backing.has_item:
        if kind == "name":
            return f"names '{token}', but the request featured no item"
        return f"states {token}, but the request featured no item"
    if kind == "percent":
        if backing.pct is None:
            return f"states {token} off, but the item is not discounted"
        return f"states {token} off, but the item is {backing.pct}% off"
    if kind == "number":
        price = item_facts(item).get("price")
        known = f" (its price is {price})" if price else " (it has no price)"
        return f"states {token}, which is not among the item's facts{known}"
    return f"names '{token}', which is not in the item's facts"


def mentions_item(text: str, item: Mapping[str, Any] | None) -> bool:
    """Whether ``text`` names ``item``: its title, or the product noun its title ends with (the corpus's short form)."""
    title = (item or {}).get("title")
    if not title:
        return False
    folded = " " + " ".join(_WORDS.findall(text.lower())) + " "
    if f" {' '.join(_WORDS.findall(title.lower()))} " in folded:
        return True
    spec = CATEGORY_SPECS.get((item or {}).get("category") or "")
    nouns = spec.nouns if spec is not None else ()
    noun = next((n for n in sorted(nouns, key=len, reverse=True) if title.endswith(n)), title.split()[-1])
    return len(noun) > 2 and f" {' '.join(_WORDS.findall(noun.lower()))} " in folded
