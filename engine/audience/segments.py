"""Segments: who a user is, learned incrementally from how they behave.

Three pieces, all pure:

`Behaviour` is per user (it lives beside the tiles in the flow's per-user
state): counts of each kind of event and of visits, exponentially decayed in
*event* time with a half-life of days, so a user's segment follows a change of
habits without forgetting them overnight. A visit starts with an explicit open
(``app_open``, ``email_open``) or with any event after an inactivity gap
(``session_gap_s``, 30 minutes by default, as analytics tools define a
session), so a stream of page views, clicks and purchases has visits too.
`Behaviour.evidence` is what the user's counts say, sent to the audience step.

`feature_vector` turns evidence into the segmentation features (`FEATURES`):
rates (email share of visits, click-through, cart rate, purchase rate,
conversion) that stay in [0, 1] whatever the stream holds (a numerator is
capped by its denominator: purchases without carts cannot make a rate above
1), plus order value, browsing depth and visit frequency. Each is smoothed
towards a prior, the pooled value of the traffic itself (`TrafficPriors`), so a
user with little history sits near the traffic's middle instead of at an
extreme or at a number chosen for the simulator. A feature rests on some kinds
of events (`FEATURE_EVIDENCE`); one the stream never feeds (click-through
without impressions) carries no weight: the model leaves it out (see
`SegmentModel.features`).

`SegmentModel` is shared by all users (the flow keeps one, on one worker):
River's `StandardScaler` then River's `KMeans`. It waits for a warm-up sample of
distinct users (so the fit means the same whether a batch brings a user one
event or a hundred), fits on it (batch k-means), then keeps learning from every updated
vector: a centre is the mean of the latest vectors of the users in it, so each user
weighs once however often they come back. Every so often (`SegmentModel.consolidate`)
it refines the centres on the whole sample and checks whether a fresh fit would be
clearly better, as it is once young histories have matured. A re-fit (then, after
drift, or on request) starts a fresh scaler and clusterer on the latest vectors of
the most recently active users (one per user, so heavy users do not dominate the
fit) and bumps `version`; new clusters are matched to the old ones (Hungarian on
centre distance) so segment ids stay put where the segments did. Why KMeans: see ``tailor bench clusterers`` and the
README (best adjusted Rand index on simulated traffic, ~20 µs an update).

Examples
--------
>>> from engine.features.events import Event
>>> b = Behaviour(half_life_s=3 * 86_400)
>>> for i, kind in enumerate(["email_open", "email_click", "page_view", "add_to_cart", "purchase"]):
...     b.update(Event(f"e{i}", kind, "u1", 1_767_225_600_000 + 1_000 * i, value=40.0 if kind == "purchase" else None))
>>> b.visits_total, round(b.sessions, 3)
(1, 1.0)

A purchase an hour later, with nothing before it, starts a second visit:

>>> b.update(Event("e5", "purchase", "u1", 1_767_229_200_000, value=60.0))
>>> b.visits_total, round(b.sessions, 3)
(2, 1.99)
>>> vector, fed = feature_vector(b.evidence(), TrafficPriors().values())
>>> round(vector["email_share"], 3), vector["purchase_rate"] <= 1.0, fed & FEATURE_BIT["ctr"] == 0
(0.248, True, True)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
from river import cluster, preprocessing
from scipy.optimize import linear_sum_assignment

from engine.features.events import Event

# Behaviour counts, in this order; then spend (money of purchases) and visits.
_KINDS = ("page_view", "click", "add_to_cart", "purchase", "impression", "email_open", "email_click", "app_open")
_INDEX = {kind: i for i, kind in enumerate(_KINDS)}
_PV, _CLICK, _CART, _BUY, _IMP, _EOPEN, _ECLICK, _APP = range(8)
_SPEND, _VISITS = 8, 9
_N_COUNTS = 10
#: Evidence is the decayed counts, then the decayed days of exposure (see `Behaviour.evidence`).
_EXPOSURE = 10
_OPENS = frozenset((_EOPEN, _APP))

#: The segmentation features, with what a high and a low value says about a user.
FEATURES: dict[str, tuple[str, str]] = {
    "email_share": ("email-driven", "app-first"),
    "ctr": ("click-happy", "rarely clicks"),
    "cart_rate": ("fills carts", "rarely carts"),
    "purchase_rate": ("buys what they cart", "abandons carts"),
    "conversion": ("clicks to buy", "browses without buying"),
    "order_value": ("high spend", "budget"),
    "browse_depth": ("deep browser", "quick looks"),
    "visit_frequency": ("frequent visitor", "occasional visitor"),
}
FEATURE_NAMES = tuple(FEATURES)
#: Features that are rates: always within [0, 1].
RATE_FEATURES = frozenset({"email_share", "ctr", "cart_rate", "purchase_rate", "conversion"})
#: The kinds of events each feature rests on (a tuple inside: any one of them): where the
#: traffic has too few users with each of them (`MIN_COVERAGE`), the feature has no signal
#: and carries no weight.
FEATURE_EVIDENCE: dict[str, tuple[str, ...]] = {
    "email_share": ("email_open",),
    "ctr": ("impression",),
    "cart_rate": ("page_view", "add_to_cart"),
    "purchase_rate": ("add_to_cart", "purchase"),
    "conversion": ("click", "purchase"),
    "order_value": ("purchase",),
    "browse_depth": (("page_view", "click"),),
    "visit_frequency": (),
}
#: One bit per feature, for the masks of features a user (or the traffic) has evidence for.
FEATURE_BIT = {name: 1 << i for i, name in enumerate(FEATURE_NAMES)}
ALL_FEATURES = (1 << len(FEATURE_NAMES)) - 1
_EVIDENCE_KINDS = {
    name: tuple((_INDEX[k],) if isinstance(k, str) else tuple(_INDEX[j] for j in k) for k in kinds)
    for name, kinds in FEATURE_EVIDENCE.items()
}
#: A feature is used when at least this share of the users in the fit sample have its evidence.
MIN_COVERAGE = 0.05
# Order values and visit frequencies are heavy-tailed: the model sees log1p of them; profiles show units.
_LOG_FEATURES = frozenset({"order_value", "visit_frequency"})
#: Pseudo-counts of each feature's prior (in its denominator's units: impressions, carts, days ...).
PRIOR_WEIGHTS: dict[str, float] = {
    "email_share": 2.0,
    "ctr": 2.0,
    "cart_rate": 2.0,
    "purchase_rate": 1.0,
    "conversion": 2.0,
    "order_value": 1.0,
    "browse_depth": 1.0,
    "visit_frequency": 3.0,
}
_LN2 = math.log(2.0)


class Behaviour:
    """One user's decayed event and visit counts; `evidence` is what they say.

    Parameters
    ----------
    half_life_s
        Event-time half-life of the counts. Long enough for rates to be
        measured (a few visits), short enough that a change of habits shows
        within days.
    session_gap_s
        An event this long after the user's previous one starts a new visit,
        whatever its kind (explicit opens always do).
    max_idle_s
        The longest idle gap that decays the counts: a user back after months
        is read from their habits, not from their last visit alone. Decay runs
        on the user's own clock, in which no gap lasts longer than this.

    Notes
    -----
    Counts are kept relative to a base time: an event at ``t`` adds
    ``2 ** ((t - base) / half_life)``, and reading divides by the same factor at
    the newest event time. That is one power per event instead of decaying
    every count on every event; the base moves forward before the factors
    could grow large. ``visits_total`` is not decayed: it decides whether a
    user has enough history to be segmented, also after months away.
    """

    __slots__ = (
        "half_life_ms",
        "_per_ms",
        "session_gap_ms",
        "max_idle_ms",
        "base_ms",
        "ref_ms",
        "clock_ms",
        "first_ms",
        "counts",
        "visits_total",
        "clicks",
        "impressions",
    )

    #: Move the base forward once the newest event is this many half-lives past it.
    REBASE_HALF_LIVES = 64

    def __init__(self, half_life_s: float, session_gap_s: float = 1800.0, max_idle_s: float = 86_400.0):
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        if session_gap_s <= 0:
            raise ValueError(f"session_gap_s must be positive, got {session_gap_s}")
        if max_idle_s < session_gap_s:
            raise ValueError(f"max_idle_s must be at least session_gap_s ({session_gap_s}), got {max_idle_s}")
        self.half_life_ms = half_life_s * 1000.0
        self._per_ms = 1.0 / self.half_life_ms
        self.session_gap_ms = session_gap_s * 1000.0
        self.max_idle_ms = max_idle_s * 1000.0
        # base_ms, clock_ms and first_ms are on the user's own clock (idle gaps capped);
        # ref_ms is the newest event time itself.
        self.base_ms: float | None = None
        self.ref_ms: int | None = None  # newest event time
        self.clock_ms: float | None = None  # the newest event on the user's clock
        self.first_ms: float | None = None  # the oldest event on the user's clock
        self.counts = [0.0] * _N_COUNTS
        self.visits_total = 0
        #: Raw clicks and impressions since the last `take_clicks` (for the click-through detector).
        self.clicks = self.impressions = 0

    def update(self, event: Event) -> None:
        """Count one (already de-duplicated) event."""
        self.update_many((event,))

    def take_clicks(self) -> tuple[int, int]:
        """(clicks, impressions) counted since the last call."""
        taken = self.clicks, self.impressions
        self.clicks = self.impressions = 0
        return taken

    def update_many(self, events: Iterable[Event]) -> None:
        """Count (already de-duplicated) events: the flow's per-batch call, lookups hoisted."""
        index, per_ms, counts, gap_ms, opens = _INDEX, self._per_ms, self.counts, self.session_gap_ms, _OPENS
        max_idle_ms = self.max_idle_ms
        exp2 = math.exp2
        for event in events:
            i = index.get(event.type)
            if i is None:
                continue  # conversions and the like say nothing about shopping habits
            ts = event.ts
            if self.base_ms is None:
                self.base_ms = self.clock_ms = self.first_ms = float(ts)
                self.ref_ms = ts
                clock = self.clock_ms
                new_visit = True
            else:
                since = ts - self.ref_ms
                new_visit = i in opens or since >= gap_ms
                if since > 0:
                    self.ref_ms = ts
                    clock = self.clock_ms = self.clock_ms + (since if since < max_idle_ms else max_idle_ms)
                    if clock - self.base_ms > self.REBASE_HALF_LIVES * self.half_life_ms:
                        self._rebase(clock)
                else:  # a late event: as far behind on the user's clock as in time
                    clock = self.clock_ms + since
                    if clock < self.first_ms:
                        self.first_ms = clock
            weight = exp2((clock - self.base_ms) * per_ms)
            counts[i] += weight
            if new_visit:
                counts[_VISITS] += weight
                self.visits_total += 1
            if i == _IMP:
                self.impressions += 1
            elif i == _CLICK:
                self.clicks += 1
            elif i == _BUY and event.value:
                counts[_SPEND] += weight * event.value

    def _rebase(self, base_ms: float) -> None:
        factor = 2.0 ** ((self.base_ms - base_ms) / self.half_life_ms)
        counts = self.counts
        for k in range(len(counts)):  # in place: update_many holds a reference to the list
            counts[k] *= factor
        self.base_ms = base_ms

    def decayed(self) -> list[float]:
        """The counts as of the newest event (each event's weight halved per half-life since)."""
        if self.ref_ms is None:
            return [0.0] * _N_COUNTS
        factor = 2.0 ** ((self.base_ms - self.clock_ms) / self.half_life_ms)
        return [c * factor for c in self.counts]

    def evidence(self) -> tuple[float, ...]:
        """The decayed counts, then the decayed days the user has been around.

        The days are the integral of the decay from the first event to the
        newest (on the user's clock), so visits over days is a visit rate
        whatever the user's tenure (a user seen for a day is not read as rare).
        """
        out = self.decayed()
        if self.ref_ms is None:
            return (*out, 0.0)
        span = (self.clock_ms - self.first_ms) / self.half_life_ms
        days = self.half_life_ms / 86_400_000 / _LN2 * (1.0 - 2.0**-span)
        return (*out, days)

    @property
    def sessions(self) -> float:
        """Decayed visits (explicit opens and starts after an inactivity gap)."""
        return self.decayed()[_VISITS]

    def vector(self, min_sessions: float = 0.0, priors: dict[str, float] | None = None) -> dict[str, float] | None:
        """The user's features (see `feature_vector`), smoothed towards ``priors``
        (default: those of a `TrafficPriors` that has seen no traffic yet, every
        prior 0); None with fewer than ``min_sessions`` visits in all."""
        if self.visits_total < min_sessions:
            return None
        return feature_vector(self.evidence(), priors or TrafficPriors().values())[0]

    def __getstate__(self):
        return (
            self.half_life_ms,
            self.base_ms,
            self.ref_ms,
            self.counts,
            self.clicks,
            self.impressions,
            self.session_gap_ms,
            self.max_idle_ms,
            self.clock_ms,
            self.first_ms,
            self.visits_total,
        )

    def __setstate__(self, state):
        if len(state) == 6:  # a snapshot from before visits were counted: opens were the visits
            half_life_ms, base_ms, ref_ms, counts, clicks, impressions = state
            counts = [*counts, counts[_EOPEN] + counts[_APP]]
            visits = round(2.0 ** ((base_ms - ref_ms) / half_life_ms) * counts[_VISITS]) if ref_ms else 0
            state = (
                half_life_ms,
                base_ms,
                ref_ms,
                counts,
                clicks,
                impressions,
                1_800_000.0,
                86_400_000.0,
                ref_ms,
                base_ms,
                visits,
            )
        (
            self.half_life_ms,
            self.base_ms,
            self.ref_ms,
            self.counts,
            self.clicks,
            self.impressions,
            self.session_gap_ms,
            self.max_idle_ms,
            self.clock_ms,
            self.first_ms,
            self.visits_total,
        ) = state
        self._per_ms = 1.0 / self.half_life_ms

    def __eq__(self, other):
        return isinstance(other, Behaviour) and self.__getstate__() == other.__getstate__()


