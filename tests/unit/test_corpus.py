"""The copy corpus: deterministic, within limits, on tone, segment-aware, honest about discounts."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

import engine.content.grounding
import models.train.corpus
from engine.audience.segments import FEATURES
from engine.content.catalog import CATALOG_SEED, Item, build_catalog
from jobs.simulator import PROFILES
from models.train.corpus import (
    CONTROL_TOKENS,
    GENERIC,
    LABEL_CUES,
    MAX_CHARS,
    NEUTRAL_LABEL_WORDS,
    SEGMENT_STYLES,
    SLOTS,
    TONE_WORDS,
    TONES,
    CopyRecord,
    build_corpus,
    control_prefix,
    corpus_hash,
    obeys_length,
    obeys_tone,
    read_jsonl,
    segment_style_for_label,
    split_holdout,
    training_text,
    write_jsonl,
)

PER = 3
MONEY = re.compile(r"\b\d+\.\d{2}\b")
PCT = re.compile(r"\b(\d+)%")
WORDS = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(CATALOG_SEED)


@pytest.fixture(scope="module")
def corpus(catalog):
    """The item records (the generic ones, for no item, have their own test)."""
    return [r for r in build_corpus(0, catalog=catalog, per_combination=PER) if r.item_id != GENERIC]


@pytest.fixture(scope="module")
def items(catalog):
    return {i.item_id: i for i in catalog.items}


def test_default_corpus_is_the_shared_catalog_and_complete(corpus, catalog):
    assert build_corpus()[: len(corpus)] == corpus
    assert len(corpus) == len(catalog.items) * len(SEGMENT_STYLES) * len(SLOTS) * len(TONES) * PER == 76_800
    combos = Counter((r.item_id, r.segment, r.slot, r.tone) for r in corpus)
    assert len(combos) == len(catalog.items) * 4 * 4 * 4
    assert set(combos.values()) == {PER}


def test_generic_records_name_no_product_and_always_train(catalog):
    from engine.content.grounding import grounding_problem

    generic = [r for r in build_corpus(0, catalog=catalog.items[:3], per_combination=PER) if r.item_id == GENERIC]
    combos = Counter((r.segment, r.slot, r.tone) for r in generic)
    assert len(combos) == 4 * 4 * 4 and min(combos.values()) >= PER
    assert all(r.item is None and grounding_problem(r.text, None) is None for r in generic)
    assert all(obeys_tone(r.text, r.tone) and obeys_length(r.text, r.slot) for r in generic)
    train, holdout = split_holdout(generic + corpus_of(catalog.items[:10]), 0.2)
    assert not [r for r in holdout if r.item_id == GENERIC]


def corpus_of(items):
    return [r for r in build_corpus(0, catalog=items) if r.item_id != GENERIC]


def test_every_text_states_only_its_prompts_facts(corpus):
    from engine.content.grounding import grounding_problem

    assert [r.text for r in corpus if grounding_problem(r.text, r.item)] == []
    # Some items' prompts carry no attributes, brand or price (as real shops send them): their texts state none.
    few = [r for r in corpus if not r.item["attributes"]]
    assert 0.05 < len(few) / len(corpus) < 0.3
    unbranded = [r for r in corpus if "brand" not in r.item]
    assert 0.04 < len(unbranded) / len(corpus) < 0.2
    brand_and_noun = re.compile(r"\b(?:Nordvik|Kestrel|Voltra|Lumen|Aurelle|Birchwood|Stridewell) [A-Z]")
    for r in unbranded:
        assert not brand_and_noun.search(r.text.replace(r.item["title"], "")), r  # no "brand noun" short title
    unpriced = [r for r in corpus if "price" not in r.item]
    assert 0.01 < len(unpriced) / len(corpus) < 0.1
    assert not [r.text for r in unpriced if MONEY.search(r.text) or PCT.search(r.text)]


def test_same_seed_same_corpus_other_seed_other_texts(catalog):
    small = build_catalog(CATALOG_SEED, n_items=20)
    a, b, c = build_corpus(5, catalog=small), build_corpus(5, catalog=small), build_corpus(6, catalog=small)
    assert a == b
    assert [r.text for r in a] != [r.text for r in c]
    assert sum(x.text != y.text for x, y in zip(a, c)) > len(a) // 2


def test_an_items_texts_do_not_depend_on_other_items(catalog):
    alone = [r for r in build_corpus(0, catalog=catalog.items[5:6]) if r.item_id != GENERIC]
    assert alone == [r for r in build_corpus(0, catalog=catalog.items[:10]) if r.item_id == catalog.items[5].item_id]


def test_every_text_fits_its_slot_and_obeys_only_its_tone(corpus):
    for r in corpus:
        assert obeys_length(r.text, r.slot), r
        assert r.text == r.text.strip() and "  " not in r.text and "{" not in r.text, r
        assert [t for t in TONES if obeys_tone(r.text, t)] == [r.tone], r


def prompt_of(record):
    """The item as the record's prompt states it (a variant of the catalog's, maybe with facts left out)."""
    facts = record.item
    return Item(
        item_id=record.item_id,
        title=facts["title"],
        brand=facts.get("brand", ""),
        category=facts["category"],
        price=facts.get("price", 0.0),
        discount_pct=facts.get("discount_pct"),
        attributes=facts.get("attributes") or {},
    )


def test_most_prompts_state_a_variant_of_the_item_so_facts_are_copied_not_remembered(corpus, items):
    own = [r for r in corpus if r.item.get("price") == items[r.item_id].price and r.item.get("attributes")]
    own = [r for r in own if r.item["attributes"] == items[r.item_id].attributes]
    assert 0.2 < len(own) / len(corpus) < 0.4  # the item's own facts: OWN_FACTS_SHARE, and variants that match
    assert all(r.item["title"] == items[r.item_id].title for r in corpus)  # the product stays the product
    assert len({(r.item_id, r.item.get("price")) for r in corpus}) > 10 * len(items)


def test_texts_of_a_combination_are_distinct(corpus):
    per_combo = Counter((r.item_id, r.segment, r.slot, r.tone, r.text) for r in corpus)
    assert max(per_combo.values()) == 1


def test_shortening_keeps_whole_words(corpus, items):
    # Every word comes whole from the phrase banks or the item: nothing is cut mid-way.
    banks = (Path(models.train.corpus.__file__), Path(engine.content.grounding.__file__))  # category words there
    bank_words = set(WORDS.findall(" ".join(p.read_text() for p in banks).lower()))
    for r in corpus:
        item = prompt_of(r)
        item_text = " ".join(
            [
                item.title,
                *item.attributes.values(),
                f"{item.price:.2f} {item.sale_price:.2f}",
                f"{round(item.price - item.sale_price, 2):.2f} {item.discount_pct}",
            ]
        )
        assert set(WORDS.findall(r.text.lower())) <= bank_words | set(WORDS.findall(item_text.lower())), r
    headlines = [r for r in corpus if r.slot == "headline"]
    assert any(items[r.item_id].title in r.text for r in headlines)
    assert any(items[r.item_id].title not in r.text and items[r.item_id].brand in r.text for r in headlines)


def test_phrase_variety(corpus):
    # Item-specific slots rarely repeat; calls to action are short and name no item, so they do.
    for slot, least in (("headline", 0.5), ("description", 0.9), ("email_subject", 0.5), ("cta", 0.15)):
        texts = {r.text for r in corpus if r.slot == slot}
        assert len(texts) > least * sum(r.slot == slot for r in corpus), slot


def test_discounts_are_named_only_for_items_on_sale_with_their_numbers(corpus, items):
    named = 0
    for r in corpus:
        item = prompt_of(r)
        percents = {int(p) for p in PCT.findall(r.text)}
        saves = re.findall(r"\bsave (\d+\.\d{2})\b", r.text, re.IGNORECASE)
        was = re.findall(r"\b(?:was|from|usual) (\d+\.\d{2})\b", r.text)
        if not item.discount_pct:
            assert not percents and not saves and not was and "off" not in r.text.split(), r
            continue
        named += bool(percents)
        assert percents <= {item.discount_pct}, r
        assert all(float(s) == round(item.price - item.sale_price, 2) for s in saves), r
        assert all(float(w) == item.price for w in was), r
    assert named > 1000


def test_prices_in_copy_are_the_items_sale_price_or_list_price(corpus, items):
    for r in corpus:
        item = prompt_of(r)
        allowed = {f"{item.sale_price:.2f}", f"{item.price:.2f}", f"{round(item.price - item.sale_price, 2):.2f}"}
        assert set(MONEY.findall(r.text)) <= allowed, r


def share(records, predicate):
    return sum(map(predicate, records)) / len(records)


def test_segments_write_measurably_different_copy(corpus):
    by_segment = {s: [r.text for r in corpus if r.segment == s] for s in SEGMENT_STYLES}

    def money(text):
        return bool(MONEY.search(text) or PCT.search(text))

    bargain = share(by_segment["bargain_hunter"], money)
    assert bargain > 0.9
    assert share(by_segment["loyal_high_spender"], money) == 0
    assert bargain > 10 * max(share(by_segment[s], money) for s in ("window_shopper", "email_driven"))

    def personal(text):
        return bool(re.search(r"\byour?\b|picked|weekly edit", text, re.IGNORECASE))

    email = share(by_segment["email_driven"], personal)
    assert email > 0.95
    assert email > 2 * max(share(by_segment[s], personal) for s in SEGMENT_STYLES if s != "email_driven")

    def craft(text):
        pattern = r"\b(?:members?|exclusive|new arrivals?|new season|first access|quality|collection|collector's)"
        return bool(re.search(pattern, text, re.IGNORECASE))

    assert share(by_segment["loyal_high_spender"], craft) > 0.9
    assert max(share(by_segment[s], craft) for s in SEGMENT_STYLES if s != "loyal_high_spender") < 0.05

    def discovery(text):
        return bool(
            re.search(r"landed|new in|discover|inspiration|browse|look|explore|what's new", text, re.IGNORECASE)
        )

    assert share(by_segment["window_shopper"], discovery) > 0.9
    assert max(share(by_segment[s], discovery) for s in SEGMENT_STYLES if s != "window_shopper") < 0.1


def test_tone_vocabularies_are_lower_case_and_disjoint():
    assert set(TONE_WORDS) == set(TONES)
    seen: set[str] = set()
    for words in TONE_WORDS.values():
        assert all(w == w.lower() and 1 <= len(w.split()) <= 2 for w in words)
        assert seen.isdisjoint(words)
        seen |= words
    assert obeys_tone("DON'T MISS this", "urgent") and not obeys_tone("madeleine", "informative")
    with pytest.raises(ValueError, match="unknown tone 'angry'"):
        obeys_tone("x", "angry")
    with pytest.raises(ValueError, match="unknown slot 'banner'"):
        obeys_length("x", "banner")
    assert not obeys_length("   ", "cta") and obeys_length("x" * MAX_CHARS["cta"], "cta")


def test_segment_styles_are_the_simulator_profiles():
    assert list(SEGMENT_STYLES) == list(PROFILES)


@pytest.mark.parametrize(
    ("label", "style"),
    [
        ("high spend, click-happy", "loyal_high_spender"),
        ("email-driven, quick looks", "email_driven"),
        ("abandons carts, deep browser", "window_shopper"),
        ("buys what they cart, budget", "bargain_hunter"),
        ("budget, email-driven", "bargain_hunter"),
        ("email-driven, budget", "email_driven"),
        ("buys what they cart, high spend", "loyal_high_spender"),
        ("fills carts, app-first (3)", "loyal_high_spender"),
        ("app-first", "window_shopper"),
        ("rarely clicks, quick looks", "email_driven"),
        ("typical", "window_shopper"),
        ("quick looks", "window_shopper"),
        ("High Spend", "loyal_high_spender"),
        ("bargain_hunter", "bargain_hunter"),
    ],
)
def test_segment_label_maps_to_closest_style(label, style):
    assert segment_style_for_label(label) == style


def test_every_segment_feature_word_is_mapped_or_deliberately_neutral():
    words = {w for pair in FEATURES.values() for w in pair}
    assert words <= set(LABEL_CUES) | NEUTRAL_LABEL_WORDS
    assert {style for style, _ in LABEL_CUES.values()} == set(SEGMENT_STYLES)


def test_control_tokens_cover_every_prefix():
    assert len(CONTROL_TOKENS) == len(set(CONTROL_TOKENS)) == 4 + 4 + 4 + 2  # and <facts>, <copy>
    for segment in SEGMENT_STYLES:
        for slot in SLOTS:
            for tone in TONES:
                assert set(control_prefix(segment, slot, tone).split()) <= set(CONTROL_TOKENS)
    record = CopyRecord("window_shopper", "cta", "playful", GENERIC, "Ooh, take a look!")
    assert (
        training_text(record) == "<seg=window_shopper> <slot=cta> <tone=playful> <facts> none <copy> Ooh, take a look!"
    )
    item = {"title": "Acme Rain Shell", "price": 120.0, "discount_pct": 25, "attributes": {"colour": "navy"}}
    record = CopyRecord("bargain_hunter", "cta", "urgent", "i1", "Save 25% now", item)
    assert training_text(record) == (
        "<seg=bargain_hunter> <slot=cta> <tone=urgent> <facts> title: Acme Rain Shell | price: 90.00 | was: 120.00 "
        "| off: 25% | colour: navy <copy> Save 25% now"
    )
    with pytest.raises(ValueError, match="unknown slot 'banner'"):
        control_prefix("window_shopper", "banner", "playful")


def test_holdout_is_by_item_and_deterministic(corpus):
    train, holdout = split_holdout(corpus, fraction=0.1, seed=0)
    assert len(train) + len(holdout) == len(corpus)
    train_items, holdout_items = {r.item_id for r in train}, {r.item_id for r in holdout}
    assert not train_items & holdout_items and len(holdout_items) == 40
    assert split_holdout(corpus, fraction=0.1, seed=0) == (train, holdout)
    assert split_holdout(list(reversed(corpus)), fraction=0.1, seed=0)[1] == list(reversed(holdout))
    assert {r.item_id for r in split_holdout(corpus, fraction=0.1, seed=1)[1]} != holdout_items
    for bad in (0, 1, -0.5):
        with pytest.raises(ValueError, match="fraction must be between 0 and 1"):
            split_holdout(corpus, fraction=bad)


def test_hash_is_stable_and_follows_content(corpus, tmp_path):
    small = corpus[:500]
    digest = corpus_hash(small)
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and corpus_hash(list(small)) == digest
    changed = [
        *small[:-1],
        CopyRecord(
            **{**{f: getattr(small[-1], f) for f in CopyRecord.__struct_fields__}, "text": small[-1].text + "!"}
        ),
    ]
    assert corpus_hash(changed) != digest
    path = tmp_path / "corpus.jsonl"
    write_jsonl(small, path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_jsonl_round_trip(corpus, tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, path)
    assert read_jsonl(path) == corpus
    path.write_text('{"segment": "email_driven", "slot": "cta"}\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:1: not a copy record"):
        read_jsonl(path)


def test_bad_per_combination_is_refused(catalog):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="per_combination must be a positive integer"):
            build_corpus(catalog=catalog.items[:1], per_combination=bad)
    with pytest.raises(ValueError, match="distinct .* texts for sku-"):
        build_corpus(catalog=catalog.items[:1], per_combination=200)
