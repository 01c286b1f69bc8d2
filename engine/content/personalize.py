"""Choosing what a personalize request serves: the template, the tone, the item, and why.

Pure decisions, no I/O: the API (api/personalize.py) reads the features and
segment, asks these functions what to serve, fills the template's ``ai`` slots
with the generator and renders. Each choice comes back with a one-line reason
that ends up in the response's explanation.

Examples
--------
>>> from engine.content.templates import DEFAULT_TEMPLATES
>>> live = [t for t in DEFAULT_TEMPLATES.values() if t.slot == "headline"]
>>> template, why = choose_template(live, slot="headline", style="bargain_hunter")
>>> template.template_id, why
('headline-ai', 'the first of 2 live headline templates for any segment, by id')
>>> tone_for(template, "bargain_hunter")
('urgent', 'the usual tone for bargain_hunter shoppers')
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from engine.content.templates import DEFAULT_TEMPLATES, Template

T = TypeVar("T")

#: The tone copy takes for each segment style when the template names none.
STYLE_TONES: dict[str, str] = {
    "bargain_hunter": "urgent",
    "loyal_high_spender": "premium",
    "email_driven": "playful",
    "window_shopper": "informative",
}
#: Activity features quoted in an explanation (what the segment and item choice rest on).
EXPLAINING_FEATURES: tuple[str, ...] = (
    "top_category",
    "top_category_affinity",
    "clicks_1h",
    "ctr_24h",
    "add_to_carts_24h",
    "purchases_24h",
    "spend_24h",
    "seconds_since_last_event",
    "lifetime_events",
)


class NoTemplate(LookupError):
    """No live template can serve the request; `reason` says what to do."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def choose_template(
    templates: Sequence[Template], *, slot: str, style: str, label: str | None = None, template_id: str | None = None
) -> tuple[Template, str]:
    """The template to serve for ``slot`` to a user of segment ``style`` (and ``label``), and why.

    A named ``template_id`` must be live for the slot. Otherwise templates tagged
    for the user's style or segment label win over untagged ones; among equals
    the first by id (experiments, issue 6, will choose among variants).
    Raises `NoTemplate` when none applies.
    """
    live = [t for t in templates if t.slot == slot and not t.archived]
    if template_id is not None:
        for template in live:
            if template.template_id == template_id:
                return template, "asked for by name"
        raise NoTemplate(f"no live {slot} template {template_id!r}: list them with GET /v1/templates?slot={slot}")
    tagged = sorted(
        (t for t in live if t.segments and (style in t.segments or (label and label in t.segments))),
        key=lambda t: t.template_id,
    )
    if tagged:
        return tagged[0], f"tagged for {style if style in tagged[0].segments else repr(label)} shoppers"
    generic = sorted((t for t in live if not t.segments), key=lambda t: t.template_id)
    if generic:
        return generic[0], f"the first of {len(generic)} live {slot} templates for any segment, by id"
    raise NoTemplate(f"no live {slot} template serves {style} shoppers: create one with POST /v1/templates")


def default_templates(templates: Sequence[Template], *, slot: str, failed: Template) -> list[Template]:
    """What may serve ``slot`` instead of ``failed``, a template that could not render, best first.

    The slot's default content (the live templates for any segment, by id, as
    a holdout gets), then the built-in ones (`DEFAULT_TEMPLATES`); never one
    with ``failed``'s body, which would fail the same way.

    >>> broken = Template("cta-broken", 1, "cta", "{{ ai.cta }}!", {"cta": "Go"})
    >>> [t.template_id for t in default_templates([broken], slot="cta", failed=broken)]
    ['cta-ai']
    """
    live = sorted(
        (t for t in templates if t.slot == slot and not t.archived and not t.segments), key=lambda t: t.template_id
    )
    builtin = sorted((t for t in DEFAULT_TEMPLATES.values() if t.slot == slot), key=lambda t: t.template_id)
    out: dict[tuple[str, int, str], Template] = {}  # a seeded built-in is live too: once
    for template in (*live, *builtin):
        if template.body != failed.body:
            out.setdefault((template.template_id, template.version, template.body), template)
    return list(out.values())


def tone_for(template: Template, style: str) -> tuple[str, str]:
    """The tone to generate in: the template's own, else the style's usual one."""
    if template.tone:
        return template.tone, f"set by template {template.template_id}"
    return STYLE_TONES.get(style, "informative"), f"the usual tone for {style} shoppers"


def choose_item(
    items: Sequence[Mapping[str, Any]], features: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | None, str]:
    """The candidate to feature: the first in the user's top category, else the first given.

    >>> shoes, bag = {"item_id": "i1", "category": "shoes"}, {"item_id": "i2", "category": "bags"}
    >>> choose_item([shoes, bag], {"top_category": "bags"})[1]
    "in the user's top category (bags)"
    >>> choose_item([shoes, bag], {"top_category": None})[1]
    'the first candidate (no category stands out for this user)'
    """
    if not items:
        return None, "no candidates given"
    top = features.get("top_category")
    if top:
        for item in items:
            if item.get("category") == top:
                return item, f"in the user's top category ({top})"
        return items[0], f"the first candidate (none is in the user's top category, {top})"
    return items[0], "the first candidate (no category stands out for this user)"


def choose_from_catalog(shelf: Sequence[T], top_category: str | None, user: str) -> tuple[T | None, str]:
    """The item to feature when the request gave no candidates: one from the user's top category's shelf.

    ``shelf`` is the first items of ``top_category`` in the catalog (by id); a user
    is shown the same one of them on every request (a stable hash of ``user``), and
    different users different ones. No top category, or an empty shelf: no item.

    >>> shelf = [{"item_id": "i1", "category": "shoes"}, {"item_id": "i2", "category": "shoes"}]
    >>> item, why = choose_from_catalog(shelf, "shoes", "p_123")
    >>> item in shelf, why
    (True, "picked from the catalog: top category 'shoes' (one of its first 2 items)")
    >>> choose_from_catalog(shelf, "shoes", "p_123") == (item, why)
    True
    >>> choose_from_catalog([], "books", "p_123")
    (None, "no candidates given, and the catalog has no item in the user's top category 'books'")
    >>> choose_from_catalog(shelf, None, "p_123")[1]
    'no candidates given, and no category stands out for this user to pick from the catalog'
    """
    if not top_category:
        return None, "no candidates given, and no category stands out for this user to pick from the catalog"
    if not shelf:
        return None, f"no candidates given, and the catalog has no item in the user's top category {top_category!r}"
    digest = hashlib.blake2b(f"{user}\x00{top_category}".encode(), digest_size=8).digest()
    item = shelf[int.from_bytes(digest, "big") % len(shelf)]
    return item, f"picked from the catalog: top category {top_category!r} (one of its first {len(shelf)} items)"


def explaining_features(features: Mapping[str, Any]) -> dict[str, Any]:
    """The activity features an explanation quotes, rounded for reading."""
    out = {}
    for name in EXPLAINING_FEATURES:
        value = features.get(name)
        out[name] = round(value, 4) if isinstance(value, float) else value
    return out
