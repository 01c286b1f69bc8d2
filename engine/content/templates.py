"""Content templates: versioned text with placeholders, rendered in a sandbox.

A body is Jinja2 restricted to a small language, checked when it is saved:
placeholders ``user.<field>`` (the API caller's context), ``item.<field>`` (of
`ITEM_FIELDS`), ``ai.<slot>`` (the generator's copy) and ``discount_pct``; the
filters of `FILTERS` with plain values as arguments; ``{% if %}`` over those.
Anything else (calls, indexing, private attributes, loops, ``set``, includes,
macros, globals) is refused with a `TemplateError` naming it. Rendering still
runs in a `SandboxedEnvironment` with `StrictUndefined` and no globals, as a
second wall. Context values are data, never evaluated. Output is plain text (no
HTML escaping: that is the channel's job); ``None`` renders as empty text.

A body the language allows may still not render (99 nested ifs pass Jinja but not
Python's compiler; ``| money`` overflows on a 400-digit number): `new_template` and
a `revise` of the body render it with sample values first (`check_renders`). At
request time any render error is a `RenderFailed`, never a bare exception, and
compiled bodies are cached per body, failed compiles too.

Examples
--------
>>> body = "Hi {{ user.first_name | default('there') }}: {{ ai.email_subject }}"
>>> t, fields = new_template("hello", "email_subject", body, default_copy={"email_subject": "picks for you"})
>>> fields.optional_user, fields.ai
(('first_name',), ('email_subject',))
>>> render(t, user={"first_name": "Ann"}, ai={"email_subject": "{{ 7*7 }} deals"}).text
'Hi Ann: {{ 7*7 }} deals'
>>> render(t, user={}).text
'Hi there: picks for you'
>>> validate_body("{{ item.__class__ }}")
Traceback (most recent call last):
...
engine.content.templates.TemplateError: line 1: `__class__` is not allowed: names starting with an underscore are private
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any

import jinja2
import msgspec
from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import SandboxedEnvironment

from engine.content.brand import MAX_CHARS, SLOTS, TONES, Slot, Tone  # noqa: F401 - re-exported
from engine.content.catalog import Item
from engine.features.events import Base

#: Item fields a template may show.
ITEM_FIELDS: tuple[str, ...] = ("title", "brand", "category", "price", "sale_price", "discount_pct")
#: Filters a template may use, with the keyword arguments each accepts (positional ones in order).
FILTERS: dict[str, tuple[str, ...]] = {
    "upper": (),
    "lower": (),
    "title": (),
    "capitalize": (),
    "money": (),
    "trim": ("chars",),
    "round": ("precision", "method"),
    "default": ("default_value", "boolean"),
}
MAX_BODY_CHARS = 4000

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_PLACEHOLDERS = "a placeholder is user.<field>, item.<field>, ai.<slot> or discount_pct"
# Expression and statement nodes the small language is made of.
_ALLOWED = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.Const,
    nodes.Not,
    nodes.And,
    nodes.Or,
    nodes.Concat,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
)
_COMPARISONS = frozenset({"eq", "ne", "gt", "gteq", "lt", "lteq"})
_REFUSED: dict[type, str] = {
    nodes.For: "`{% for %}` loops are",
    nodes.Assign: "`{% set %}` is",
    nodes.AssignBlock: "`{% set %}` is",
    nodes.Include: "`{% include %}` is",
    nodes.Import: "`{% import %}` is",
    nodes.FromImport: "`{% import %}` is",
    nodes.Extends: "`{% extends %}` is",
    nodes.Block: "`{% block %}` is",
    nodes.Macro: "macros are",
    nodes.CallBlock: "`{% call %}` is",
    nodes.FilterBlock: "`{% filter %}` blocks are",
    nodes.With: "`{% with %}` is",
    nodes.Scope: "`{% autoescape %}` is",
    nodes.ScopedEvalContextModifier: "`{% autoescape %}` is",
    nodes.Getitem: "indexing like `item['title']` is",
    nodes.Test: "tests like `is defined` are",
    nodes.List: "lists are",
    nodes.Tuple: "tuples are",
    nodes.Dict: "dicts are",
    nodes.BinExpr: "arithmetic is",
    nodes.UnaryExpr: "arithmetic is",
}
_HINTS = {nodes.Getitem: ": write item.title", nodes.Test: ": use `| default(...)` for optional fields"}


class TemplateError(ValueError):
    """A template that cannot be saved or rendered; `reason` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RenderFailed(TemplateError):
    """A valid template whose render raised (a filter's error, a compile limit): the template's fault.

    Unlike a plain `TemplateError` (context or an item the request lacks, the
    caller's to fix), the request can still be served with another template.
    """

    def __init__(self, template_id: str, version: int, failure: str):
        super().__init__(f"template {template_id} v{version} could not render: {failure}")
        #: What went wrong, without the template's name.
        self.failure = failure