def ratio_parts(e: Sequence[float]) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) of every feature from one user's evidence; rates capped at 1.

    The audience computes them once per update, for the priors and the features both.
    """
    visits, clicks = e[_VISITS], e[_CLICK] + e[_ECLICK]
    return {
        "email_share": (min(e[_EOPEN], visits), visits),
        "ctr": (min(e[_CLICK], e[_IMP]), e[_IMP]),
        "cart_rate": (min(e[_CART], e[_PV]), e[_PV]),
        "purchase_rate": (min(e[_BUY], e[_CART]), e[_CART]),
        "conversion": (min(e[_BUY], clicks), clicks),
        "order_value": (e[_SPEND], e[_BUY]),
        "browse_depth": (e[_PV] + clicks, visits),
        "visit_frequency": (visits, e[_EXPOSURE]),
    }


def _fed_by(seen: int) -> int:
    """Bits of the features fed when the kinds in ``seen`` (one bit per `_KINDS` index) were seen."""
    mask = 0
    for name, groups in _EVIDENCE_KINDS.items():
        if all(any(seen >> k & 1 for k in group) for group in groups):
            mask |= FEATURE_BIT[name]
    return mask


# Every combination of kinds seen, worked out once: the mask is a table look-up per update.
_FED_BY_KINDS_SEEN = tuple(_fed_by(seen) for seen in range(1 << len(_KINDS)))


def evidence_mask(e: Sequence[float]) -> int:
    """Bits (`FEATURE_BIT`) of the features this user's evidence feeds: each kind it rests on was seen."""
    seen = 0
    for k in range(len(_KINDS)):
        if e[k] > 0:
            seen |= 1 << k
    return _FED_BY_KINDS_SEEN[seen]


