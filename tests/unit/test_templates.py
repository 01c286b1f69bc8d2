"""Content templates: the small language, the sandbox, fallbacks and versions (engine only, fast)."""

from __future__ import annotations

import msgspec
import pytest

from engine.content.catalog import build_catalog
from engine.content.templates import (
    DEFAULT_TEMPLATES,
    MAX_BODY_CHARS,
    RenderResult,
    Template,
    TemplateError,
    TemplateFields,
    new_template,
    render,
    revise,
    validate_body,
)
from tests.support import UNRENDERABLE

ITEMS = build_catalog(seed=1, n_items=20).items
ON_SALE = next(i for i in ITEMS if i.discount_pct)
FULL_PRICE = next(i for i in ITEMS if not i.discount_pct)


def template(body, **kw):
    kw.setdefault("default_copy", {})
    return new_template("t1", kw.pop("slot", "description"), body, **kw)[0]


# -- what renders --------------------------------------------------------------


def test_every_allowed_placeholder_renders_with_a_catalog_item():
    body = (
        "{{ user.first_name }}|{{ item.title }}|{{ item.brand }}|{{ item.category }}|{{ item.price }}|"
        "{{ item.sale_price }}|{{ item.discount_pct }}|{{ discount_pct }}|{{ ai.headline }}"
    )
    t = template(body, default_copy={"headline": "Fresh picks"})
    result = render(t, user={"first_name": "Ann"}, item=ON_SALE, ai={"headline": "Big day"}, discount_pct=30)
    i = ON_SALE
    assert result.text == (f"Ann|{i.title}|{i.brand}|{i.category}|{i.price}|{i.sale_price}|{i.discount_pct}|30|Big day")
    assert result.used_defaults == ()
    assert result.fields == TemplateFields(
        user=("first_name",),
        item=("brand", "category", "discount_pct", "price", "sale_price", "title"),
        ai=("headline",),
        discount_pct=True,
    )


def test_filters_and_if_render():
    t = template(
        "{{ item.brand | upper }} {{ user.city | title }} {{ item.sale_price | round(0) }} "
        "{{ item.price | money }}"
        "{% if item.discount_pct %} -{{ item.discount_pct }}%{% else %} full{% endif %}"
    )
    on_sale = render(t, user={"city": "new york"}, item=ON_SALE).text
    assert on_sale == (
        f"{ON_SALE.brand.upper()} New York {round(ON_SALE.sale_price)}.0 {ON_SALE.price:.2f} -{ON_SALE.discount_pct}%"
    )
    assert render(t, user={"city": "paris"}, item=FULL_PRICE).text.endswith(" full")


def test_an_item_dict_works_and_gets_its_sale_price():
    t = template("{{ item.title }} at {{ item.sale_price | money }}{% if item.discount_pct %} on sale{% endif %}")
    assert render(t, item={"title": "Lamp", "price": 50.0, "discount_pct": 20}).text == "Lamp at 40.00 on sale"
    assert render(t, item={"title": "Lamp", "price": 50.0}).text == "Lamp at 50.00"


def test_discount_pct_none_renders_empty_and_is_falsy():
    t = template("{% if discount_pct %}{{ discount_pct }}% off{% else %}no offer{% endif %}/{{ discount_pct }}")
    assert render(t, discount_pct=None).text == "no offer/"
    assert render(t, discount_pct=15).text == "15% off/15"


# -- what is refused, and how it is said ------------------------------------------


