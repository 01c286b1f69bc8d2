"""Experiment exposures and outcomes, counted per (experiment, variant) arm.

The unit of analysis is the user, because assignment is per user. A user's
*first* exposure (an ``impression`` event naming an experiment and a variant)
puts them in that variant for good: intention-to-treat, so a later impression
naming another variant still counts in the first one. Outcomes count only for
users exposed at or before the outcome's time:

- a ``click`` counts for the experiment it names (clicks without one are not
  experiment outcomes);
- a ``conversion`` or ``purchase`` naming an experiment counts for that one;
  one naming none counts for every experiment the user was exposed to at or
  before its time;
- anything else (no exposure, or an outcome from before the exposure) is not
  counted; `UserExposures.update` tallies it as ``unexposed`` or ``unattributed``.
  Impressions without an experiment or a variant place nobody (``ignored``).

Two steps do the counting, so that both are idempotent. `UserExposures` is one
user's state: the arm of each experiment they saw, whether they clicked and
converted there, their total value there, and the ids of the events already
decided (counted or not: an event's fate is settled on first sight). Repeats of
an id are ignored (at most `SEEN_IDS_PER_USER` recent ids are kept per user, so
a repeat arriving after that many newer events of the same user counts again).
A user never exposed keeps no state at all: their outcomes cannot count, so they
are tallied (``unexposed`` or ``unattributed``) and forgotten, and the flow drops
the empty state; only exposed users cost memory.
It returns per-arm *deltas* (`ArmCounters` of changes). The arm step adds them
into absolute `ArmCounters`, which the flow writes as they are: a replay after a
crash writes the same rows.

"First" means first to arrive: Kafka keeps one user's events in order (the key
is the user), so the outcome of a run does not depend on how events were batched.
The exposure time used for attribution is the earliest impression time seen.

Examples
--------
>>> from engine.features.events import Event
>>> t = 1_767_225_600_000  # 2026-01-01, epoch ms
>>> user = UserExposures()
>>> deltas, tally = user.update([
...     Event("e1", "impression", "u1", t, experiment="hero", variant="b"),
...     Event("e2", "click", "u1", t + 1_000, experiment="hero"),
...     Event("e3", "purchase", "u1", t + 2_000, value=20.0),
...     Event("e3", "purchase", "u1", t + 2_000, value=20.0),  # a re-send
... ])
>>> [(d.experiment, d.variant, d.users, d.clickers, d.conversions, d.value_sum) for d in deltas]
[('hero', 'b', 1, 1, 1, 20.0)]
>>> tally
{'counted': 3, 'duplicate': 1}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from engine.experiments.statistics import ArmStats
from engine.features.events import Event

#: Event ids remembered per user to drop repeats; the oldest is forgotten first.
#: A user at the cap holds about 100 kB of ids; re-sends by producer retries come
#: within seconds, among a user's last few events, far inside the cap.
SEEN_IDS_PER_USER = 1000
#: The event types this counting looks at; every other type passes it by.
EXPERIMENT_EVENT_TYPES = frozenset({"impression", "click", "conversion", "purchase"})
_CONVERSIONS = ("conversion", "purchase")

#: What `UserExposures.update` tallies per event.
Outcome = Literal["counted", "duplicate", "unexposed", "unattributed", "ignored"]


class ArmCounters(msgspec.Struct, kw_only=True):
    """What one (experiment, variant) arm saw, summed over its users.

    Users are counted once (``users``, ``clickers``, ``converters``); events as
    many times as they happened (``impressions``, ``clicks``, ``conversions``).
    ``value_sum`` and ``value_sum_sq`` sum each exposed user's *total* value (a
    user who bought twice adds one total, squared once), so the variance is per
    user, as `engine.experiments.statistics` assumes. The same struct carries a change
    (a delta from `UserExposures.update`); `add` folds one into the totals.

    Examples
    --------
    >>> arm = ArmCounters(experiment="hero", variant="a")
    >>> arm.add(ArmCounters(experiment="hero", variant="a", users=2, converters=1, conversions=1,
    ...                     value_sum=30.0, value_sum_sq=900.0, updated_ms=5))
    >>> s = arm.stats("conversion")
    >>> s.arm, s.n, s.conversions, s.value_mean
    ('a', 2, 1, 15.0)
    """

    experiment: str
    variant: str
    users: int = 0
    impressions: int = 0
    clickers: int = 0
    clicks: int = 0
    converters: int = 0
    conversions: int = 0
    value_sum: float = 0.0
    value_sum_sq: float = 0.0
    updated_ms: int = 0

    def add(self, delta: ArmCounters) -> None:
        """Add a change of the same arm (``updated_ms`` keeps the newest)."""
        self.users += delta.users
        self.impressions += delta.impressions
        self.clickers += delta.clickers
        self.clicks += delta.clicks
        self.converters += delta.converters
        self.conversions += delta.conversions
        self.value_sum += delta.value_sum
        self.value_sum_sq += delta.value_sum_sq
        if delta.updated_ms > self.updated_ms:
            self.updated_ms = delta.updated_ms

    def stats(self, metric: Literal["click", "conversion"]) -> ArmStats:
        """The arm as `engine.experiments.statistics.ArmStats`: exposed users, users who clicked (or converted), value sums."""
        if metric == "click":
            successes = self.clickers
        elif metric == "conversion":
            successes = self.converters
        else:
            raise ValueError(f"metric must be 'click' or 'conversion', got {metric!r}")
        return ArmStats(
            arm=self.variant,
            n=self.users,
            conversions=successes,
            value_sum=self.value_sum,
            value_sum_sq=self.value_sum_sq,
        )


class FirstExposure(msgspec.Struct, frozen=True):
    """A user's arm in an experiment, from their first exposure: what keeps them there.

    The flow writes one per (user, experiment) to the ``user_experiment`` view; the
    API reads it once an experiment's allocation has changed, so that users already
    assigned keep their arm (`engine.experiments.designs.ExperimentSpec.reallocated`).
    """

    user_id: str
    experiment: str
    variant: str
    exposed_ms: int


class UserArm(msgspec.Struct, array_like=True):
    """One user in one experiment: their arm, first exposure, and outcomes so far."""

    variant: str
    exposed_ms: int
    clicked: bool = False
    converted: bool = False
    value: float = 0.0


class UserExposures(msgspec.Struct):
    """One user's exposures (experiment -> `UserArm`) and the event ids already seen.

    ``seen`` is an insertion-ordered dict used as a bounded set (values unused).
    Picklable, so it is the flow's recovery snapshot as it is.

    Examples
    --------
    >>> from engine.features.events import Event
    >>> t = 1_767_225_600_000
    >>> user = UserExposures()
    >>> _, tally = user.update([Event("c1", "purchase", "u1", t, value=5.0)])
    >>> tally  # bought before any exposure: not counted
    {'unattributed': 1}
    >>> deltas, _ = user.update([Event("i1", "impression", "u1", t + 2_000, experiment="hero", variant="a"),
    ...                          Event("c2", "conversion", "u1", t + 1_000, experiment="hero")])
    >>> [(d.variant, d.users, d.impressions, d.conversions) for d in deltas]  # c2 came before the exposure
    [('a', 1, 1, 0)]
    """

    arms: dict[str, UserArm] = {}
    seen: dict[str, None] = {}

    def update(self, events: Iterable[Event]) -> tuple[list[ArmCounters], dict[str, int]]:
        """Count a batch of this user's events, in arrival order.

        Returns the per-arm changes (one `ArmCounters` per arm touched, in the
        order first touched) and how many events had each `Outcome`.
        """
        deltas: dict[tuple[str, str], ArmCounters] = {}
        tally: dict[str, int] = {}
        for event in events:
            outcome = self._observe(event, deltas)
            tally[outcome] = tally.get(outcome, 0) + 1
        return list(deltas.values()), tally

    def _observe(self, event: Event, deltas: dict[tuple[str, str], ArmCounters]) -> Outcome:
        kind = event.type
        if kind == "impression" or kind == "click":
            if event.experiment is None or (kind == "impression" and event.variant is None):
                return "ignored"  # not about an experiment (or no arm to place the user in)
        elif kind not in _CONVERSIONS:
            return "ignored"
        if not self.arms and kind != "impression":
            # Never exposed: nothing to credit, and nothing kept (a flow holds this state per user,
            # so users outside every experiment must cost nothing). A repeat is tallied the same.
            return "unexposed" if event.experiment is not None else "unattributed"
        seen = self.seen
        if event.event_id in seen:
            return "duplicate"
        seen[event.event_id] = None
        if len(seen) > SEEN_IDS_PER_USER:
            del seen[next(iter(seen))]

        if kind == "impression":
            arm = self.arms.get(event.experiment)
            delta = _delta(deltas, event.experiment, arm.variant if arm else event.variant, event.ts)
            delta.impressions += 1
            if arm is None:
                self.arms[event.experiment] = UserArm(event.variant, event.ts)
                delta.users += 1
            elif event.ts < arm.exposed_ms:
                arm.exposed_ms = event.ts
            return "counted"

        if event.experiment is not None:
            arm = self.arms.get(event.experiment)
            if arm is None or arm.exposed_ms > event.ts:
                return "unexposed"
            targets = [(event.experiment, arm)]
        else:  # a conversion naming no experiment: every experiment it followed
            targets = [(name, arm) for name, arm in self.arms.items() if arm.exposed_ms <= event.ts]
            if not targets:
                return "unattributed"
        for experiment, arm in targets:
            delta = _delta(deltas, experiment, arm.variant, event.ts)
            if kind == "click":
                delta.clicks += 1
                if not arm.clicked:
                    arm.clicked = True
                    delta.clickers += 1
                continue
            delta.conversions += 1
            if not arm.converted:
                arm.converted = True
                delta.converters += 1
            if event.value:
                old, new = arm.value, arm.value + event.value
                arm.value = new
                delta.value_sum += event.value
                delta.value_sum_sq += new * new - old * old
        return "counted"


def _delta(deltas: dict[tuple[str, str], ArmCounters], experiment: str, variant: str, ts: int) -> ArmCounters:
    key = (experiment, variant)
    delta = deltas.get(key)
    if delta is None:
        delta = deltas[key] = ArmCounters(experiment=experiment, variant=variant)
    if ts > delta.updated_ms:
        delta.updated_ms = ts
    return delta
