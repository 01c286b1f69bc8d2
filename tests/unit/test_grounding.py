"""Copy checked against the item's facts: what the corpus writes passes, another item's copy does not."""

from __future__ import annotations

import pytest

import models.train.corpus
from engine.content.catalog import build_catalog
from engine.content.grounding import (
    CONTROL_TOKENS,
    COPY_TOKEN,
    FACTS_TOKEN,
    NEW_TOKENS,
    STYLES,
    copy_prompt,
    fact_text,
    facts_digest,
    grounding_problem,
    item_facts,
    mentions_item,
    unsupported_facts,
)
from models.train.corpus import GENERIC, SEGMENT_STYLES, SLOTS, build_corpus

CATALOG = build_catalog(seed=1, n_items=50)
ITEMS = {i.item_id: i.facts() for i in CATALOG.items}


@pytest.fixture(scope="module")
def records():
    return build_corpus(seed=0, catalog=CATALOG, per_combination=2)


def test_the_styles_and_tokens_are_the_corpus_ones():
    assert STYLES == tuple(SEGMENT_STYLES)
    assert models.train.corpus.CONTROL_TOKENS is CONTROL_TOKENS
    assert len(set(CONTROL_TOKENS)) == len(CONTROL_TOKENS) == 4 + 4 + 4 + 2
    assert CONTROL_TOKENS[-2:] == [FACTS_TOKEN, COPY_TOKEN]
    assert set(NEW_TOKENS) == set(SLOTS)


def test_every_corpus_text_is_grounded_in_its_prompt_and_mostly_not_in_another_item(records):
    assert [r.text for r in records if grounding_problem(r.text, r.item)] == []
    # Records vary an item's price, discount and attributes (the model must copy the prompt's
    # facts, not remember the item's), so a text is backed by its record's facts only.
    varied = [r for r in records if r.item and r.item.get("price") not in (None, ITEMS[r.item_id]["price"])]
    assert len(varied) > 0.3 * sum(r.item is not None for r in records)
    ids = list(ITEMS)
    other = {i: ITEMS[ids[(n + 7) % len(ids)]] for n, i in enumerate(ids)}
    assert all(other[i]["title"] != ITEMS[i]["title"] and other[i]["price"] != ITEMS[i]["price"] for i in ids)
    with_item = [r for r in records if r.item]
    flagged = sum(grounding_problem(r.text, other[r.item_id]) is not None for r in with_item)
    assert flagged / len(with_item) > 0.75
    for slot in ("headline", "description"):  # they name the item, so another item's almost always fails
        named = [r for r in with_item if r.slot == slot]
        assert sum(grounding_problem(r.text, other[r.item_id]) is not None for r in named) / len(named) > 0.97


def test_generic_corpus_texts_state_no_fact_and_name_no_item(records):
    generic = [r for r in records if r.item_id == GENERIC]
    assert generic and all(r.item is None for r in generic)
    assert [r.text for r in generic if grounding_problem(r.text, None)] == []
    assert not any(mentions_item(r.text, ITEMS["sku-000001"]) for r in generic)


def test_item_texts_name_their_item_in_headlines_and_descriptions(records):
    for slot in ("headline", "description"):
        texts = [r for r in records if r.slot == slot and r.item]
        assert all(mentions_item(r.text, r.item) for r in texts), slot


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Hurry! Nordvik Chelsea Boot, today only", "names a product ('Nordvik'), but the request featured no item"),
        ("New in: the Chelsea Boot", "names a product ('Chelsea Boot'), but the request featured no item"),
        ("Only 12.99 today", "states a price (12.99), but the request featured no item"),
        ("Save 30% today", "states 30% off, but the request featured no item"),
        ("A find from Maison Lys", "names a product ('Maison Lys'), but the request featured no item"),
        ("Picked for you by Zephyrwear", "names 'Zephyrwear', but the request featured no item"),
        ("In navy suede", "names 'navy', but the request featured no item"),
        ("Fresh finds in tech", "names a category ('tech'), but the request featured no item"),
    ],
)
def test_generic_copy_names_no_product_price_or_attribute(text, problem):
    assert grounding_problem(text, None) == problem
    assert grounding_problem(text, {}) == problem


@pytest.mark.parametrize(
    "text",
    [
        "Today only: new picks for you",
        "Psst... fresh inspiration, just landed",
        "Shop now",
        "Hello, you! See picks",
        "Ends tonight. Don't miss it: down to the last few, for all of you",
        'I love these: "Fresh" and (New) picks',
    ],
)
def test_generic_copy_without_facts_passes(text):
    assert grounding_problem(text, None) is None
    assert unsupported_facts(text, None) == []


def test_the_issues_example_is_flagged():
    item = {"title": "Trail Shoe", "category": "electronics", "price": 80, "discount_pct": 20}
    assert unsupported_facts("In terracotta glass.", item) == ["terracotta", "glass"]
    assert grounding_problem("In terracotta glass.", item) == "names 'terracotta', which is not in the item's facts"
    assert grounding_problem("The Trail Shoe: 64.00, was 80.00, save 16.00 (20% off) in tech", item) is None