class TemplateFields(Base, frozen=True):
    """What a template body uses: the context a render needs.

    ``user`` and ``item`` fields are needed; ``optional_*`` ones are used only
    through ``| default(...)``. Every ``ai`` slot listed has default copy.
    """

    user: tuple[str, ...] = ()
    optional_user: tuple[str, ...] = ()
    item: tuple[str, ...] = ()
    optional_item: tuple[str, ...] = ()
    ai: tuple[str, ...] = ()
    discount_pct: bool = False


def _refuse(node: nodes.Node, what: str) -> TemplateError:
    # Some wrapper nodes ({% autoescape %}'s Scope) carry no line; their first child does.
    line = node.lineno or next((n.lineno for n in node.find_all(nodes.Node) if n.lineno), "?")
    return TemplateError(f"line {line}: {what}")


def _dotted(node: nodes.Node) -> str:
    if isinstance(node, nodes.Getattr):
        return f"{_dotted(node.node)}.{node.attr}"
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Call):
        return f"{_dotted(node.node)}(...)"
    return repr(node.value) if isinstance(node, nodes.Const) else "(...)"


def _reference(node: nodes.Node) -> tuple[str, str | None]:
    """The (root, field) a Name/Getattr chain names, or a `TemplateError` saying what is wrong."""
    attrs, root = [], node
    while isinstance(root, nodes.Getattr):
        attrs.insert(0, root.attr)
        root = root.node
    for attr in attrs:
        if attr.startswith("_"):
            raise _refuse(node, f"`{attr}` is not allowed: names starting with an underscore are private")
    if not isinstance(root, nodes.Name):
        _check(root, [])  # says what the root is (a call, indexing, ...) when that is the problem
        raise _refuse(node, f"`{_dotted(node)}` is not allowed: {_PLACEHOLDERS}")
    name = root.name
    if name == "discount_pct" and not attrs:
        return name, None
    if name in ("user", "item", "ai") and len(attrs) == 1:
        if name == "item" and attrs[0] not in ITEM_FIELDS:
            raise _refuse(node, f"item.{attrs[0]} is not an item field: use one of {', '.join(ITEM_FIELDS)}")
        if name == "ai" and attrs[0] not in SLOTS:
            raise _refuse(node, f"ai.{attrs[0]} is not a slot: use one of {', '.join(SLOTS)}")
        return name, attrs[0]
    raise _refuse(node, f"`{_dotted(node)}` is not allowed: {_PLACEHOLDERS}")


def _check_filter(node: nodes.Filter) -> None:
    if node.name not in FILTERS:
        raise _refuse(node, f"the filter `{node.name}` is not allowed: use one of {', '.join(sorted(FILTERS))}")
    params = FILTERS[node.name]
    if node.dyn_args or node.dyn_kwargs or len(node.args) + len(node.kwargs) > len(params):
        takes = f"at most {len(params)} arguments ({', '.join(params)})" if params else "no arguments"
        raise _refuse(node, f"`| {node.name}` takes {takes}")
    for kw in node.kwargs:
        if kw.key not in params:
            raise _refuse(node, f"`| {node.name}` has no argument `{kw.key}`: it takes {', '.join(params) or 'none'}")
    for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
        if not isinstance(arg, nodes.Const):
            raise _refuse(node, f"arguments of `| {node.name}` must be plain values like 'there' or 2")