@pytest.mark.parametrize(
    "body, says",
    [
        ("{{ ''.__class__ }}", "`__class__` is not allowed"),
        ("{{ item.__class__.__mro__ }}", "`__class__` is not allowed"),
        ("{{ cycler.__init__.__globals__ }}", "`__init__` is not allowed"),
        ("{{ item.title.__class__ }}", "`__class__` is not allowed"),
        ("{{ self }}", "`self` is not allowed"),
        ("{{ lipsum }}", "`lipsum` is not allowed"),
        ("{{ range(10) }}", "calls like `range(...)` are not allowed"),
        ("{% for x in range(3) %}{{ x }}{% endfor %}", "`{% for %}` loops are not allowed"),
        ("{% set x = 1 %}", "`{% set %}` is not allowed"),
        ("{{ item['title'] }}", "indexing like `item['title']` is not allowed"),
        ("{{ user.first_name.upper() }}", "calls like `user.first_name.upper(...)` are not allowed"),
        ("{% include 'x' %}", "`{% include %}` is not allowed"),
        ("{% import 'x' as y %}", "`{% import %}` is not allowed"),
        ("{% extends 'x' %}", "`{% extends %}` is not allowed"),
        ("{% macro m() %}x{% endmacro %}", "macros are not allowed"),
        ("{{ 7 * 7 }}", "arithmetic is not allowed"),
        ("{{ item.attributes }}", "item.attributes is not an item field"),
        ("{{ ai.tagline }}", "ai.tagline is not a slot"),
        ("{{ user }}", "`user` is not allowed"),
        ("{{ item.title.upper }}", "`item.title.upper` is not allowed"),
        ("{{ user.name | safe }}", "the filter `safe` is not allowed"),
        ("{{ user.name | default(user.other) }}", "arguments of `| default` must be plain values"),
        ("{{ user.name | upper(1) }}", "`| upper` takes no arguments"),
        ("{% if user.name is defined %}x{% endif %}", "tests like `is defined` are not allowed"),
        ("{% autoescape false %}x{% endautoescape %}", "`{% autoescape %}` is not allowed"),
    ],
)
def test_injection_and_unknown_syntax_are_refused_by_name(body, says):
    with pytest.raises(TemplateError) as exc:
        validate_body(body)
    assert says in exc.value.reason
    assert exc.value.reason.startswith("line 1: ")


def test_refusal_names_the_line():
    with pytest.raises(TemplateError, match=r"^line 3: `self` is not allowed"):
        validate_body("Hello\n{{ user.name }}\n{{ self }}")


def test_syntax_error_says_the_line():
    with pytest.raises(TemplateError, match=r"^syntax error on line 2: "):
        validate_body("Hello\n{{ user. }}")
    with pytest.raises(TemplateError, match=r"^syntax error on line 1: "):
        validate_body("{% if user.a %}never closed")


def test_body_length_and_nesting_are_limited():
    with pytest.raises(TemplateError, match=f"limit is {MAX_BODY_CHARS}"):
        validate_body("x" * (MAX_BODY_CHARS + 1))
    for deep in ("{{ " + "(" * 1990 + "1" + ")" * 1990 + " }}", "{{ " + "not " * 995 + "discount_pct }}"):
        with pytest.raises(TemplateError, match="nests too deeply"):
            validate_body(deep)


def test_a_used_ai_slot_needs_default_copy():
    with pytest.raises(TemplateError, match=r"the body uses ai.cta: add default_copy for 'cta'"):
        new_template("t1", "cta", "{{ ai.cta }}")
    with pytest.raises(TemplateError, match="not a slot"):
        new_template("t1", "cta", "{{ ai.cta }}", default_copy={"cta": "Go", "tagline": "x"})
    with pytest.raises(TemplateError, match="1-28 characters"):
        new_template("t1", "cta", "{{ ai.cta }}", default_copy={"cta": "x" * 29})


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"template_id": "Bad Id"}, "template_id 'Bad Id' must be"),
        ({"version": 0}, "version must be"),
        ({"slot": "banner"}, "slot 'banner' is not one of"),
        ({"tone": "sarcastic"}, "tone 'sarcastic' is not one of"),
        ({"created": "yesterday"}, "not an ISO 8601 time"),
    ],
)
def test_template_fields_are_validated(changes, says):
    fields = {"template_id": "t1", "version": 1, "slot": "cta", "body": "Go", **changes}
    with pytest.raises(TemplateError, match=says):
        Template(**fields)


# -- rendering: context, strictness, fallbacks --------------------------------------


def test_missing_user_field_is_a_clear_error():
    t = template("Hi {{ user.first_name }}")
    with pytest.raises(TemplateError, match=r"^the template needs user.first_name: pass it in context$"):
        render(t, user={"last_name": "Lee"})
    with pytest.raises(TemplateError, match="needs user.first_name"):
        render(t, user={"first_name": None})


