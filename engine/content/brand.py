"""Brand rules: what generated copy may and must say, per brand.

A brand's `BrandRules` name banned words, forbidden and required phrases,
length limits per slot and the vocabulary of each tone. `check` tests one text
for one slot (and tone) and returns the `Violation`s, each with a one-line
reason; an empty list means the text may be shown. When generated copy breaks
a rule the API serves the template's default copy and says why.

How each rule matches (all case-insensitive; a typographic apostrophe counts as ``'``):

- ``banned_words``: whole words (or whole runs of words, any spacing between
  them). ``"cheap"`` catches "Cheap!" and "cheap-looking" but not "cheapest"
  or "cheapskate": list every form the brand means.
- ``forbidden_phrases``: substrings, after runs of white space are made one
  space. ``"act now or"`` catches "ACT NOW  OR lose out" and "react now or".
- ``required_phrases``: per slot, substrings as above, any-of: a text for that
  slot must contain at least one of the slot's phrases. Slots left out have no
  requirement.
- ``max_chars``: per slot, the most characters (``len(text)``). Slots left out
  keep `MAX_CHARS`.
- ``tone_words``: per tone, words and word pairs of which a text must use one
  when a tone is asked for (and ``require_tone_words`` is on). Words are read
  as `models.train.corpus` reads them, so with the default vocabulary a text passes
  exactly when ``models.train.corpus.obeys_tone`` says it obeys. Tones left out keep
  `TONE_WORDS`.

`SLOTS`, `TONES`, `MAX_CHARS` and `TONE_WORDS` are the values of
``models.train.corpus`` (engine/ may not import models/; a test keeps them equal).

Examples
--------
>>> check(DEFAULT_RULES, "Hurry: 30% off ends tonight", slot="headline", tone="urgent")
[]
>>> [v.detail for v in check(DEFAULT_RULES, "A miracle of a price", slot="headline", tone="urgent")]
["uses the banned word 'miracle'", "has no word of the urgent tone, such as 'act', 'before' or 'don't miss'"]
>>> rules = load_brand_rules(b'{"name": "acme", "banned_words": ["cheap"], "required_phrases": {"cta": ["shop"]}}')
>>> for violation in check(rules, "Buy cheap now", slot="cta"):
...     print(violation.rule, "-", violation.detail)
banned_word - uses the banned word 'cheap'
required_phrase - lacks a phrase required in a call to action: needs 'shop'
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

import msgspec

Slot = Literal["headline", "description", "cta", "email_subject"]
Tone = Literal["urgent", "playful", "premium", "informative"]
#: Where copy goes and how it sounds: the one definition the templates, the brand
#: rules and the copy model (models/train/corpus.py) share.
SLOTS: tuple[str, ...] = get_args(Slot)
TONES: tuple[str, ...] = get_args(Tone)
#: Longest text each slot may hold by default, in characters.
MAX_CHARS: dict[str, int] = {"headline": 60, "description": 220, "cta": 28, "email_subject": 70}
#: Default words that mark each tone (lower case; an entry is one word or two).
TONE_WORDS: dict[str, frozenset[str]] = {
    "urgent": frozenset(
        {
            "now",
            "today",
            "tonight",
            "hurry",
            "last",
            "ends",
            "ending",
            "fast",
            "quick",
            "quickly",
            "final",
            "soon",
            "gone",
            "before",
            "act",
            "don't miss",
            "limited time",
        }
    ),
    "playful": frozenset(
        {
            "treat",
            "treats",
            "yay",
            "fun",
            "hello",
            "psst",
            "hey",
            "ooh",
            "oh",
            "love",
            "happy",
            "smile",
            "woohoo",
            "delight",
            "yes please",
        }
    ),
    "premium": frozenset(
        {
            "crafted",
            "exceptional",
            "exceptionally",
            "refined",
            "timeless",
            "finest",
            "elegant",
            "elegance",
            "luxurious",
            "luxury",
            "impeccable",
            "signature",
            "understated",
            "superb",
            "sophisticated",
            "distinguished",
        }
    ),
    "informative": frozenset(
        {
            "features",
            "feature",
            "made",
            "includes",
            "included",
            "including",
            "details",
            "detail",
            "available",
            "comes",
            "specs",
            "specifications",
            "designed",
            "overview",
            "information",
        }
    ),
}

Rule = Literal["banned_word", "forbidden_phrase", "required_phrase", "too_long", "empty", "tone"]
#: The kinds of `Violation`, in the order `check` reports them (``empty`` alone).
RULES: tuple[str, ...] = get_args(Rule)

# A word as models.train.corpus reads it (letters and digits, joined by an apostrophe or hyphen).
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_MAX_ENTRY_CHARS = 200
_IN_SLOT = {
    "headline": "a headline",
    "description": "a description",
    "cta": "a call to action",
    "email_subject": "an email subject",
}
Entry = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_ENTRY_CHARS)]


def _fold(text: str) -> str:
    """Lower case, with a typographic apostrophe read as '."""
    return text.replace("\u2019", "'").lower()


