"""When to retrain the copy model, and when a retrained one may replace the served one.

Triggers. A drift alert of the flow (`drift_reason`) or an experiment arm whose
conversion rate fell under a floor or well below its own past (`threshold_reason`)
each give a reason to retrain, or None. `arm_check` turns an arm's absolute counters,
read every few seconds, into that series of rates: each reading is the rate of the
users who arrived since the previous one. `debounce` turns reasons into runs: at most
one per ``min_interval_s``; a reason that comes sooner waits (the newest waiting one
is kept, the others are counted) and fires once the interval has passed, on the next
reason or the next tick. Both are ``(state, value) -> (state, emit)`` steps: the caller
keeps the `ArmSeries` and the `TriggerState`.

Promotion. `promotion_decision` compares the candidate's evaluation with the served
model's, both measured on the same holdout: the candidate may not be worse beyond a
tolerance on any figure (perplexity relatively, obedience and brand-rule pass rates
absolutely). "No worse", not "better": fresh feedback is reason enough to take a model
that writes as well as the old one.

Examples
--------
>>> state = TriggerState()
>>> state, run = debounce(state, "drift: segment_sizes", now_s=0.0, min_interval_s=3600)
>>> run
'drift: segment_sizes'
>>> state, run = debounce(state, "drift: clicks_5m", now_s=60.0, min_interval_s=3600)
>>> run is None, state.pending
(True, 'drift: clicks_5m')
>>> state, run = debounce(state, None, now_s=3600.0, min_interval_s=3600)  # a tick, an hour on
>>> run
'drift: clicks_5m'
>>> current = {"holdout_perplexity": 10.0, "tone_obedience": 0.9, "brand_pass_rate": 0.85}
>>> promotion_decision(current, {"holdout_perplexity": 9.0, "tone_obedience": 0.89, "brand_pass_rate": 0.9}).promote
True
>>> print(promotion_decision(current, {"holdout_perplexity": 10.5, "tone_obedience": 0.9,
...                                    "brand_pass_rate": 0.85}).reason)
refused: holdout perplexity 10.5 > 10.2 (current 10 + 2%)
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import msgspec

from engine.audience.drift import DriftAlert

#: The perplexity compared (lower is better) ...
PERPLEXITY = "holdout_perplexity"
#: ... and the rates compared (higher is better), in the order reasons name them.
RATES: tuple[str, ...] = ("tone_obedience", "length_obedience", "brand_pass_rate")


class Decision(msgspec.Struct, frozen=True):
    """Whether to promote, and why, in one sentence fit for a run record."""

    promote: bool
    reason: str


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def promotion_decision(
    current: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    ppl_tolerance: float = 0.02,
    metric_tolerance: float = 0.02,
) -> Decision:
    """Promote ``candidate`` only if no figure is worse than ``current``'s beyond its tolerance.

    Perplexity may grow by ``ppl_tolerance`` (relative); each of `RATES` may fall by
    ``metric_tolerance`` (absolute). A figure the current evaluation lacks is not
    compared; one the candidate lacks, or a non-finite one, refuses.

    >>> promotion_decision({"holdout_perplexity": 10.0}, {"holdout_perplexity": float("nan")}).reason
    'refused: the candidate has no finite holdout perplexity'
    >>> print(promotion_decision({"tone_obedience": 0.9, "length_obedience": 1.0},
    ...                          {"tone_obedience": 0.8, "length_obedience": 0.5}).reason)
    refused: tone obedience 0.8 < 0.88 (current 0.9 - 0.02); length obedience 0.5 < 0.98 (current 1 - 0.02)
    """
    if ppl_tolerance < 0 or metric_tolerance < 0:
        raise ValueError(f"tolerances must be 0 or more, got {ppl_tolerance} and {metric_tolerance}")
    worse, kept = [], []
    for name, higher_is_better in [(PERPLEXITY, False)] + [(r, True) for r in RATES]:
        if name not in current:
            continue
        label = name.replace("_", " ")
        old, new = current[name], candidate.get(name)
        if new is None or not math.isfinite(new):
            worse.append(f"the candidate has no finite {label}")
            continue
        if higher_is_better:
            limit = old - metric_tolerance
            ok, sign = new >= limit, (">=" if new >= limit else "<")
            detail = f"{label} {_fmt(new)} {sign} {_fmt(limit)} (current {_fmt(old)} - {_fmt(metric_tolerance)})"
        else:
            limit = old * (1 + ppl_tolerance) if math.isfinite(old) else math.inf
            ok, sign = new <= limit, ("<=" if new <= limit else ">")
            detail = f"{label} {_fmt(new)} {sign} {_fmt(limit)} (current {_fmt(old)} + {_fmt(100 * ppl_tolerance)}%)"
        (kept if ok else worse).append(detail)
    if worse:
        return Decision(False, "refused: " + "; ".join(worse))
    if not kept:
        return Decision(False, "refused: no figure to compare (the current model's evaluation is empty)")
    return Decision(True, "promoted: no worse on any figure: " + "; ".join(kept))


class TriggerState(msgspec.Struct, frozen=True):
    """What `debounce` remembers between reasons."""

    #: When the last run was started (seconds, the caller's clock); None: never.
    last_fired_s: float | None = None
    #: The newest reason that came too soon and waits for the interval to pass ("": none).
    pending: str = ""
    #: Reasons that came too soon since the last run (the pending one included).
    coalesced: int = 0


def debounce(
    state: TriggerState, reason: str | None, now_s: float, min_interval_s: float
) -> tuple[TriggerState, str | None]:
    """Run on ``reason`` unless a run started less than ``min_interval_s`` ago; ``reason=None`` is a tick.

    Returns the new state and the reason to run now (None: not now). A reason that
    comes too soon becomes the pending one and runs when the interval is over.

    >>> state, run = debounce(TriggerState(), "first", now_s=100.0, min_interval_s=10)
    >>> state, run
    (TriggerState(last_fired_s=100.0, pending='', coalesced=0), 'first')
    >>> state, _ = debounce(state, "second", now_s=101.0, min_interval_s=10)
    >>> state, _ = debounce(state, "third", now_s=102.0, min_interval_s=10)
    >>> debounce(state, None, now_s=105.0, min_interval_s=10)[1] is None
    True
    >>> debounce(state, None, now_s=110.0, min_interval_s=10)
    (TriggerState(last_fired_s=110.0, pending='', coalesced=0), 'third (and 1 earlier trigger while waiting)')
    """
    if min_interval_s < 0:
        raise ValueError(f"min_interval_s must be 0 or more, got {min_interval_s}")
    if reason is None and not state.pending:
        return state, None
    if state.last_fired_s is not None and now_s - state.last_fired_s < min_interval_s:
        if reason is None:
            return state, None
        return TriggerState(state.last_fired_s, reason, state.coalesced + 1), None
    run = reason if reason is not None else state.pending
    earlier = state.coalesced - (1 if reason is None else 0)
    if earlier > 0:
        run += f" (and {earlier} earlier trigger{'s' if earlier > 1 else ''} while waiting)"
    return TriggerState(now_s), run


def drift_reason(alert: DriftAlert, features: Collection[str] = ()) -> str | None:
    """The reason to retrain that ``alert`` gives, or None when it does not count.

    Every alert counts (a feature's distribution, the segment sizes, click-through:
    each says the audience the copy was tuned for has moved), unless ``features``
    names the ones that do.

    >>> alert = DriftAlert(feature="clicks_5m", method="kl", score=0.61, threshold=0.4, window=50000,
    ...                    time_ms=0, time="2026-01-01T00:00:00Z", checks=3)
    >>> drift_reason(alert)
    'drift: clicks_5m kl 0.61 > 0.4 for 3 checks at 2026-01-01T00:00:00Z'
    >>> drift_reason(alert, features={"segment_sizes"}) is None
    True
    """
    if features and alert.feature not in features:
        return None
    checks = f" for {alert.checks} checks" if alert.checks > 1 else ""
    return (
        f"drift: {alert.feature} {alert.method} {_fmt(alert.score)} > {_fmt(alert.threshold)}{checks} at {alert.time}"
    )


def threshold_reason(
    rates: Sequence[float],
    *,
    floor: float = 0.0,
    relative_drop: float = 0.0,
    recent: int = 1,
    arm: str = "",
    metric: str = "conversion",
) -> str | None:
    """The reason to retrain that an arm's conversion-rate series gives, or None.

    ``rates`` are successive readings, oldest first. The mean of the last ``recent``
    is compared with ``floor`` (absolute) and with the mean of the readings before
    them less ``relative_drop`` (a share: 0.2 means 20 % under its past). Either
    breach is a reason; 0 turns a rule off. ``metric`` only names the rate.

    >>> threshold_reason([0.05, 0.05, 0.031], floor=0.03) is None
    True
    >>> threshold_reason([0.05, 0.05, 0.03], relative_drop=0.2, arm="hero/b")
    'threshold: hero/b conversion rate 0.03 is 40% under its earlier mean 0.05 (limit 20%)'
    >>> threshold_reason([0.02], floor=0.03)
    'threshold: conversion rate 0.02 is under the floor 0.03'
    """
    if not 0 <= floor <= 1 or not 0 <= relative_drop < 1:
        raise ValueError(f"floor must be in [0, 1] and relative_drop in [0, 1), got {floor} and {relative_drop}")
    if not floor and not relative_drop:
        raise ValueError("set a floor, a relative_drop or both: with neither nothing can trigger")
    if isinstance(recent, bool) or not isinstance(recent, int) or recent < 1:
        raise ValueError(f"recent must be a whole number of at least 1, got {recent!r}")
    for rate in rates:
        if not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
            raise ValueError(f"conversion rates must be numbers in [0, 1], got {rate!r}")
    if len(rates) < recent:
        return None
    latest = sum(rates[-recent:]) / recent
    who = f"{arm} {metric}" if arm else metric
    if floor and latest < floor:
        return f"threshold: {who} rate {_fmt(latest)} is under the floor {_fmt(floor)}"
    earlier = rates[:-recent]
    if relative_drop and earlier:
        baseline = sum(earlier) / len(earlier)
        if baseline > 0 and latest < baseline * (1 - relative_drop):
            drop = 1 - latest / baseline
            return (
                f"threshold: {who} rate {_fmt(latest)} is {drop:.0%} under its earlier mean "
                f"{_fmt(baseline)} (limit {relative_drop:.0%})"
            )
    return None


def trigger_of(reason: str) -> Literal["manual", "drift", "threshold"]:
    """The kind of trigger a reason of this module comes from (its first word).

    >>> trigger_of("threshold: hero/b conversion rate 0.01 is under the floor 0.03"), trigger_of("drift: x")
    ('threshold', 'drift')
    """
    kind = reason.split(":", 1)[0]
    return kind if kind in ("drift", "threshold") else "manual"


class ArmThreshold(msgspec.Struct, frozen=True, kw_only=True):
    """When one experiment arm's rate calls for a retrain (`threshold_reason`'s rules, on `arm_check`'s readings).

    A reading is taken once at least ``min_users`` users arrived since the previous
    one; ``recent`` readings are averaged and compared with the ``floor`` and with the
    mean of the readings before them (at most ``history`` readings are kept). A
    reading of ``n`` users has a standard error of about ``sqrt(p (1 - p) / n)``: pick
    ``min_users * recent`` so that it is well under the drop you mean to catch.

    >>> ArmThreshold(experiment="hero", variant="b", floor=0.03).name
    'hero/b'
    >>> ArmThreshold(experiment="hero", variant="b", floor=0.03, recent=3, history=3)
    Traceback (most recent call last):
      ...
    ValueError: history (3) must be more than recent (3): the readings before the recent ones are the baseline
    """

    experiment: str
    variant: str
    metric: Literal["conversion", "click"] = "conversion"
    floor: float = 0.0
    relative_drop: float = 0.0
    min_users: int = 500
    recent: int = 1
    history: int = 24

    def __post_init__(self):
        if not self.experiment or not self.variant:
            raise ValueError(f"an arm needs an experiment and a variant, got {self.experiment!r} and {self.variant!r}")
        if self.metric not in ("conversion", "click"):
            raise ValueError(f"metric must be 'conversion' or 'click', got {self.metric!r}")
        threshold_reason([], floor=self.floor, relative_drop=self.relative_drop, recent=self.recent)  # its checks
        if isinstance(self.min_users, bool) or not isinstance(self.min_users, int) or self.min_users < 1:
            raise ValueError(f"min_users must be a whole number of at least 1, got {self.min_users!r}")
        if not isinstance(self.history, int) or self.history <= self.recent:
            raise ValueError(
                f"history ({self.history}) must be more than recent ({self.recent}): the readings "
                f"before the recent ones are the baseline"
            )

    @property
    def name(self) -> str:
        return f"{self.experiment}/{self.variant}"


class ArmSeries(msgspec.Struct, frozen=True):
    """What `arm_check` remembers of one arm: the counters of the last reading and the rates read so far."""

    #: Exposed users and users who converted (or clicked) at the last reading; -1: no reading yet.
    users: int = -1
    successes: int = 0
    #: The readings, oldest first (at most the rule's ``history``).
    rates: tuple[float, ...] = ()


def arm_check(rule: ArmThreshold, series: ArmSeries, users: int, successes: int) -> tuple[ArmSeries, str | None]:
    """Read an arm's absolute counters (exposed users, users who converted); returns the new series and a reason.

    The first call only takes the counters as the starting point. Later calls wait
    until ``rule.min_users`` new users arrived (the starting point stays, so new users
    add up over quiet checks), then add the new users' rate (new successes over new
    users, at most 1: users exposed earlier convert too) to the series and ask
    `threshold_reason`. Counters that went back (the store was rebuilt) start over,
    keeping the rates read so far.

    >>> rule = ArmThreshold(experiment="h", variant="b", relative_drop=0.3, min_users=100)
    >>> series, _ = arm_check(rule, ArmSeries(), users=1000, successes=50)  # the starting point
    >>> series, _ = arm_check(rule, series, users=1200, successes=60)       # 10 of 200 new users: 0.05
    >>> series, reason = arm_check(rule, series, users=1250, successes=61)  # only 50 new users: wait
    >>> series.rates, reason
    ((0.05,), None)
    >>> series, reason = arm_check(rule, series, users=1400, successes=63)  # 3 of 200: 0.015
    >>> print(reason)
    threshold: h/b conversion rate 0.015 is 70% under its earlier mean 0.05 (limit 30%); last reading 3 of 200 new users
    """
    if series.users < 0 or users < series.users or successes < series.successes:
        return ArmSeries(users, successes, series.rates), None
    new_users = users - series.users
    if new_users < rule.min_users:
        return series, None
    new_successes = successes - series.successes
    rates = (series.rates + (min(1.0, new_successes / new_users),))[-rule.history :]
    reason = threshold_reason(
        rates, floor=rule.floor, relative_drop=rule.relative_drop, recent=rule.recent, arm=rule.name, metric=rule.metric
    )
    if reason is not None:
        reason += f"; last reading {new_successes} of {new_users} new users"
    return ArmSeries(users, successes, rates), reason