def _check(node: nodes.Node, refs: list[tuple[str, str | None, bool]], optional: bool = False) -> None:
    """Walk the parsed body, refusing what the small language lacks and collecting references."""
    if isinstance(node, (nodes.Name, nodes.Getattr)):
        refs.append((*_reference(node), optional))
    elif isinstance(node, nodes.Filter):
        _check_filter(node)
        # `x | default(...)` is the one way a missing field does not fail the render.
        _check(node.node, refs, optional=node.name == "default")
    elif isinstance(node, nodes.Call):
        raise _refuse(node, f"calls like `{_dotted(node)}` are not allowed: use a filter such as `| upper`")
    elif isinstance(node, _ALLOWED):
        for op in node.ops if isinstance(node, nodes.Compare) else ():
            if op.op not in _COMPARISONS:
                raise _refuse(node, f"the comparison `{op.op}` is not allowed: use ==, !=, <, <=, > or >=")
        if isinstance(node, nodes.CondExpr) and node.expr2 is None:
            raise _refuse(node, "`x if y` needs an `else`")
        for child in node.iter_child_nodes():
            _check(child, refs)
    else:
        what = next((v for k, v in _REFUSED.items() if isinstance(node, k)), f"`{type(node).__name__}` is")
        raise _refuse(node, f"{what} not allowed in a template{_HINTS.get(type(node), '')}")


@lru_cache(maxsize=1024)
def validate_body(body: str) -> TemplateFields:
    """Check a template body against the small language; return the fields it uses.

    Raises `TemplateError` naming the first thing not allowed, or the line of a
    syntax error.

    Examples
    --------
    >>> validate_body("{{ item.title | upper }}{% if discount_pct %} -{{ discount_pct }}%{% endif %}")
    TemplateFields(user=(), optional_user=(), item=('title',), optional_item=(), ai=(), discount_pct=True)
    >>> validate_body("{{ range(10) }}")
    Traceback (most recent call last):
    ...
    engine.content.templates.TemplateError: line 1: calls like `range(...)` are not allowed: use a filter such as `| upper`
    >>> validate_body("Hello\\n{{ user. }}")
    Traceback (most recent call last):
    ...
    engine.content.templates.TemplateError: syntax error on line 2: expected name or number
    """
    if len(body) > MAX_BODY_CHARS:
        raise TemplateError(f"the template body has {len(body)} characters; the limit is {MAX_BODY_CHARS}")
    refs: list[tuple[str, str | None, bool]] = []
    try:
        _check(_ENV.parse(body), refs)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"syntax error on line {exc.lineno}: {exc.message}") from None
    except RecursionError:  # the parser and the walk recurse per level of nesting
        raise TemplateError("the template nests too deeply: simplify it") from None

    needed = {(root, field) for root, field, optional in refs if not optional}
    every = {(root, field) for root, field, _ in refs}

    def names(root: str, among: set[tuple[str, str | None]]) -> tuple[str, ...]:
        return tuple(sorted(field for r, field in among if r == root))

    return TemplateFields(
        user=names("user", needed),
        optional_user=names("user", every - needed),
        item=names("item", needed),
        optional_item=names("item", every - needed),
        ai=tuple(slot for slot in SLOTS if ("ai", slot) in every),
        discount_pct=("discount_pct", None) in every,
    )


