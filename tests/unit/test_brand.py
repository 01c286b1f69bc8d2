"""Brand rules: each rule fires with a clear reason, clean copy passes, JSON errors name the field."""

import json

import pytest

from engine.content import brand
from engine.content.brand import DEFAULT_RULES, RULES, BrandRules, InvalidBrandRules, Violation, check, load_brand_rules
from engine.content.catalog import build_catalog
from models.train import corpus

RULES_JSON = {
    "name": "acme",
    "banned_words": ["cheap", "free money"],
    "forbidden_phrases": ["act now or"],
    "required_phrases": {"cta": ["shop", "buy now"]},
    "max_chars": {"headline": 40},
    "tone_words": {"premium": ["crafted", "hand made"]},
}
ACME = load_brand_rules(json.dumps(RULES_JSON))


def rules_broken(text, slot="description", tone=None, rules=ACME):
    return [v.rule for v in check(rules, text, slot=slot, tone=tone)]


def test_corpus_copy_passes_the_demo_rules_and_tone_agrees_with_obeys_tone():
    records = corpus.build_corpus(seed=0, catalog=build_catalog(seed=1, n_items=6), per_combination=2)
    for record in records:
        assert check(DEFAULT_RULES, record.text, slot=record.slot, tone=record.tone) == [], record.text
        for tone in corpus.TONES:
            tone_ok = "tone" not in rules_broken(record.text, record.slot, tone, DEFAULT_RULES)
            assert tone_ok == corpus.obeys_tone(record.text, tone), (record.text, tone)


ONE_RULE_BROKEN = [
    ("Cheap lamps for everyone", "description", None, Violation("banned_word", "uses the banned word 'cheap'")),
    ("Win FREE\n money today", "description", None, Violation("banned_word", "uses the banned word 'free money'")),
    (
        "Act now or miss out",
        "description",
        None,
        Violation("forbidden_phrase", "contains the forbidden phrase 'act now or'"),
    ),
    (
        "Add to basket",
        "cta",
        None,
        Violation("required_phrase", "lacks a phrase required in a call to action: needs 'shop' or 'buy now'"),
    ),
    ("x" * 41, "headline", None, Violation("too_long", "is 41 characters, over the 40 allowed in a headline")),
    (
        "x" * 71,
        "email_subject",
        None,
        Violation("too_long", "is 71 characters, over the 70 allowed in an email subject"),
    ),
    ("", "headline", "urgent", Violation("empty", "is empty")),
    (
        "Hurry, it ends tonight",
        "headline",
        "premium",
        Violation("tone", "has no word of the premium tone, such as 'crafted' or 'hand made'"),
    ),
]


@pytest.mark.parametrize(("text", "slot", "tone", "expected"), ONE_RULE_BROKEN)
def test_each_rule_fires_with_a_clear_detail(text, slot, tone, expected):
    assert check(ACME, text, slot=slot, tone=tone) == [expected]


def test_every_rule_kind_is_covered_above():
    assert {expected.rule for *_, expected in ONE_RULE_BROKEN} == set(RULES)


@pytest.mark.parametrize(
    ("text", "slot", "tone"),
    [
        ("A crafted lamp for your desk", "headline", "premium"),
        ("Hand   made in Porto, in oak", "description", "premium"),
        ("Shop the lamp", "cta", None),
        ("Buy now", "cta", None),
        ("SHOP NOW", "cta", None),
        ("x" * 40, "headline", None),
    ],
)
def test_clean_copy_passes(text, slot, tone):
    assert check(ACME, text, slot=slot, tone=tone) == []


def test_banned_words_match_whole_words_only():
    assert rules_broken("The cheapest lamp in town") == []
    assert rules_broken("A cheapskate's dream") == []
    assert rules_broken("Not cheap, but cheap-looking") == ["banned_word"]  # reported once
    assert rules_broken("CHEAP!") == ["banned_word"]
    assert rules_broken("freemoney") == [] and rules_broken("free moneys") == []


def test_banned_entries_with_punctuation_at_an_edge():
    rules = BrandRules(name="x", banned_words=("100%", "#1"))
    assert [v.detail for v in check(rules, "The #1 lamp, 100% oak", slot="headline")] == [
        "uses the banned word '#1'",
        "uses the banned word '100%'",
    ]
    assert check(rules, "The #10 lamp", slot="headline") == []


def test_forbidden_phrases_match_anywhere_and_across_spacing():
    assert rules_broken("ACT  NOW\tOR lose out") == ["forbidden_phrase"]
    assert rules_broken("react now or later") == ["forbidden_phrase"]  # a substring, as documented


def test_typographic_apostrophes_match_plain_ones():
    assert rules_broken("You won\u2019t believe it", rules=DEFAULT_RULES) == ["forbidden_phrase"]
    assert "tone" not in rules_broken("Don\u2019t miss it", "headline", "urgent", DEFAULT_RULES)