def test_default_filter_makes_a_user_field_optional():
    t = template("Hi {{ user.first_name | default('there') }}")
    assert t.fields.user == () and t.fields.optional_user == ("first_name",)
    assert render(t, user={}).text == "Hi there"
    assert render(t, user={"first_name": "Bo"}).text == "Hi Bo"
    # Used bare anywhere else, the field is needed after all.
    assert validate_body("{{ user.a | default('x') }} {{ user.a }}").user == ("a",)


def test_missing_item_or_item_field_is_a_clear_error():
    t = template("{{ item.title }}")
    with pytest.raises(TemplateError, match=r"needs an item \(it uses item.title\)"):
        render(t)
    with pytest.raises(TemplateError, match="needs item.title: the item has none"):
        render(t, item={"brand": "Acme"})
    assert render(template("{{ item.title | default('our pick') }}")).text == "our pick"


def test_context_values_are_data_not_code():
    t = template("{{ user.first_name }} / {{ ai.headline }}", default_copy={"headline": "x"})
    sneaky = "{{ 7*7 }}{% for x in range(3) %}{{ ''.__class__ }}{% endfor %}"
    result = render(t, user={"first_name": sneaky}, ai={"headline": "{{ lipsum }}"})
    assert result.text == f"{sneaky} / {{{{ lipsum }}}}"


def test_missing_or_blank_ai_slot_falls_back_and_is_recorded():
    t = template(
        "{{ ai.headline }}: {{ ai.description }}",
        default_copy={"headline": "Picked for you", "description": "A favourite."},
    )
    result = render(t, ai={"headline": "Hello", "description": "  "})
    assert result.text == "Hello: A favourite."
    assert result.used_defaults == ("description",)
    assert render(t, ai=None).used_defaults == ("headline", "description")


def test_a_failing_filter_is_a_template_error():
    t = template("{{ user.name | round }}")
    with pytest.raises(TemplateError, match="could not render"):
        render(t, user={"name": "Ann"})


def test_same_id_and_version_with_another_body_is_not_served_stale():
    a = template("A {{ user.x }}")
    b = msgspec.structs.replace(a, body="B {{ user.x }}")
    assert render(a, user={"x": 1}).text == "A 1"
    assert render(b, user={"x": 1}).text == "B 1"


# -- versions and the wire -----------------------------------------------------------


def test_revise_bumps_the_version_and_leaves_the_original():
    t, _ = new_template(
        "promo",
        "headline",
        "{{ ai.headline }}",
        default_copy={"headline": "Hi"},
        segments=["bargain_hunter"],
        tone="urgent",
        created="2026-01-01T00:00:00Z",
    )
    t2 = revise(t, body="Now: {{ ai.headline }}", tone="playful")
    assert (t.version, t.body, t.tone, t.created) == (1, "{{ ai.headline }}", "urgent", "2026-01-01T00:00:00Z")
    assert (t2.version, t2.body, t2.tone, t2.created) == (2, "Now: {{ ai.headline }}", "playful", "")
    assert t2.segments == ("bargain_hunter",) and t2.template_id == "promo"
    assert revise(t2).version == 3
    with pytest.raises(TemplateError, match="is not allowed"):
        revise(t, body="{{ self }}")
    with pytest.raises(TemplateError, match="keeps template_id"):
        revise(t, version=7)
    with pytest.raises(TemplateError, match="no field 'colour'"):
        revise(t, colour="red")


def test_applies_to_segments_and_archive():
    t = template("x", segments=["vip"])
    assert t.applies_to("vip") and not t.applies_to("bargain_hunter")
    assert template("x").applies_to(None)
    assert not revise(t, archived=True).applies_to("vip")


def test_msgspec_round_trip_and_unknown_fields_rejected():
    t = template(
        "{{ ai.description }} {{ item.title }}",
        default_copy={"description": "Nice."},
        segments=["vip"],
        tone="premium",
        created="2026-03-01T10:00:00+00:00",
    )
    data = msgspec.json.encode(t)
    assert msgspec.json.decode(data, type=Template) == t
    raw = msgspec.json.decode(data)
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.json.decode(msgspec.json.encode({**raw, "colour": "red"}), type=Template)
    with pytest.raises(msgspec.ValidationError, match="`self` is not allowed"):
        msgspec.json.decode(msgspec.json.encode({**raw, "body": "{{ self }}"}), type=Template)
    result = render(t, item=ON_SALE)
    assert msgspec.json.decode(msgspec.json.encode(result), type=RenderResult) == result