def feature_vector(
    e: Sequence[float], priors: dict[str, float], parts: dict[str, tuple[float, float]] | None = None
) -> tuple[dict[str, float], int]:
    """The features of one user's evidence, and the mask of those it feeds.

    ``parts`` are the evidence's `ratio_parts`, when the caller has them already.

    Each feature is ``(numerator + w * prior) / (denominator + w)`` with the
    prior's weight ``w`` from `PRIOR_WEIGHTS`: with no evidence it is the
    prior, with much it is the user's own ratio. Rates stay in [0, 1] (their
    numerators are capped and their priors are rates).

    >>> e = [0.0] * 11
    >>> e[_CLICK], e[_BUY], e[_SPEND], e[_VISITS], e[_EXPOSURE] = 1.0, 5.0, 150.0, 2.0, 1.0
    >>> v, fed = feature_vector(e, {**TrafficPriors().values(), "conversion": 0.1})
    >>> round(v["conversion"], 3), v["ctr"]  # 5 purchases after 1 click convert at most 1: (1 + 0.2) / 3
    (0.4, 0.0)
    >>> [name for name in FEATURE_NAMES if fed & FEATURE_BIT[name]]
    ['conversion', 'order_value', 'browse_depth', 'visit_frequency']
    """
    out = {}
    for name, (num, den) in (parts or ratio_parts(e)).items():
        w = PRIOR_WEIGHTS[name]
        out[name] = (num + w * priors[name]) / (den + w)
    return out, evidence_mask(e)


