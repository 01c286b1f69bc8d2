"""Copy checked against the item's facts: what the corpus writes passes, another item's copy does not."""

from __future__ import annotations

import pytest

from engine.content.catalog import build_catalog
from engine.content.grounding import (
    CONTROL_TOKENS,
    STYLES,
    copy_prompt,
    facts_digest,
    grounding_problem,
    item_facts,
    unsupported_facts,
)
from models.train.corpus import SEGMENT_STYLES, build_corpus

CATALOG = build_catalog(seed=1, n_items=50)
ITEMS = {i.item_id: i.facts() for i in CATALOG.items}


def test_the_styles_are_the_corpus_styles():
    assert STYLES == tuple(SEGMENT_STYLES)
    assert len(set(CONTROL_TOKENS)) == len(CONTROL_TOKENS)


def test_every_corpus_text_is_grounded_in_its_own_item_and_mostly_not_in_another():
    records = build_corpus(seed=0, catalog=CATALOG, per_combination=2)
    assert [r.text for r in records if grounding_problem(r.text, ITEMS[r.item_id])] == []
    ids = list(ITEMS)
    flagged = sum(
        grounding_problem(r.text, ITEMS[ids[(ids.index(r.item_id) + 7) % len(ids)]]) is not None for r in records
    )
    assert flagged / len(records) > 0.6


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Hurry! Nordvik Chelsea Boot, today only", "names 'Nordvik'"),
        ("Only 12.99 today", "states 12.99"),
        ("Save 30% today", "states 30%"),
        ("A find from Maison Lys", "names 'Maison Lys'"),
        ("Picked for you by Zephyrwear", "names 'Zephyrwear'"),
        ("In navy suede", "names 'navy'"),
    ],
)
def test_generic_copy_names_no_product_price_or_attribute(text, problem):
    assert grounding_problem(text, None).startswith(problem)


@pytest.mark.parametrize(
    "text",
    ["Today only: new picks for you", "Psst... fresh inspiration, just landed", "Shop now", "Hello, you! See picks"],
)
def test_generic_copy_without_facts_passes(text):
    assert grounding_problem(text, None) is None


def test_a_real_shops_item_with_few_facts():
    item = {"item_id": "x1", "title": "Zephyr Jacket", "price": 59.5}
    assert grounding_problem("The Zephyr Jacket, only 59.50", item) is None
    assert unsupported_facts("The Zephyr Jacket by Nordvik, only 59.50, in black", item) == ["Nordvik", "black"]
    assert grounding_problem("The Zephyr Jacket, only 59.50 - 20% off", item) == (
        "states 20% off, but the item is not discounted"
    )


def test_a_changed_price_changes_the_prompt_and_the_digest():
    item = ITEMS["sku-000003"]
    cheaper = item | {"price": item["price"] - 1, "sale_price": None}
    assert facts_digest(item) != facts_digest(cheaper)
    assert copy_prompt("bargain_hunter", "headline", "urgent", item) != copy_prompt(
        "bargain_hunter", "headline", "urgent", cheaper
    )
    assert item_facts(cheaper)["price"] != item_facts(item)["price"]
