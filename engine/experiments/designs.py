"""What an experiment on content is: its arms, who is in it, what it measures, and who sees what.

An `ExperimentSpec` is what ``POST /v1/experiments`` stores. Two shapes:

- **A/B/n**: one ``slot`` and its ``arms``; each arm (a `Variant`) pins a
  template (and version), chooses generated or default copy, or asks for a copy
  model version. The control is ``control`` (the first arm when omitted).
- **Factorial** (multivariate): ``factors`` maps two or more slots to their
  levels (each a `Variant`). A user gets one level per factor, drawn
  independently, and the *cell* (``"headline=short|cta=bold"``) is what the
  counters and results see; `factor_effects` reads per-factor main effects and
  the interactions of each pair of factors off the cells.

A ``holdout`` share sees the slot's default content (default template, default
copy) in every slot of the experiment: the baseline against which "personalized
at all" is measured. ``segments`` (labels or ids) restricts the experiment to
those segments; other users get normal content and are not counted.

Assignment is `engine.experiments.assignment` (sticky weighted rendezvous hashing on the
pseudonymous user id and the experiment's salt); this module only maps a spec
to it.

Examples
--------
>>> spec = ExperimentSpec(id="hero-copy", slot="headline",
...                       arms=(Variant("default-copy", copy="default"), Variant("generated")), holdout=0.1)
>>> check_spec(spec).control_name, cells(spec)
('default-copy', ['default-copy', 'generated'])
>>> [variant_of(spec, f"user-{i}") for i in range(7)]
['generated', 'generated', 'generated', 'generated', 'generated', 'default-copy', 'default-copy']
>>> sum(variant_of(spec, f"user-{i}") == "holdout" for i in range(1000))
109
>>> content_for(spec, "generated", "headline")
Variant(name='generated', weight=1.0, template_id=None, template_version=None, copy='generated', model_version=None)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np
import scipy.stats as sps

from engine.content.brand import Slot
from engine.experiments.assignment import HOLDOUT, Allocation, Arm, Experiment, assign, assign_factorial
from engine.experiments.statistics import ArmStats, ExperimentReport, analyze, benjamini_hochberg, holm

ExperimentId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Lower-case letters, digits, '-' and '_' (at most 64)."
    ),
]
VariantName = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$", description="Letters, digits, '.', '-' and '_' (at most 48)."
    ),
]
Metric = Literal["click", "conversion"]
Guardrail = Literal["click", "conversion", "value"]
Status = Literal["draft", "running", "stopped"]
#: Separates factor levels in a factorial cell's name ("headline=short|cta=bold").
CELL_SEPARATOR = "|"
#: At most this many cells in a factorial experiment (as many as an A/B/n experiment's arms).
MAX_CELLS = 100
#: A variant (an arm's or a cell's name) travels in events, whose ``variant`` holds at most this many characters.
MAX_VARIANT_CHARS = 64
#: The smallest weight an open arm may have, absolute and as a share of the arms' total. Assignment
#: divides by the weight: at 5e-324 every score overflows to infinity and the first arm takes every
#: user, while the expected share said 0.5; under a millionth of the total an arm is measured by nobody.
MIN_WEIGHT = 1e-6
MIN_WEIGHT_SHARE = 1e-6


class Variant(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One arm (or one level of a factor): what the slot shows to its users.

    ``template_id`` (and ``template_version``: the latest when omitted) pins the
    template; ``copy="default"`` serves the template's default copy instead of
    generated copy; ``model_version`` names the copy model version to generate with.
    """

    name: VariantName
    weight: Annotated[float, msgspec.Meta(ge=0, le=1e6)] = 1.0
    template_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    template_version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    copy: Literal["generated", "default"] = "generated"
    model_version: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class ExperimentSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # Lists, not ``tuple[X, ...]``: Litestar documents a variadic tuple's items as ``oneOf [X, {}]``.
    id: ExperimentId
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    #: A/B/n: the slot and its arms.
    slot: Slot | None = None
    arms: Annotated[list[Variant], msgspec.Meta(max_length=100)] = []
    #: Factorial: slot -> its levels (two or more slots).
    factors: Annotated[
        dict[Slot, Annotated[list[Variant], msgspec.Meta(max_length=20)]], msgspec.Meta(max_length=4)
    ] = {}
    #: The control arm (A/B/n; default the first arm). Factorial controls are each factor's first level.
    control: VariantName | None = None
    holdout: Annotated[float, msgspec.Meta(ge=0, lt=1)] = 0.0
    #: Only users in these segments (labels or ids) enter; empty: everyone.
    segments: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(max_length=64)
    ] = []
    primary_metric: Metric = "conversion"
    guardrails: Annotated[list[Guardrail], msgspec.Meta(max_length=3)] = []
    #: "thompson": the arms' weights follow Thompson sampling on the primary metric (A/B/n only).
    allocation: Literal["fixed", "thompson"] = "fixed"
    #: Thompson: the least share any arm keeps.
    bandit_floor: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.05
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.05
    correction: Literal["holm", "bh"] = "holm"
    #: Seeds assignment (the id when empty): a new salt reshuffles every user.
    salt: Annotated[str, msgspec.Meta(max_length=64)] = ""
    status: Status = "draft"
    #: When the allocation (weights or holdout) last changed while running; set by the API. From
    #: then on users already exposed keep the arm of their first exposure (`kept_variant`).
    reallocated: str = ""
    created: str = ""
    started: str = ""
    stopped: str = ""

    @property
    def factorial(self) -> bool:
        return bool(self.factors)

    @property
    def control_name(self) -> str:
        """The control's variant name (a cell name for a factorial experiment)."""
        if self.factorial:
            return cell_name({slot: levels[0].name for slot, levels in self.factors.items()})
        return self.control or self.arms[0].name

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(self.factors) if self.factorial else (self.slot,)