class TrafficPriors:
    """Each feature's pooled value over the traffic, the prior users are smoothed towards.

    Sums of every update's numerators and denominators (rates capped, as in
    `feature_vector`), forgetting with a horizon of ``horizon`` updates, so the
    priors follow the traffic as it changes. Before any evidence a rate's
    prior is 0 and it waits for data; nothing comes from the simulator.

    >>> p = TrafficPriors()
    >>> e = [0.0] * 11
    >>> e[_IMP], e[_CLICK], e[_VISITS], e[_EXPOSURE] = 10.0, 30.0, 1.0, 1.0
    >>> p.observe([e])
    >>> p.values()["ctr"]  # 30 clicks on 10 impressions is a click-through of 1, not 3
    1.0
    """

    def __init__(self, horizon: int = 10_000):
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1 update, got {horizon}")
        self.horizon = horizon
        self.num = dict.fromkeys(FEATURE_NAMES, 0.0)
        self.den = dict.fromkeys(FEATURE_NAMES, 0.0)

    def observe(self, evidences: Sequence[Sequence[float]]) -> None:
        """Add a batch of users' evidence (the older sums fade by the batch's size)."""
        self.observe_parts([ratio_parts(e) for e in evidences])

    def observe_parts(self, batch: Sequence[dict[str, tuple[float, float]]]) -> None:
        """`observe` for evidence already split into its `ratio_parts`."""
        if not batch:
            return
        keep = (1.0 - 1.0 / self.horizon) ** len(batch)
        num, den = self.num, self.den
        for name in FEATURE_NAMES:
            num[name] *= keep
            den[name] *= keep
        for parts in batch:
            for name, (n, d) in parts.items():
                num[name] += n
                den[name] += d

    def values(self) -> dict[str, float]:
        """Prior per feature: pooled numerator over pooled denominator (0 with no denominator yet)."""
        return {name: (self.num[name] / d if (d := self.den[name]) > 0 else 0.0) for name in FEATURE_NAMES}


class SegmentProfile(msgspec.Struct, frozen=True, kw_only=True):
    """What a segment looks like: the API serves these, `tailor segments` prints them."""

    segment: int
    label: str
    #: Users whose latest assignment is this segment, and their share of all assigned users.
    size: int
    share: float
    #: The centre in the features' own units (order value in money, rates as fractions).
    centre: dict[str, float]
    model_version: int