class InvalidBrandRules(ValueError):
    """Brand rules that cannot be used; the message names the field and what to do."""


class Violation(msgspec.Struct, frozen=True):
    """One broken rule: which (`RULES`) and why, in words fit for an explanation."""

    rule: Rule
    detail: str


class BrandRules(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One brand's rules for generated copy (see the module for how each matches).

    Built in code or by `load_brand_rules` from JSON; either way the values are
    checked and normalised here: lists become tuples, and ``max_chars`` and
    ``tone_words`` get the defaults for the slots and tones they leave out.
    Treat the dicts as read-only.

    >>> BrandRules(name="acme", max_chars={"cta": 20}).max_chars
    {'headline': 60, 'description': 220, 'cta': 20, 'email_subject': 70}
    >>> BrandRules(name="acme", max_chars={"footer": 20})
    Traceback (most recent call last):
    ...
    ValueError: max_chars has an unknown slot 'footer'; use one of headline, description, cta, email_subject
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    banned_words: tuple[Entry, ...] = ()
    forbidden_phrases: tuple[Entry, ...] = ()
    #: Per slot, phrases of which a text must contain at least one.
    required_phrases: dict[str, tuple[Entry, ...]] = msgspec.field(default_factory=dict)
    max_chars: dict[str, int] = msgspec.field(default_factory=lambda: dict(MAX_CHARS))
    tone_words: dict[str, frozenset[Entry]] = msgspec.field(default_factory=lambda: dict(TONE_WORDS))
    require_tone_words: bool = True

    def __post_init__(self) -> None:
        set_ = msgspec.structs.force_setattr
        set_(self, "banned_words", _entries("banned_words", self.banned_words, tuple))
        set_(self, "forbidden_phrases", _entries("forbidden_phrases", self.forbidden_phrases, tuple))
        required = {}
        for slot, phrases in _known_keys("required_phrases", self.required_phrases, SLOTS, "slot").items():
            field = f"required_phrases.{slot}"
            required[slot] = _entries(field, phrases, tuple)
            if not required[slot]:
                raise ValueError(f"{field} is empty: give at least one phrase (any one must do) or leave {slot} out")
        set_(self, "required_phrases", required)
        max_chars = dict(MAX_CHARS)
        for slot, limit in _known_keys("max_chars", self.max_chars, SLOTS, "slot").items():
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise ValueError(f"max_chars.{slot} must be a whole number of characters of at least 1, got {limit!r}")
            max_chars[slot] = limit
        set_(self, "max_chars", max_chars)
        tone_words = dict(TONE_WORDS)
        for tone, words in _known_keys("tone_words", self.tone_words, TONES, "tone").items():
            field = f"tone_words.{tone}"
            tone_words[tone] = _entries(field, words, frozenset)
            if not tone_words[tone]:
                raise ValueError(f"{field} is empty: give at least one word, or set require_tone_words to false")
            for word in tone_words[tone]:
                if not _WORD.search(_fold(word)):
                    raise ValueError(f"{field} has {word!r}, which has no letters or digits; remove it")
        set_(self, "tone_words", tone_words)


def _entries(field: str, values, kind):
    """``values`` as a ``kind`` (tuple or frozenset) of non-blank strings, or a ValueError naming ``field``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, set, frozenset)):
        raise ValueError(f"{field} must be a list of strings, not {type(values).__name__}")
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"{field} must hold only strings, not {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{field} has a blank entry; remove it")
        if len(value) > _MAX_ENTRY_CHARS:
            raise ValueError(f"{field} has an entry of {len(value)} characters, over the {_MAX_ENTRY_CHARS} allowed")
    return kind(values)


def _known_keys(field: str, mapping, known: tuple[str, ...], kind: str) -> dict:
    if not isinstance(mapping, dict):
        raise ValueError(f"{field} must be an object keyed by {kind}, not {type(mapping).__name__}")
    for key in mapping:
        if key not in known:
            raise ValueError(f"{field} has an unknown {kind} {key!r}; use one of {', '.join(known)}")
    return mapping


#: The demo brand: no hype, no pressure; default lengths and tone vocabulary.
DEFAULT_RULES = BrandRules(
    name="demo",
    banned_words=("guaranteed", "guarantee", "free money", "miracle", "risk-free"),
    forbidden_phrases=("act now or", "you won't believe"),
)


def check(rules: BrandRules, text: str, *, slot: str, tone: str | None = None) -> list[Violation]:
    """The rules ``text`` breaks as copy for ``slot`` (in ``tone``, if given); [] if none.

    An empty or blank text is reported as ``empty`` alone. An unknown slot or
    tone is a ValueError: it is a caller's mistake, not the copy's.

    >>> check(DEFAULT_RULES, "x" * 29, slot="cta")
    [Violation(rule='too_long', detail='is 29 characters, over the 28 allowed in a call to action')]
    >>> check(DEFAULT_RULES, "  ", slot="cta", tone="playful")
    [Violation(rule='empty', detail='is empty')]
    """
    if slot not in SLOTS:
        raise ValueError(f"unknown slot {slot!r}; use one of {', '.join(SLOTS)}")
    if tone is not None and tone not in TONES:
        raise ValueError(f"unknown tone {tone!r}; use one of {', '.join(TONES)}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if not text.strip():
        return [Violation("empty", "is empty")]
    compiled = _compiled(rules)
    folded = _fold(text)
    spaced = " ".join(folded.split())
    out = []
    limit = compiled.max_chars[slot]
    if len(text) > limit:
        out.append(Violation("too_long", f"is {len(text)} characters, over the {limit} allowed in {_IN_SLOT[slot]}"))
    if compiled.banned is not None:
        seen = set()
        for match in compiled.banned.finditer(folded):
            word = " ".join(match.group().split())
            if word not in seen:
                seen.add(word)
                out.append(Violation("banned_word", f"uses the banned word '{word}'"))
    for phrase in compiled.forbidden:
        if phrase in spaced:
            out.append(Violation("forbidden_phrase", f"contains the forbidden phrase '{phrase}'"))
    required = compiled.required.get(slot)
    if required and not any(phrase in spaced for phrase in required):
        needs = _quoted(required)
        out.append(Violation("required_phrase", f"lacks a phrase required in {_IN_SLOT[slot]}: needs {needs}"))
    if tone is not None and compiled.require_tone_words:
        vocabulary = compiled.tone_words[tone]
        if vocabulary.isdisjoint(_tokens(folded, compiled.tone_span)):
            examples = _quoted(sorted(vocabulary)[:3])
            out.append(Violation("tone", f"has no word of the {tone} tone, such as {examples}"))
    return out


def load_brand_rules(data: bytes | str) -> BrandRules:
    """Brand rules from JSON, or `InvalidBrandRules` naming the field at fault.

    >>> load_brand_rules(b'{"name": "acme", "max_chars": {"cta": -1}}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    engine.content.brand.InvalidBrandRules: invalid brand rules: max_chars.cta must be a whole number ... at least 1, got -1
    """
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        reason = str(exc)
        if reason.startswith("Object contains unknown field"):
            reason += f"; the fields are {', '.join(BrandRules.__struct_fields__)}"
        raise InvalidBrandRules(f"invalid brand rules: {reason}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidBrandRules(f"invalid brand rules: not JSON ({exc})") from None


_decoder = msgspec.json.Decoder(BrandRules)
_encoder = msgspec.json.Encoder()


class _Compiled:
    """The matchers of one `BrandRules`, built once (see `_compiled`)."""

    __slots__ = ("banned", "forbidden", "required", "max_chars", "tone_words", "tone_span", "require_tone_words")

    def __init__(self, rules: BrandRules):
        words = sorted({" ".join(_fold(w).split()) for w in rules.banned_words}, key=len, reverse=True)
        # Longest first, so "free money" wins over "free" where both are banned.
        self.banned = re.compile("|".join(map(_whole, words))) if words else None
        self.forbidden = _phrases(rules.forbidden_phrases)
        self.required = {slot: _phrases(phrases) for slot, phrases in rules.required_phrases.items()}
        self.max_chars = dict(rules.max_chars)
        self.tone_words = {
            tone: frozenset(" ".join(_WORD.findall(_fold(w))) for w in words)
            for tone, words in rules.tone_words.items()
        }
        self.tone_span = max(w.count(" ") + 1 for words in self.tone_words.values() for w in words)
        self.require_tone_words = rules.require_tone_words


# Keyed by the rules' JSON, so equal rules share matchers and a changed dict is not served stale.
_cache: dict[bytes, _Compiled] = {}
_CACHE_SIZE = 64


def _compiled(rules: BrandRules) -> _Compiled:
    key = _encoder.encode(rules)
    compiled = _cache.get(key)
    if compiled is None:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()  # brands are few; a full cache means rules built per call
        compiled = _cache[key] = _Compiled(rules)
    return compiled


def _whole(words: str) -> str:
    """A pattern for ``words`` as whole words: no word character may touch either end."""
    pattern = r"\s+".join(map(re.escape, words.split(" ")))
    if re.match(r"\w", words):
        pattern = r"(?<!\w)" + pattern
    if re.search(r"\w$", words):
        pattern += r"(?!\w)"
    return pattern


def _phrases(phrases) -> tuple[str, ...]:
    return tuple(dict.fromkeys(" ".join(_fold(p).split()) for p in phrases))


def _tokens(folded: str, span: int) -> set[str]:
    """Words of ``folded`` and runs of up to ``span`` adjacent words, as models.train.corpus reads them."""
    words = _WORD.findall(folded)
    tokens = set(words)
    for n in range(2, span + 1):
        tokens.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return tokens


def _quoted(items, last: str = "or") -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``."""
    quoted = [f"'{item}'" for item in items]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} {last} {quoted[-1]}"
