"""An experiment's results page from its counters, and a Thompson experiment's arm weights.

`results` reads the per-(experiment, variant) counters the flow keeps
(``{variant: engine.experiments.exposures.ArmCounters}``): per variant the rate
with a Wilson interval, z-test and Welch t-test against the control (Holm or
Benjamini-Hochberg corrected across arms and metrics), Bayesian chance to beat
control and expected loss, the always-valid mSPRT p-value (safe to look as
often as you like), the sample-ratio check, guardrail metrics, and for a
factorial experiment the main effect of each factor and their interactions.
`bandit_weights` turns the primary metric's counts into a Thompson experiment's
arm weights. Pure: the counters are read elsewhere (`store.experiments.read_counters`).

Examples
--------
>>> from engine.experiments.designs import ExperimentSpec, Variant
>>> from engine.experiments.exposures import ArmCounters
>>> spec = ExperimentSpec(id="hero", slot="headline", primary_metric="click", arms=(Variant("a"), Variant("b")))
>>> counters = {v: ArmCounters(experiment="hero", variant=v, users=1000, clickers=c)
...             for v, c in (("a", 50), ("b", 80), ("holdout", 0))}
>>> page = results(spec, counters)
>>> page.users, [row.expected_share for row in page.variants]
(3000, [0.5, 0.5, 0.0])
>>> page.primary.arms[1].arm, page.primary.arms[1].significant
('b', True)
>>> bandit_weights(spec, arm_stats(counters, "click"))
{'a': 0.05, 'b': 0.95}
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.experiments.assignment import HOLDOUT
from engine.experiments.designs import (
    ExperimentSpec,
    FactorEffect,
    Interaction,
    allocation_shares,
    cells,
    factor_effects,
)
from engine.experiments.statistics import ArmStats, ExperimentReport, analyze, thompson_allocation


def bandit_weights(spec: ExperimentSpec, stats: dict[str, ArmStats]) -> dict[str, float]:
    """Thompson-sampling shares of the arms on the primary metric, each at least ``bandit_floor``."""
    names = [a.name for a in spec.arms if a.weight > 0]
    pairs = [(stats[n].conversions, stats[n].n - stats[n].conversions) if n in stats else (0, 0) for n in names]
    shares = thompson_allocation(pairs, floor=min(spec.bandit_floor, 1 / len(names)), seed=0)
    return dict(zip(names, shares))


class VariantCounts(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    users: int
    impressions: int
    clickers: int
    clicks: int
    converters: int
    conversions: int
    value_sum: float
    expected_share: float


class GuardrailResult(msgspec.Struct, frozen=True, kw_only=True):
    """A guardrail: whether any arm is significantly *worse* than the control on it."""

    metric: str
    harmed: list[str]
    report: ExperimentReport


class Results(msgspec.Struct, frozen=True, kw_only=True):
    experiment: str
    status: str
    primary_metric: str
    control: str
    users: int
    variants: list[VariantCounts]
    #: The primary metric per arm (rates, intervals, tests, Bayesian and sequential read-outs, SRM).
    primary: ExperimentReport | None
    guardrails: list[GuardrailResult] = []
    #: Factorial experiments: each factor's main effect, and interactions of pairs of factors.
    factors: list[FactorEffect] = []
    interactions: list[Interaction] = []
    #: Thompson allocation: the arms' current weights.
    bandit_weights: dict[str, float] | None = None
    #: Arms in the holdout vs in the experiment, on the primary metric (treatment: every arm together).
    holdout: ExperimentReport | None = None
    notes: list[str] = []


def arm_stats(counters: dict[str, Any], metric: str) -> dict[str, ArmStats]:
    """Per variant, `ArmStats` of a metric: "click" / "conversion" (users), or "value" (conversion's value sums)."""
    return {v: c.stats("click" if metric == "click" else "conversion") for v, c in counters.items()}


#: Monte Carlo draws of the chance to beat control per treatment arm: 100,000 (the default) up to
#: about 20 arms, fewer beyond, so that a results read stays near 0.2 s on one core (at 100 arms,
#: 20,000 draws: a chance of 0.5 is then within about +/-0.007 at 95 %).
MAX_DRAWS, MIN_DRAWS, DRAWS_BUDGET = 100_000, 10_000, 2_000_000


def draws_for(arms: int) -> int:
    """Draws per treatment for an analysis of ``arms`` arms (see `DRAWS_BUDGET`)."""
    return max(MIN_DRAWS, min(MAX_DRAWS, DRAWS_BUDGET // max(arms - 1, 1)))


def results(spec: ExperimentSpec, counters: dict[str, Any], weights: dict[str, float] | None = None) -> Results:
    """The results page of ``spec`` from its counters (``{variant: engine.experiments.exposures.ArmCounters}``)."""
    names = cells(spec)
    draws = draws_for(len(names))
    shares = allocation_shares(spec, weights)
    control = spec.control_name
    notes: list[str] = []
    rows = [
        VariantCounts(
            variant=v,
            users=c.users,
            impressions=c.impressions,
            clickers=c.clickers,
            clicks=c.clicks,
            converters=c.converters,
            conversions=c.conversions,
            value_sum=c.value_sum,
            expected_share=round(shares.get(v, 0.0), 6),
        )
        for v, c in counters.items()
    ]
    primary_stats = arm_stats(counters, spec.primary_metric)
    arms = [primary_stats[v] for v in names]
    in_arms = sum(a.n for a in arms)
    primary = None
    if counters[control].users > 0 and in_arms > counters[control].users:
        # SRM: the arms' users against their expected shares (the holdout is checked apart, below).
        primary = analyze(
            arms, control, weights=[shares[v] for v in names], alpha=spec.alpha, correction=spec.correction, draws=draws
        )
        if primary.srm_alarm and not spec.reallocated and spec.allocation == "fixed":
            notes.append(
                f"sample ratio mismatch (p = {primary.srm_p_value:.2g} < 0.001): the split differs from the "
                "allocation; find the cause (bots, a broken exposure log, targeting) before trusting results"
            )
    else:
        notes.append("not enough data yet: the control and at least one other arm need exposed users")
    if spec.reallocated and spec.allocation != "thompson":
        notes.append(
            f"the allocation changed while running (last at {spec.reallocated}): users already exposed "
            "kept their arm, so the split mixes the old and new allocations: the sample-ratio check "
            "compares it with the current one only, and raises no alarm"
        )
    if spec.allocation == "thompson":
        notes.append(
            "Thompson allocation moves weights as data arrives: the split is adaptive, so the sample-ratio "
            "check and fixed-horizon p-values are indicative only; the mSPRT p-values stay valid"
        )
    guardrails = []
    for metric in spec.guardrails:
        if primary is None:
            break
        stats = arm_stats(counters, metric)
        report = analyze(
            [stats[v] for v in names],
            control,
            weights=[shares[v] for v in names],
            alpha=spec.alpha,
            correction=spec.correction,
            draws=draws,
        )
        treated = [a for a in report.arms if a.arm != control]
        if metric == "value":
            harmed = [
                a.arm
                for a in treated
                if a.value_p_adjusted is not None and a.value_p_adjusted < spec.alpha and (a.value_t or 0) < 0
            ]
        else:
            harmed = [a.arm for a in treated if a.significant and a.z is not None and a.z < 0]
        guardrails.append(GuardrailResult(metric=metric, harmed=harmed, report=report))
        if harmed:
            notes.append(f"guardrail {metric}: {', '.join(harmed)} significantly worse than {control}")
    effects, interactions = ([], [])
    if spec.factorial and primary is not None:
        effects, interactions = factor_effects(spec, primary_stats)
    holdout = None
    held = primary_stats.get(HOLDOUT)
    if held is not None and held.n > 0 and in_arms > 0:
        pooled = ArmStats(
            arm="experiment",
            n=in_arms,
            conversions=sum(a.conversions for a in arms),
            value_sum=sum(a.value_sum for a in arms),
            value_sum_sq=sum(a.value_sum_sq for a in arms),
        )
        holdout = analyze(
            [msgspec.structs.replace(held, arm=HOLDOUT), pooled],
            HOLDOUT,
            weights=[shares[HOLDOUT], 1 - shares[HOLDOUT]],
            alpha=spec.alpha,
        )
    return Results(
        experiment=spec.id,
        status=spec.status,
        primary_metric=spec.primary_metric,
        control=control,
        users=sum(c.users for c in counters.values()),
        variants=rows,
        primary=primary,
        guardrails=guardrails,
        factors=effects,
        interactions=interactions,
        bandit_weights=weights if spec.allocation == "thompson" else None,
        holdout=holdout,
        notes=notes,
    )