class Template(Base, frozen=True):
    """One version of a content template for one slot.

    ``segments`` are the segment labels or style keys it is meant for (empty:
    any); ``default_copy`` is the text each ``ai.<slot>`` falls back to when the
    generator gives none. Constructing or decoding one validates it.
    """

    template_id: str
    version: int
    slot: Slot
    body: str
    default_copy: dict[str, str] = {}
    segments: tuple[str, ...] = ()
    tone: Tone | None = None
    archived: bool = False
    created: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.template_id, str) or not _ID.fullmatch(self.template_id):
            raise TemplateError(
                f"template_id {self.template_id!r} must be 1-64 of a-z, 0-9, - and _, starting with a letter or digit"
            )
        if not isinstance(self.version, int) or self.version < 1:
            raise TemplateError(f"version must be a whole number >= 1, got {self.version!r}")
        for name, value, allowed in (("slot", self.slot, SLOTS), ("tone", self.tone or TONES[0], TONES)):
            if value not in allowed:
                raise TemplateError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.created:
            try:
                datetime.fromisoformat(self.created)
            except (TypeError, ValueError):
                raise TemplateError(f"created {self.created!r} is not an ISO 8601 time") from None
        msgspec.structs.force_setattr(self, "segments", tuple(self.segments))
        msgspec.structs.force_setattr(self, "default_copy", dict(self.default_copy))
        for slot, text in self.default_copy.items():
            if slot not in SLOTS:
                raise TemplateError(f"default_copy has {slot!r}, which is not a slot: use {', '.join(SLOTS)}")
            if not text.strip() or len(text) > MAX_CHARS[slot]:
                raise TemplateError(f"default copy for {slot} must be 1-{MAX_CHARS[slot]} characters")
        for slot in validate_body(self.body).ai:
            if slot not in self.default_copy:
                raise TemplateError(f"the body uses ai.{slot}: add default_copy for {slot!r}")

    @property
    def fields(self) -> TemplateFields:
        """What the body uses (cached per body)."""
        return validate_body(self.body)

    def applies_to(self, segment: str | None) -> bool:
        """Whether this template may serve a user of ``segment``: live and tagged for it (or for any)."""
        return not self.archived and (not self.segments or segment in self.segments)


def new_template(
    template_id: str,
    slot: str,
    body: str,
    *,
    default_copy: Mapping[str, str] | None = None,
    segments: tuple[str, ...] | list[str] = (),
    tone: str | None = None,
    created: str = "",
) -> tuple[Template, TemplateFields]:
    """Version 1 of a template, validated, with the fields its body uses."""
    template = Template(template_id, 1, slot, body, dict(default_copy or {}), tuple(segments), tone, created=created)
    check_renders(template)
    return template, template.fields


def revise(template: Template, **changes: Any) -> Template:
    """The next version of ``template`` with ``changes``; the given one is left as it was.

    ``created`` is cleared unless given (the new version was not created then). A new
    ``body`` must render (`check_renders`).

    >>> t, _ = new_template("cta-plain", "cta", "{{ ai.cta }}", default_copy={"cta": "Shop now"})
    >>> t2 = revise(t, default_copy={"cta": "Take a look"})
    >>> (t.version, t.default_copy["cta"]), (t2.version, t2.default_copy["cta"])
    ((1, 'Shop now'), (2, 'Take a look'))
    """
    if "template_id" in changes or "version" in changes:
        raise TemplateError("revise keeps template_id and bumps version itself: create a new template instead")
    unknown = set(changes) - set(template.__struct_fields__)
    if unknown:
        raise TemplateError(f"templates have no field {sorted(unknown)[0]!r}")
    revised = msgspec.structs.replace(template, version=template.version + 1, **{"created": "", **changes})
    if "body" in changes:  # the render check reads the body only: archiving a stale one must still work
        check_renders(revised)
    return revised


class RenderResult(Base, frozen=True):
    """Rendered text, the ai slots that fell back to default copy, and what the body used."""

    text: str
    used_defaults: tuple[str, ...]
    fields: TemplateFields
    template_id: str = ""
    version: int = 0


def _money(value: Any) -> str:
    return f"{float(value):.2f}"