def test_required_phrases_apply_only_to_their_slot():
    assert rules_broken("Add to basket", "headline") == []


def test_tone_words_can_be_switched_off():
    rules = BrandRules(name="x", require_tone_words=False)
    assert check(rules, "A lamp", slot="headline", tone="premium") == []


def test_violations_come_in_a_fixed_order():
    text = "Cheap! Act now or lose out, a deal " + "x" * 30
    assert rules_broken(text, "cta", "premium") == [
        "too_long",
        "banned_word",
        "forbidden_phrase",
        "required_phrase",
        "tone",
    ]


def test_partial_overrides_keep_the_other_defaults():
    assert ACME.max_chars == {**corpus.MAX_CHARS, "headline": 40}
    assert ACME.tone_words["urgent"] == corpus.TONE_WORDS["urgent"]
    assert ACME.tone_words["premium"] == frozenset({"crafted", "hand made"})


def test_unknown_slot_or_tone_is_the_callers_error():
    with pytest.raises(ValueError, match="unknown slot 'footer'; use one of headline"):
        check(ACME, "x", slot="footer")
    with pytest.raises(ValueError, match="unknown tone 'grumpy'; use one of urgent"):
        check(ACME, "x", slot="cta", tone="grumpy")


def test_rules_round_trip_through_json():
    import msgspec

    assert load_brand_rules(msgspec.json.encode(ACME)) == ACME
    assert load_brand_rules(msgspec.json.encode(DEFAULT_RULES)) == DEFAULT_RULES


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"colour": "red"}, "unknown field `colour`; the fields are name, banned_words"),
        ({"banned_words": "cheap"}, "Expected `array`, got `str` - at `$.banned_words`"),
        ({"banned_words": ["  "]}, "banned_words has a blank entry"),
        ({"forbidden_phrases": [""]}, "at `$.forbidden_phrases[0]`"),
        ({"required_phrases": {"footer": ["x"]}}, "required_phrases has an unknown slot 'footer'; use one of"),
        ({"required_phrases": {"cta": []}}, "required_phrases.cta is empty: give at least one phrase"),
        ({"max_chars": {"cta": -5}}, "max_chars.cta must be a whole number of characters of at least 1, got -5"),
        ({"max_chars": {"cta": 0}}, "max_chars.cta must be"),
        ({"max_chars": {"cta": "20"}}, "Expected `int`, got `str` - at `$.max_chars"),
        ({"max_chars": {"sidebar": 10}}, "max_chars has an unknown slot 'sidebar'"),
        ({"tone_words": {"grumpy": ["meh"]}}, "tone_words has an unknown tone 'grumpy'; use one of urgent"),
        ({"tone_words": {"premium": []}}, "tone_words.premium is empty"),
        ({"tone_words": {"premium": ["!!"]}}, "tone_words.premium has '!!', which has no letters or digits"),
        ({"require_tone_words": "yes"}, "Expected `bool`, got `str` - at `$.require_tone_words`"),
        ({"name": ""}, "at `$.name`"),
    ],
)
def test_loading_errors_name_the_field(change, reason):
    with pytest.raises(InvalidBrandRules) as info:
        load_brand_rules(json.dumps({**RULES_JSON, **change}))
    assert str(info.value).startswith("invalid brand rules: ")
    assert reason in str(info.value)


@pytest.mark.parametrize(("data", "reason"), [(b"{", "not JSON"), (b"\xff", "not JSON"), (b"{}", "field `name`")])
def test_loading_errors_for_bad_documents(data, reason):
    with pytest.raises(InvalidBrandRules, match=reason):
        load_brand_rules(data)


def test_rules_built_in_code_are_checked_too():
    with pytest.raises(ValueError, match="banned_words must be a list of strings, not str"):
        BrandRules(name="x", banned_words="cheap")
    assert BrandRules(name="x", banned_words=["cheap"]).banned_words == ("cheap",)


def test_matchers_are_built_once_per_distinct_rules():
    # Performance sanity without timing: equal rules share one compiled matcher set.
    same = load_brand_rules(json.dumps(RULES_JSON))
    assert same is not ACME and brand._compiled(same) is brand._compiled(ACME)
    assert brand._compiled(DEFAULT_RULES) is not brand._compiled(ACME)
    for i in range(2 * brand._CACHE_SIZE):  # rules built per call cannot grow the cache without bound
        check(BrandRules(name=f"b{i}"), "x", slot="cta")
    assert len(brand._cache) <= brand._CACHE_SIZE


def test_a_changed_rules_dict_is_not_served_stale():
    rules = BrandRules(name="x")
    assert check(rules, "x" * 20, slot="cta") == []
    rules.max_chars["cta"] = 10  # documented as read-only, but a slip must not give stale answers
    assert rules_broken("x" * 20, "cta", rules=rules) == ["too_long"]