def check_spec(spec: ExperimentSpec) -> ExperimentSpec:
    """``spec`` if it is a runnable design; otherwise a `ValueError` that says what to change."""
    if spec.factorial:
        if spec.slot is not None or spec.arms:
            raise ValueError("give either slot and arms (A/B/n) or factors (factorial), not both")
        if len(spec.factors) < 2:
            raise ValueError("a factorial experiment needs two or more slots in factors (one slot: use slot and arms)")
        for slot, levels in spec.factors.items():
            _check_variants(levels, f"factor {slot!r}")
            if len(levels) < 2:
                raise ValueError(f"factor {slot!r} needs at least 2 levels")
        if spec.control is not None:
            raise ValueError("a factorial experiment's control is each factor's first level: drop control")
        if spec.allocation == "thompson":
            raise ValueError("Thompson allocation is for A/B/n experiments (one slot), not factorial ones")
        n_cells = math.prod(len(levels) for levels in spec.factors.values())
        if n_cells > MAX_CELLS:
            raise ValueError(f"{n_cells} cells (the product of the factors' levels): at most {MAX_CELLS}")
        longest = max(cells(spec), key=len)
        if len(longest) > MAX_VARIANT_CHARS:
            raise ValueError(
                f"cell name {longest!r} is {len(longest)} characters; events carry at most "
                f"{MAX_VARIANT_CHARS}: shorten the level names"
            )
    else:
        if spec.slot is None or len(spec.arms) < 2:
            raise ValueError("an A/B/n experiment needs a slot and at least 2 arms (or factors for a factorial one)")
        _check_variants(spec.arms, "arms")
        names = [a.name for a in spec.arms]
        if spec.control is not None and spec.control not in names:
            raise ValueError(f"control {spec.control!r} is not one of the arms {names}")
        if spec.allocation == "thompson" and spec.bandit_floor * len(names) > 1:
            raise ValueError(f"bandit_floor {spec.bandit_floor} is more than 1/{len(names)} arms")
    return spec


def _check_variants(variants: Sequence[Variant], what: str) -> None:
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: names must be unique, got {names}")
    if HOLDOUT in names:
        raise ValueError(f"{what}: {HOLDOUT!r} is reserved for the holdout")
    if not any(v.weight > 0 for v in variants):
        raise ValueError(f"{what}: at least one needs a weight above 0")
    tiny = [f"{v.name!r} ({v.weight:g})" for v in variants if 0 < v.weight < MIN_WEIGHT]
    if tiny:
        raise ValueError(
            f"{what}: the weight of {', '.join(tiny)} is too small: a weight is 0 (the arm paused) "
            f"or at least {MIN_WEIGHT:g}"
        )
    total = sum(v.weight for v in variants)
    rare = [f"{v.name!r} ({v.weight:g})" for v in variants if 0 < v.weight < MIN_WEIGHT_SHARE * total]
    if rare:
        raise ValueError(
            f"{what}: the weight of {', '.join(rare)} is under a millionth of the arms' total "
            f"({total:g}): raise it, or set it to 0 to pause the arm"
        )
    for v in variants:
        if v.copy == "default" and v.model_version is not None:
            raise ValueError(f"{what}: {v.name!r} serves default copy, so a model_version means nothing")
        if v.template_version is not None and v.template_id is None:
            raise ValueError(f"{what}: {v.name!r} has a template_version without a template_id")