_ENV = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, finalize=lambda value: "" if value is None else value
)
_ENV.globals.clear()  # no range, lipsum, cycler, joiner, namespace, dict
_ENV.tests.clear()
_ENV.filters = {name: _ENV.filters[name] for name in FILTERS if name != "money"} | {"money": _money}
_SPACES = re.compile(r"[ \t]{2,}")


def _failure(exc: BaseException) -> str:
    """One line on why compiling or rendering raised."""
    if isinstance(exc, (SyntaxError, RecursionError)):  # Python's limits: 100 indents, 20 nested blocks
        return f"it nests too deeply to compile ({exc.msg if isinstance(exc, SyntaxError) else exc}): simplify it"
    return f"{type(exc).__name__}: {exc}"[:200]


@lru_cache(maxsize=256)
def _compiled(body: str) -> jinja2.Template | str:
    """The compiled body, or why it does not compile: failures are cached too (a compile can take 40 ms)."""
    try:
        return _ENV.from_string(body)
    except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the template is at fault
        return _failure(exc)


def _item_values(item: Item | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, Item):
        return {name: getattr(item, name) for name in ITEM_FIELDS}
    values = {"discount_pct": None} | {name: item[name] for name in ITEM_FIELDS if item.get(name) is not None}
    if "sale_price" not in values and "price" in values:
        pct = values["discount_pct"] or 0
        values["sale_price"] = round(values["price"] * (100 - pct) / 100, 2)
    return values


def render(
    template: Template,
    *,
    user: Mapping[str, Any] | None = None,
    item: Item | Mapping[str, Any] | None = None,
    ai: Mapping[str, str] | None = None,
    discount_pct: int | None = None,
) -> RenderResult:
    """Render ``template`` for one request.

    ``user`` is the caller's context, ``item`` a catalog item or a dict of `ITEM_FIELDS`,
    ``ai`` the generator's text per slot: a slot it lacks or leaves blank takes the
    default copy (listed in ``used_defaults``). A needed field missing raises `TemplateError`;
    a body that does not compile, or whose render raises anything, raises `RenderFailed`.
    """
    fields = template.fields
    # Only the fields the body uses reach the sandbox: nothing else of the caller's context can matter.
    user_values = {k: v for k in fields.user + fields.optional_user if (v := (user or {}).get(k)) is not None}
    for name in fields.user:
        if name not in user_values:
            raise TemplateError(f"the template needs user.{name}: pass it in context")
    if fields.item and item is None:
        raise TemplateError(f"the template needs an item (it uses item.{fields.item[0]}): pass one")
    item_values = {} if item is None else _item_values(item)
    for name in fields.item:
        if name not in item_values:
            raise TemplateError(f"the template needs item.{name}: the item has none")
    ai = ai or {}
    used_defaults = tuple(slot for slot in fields.ai if not (ai.get(slot) or "").strip())
    ai_values = {slot: template.default_copy[slot] if slot in used_defaults else ai[slot] for slot in fields.ai}
    compiled = _compiled(template.body)  # by body: an edited copy that kept its id and version is not stale
    failure = compiled if isinstance(compiled, str) else None
    if failure is None:
        try:
            text = compiled.render(
                user=SimpleNamespace(**user_values),
                item=SimpleNamespace(**item_values),
                ai=SimpleNamespace(**ai_values),
                discount_pct=discount_pct,
            )
        except Exception as exc:  # noqa: BLE001 - any error of a render is the template's, never a crash
            failure = _failure(exc)
    if failure is not None:
        raise RenderFailed(template.template_id, template.version, failure)
    return RenderResult(_SPACES.sub(" ", text).strip(), used_defaults, fields, template.template_id, template.version)


#: What `check_renders` renders a body with: user fields as text, then as numbers (a caller may send
#: either), with an item on sale and one at full price (so both sides of `{% if discount_pct %}` run).
_SAMPLE_USER_VALUES: tuple[Any, ...] = ("Sample", 1)
_SAMPLE_ITEMS: tuple[dict[str, Any], ...] = (
    {"title": "Sample item", "brand": "Sample brand", "category": "sample", "price": 120.0, "discount_pct": 25},
    {"title": "Sample item", "brand": "Sample brand", "category": "sample", "price": 120.0},
)