# -- the built-in set -----------------------------------------------------------------


def test_default_templates_cover_every_slot_and_render():
    from engine.content.templates import SLOTS

    assert {t.slot for t in DEFAULT_TEMPLATES.values()} == set(SLOTS)
    for t in DEFAULT_TEMPLATES.values():
        assert t.template_id in DEFAULT_TEMPLATES and t.version == 1
        for item in (ON_SALE, FULL_PRICE):
            for user in ({}, {"first_name": "Ann"}):
                bare = render(t, user=user, item=item, ai=None, discount_pct=None)
                assert bare.text and set(bare.used_defaults) == set(t.fields.ai)
                filled = render(t, user=user, item=item, ai={s: f"AI {s}" for s in SLOTS}, discount_pct=25)
                assert filled.used_defaults == ()
                assert all(f"AI {s}" in filled.text for s in t.fields.ai)
    subject = DEFAULT_TEMPLATES["email-subject-named"]
    assert render(subject, user={}).text.startswith("Hi there")
    assert render(subject, user={"first_name": ""}).text.startswith("Hi there")
    description = render(DEFAULT_TEMPLATES["description-item"], item=ON_SALE).text
    assert ON_SALE.title in description and f"{ON_SALE.sale_price:.2f}" in description


# -- templates that validate but cannot render (issue 13) ----------------------------------------


@pytest.mark.parametrize("body, says", UNRENDERABLE)
def test_a_template_that_cannot_render_is_refused_when_made(body, says):
    with pytest.raises(TemplateError, match="cannot render") as refused:
        new_template("t1", "cta", body)
    assert says in refused.value.reason
    assert len(refused.value.reason) < 400  # one line, not a traceback


def test_a_revised_body_that_cannot_render_is_refused_and_other_changes_are_not_rechecked():
    t, _ = new_template("t1", "cta", "{{ ai.cta }}", default_copy={"cta": "Shop"})
    with pytest.raises(TemplateError, match="cannot render"):
        revise(t, body=UNRENDERABLE[0][0])
    assert revise(t, archived=True).archived


def test_a_template_that_renders_for_some_values_is_saved():
    # Text or a number in user.age: a number renders, so the template is fine for some callers.
    t, _ = new_template("t1", "cta", "{% if user.age > 30 %}mature{% else %}young{% endif %} {{ user.score | round }}")
    assert render(t, user={"age": 40, "score": 2.4}).text == "mature 2.0"


def test_a_render_error_of_any_kind_is_a_render_failure_with_the_reason():
    from engine.content.templates import RenderFailed

    t, _ = new_template("t1", "cta", "{{ user.age | money }}")
    with pytest.raises(RenderFailed, match=r"^template t1 v1 could not render: ValueError") as failed:
        render(t, user={"age": "forty"})
    assert isinstance(failed.value, TemplateError)
    # A body stored before save-time checks (built directly): the compile error is a RenderFailed, not a SyntaxError.
    deep = Template("deep", 1, "cta", UNRENDERABLE[0][0])
    with pytest.raises(RenderFailed, match="nests too deeply"):
        render(deep)
    overflow = Template("big", 1, "cta", UNRENDERABLE[1][0])
    with pytest.raises(RenderFailed, match="OverflowError"):
        render(overflow)


def test_a_failed_compile_is_compiled_once(monkeypatch):
    from engine.content import templates

    compiles = []
    real = templates._ENV.from_string
    monkeypatch.setattr(templates._ENV, "from_string", lambda body: compiles.append(body) or real(body))
    body = "{% if 1 %}" * 99 + "y" + "{% endif %}" * 99  # a body no other test compiled
    deep = Template("deep", 1, "cta", body)
    for _ in range(5):
        with pytest.raises(TemplateError):
            render(deep)
    assert compiles == [body]