class SegmentModel:
    """Scaler + River KMeans: a warm-up fit, then each user's latest vector in the centres; versioned re-fits.

    Parameters
    ----------
    n_segments
        Clusters (segments).
    warmup
        Distinct users' vectors collected before the first fit; until then nothing is assigned.
    sample
        Users whose latest vectors are kept for a re-fit (the most recently active).
    seed
        Seed of the clusterer and of the fit: fits are reproducible.
    min_coverage
        A feature is used by a fit only if at least this share of the users in
        the sample have evidence for it (``learn``'s ``fed`` mask); the others
        carry no weight until a re-fit finds them fed.
    refit_gain
        `consolidate` says a re-fit is due when a fresh fit on the sample would
        lower its within-segment sum of squares by at least this share: the
        traffic's structure has outgrown the fit (a first fit on young
        histories, which mature for weeks). Smaller gains are the noise
        between near-equal fits and would only churn the segments.
    check_every
        That comparison (a batch fit of the sample) runs once per this many
        updates per user in the sample, so its cost spread over the updates stays small;
        and also each time the events learnt from have doubled since the last fit or
        look. An update is one user in one batch, so how many a stream makes depends on
        its batching: on sparse traffic (users who come back months later) the
        per-update look may never come, while the doublings come at the same points of
        the stream whatever the batching, a few times over its life (measured on the
        simulator's years shape, engine only: 500-event batches gave no look and ARI
        0.54, 100-event batches one look, a re-fit, and 0.92).

    Notes
    -----
    A centre is the mean of the latest vectors (in standard units) of the
    sample's users assigned to it: an update takes the user's previous vector
    out of its centre and puts the new one in the nearest. So every user weighs
    once, however often they come back, as in the fit, and the centres stay
    where the fit's objective has them. River's own KMeans step (a centre moves
    a fixed 5 % towards every update) let frequent users pull the centres: on
    clicks-and-purchases traffic (100 updates per user) a good fit wandered off
    within thousands of updates. The scaler is fitted with the clusters and
    kept until the next fit, so the centres stay exact means.

    Examples
    --------
    >>> model = SegmentModel(n_segments=2, warmup=40, seed=1)
    >>> import random
    >>> rng = random.Random(0)
    >>> for i in range(40):
    ...     base = 0.1 if i % 2 else 0.8
    ...     _ = model.learn({name: base + rng.random() / 50 for name in FEATURE_NAMES}, user_id=f"u{i}",
    ...                     fed=ALL_FEATURES & ~FEATURE_BIT["ctr"])
    >>> model.version, "ctr" in model.features
    (1, False)
    >>> low, _ = model.assign({name: 0.1 for name in FEATURE_NAMES})
    >>> high, _ = model.assign({name: 0.8 for name in FEATURE_NAMES})
    >>> low != high, sorted(model.counts)
    (True, [20, 20])
    """

    def __init__(
        self,
        n_segments: int = 4,
        *,
        warmup: int = 300,
        sample: int = 5000,
        seed: int = 1,
        min_coverage: float = MIN_COVERAGE,
        refit_gain: float = 0.03,
        check_every: int = 20,
    ):
        if n_segments < 2:
            raise ValueError(f"n_segments must be at least 2, got {n_segments}")
        if warmup < n_segments:
            raise ValueError(f"warmup must be at least n_segments ({n_segments}), got {warmup}")
        if not 0 <= min_coverage <= 1:
            raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
        if not 0 < refit_gain <= 1:
            raise ValueError(f"refit_gain must be in (0, 1] (1: never re-fit on its own), got {refit_gain}")
        if check_every < 1:
            raise ValueError(f"check_every must be at least 1 update per user, got {check_every}")
        self.n_segments = n_segments
        self.warmup = warmup
        self.seed = seed
        self.min_coverage = min_coverage
        self.refit_gain = refit_gain
        self.check_every = check_every
        self.version = 0
        self.sample = max(sample, warmup)
        #: The features the current fit uses (those the traffic feeds), in `FEATURE_NAMES` order.
        self.features: tuple[str, ...] = FEATURE_NAMES
        #: Per recently active user: (vector in model space, newest event time, mask of fed features).
        self.recent: OrderedDict[str, tuple[dict[str, float], int, int]] = OrderedDict()
        #: Per user in the sample: (segment, scaled vector) that user holds in that segment's centre.
        self.placed: dict[str, tuple[int, dict[str, float]]] = {}
        #: Users in each segment's centre.
        self.counts = [0] * n_segments
        #: Updates learnt since the last `consolidate`, and the gain it measured.
        self.updates = 0
        self.last_gain = 0.0
        #: Events learnt from (the updates' weights) in all, and the count at which the next look is due.
        self.events_seen = 0
        self.next_look_events = 0
        self.scaler = preprocessing.StandardScaler()
        self.clusterer = self._new_clusterer()

    def _new_clusterer(self) -> cluster.KMeans:
        return _EuclideanKMeans(n_clusters=self.n_segments, sigma=1.0, seed=self.seed + self.version)

    @property
    def fitted(self) -> bool:
        return self.version > 0

    def learn(
        self, vector: dict[str, float], user_id: str, ts: int = 0, fed: int = ALL_FEATURES, events: int = 1
    ) -> tuple[int, float]:
        """Learn from one user's latest vector and assign it: ``(segment, distance)``.

        ``fed`` is the mask (`FEATURE_BIT`) of the features the user has
        evidence for; it decides, over the sample, which features a fit uses.
        ``events`` is how many events the update covers (it schedules `consolidate`).
        The distance is to the segment's centre (after this update moved it), in
        standard units. Before the
        first fit (the warm-up) nothing is assigned: ``(-1, nan)``.
        """
        x = _model_space(vector)
        self.events_seen += events
        recent = self.recent
        recent[user_id] = (x, ts, fed)
        recent.move_to_end(user_id)
        if len(recent) > self.sample:
            gone, _ = recent.popitem(last=False)
            self._unplace(gone)
        if not self.fitted:
            if len(recent) < self.warmup:
                return -1, math.nan
            self.refit()  # places every user of the sample, this one included
            segment, scaled = self.placed[user_id]
        else:
            self._unplace(user_id)
            scaled = self._scaled(x)
            segment = self._place(user_id, scaled)
        self.updates += 1
        centre = self.clusterer.centers[segment]
        return segment, math.sqrt(sum((value - centre[name]) ** 2 for name, value in scaled.items()))

    def _place(self, user_id: str, scaled: dict[str, float]) -> int:
        """Put the user's vector in its nearest centre (a running mean); returns the segment."""
        segment = self.clusterer.predict_one(scaled)
        n = self.counts[segment] = self.counts[segment] + 1
        centre = self.clusterer.centers[segment]
        for name, value in scaled.items():
            centre[name] += (value - centre[name]) / n
        self.placed[user_id] = (segment, scaled)
        return segment

    def _unplace(self, user_id: str) -> None:
        """Take the user's vector out of the centre holding it (an empty centre stays where it was)."""
        held = self.placed.pop(user_id, None)
        if held is None:
            return
        segment, scaled = held
        n = self.counts[segment] = self.counts[segment] - 1
        if n:
            centre = self.clusterer.centers[segment]
            for name, value in scaled.items():
                centre[name] -= (value - centre[name]) / n

    def assign(self, vector: dict[str, float]) -> tuple[int, float]:
        """(segment, distance to its centre in standard units), without learning; (-1, nan) before the first fit."""
        if not self.fitted:
            return -1, math.nan
        return self._nearest(self._scaled(_model_space(vector)))

    def _scaled(self, x: dict[str, float]) -> dict[str, float]:
        return self.scaler.transform_one({name: x[name] for name in self.features})

    def assign_sample(self) -> list[tuple[str, int, float, int]]:
        """``(user_id, segment, distance, ts)`` for every user in the re-fit sample.

        Called after a (re-)fit, so users seen before it get a segment (and the
        new version) without waiting for their next event.
        """
        out = []
        for user_id, (x, ts, _) in self.recent.items():
            segment, distance = self._nearest(self._scaled(x))
            out.append((user_id, segment, distance, ts))
        return out

    def _nearest(self, scaled: dict[str, float]) -> tuple[int, float]:
        segment = self.clusterer.predict_one(scaled)
        centre = self.clusterer.centers[segment]
        return segment, math.sqrt(sum((value - centre[name]) ** 2 for name, value in scaled.items()))

    def coverage(self) -> dict[str, float]:
        """Per feature, the share of the users in the sample who have evidence for it."""
        n = len(self.recent) or 1
        counts = dict.fromkeys(FEATURE_NAMES, 0)
        bits = FEATURE_BIT.items()
        for _, _, fed in self.recent.values():
            for name, bit in bits:
                if fed & bit:
                    counts[name] += 1
        return {name: c / n for name, c in counts.items()}

    def consolidate(self) -> bool | None:
        """The periodic look at the whole sample: None while not due, else whether a re-fit is due.

        Due once per ``check_every`` updates per user in the sample. A user is
        placed in the nearest centre when they update, so the placements of
        users who have not come back since the centres moved go stale, and the
        scaler was fitted on the sample of the last fit. So this fits a fresh
        scaler on the sample and refines the current centres by Lloyd
        iterations from where they are (the same segments, ids kept, no new
        version), then places every user of the sample anew (`assign_sample`
        says where). Unless a fresh fit on the sample lowers the within-segment
        sum of squares by ``refit_gain`` (``last_gain``): then nothing is
        changed and True says the caller should re-fit (`refit`), as after drift.
        """
        seen = self.events_seen
        doubled = 0 < self.next_look_events <= seen
        if not self.fitted or (self.updates < self.check_every * len(self.recent) and not doubled):
            return None
        self.updates = 0
        self.next_look_events = 2 * seen
        old_scale = np.array([math.sqrt(self.scaler.vars.get(name, 0.0)) or 1.0 for name in self.features])
        old_shift = np.array([self.scaler.means.get(name, 0.0) for name in self.features])
        raw_centres = self.centres_scaled() * old_scale + old_shift
        scaler, scaled, points = self._scaled_sample()
        scale = np.array([math.sqrt(scaler.vars.get(name, 0.0)) or 1.0 for name in self.features])
        shift = np.array([scaler.means.get(name, 0.0) for name in self.features])
        refined = _lloyd(points, (raw_centres - shift) / scale)
        fresh = kmeans(points, self.n_segments, seed=self.seed + self.version + 1)
        now, better = _inertia(points, refined), _inertia(points, fresh)
        self.last_gain = 1.0 - better / now if now > 0 else 0.0
        if self.last_gain >= self.refit_gain:
            return True
        self.scaler = scaler
        for k, centre in enumerate(refined):
            self.clusterer.centers[k].update(zip(self.features, map(float, centre)))
        self._place_sample(scaled)
        return False

    def _scaled_sample(self) -> tuple[preprocessing.StandardScaler, list[dict[str, float]], np.ndarray]:
        """A scaler fitted on the sample (the features in use), the scaled sample, and it as an array."""
        sample = [{name: x[name] for name in self.features} for x, _, _ in self.recent.values()]
        scaler = preprocessing.StandardScaler()
        for x in sample:
            scaler.learn_one(x)
        scaled = list(map(scaler.transform_one, sample))
        return scaler, scaled, np.array([[z[f] for f in self.features] for z in scaled])

    def refit(self) -> None:
        """A fresh scaler and clusterer fitted on the recent sample; ``version`` + 1.

        The fit uses the features enough of the sample has evidence for
        (``min_coverage``), is batch k-means (k-means++ seeding, Lloyd
        iterations) on the scaled sample, and its centres become the River
        KMeans' centres: each the mean of the sample's users nearest it, whom
        later updates move one at a time (see Notes).
        """
        if len(self.recent) < self.n_segments:
            raise ValueError(f"a re-fit needs at least {self.n_segments} recent vectors, have {len(self.recent)}")
        old = self.centres_scaled() if self.fitted else None
        old_features = self.features
        coverage = self.coverage()
        features = tuple(name for name in FEATURE_NAMES if coverage[name] >= self.min_coverage)
        # Visit frequency needs no particular kind of event, so a fit always has a feature.
        self.features = features or ("visit_frequency",)
        self.version += 1
        self.scaler, scaled, points = self._scaled_sample()
        centres = kmeans(points, self.n_segments, seed=self.seed + self.version)
        self.clusterer = self._new_clusterer()
        for k, centre in enumerate(centres):
            self.clusterer.centers[k].update(zip(self.features, map(float, centre)))
        if old is not None and old_features == self.features:
            self._keep_ids(old)
        self._place_sample(scaled)
        self.updates = 0
        self.next_look_events = 2 * self.events_seen

    def _place_sample(self, scaled: list[dict[str, float]]) -> None:
        """Each centre becomes the mean of the sample's users nearest it (one Lloyd step: the fit's own centres)."""
        self.placed, self.counts = {}, [0] * self.n_segments
        nearest = [self.clusterer.predict_one(z) for z in scaled]
        for k in set(nearest):  # a centre no user is nearest keeps the fit's position
            self.clusterer.centers[k].update(dict.fromkeys(self.features, 0.0))
        for user_id, z, segment in zip(self.recent, scaled, nearest):
            n = self.counts[segment] = self.counts[segment] + 1
            centre = self.clusterer.centers[segment]
            for name, value in z.items():
                centre[name] += (value - centre[name]) / n
            self.placed[user_id] = (segment, z)

    def centres_scaled(self) -> np.ndarray:
        return np.array([[self.clusterer.centers[k][f] for f in self.features] for k in range(self.n_segments)])

    def _keep_ids(self, old: np.ndarray) -> None:
        """Renumber the new clusters so each takes the id of the old one it is closest to."""
        new = self.centres_scaled()
        cost = ((new[:, None, :] - old[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        centres = dict(self.clusterer.centers)
        for new_id, old_id in zip(rows, cols):
            self.clusterer.centers[int(old_id)] = centres[int(new_id)]

    def centres(self) -> dict[int, dict[str, float]]:
        """Segment centres in the features' own units (rates within [0, 1]), for the features in use."""
        out = {}
        for segment, centre in self.clusterer.centers.items():
            row = {}
            for name in self.features:
                mean = self.scaler.means.get(name, 0.0)
                std = math.sqrt(self.scaler.vars.get(name, 0.0)) or 1.0
                value = centre.get(name, 0.0) * std + mean
                if name in _LOG_FEATURES:
                    value = math.expm1(value)
                # The scaler keeps learning after the fit, so a centre mapped back can
                # step just past a bound its points never cross.
                row[name] = min(max(value, 0.0), 1.0) if name in RATE_FEATURES else max(value, 0.0)
            out[segment] = row
        return out

    def _centres_in_sample_units(self) -> dict[int, dict[str, float]]:
        """The centres in standard units of the users now in the sample, what labels compare them with.

        The scaler is the one of the last fit or look at the sample (see `consolidate`); users' vectors
        move on since (young users' visit frequency falls as their tenure grows), and a label read
        off the old scale would call every segment an occasional visitor.
        """
        raw = np.array([[x[name] for name in self.features] for x, _, _ in self.recent.values()])
        mean, std = raw.mean(0), raw.std(0)
        std[std == 0] = 1.0
        scale = np.array([math.sqrt(self.scaler.vars.get(name, 0.0)) or 1.0 for name in self.features])
        shift = np.array([self.scaler.means.get(name, 0.0) for name in self.features])
        z = ((self.centres_scaled() * scale + shift) - mean) / std
        return {k: dict(zip(self.features, map(float, row))) for k, row in enumerate(z)}

    def profiles(self, sizes: dict[int, int]) -> list[SegmentProfile]:
        """Profiles of every segment, given how many users each holds now."""
        if not self.fitted:
            return []
        total = sum(sizes.values()) or 1
        labels = segment_labels(self._centres_in_sample_units())
        return [
            SegmentProfile(
                segment=k,
                label=labels[k],
                size=sizes.get(k, 0),
                share=sizes.get(k, 0) / total,
                centre={name: round(value, 4) for name, value in centre.items()},
                model_version=self.version,
            )
            for k, centre in sorted(self.centres().items())
        ]

    def __setstate__(self, state):
        # Snapshots from before looks at doublings of the events: the next look comes at the next fit or look.
        state.setdefault("events_seen", 0)
        state.setdefault("next_look_events", 0)
        # Snapshots from before feature masks: every feature was used, every user fed them all.
        self.__dict__.update(state)
        if "features" not in state:
            self.features = tuple(name for name in FEATURE_NAMES if name in _OLD_FEATURES)
            self.min_coverage = MIN_COVERAGE
            self.recent = OrderedDict((u, (x, ts, ALL_FEATURES)) for u, (x, ts) in self.recent.items())
        if "placed" not in state:
            # Snapshots from before centres held each user once (River's step moved them): the
            # sample's users go into their nearest centres now, and re-fits are compared from here on.
            self.refit_gain, self.check_every, self.updates, self.last_gain = 0.03, 20, 0, 0.0
            if self.fitted:
                self._place_sample([self._scaled(x) for x, _, _ in self.recent.values()])
            else:
                self.placed, self.counts = {}, [0] * self.n_segments


# The features of snapshots taken before `SegmentModel.features` existed.
_OLD_FEATURES = ("email_share", "ctr", "cart_rate", "purchase_rate", "order_value", "browse_depth")


class _EuclideanKMeans(cluster.KMeans):
    """River's KMeans, with its nearest-centre search specialised to p=2 and known features.

    River's generic search (any p, any feature set) is most of the cost of an
    update. `SegmentModel` moves the centres itself (each user's latest vector
    once, see its Notes), not with River's fixed step.
    """

    def predict_one(self, x):
        best, best_d = 0, math.inf
        for c, centre in self.centers.items():
            d = 0.0
            for k, v in x.items():
                d += (centre[k] - v) ** 2
            if d < best_d:
                best, best_d = c, d
        return best


def kmeans(points: np.ndarray, k: int, *, seed: int, restarts: int = 4, iterations: int = 50) -> np.ndarray:
    """Batch k-means: k-means++ seeding, Lloyd iterations, best of ``restarts``; returns centres.

    >>> pts = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> sorted(kmeans(pts, 2, seed=1)[:, 0].round(2).tolist())
    [0.05, 5.05]
    """
    rng = np.random.default_rng(seed)
    best, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = points[[rng.integers(len(points))]]
        while len(centres) < k:  # k-means++: far points are likelier next centres
            d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centres = np.vstack([centres, points[rng.choice(len(points), p=p)]])
        for _ in range(iterations):
            labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
            moved = np.array([points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
            if np.allclose(moved, centres):
                break
            centres = moved
        inertia = ((points[:, None, :] - centres[None]) ** 2).sum(-1).min(1).sum()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def _lloyd(points: np.ndarray, centres: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Lloyd iterations from the given centres (a centre no point is nearest stays put)."""
    for _ in range(iterations):
        labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        moved = np.array(
            [points[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(len(centres))]
        )
        if np.allclose(moved, centres):
            break
        centres = moved
    return centres


def _inertia(points: np.ndarray, centres: np.ndarray) -> float:
    """Within-segment sum of squares: each point's squared distance to its nearest centre."""
    return float(((points[:, None, :] - centres[None]) ** 2).sum(-1).min(1).sum())


def _model_space(vector: dict[str, float]) -> dict[str, float]:
    return {name: (math.log1p(value) if name in _LOG_FEATURES else value) for name, value in vector.items()}


def _standing_out(scaled_centre: dict[str, float], min_z: float) -> list[tuple[str, str]]:
    """(feature, phrase) of the features that stand out, most first."""
    ranked = sorted(
        ((abs(z), name, z) for name, z in scaled_centre.items() if name in FEATURES and abs(z) >= min_z), reverse=True
    )
    return [(name, FEATURES[name][0 if z > 0 else 1]) for _, name, z in ranked]


def label_of(scaled_centre: dict[str, float], *, top: int = 2, min_z: float = 0.5) -> str:
    """A readable label from the features that stand out most (in standard units).

    >>> label_of({"order_value": 1.4, "email_share": 0.9, "ctr": -0.2})
    'high spend, email-driven'
    >>> label_of({"ctr": 0.1})
    'typical'
    """
    phrases = [phrase for _, phrase in _standing_out(scaled_centre, min_z)[:top]]
    return ", ".join(phrases) or "typical"


def segment_labels(scaled_centres: dict[int, dict[str, float]], *, top: int = 2, min_z: float = 0.5) -> dict[int, str]:
    """Labels of all segments, distinct from one another.

    Each names its ``top`` most distinctive features; two labels of the same
    words (in any order) take more of their features until they differ, and
    only segments that still read alike get their id appended. A label names
    only the features the model uses (those in the centres).

    >>> segment_labels({0: {"order_value": 1.0, "ctr": 0.8, "cart_rate": 0.6},
    ...                 1: {"ctr": 1.0, "order_value": 0.9, "cart_rate": -0.7},
    ...                 2: {"ctr": 0.1}, 3: {"ctr": -0.1}})
    {0: 'high spend, click-happy, fills carts', 1: 'click-happy, high spend, rarely carts', 2: 'typical (2)', 3: 'typical (3)'}
    """
    standing = {k: _standing_out(c, min_z) for k, c in scaled_centres.items()}
    take = dict.fromkeys(standing, top)

    def words(k: int) -> frozenset[str]:
        return frozenset(phrase for _, phrase in standing[k][: take[k]])

    while True:
        groups: dict[frozenset[str], list[int]] = {}
        for k in standing:
            groups.setdefault(words(k), []).append(k)
        grown = False
        for members in groups.values():
            if len(members) > 1:
                for k in members:
                    if take[k] < len(standing[k]):
                        take[k] += 1
                        grown = True
        if not grown:
            break
    labels = {k: ", ".join(phrase for _, phrase in standing[k][: take[k]]) or "typical" for k in standing}
    return unique_labels(labels)


def unique_labels(labels: dict[int, str]) -> dict[int, str]:
    """Labels made unique by appending the segment id where two would read the same (in any word order)."""

    def key(label: str) -> frozenset[str]:
        return frozenset(label.split(", "))

    seen: dict[frozenset[str], int] = {}
    for label in labels.values():
        seen[key(label)] = seen.get(key(label), 0) + 1
    return {k: (f"{label} ({k})" if seen[key(label)] > 1 else label) for k, label in labels.items()}


def adjusted_rand_index(truth: Sequence, predicted: Sequence) -> float:
    """Adjusted Rand index of two labelings (1: identical partitions, ~0: chance).

    >>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> round(adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]), 3)
    -0.5
    """
    if len(truth) != len(predicted) or len(truth) < 2:
        raise ValueError("adjusted_rand_index needs two labelings of the same length, at least 2")
    _, a = np.unique(np.asarray(truth, dtype=object).astype(str), return_inverse=True)
    _, b = np.unique(np.asarray(predicted, dtype=object).astype(str), return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)

    def pairs(x):
        return float((x * (x - 1) / 2).sum())

    index, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), len(a) * (len(a) - 1) / 2
    expected = rows * cols / total
    best = (rows + cols) / 2
    if best == expected:
        return 1.0
    return (index - expected) / (best - expected)