def cell_name(levels: Mapping[str, str]) -> str:
    """``{"headline": "short", "cta": "bold"}`` -> ``"headline=short|cta=bold"`` (in the given order)."""
    return CELL_SEPARATOR.join(f"{slot}={level}" for slot, level in levels.items())


def cell_levels(cell: str) -> dict[str, str]:
    """The inverse of `cell_name`."""
    return dict(part.split("=", 1) for part in cell.split(CELL_SEPARATOR))


def cells(spec: ExperimentSpec) -> list[str]:
    """Every variant the counters may see, holdout excluded (A/B/n: the arms; factorial: every cell)."""
    if not spec.factorial:
        return [a.name for a in spec.arms]
    slots = list(spec.factors)
    return [
        cell_name(dict(zip(slots, combo)))
        for combo in itertools.product(*([v.name for v in spec.factors[s]] for s in slots))
    ]


def allocation_shares(spec: ExperimentSpec, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """The expected share of entering users per variant in `cells` order, and of the holdout."""
    if spec.factorial:
        names = cells(spec)
        out = {cell: (1.0 - spec.holdout) / len(names) for cell in names}
        out[HOLDOUT] = spec.holdout
        return out
    return _experiment(spec, weights).allocation.shares


def _experiment(spec: ExperimentSpec, weights: Mapping[str, float] | None) -> Experiment:
    arms = tuple(Arm(a.name, weights.get(a.name, a.weight) if weights else a.weight) for a in spec.arms)
    return Experiment(spec.id, Allocation(arms, holdout=spec.holdout), salt=spec.salt)


def variant_of(spec: ExperimentSpec, user_id: str, weights: Mapping[str, float] | None = None) -> str:
    """The variant (arm, or factorial cell) ``user_id`` sees, or `HOLDOUT`. Sticky: see `engine.experiments.assignment`.

    ``weights`` overrides the arms' weights (a bandit's current shares).
    """
    if not spec.factorial:
        return assign(user_id, _experiment(spec, weights))
    seed = spec.salt or spec.id
    if spec.holdout > 0:
        # The same holdout draw as an A/B/n experiment with this salt.
        gate = Experiment(spec.id, Allocation((Arm("in"),), holdout=spec.holdout), salt=spec.salt)
        if assign(user_id, gate) == HOLDOUT:
            return HOLDOUT
    levels = assign_factorial(user_id, seed, {slot: [v.name for v in vs] for slot, vs in spec.factors.items()})
    return cell_name(levels)


def kept_variant(spec: ExperimentSpec, variant: str, weights: Mapping[str, float] | None = None) -> bool:
    """Whether a user whose first exposure was in ``variant`` stays there under ``spec``'s allocation now.

    They do unless their variant closed: an arm paused (weight 0, or a bandit weight of 0),
    the holdout gone (share 0), or a variant the design no longer has.

    >>> spec = ExperimentSpec(id="x", slot="headline", arms=[Variant("a"), Variant("b", weight=0)], holdout=0.1)
    >>> [kept_variant(spec, v) for v in ("a", "b", HOLDOUT, "gone")]
    [True, False, True, False]
    """
    if variant == HOLDOUT:
        return spec.holdout > 0
    if spec.factorial:
        return variant in cells(spec)
    for arm in spec.arms:
        if arm.name == variant:
            weight = weights.get(variant, 0.0) if weights is not None else arm.weight
            return arm.weight > 0 and weight > 0
    return False


def content_for(spec: ExperimentSpec, variant: str, slot: str) -> Variant | None:
    """What ``slot`` shows in ``variant`` (None: the holdout, i.e. default content)."""
    if variant == HOLDOUT:
        return None
    if not spec.factorial:
        return next(a for a in spec.arms if a.name == variant)
    level = cell_levels(variant)[slot]
    return next(v for v in spec.factors[slot] if v.name == level)


def targets(spec: ExperimentSpec, segment: int | None, label: str | None) -> bool:
    """Whether a user of this segment enters the experiment (no targeting: everyone)."""
    if not spec.segments:
        return True
    return (label is not None and label in spec.segments) or (segment is not None and str(segment) in spec.segments)


# --------------------------------------------------------------------------- factorial read-out


class FactorEffect(msgspec.Struct, frozen=True):
    """One factor's main effect: its levels' arms pooled over every other factor."""

    factor: str
    report: ExperimentReport


class Interaction(msgspec.Struct, frozen=True, kw_only=True):
    """Difference in differences of rates for a pair of level changes (each against its factor's first level).

    ``estimate`` = (p(a1,b1) - p(a0,b1)) - (p(a1,b0) - p(a0,b0)), pooled over any other factors;
    zero when the two changes add up.
    """

    factors: tuple[str, str]
    levels: tuple[str, str]
    estimate: float
    z: float
    p_value: float
    p_adjusted: float
    significant: bool


def factor_effects(spec: ExperimentSpec, stats: Mapping[str, ArmStats]) -> tuple[list[FactorEffect], list[Interaction]]:
    """Main effects per factor and pairwise interactions, from per-cell `ArmStats` (missing cells count as empty).

    Interactions are corrected together (Holm or BH, the spec's ``correction``).

    >>> spec = ExperimentSpec(id="x", factors={"headline": (Variant("a"), Variant("b")),
    ...                                        "cta": (Variant("c"), Variant("d"))})
    >>> n = 4000
    >>> rates = {"headline=a|cta=c": 0.05, "headline=b|cta=c": 0.07, "headline=a|cta=d": 0.05,
    ...          "headline=b|cta=d": 0.10}
    >>> stats = {k: ArmStats(arm=k, n=n, conversions=int(r * n)) for k, r in rates.items()}
    >>> effects, inter = factor_effects(spec, stats)
    >>> [(e.factor, round(e.report.arms[1].lift, 2)) for e in effects]
    [('headline', 0.7), ('cta', 0.25)]
    >>> round(inter[0].estimate, 3), inter[0].significant
    (0.03, True)
    """
    slots = list(spec.factors)
    by_cell = {cell: cell_levels(cell) for cell in cells(spec)}
    get = {cell: stats.get(cell) or ArmStats(arm=cell) for cell in by_cell}

    def pooled(**fixed: str) -> ArmStats:
        total = ArmStats(arm=",".join(f"{k}={v}" for k, v in fixed.items()))
        for cell, levels in by_cell.items():
            if all(levels[k] == v for k, v in fixed.items()):
                s = get[cell]
                total.n += s.n
                total.conversions += s.conversions
                total.value_sum += s.value_sum
                total.value_sum_sq += s.value_sum_sq
        return total

    effects = []
    for slot in slots:
        names = [v.name for v in spec.factors[slot]]
        arms = [msgspec.structs.replace(pooled(**{slot: name}), arm=name) for name in names]
        if all(a.n > 0 for a in arms):
            effects.append(FactorEffect(slot, analyze(arms, names[0], alpha=spec.alpha, correction=spec.correction)))
    rows = []
    for fa, fb in itertools.combinations(slots, 2):
        a0, b0 = spec.factors[fa][0].name, spec.factors[fb][0].name
        for va in spec.factors[fa][1:]:
            for vb in spec.factors[fb][1:]:
                quad = [
                    pooled(**{fa: x, fb: y}) for x, y in ((a0, b0), (va.name, b0), (a0, vb.name), (va.name, vb.name))
                ]
                if any(q.n == 0 for q in quad):
                    continue
                rate = np.array([q.rate for q in quad])
                var = sum(q.rate * (1 - q.rate) / q.n for q in quad)
                estimate = float(rate[3] - rate[2] - rate[1] + rate[0])
                z = estimate / np.sqrt(var) if var > 0 else 0.0
                rows.append(((fa, fb), (va.name, vb.name), estimate, float(z), float(2 * sps.norm.sf(abs(z)))))
    if not rows:
        return effects, []
    raw = [r[4] for r in rows]
    adjusted = holm(raw) if spec.correction == "holm" else benjamini_hochberg(raw)
    interactions = [
        Interaction(
            factors=f, levels=lv, estimate=e, z=z, p_value=p, p_adjusted=float(q), significant=bool(q < spec.alpha)
        )
        for (f, lv, e, z, p), q in zip(rows, adjusted, strict=True)
    ]
    return effects, interactions