def check_renders(template: Template) -> None:
    """Raise `TemplateError` unless ``template`` renders: what saving a template checks, beyond the language.

    The body is compiled, every constant expression evaluated (a branch no
    sample reaches still fails on ``{{ 1e400 | money }}``), then rendered with
    sample values: with each sample item it must render with user fields as
    text or as numbers. Cached per body.

    >>> check_renders(Template("big", 1, "cta", "{{ " + "9" * 400 + " | money }}"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.content.templates.TemplateError: the template cannot render on line 1: OverflowError: int too large ...
    """
    problem = _render_problem(template.body)
    if problem is not None:
        raise TemplateError(f"the template cannot render {problem}")


def _constant_failure(body: str) -> str | None:
    """Why a constant expression of ``body`` fails when evaluated (as Jinja's optimizer would), or None."""
    context = nodes.EvalContext(_ENV)
    for node in _ENV.parse(body).find_all(nodes.Expr):
        try:
            node.as_const(context)
        except nodes.Impossible as exc:
            cause = exc.__cause__
            while isinstance(cause, nodes.Impossible):  # not constant (a placeholder inside) unless a real error
                cause = cause.__cause__
            if cause is not None:
                return f"line {node.lineno}: {_failure(cause)}"
        except Exception as exc:  # noqa: BLE001 - a constant that cannot even be folded fails at render too
            return f"line {node.lineno}: {_failure(exc)}"
    return None


@lru_cache(maxsize=1024)
def _render_problem(body: str) -> str | None:
    """Why ``body`` cannot render, as the end of a sentence that starts "the template cannot render"."""
    fields = validate_body(body)
    compiled = _compiled(body)
    if isinstance(compiled, str):
        return f"because {compiled}"
    try:
        problem = _constant_failure(body)
    except RecursionError:
        return "because it nests too deeply: simplify it"
    if problem is not None:
        return f"on {problem}: fix that expression"
    sample = Template("sample", 1, "cta", body, {slot: "Sample copy" for slot in fields.ai})
    for item in _SAMPLE_ITEMS:
        failures = []
        for value in _SAMPLE_USER_VALUES:
            user = {name: value for name in fields.user + fields.optional_user}
            try:
                render(sample, user=user, item=item, discount_pct=item.get("discount_pct"))
                break
            except RenderFailed as exc:
                failures.append(exc.failure)
        else:
            on_sale = "on sale" if item.get("discount_pct") else "at full price"
            return (
                f"with sample values (user fields as text or as numbers, an item {on_sale}): {failures[0]}; "
                "fix the body so that it renders for values like these"
            )
    return None


#: Built-in templates, at least one per slot; every name here renders with a catalog item.
DEFAULT_TEMPLATES: dict[str, Template] = {
    t.template_id: t
    for t in (
        Template("headline-ai", 1, "headline", "{{ ai.headline }}", {"headline": "Picked for you"}),
        Template(
            "headline-offer",
            1,
            "headline",
            "{% if discount_pct %}{{ discount_pct }}% off: {% endif %}{{ ai.headline }}",
            {"headline": "Picked for you"},
        ),
        Template(
            "description-item",
            1,
            "description",
            "{{ ai.description }} {{ item.title }}: {% if item.discount_pct %}{{ item.sale_price | money }}, "
            "was {{ item.price | money }}.{% else %}{{ item.price | money }}.{% endif %}",
            {"description": "A favourite from our catalog."},
        ),
        Template("cta-ai", 1, "cta", "{{ ai.cta }}", {"cta": "Shop now"}),
        Template(
            "email-subject-named",
            1,
            "email_subject",
            "Hi {{ user.first_name | default('there', true) }}: {{ ai.email_subject }}",
            {"email_subject": "new picks for you"},
        ),
    )
}