def test_a_real_shops_item_with_few_facts():
    item = {"item_id": "x1", "title": "Zephyr Jacket", "price": 59.5}
    assert grounding_problem("The Zephyr Jacket, only 59.50", item) is None
    assert grounding_problem("The Zephyr Jacket's hood, only 59.5", item) is None
    assert unsupported_facts("The Zephyr Jacket by Nordvik, only 59.50, in black", item) == ["Nordvik", "black"]
    assert grounding_problem("The Zephyr Jacket, only 59.50 - 20% off", item) == (
        "states 20% off, but the item is not discounted"
    )
    assert grounding_problem("Only 49.99 for the Zephyr Jacket", item) == "states 49.99, but the item costs 59.50"
    unpriced = {"title": "Zephyr Jacket"}
    assert grounding_problem("The Zephyr Jacket, 2 for 1", unpriced) == (
        "states 2, which is not in the item's facts (it has no price)"
    )


def test_names_the_lexicon_does_not_know_are_caught_unless_they_start_a_sentence():
    item = {"title": "Café Olé Mug", "brand": "Café Olé", "attributes": {"capacity": "350 ml"}}
    assert grounding_problem("Meet the Café Olé Mug: 350 ml of coffee", item) is None
    assert unsupported_facts("Meet the Café Olé Mug from Zürich, by Maison Lys", item) == ["Zürich", "Maison Lys"]
    assert unsupported_facts("Mug. Zürich loves it", item) == []  # a sentence's first word is not read as a name
    assert unsupported_facts("The Kestrel's best: a Nordvik's pick", item) == ["Kestrel", "Nordvik"]


def test_numbers_percentages_and_savings():
    item = {"title": "Acme Rain Shell", "brand": "Acme", "price": 1200.0, "discount_pct": 25}
    assert item_facts(item)["price"] == "900.00"
    assert grounding_problem("Acme Rain Shell: 900, was 1,200.00 - save 300.00 (25 percent off)", item) is None
    assert grounding_problem("Take 30% off the Shell", item) == "states 30% off, but the item is 25% off"
    assert unsupported_facts("Save 25 on the Shell, now 900.00", item) == ["25"]  # 25% is a percentage, not 25


def test_item_facts_from_every_kind_of_item():
    item = CATALOG.items[3]
    assert item_facts(item) == item_facts(item.facts()) == item_facts(item.facts() | {"sale_price": None})
    assert item_facts({"title": "Mug", "price": 10.0, "sale_price": 8.0}) == {
        "title": "Mug",
        "price": "8.00",
        "was": "10.00",
        "off": "20%",
    }
    assert item_facts({"title": "Mug", "price": 10.0, "sale_price": 12.0, "discount_pct": 10}) == {
        "title": "Mug",
        "price": "12.00",
    }
    assert item_facts({"title": "Mug", "discount_pct": 10}) == {"title": "Mug", "off": "10%"}
    assert item_facts({"title": None, "brand": "", "price": None, "attributes": None}) == {}
    assert fact_text({}) == fact_text(None) == "none" and facts_digest({}) == "-"
    odd = {"title": "A | B\nmug", "attributes": {"title": "x", "zest": "lemon", "a": True, "b": None, "c": 2}}
    assert item_facts(odd) == {"title": "A / B mug", "c": "2", "zest": "lemon"}
    many = {"title": "T " + "word " * 40, "attributes": {f"k{i}": "v" * 99 for i in range(20)}}
    facts = item_facts(many)
    assert len(facts["title"]) <= 80 and len(facts) == 1 + 6
    assert all(len(v) <= 40 for k, v in facts.items() if k != "title")


def test_a_changed_price_changes_the_prompt_and_the_digest():
    item = ITEMS["sku-000003"]
    cheaper = item | {"price": item["price"] - 1, "sale_price": None}
    assert facts_digest(item) != facts_digest(cheaper)
    assert copy_prompt("bargain_hunter", "headline", "urgent", item) != copy_prompt(
        "bargain_hunter", "headline", "urgent", cheaper
    )
    assert item_facts(cheaper)["price"] != item_facts(item)["price"]
    assert facts_digest(item) == facts_digest(dict(item)) and len(facts_digest(item)) == 10
    prompt = copy_prompt("bargain_hunter", "headline", "urgent", item)
    assert prompt == f"<seg=bargain_hunter> <slot=headline> <tone=urgent> <facts> {fact_text(item)} <copy>"


def test_mentions_the_item_by_title_brand_and_noun_or_noun():
    item = {"title": "Nordvik Trail Chelsea Boot", "brand": "Nordvik", "category": "shoes"}
    assert mentions_item("Hurry: the Nordvik Trail Chelsea Boot", item)
    assert mentions_item("Psst, Nordvik Chelsea Boot!", item) and mentions_item("Hello, Chelsea Boot!", item)
    assert not mentions_item("Hello, boots!", item) and not mentions_item("Nordvik: just landed", item)
    assert not mentions_item("Anything", None) and not mentions_item("Anything", {"price": 3})
    assert mentions_item("The Zephyr Jacket is here", {"title": "Zephyr Jacket"})
