"""Segments: who a user is, learned incrementally from how they behave.

Two pieces, both pure:

`Behaviour` is per user (it lives beside the tiles in the flow's per-user
state): counts of each kind of event, exponentially decayed in *event* time
with a half-life of days, so a user's segment follows a change of habits
without forgetting them overnight. Its `vector` is a handful of rates that
separate kinds of shoppers and do not drift with the hour of day: how often a
visit starts from an email, click-through, cart and purchase rates, order
value, browsing depth. Rates are smoothed towards neutral priors, so a user
with little history sits near the middle instead of at an extreme.

`SegmentModel` is shared by all users (the flow keeps one, on one worker):
River's `StandardScaler` then River's `KMeans`. It waits for a warm-up sample of
distinct users (so the fit means the same whether a batch brings a user one
event or a hundred), fits on it (batch k-means), then keeps learning from every updated
vector. A re-fit (after drift, or on request) starts a fresh scaler and
clusterer on the latest vectors of the most recently active users (one per
user, so heavy users do not dominate the fit) and bumps `version`; new clusters are
matched to the old ones (Hungarian on centre distance) so segment ids stay put
where the segments did. Why KMeans: see ``tailor bench clusterers`` and the
README (best adjusted Rand index on simulated traffic, ~20 µs an update).

Examples
--------
>>> from engine.events import Event
>>> b = Behaviour(half_life_s=3 * 86_400)
>>> for i, kind in enumerate(["email_open", "email_click", "page_view", "add_to_cart", "purchase"]):
...     b.update(Event(f"e{i}", kind, "u1", 1_767_225_600_000 + 1_000 * i, value=40.0 if kind == "purchase" else None))
>>> round(b.sessions, 3), round(b.vector()["email_share"], 3), b.vector(min_sessions=2) is None
(1.0, 0.5, True)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
from river import cluster, preprocessing
from scipy.optimize import linear_sum_assignment

from engine.events import Event

# Behaviour counts, in this order.
_KINDS = ("page_view", "click", "add_to_cart", "purchase", "impression", "email_open", "email_click", "app_open")
_INDEX = {kind: i for i, kind in enumerate(_KINDS)}
_PV, _CLICK, _CART, _BUY, _IMP, _EOPEN, _ECLICK, _APP = range(8)
_SPEND = 8

#: The segmentation features, with what a high and a low value says about a user.
FEATURES: dict[str, tuple[str, str]] = {
    "email_share": ("email-driven", "app-first"),
    "ctr": ("click-happy", "rarely clicks"),
    "cart_rate": ("fills carts", "rarely carts"),
    "purchase_rate": ("buys what they cart", "abandons carts"),
    "order_value": ("high spend", "budget"),
    "browse_depth": ("deep browser", "quick looks"),
}
FEATURE_NAMES = tuple(FEATURES)
# Order values are heavy-tailed: the model sees log1p of them; profiles show money.
_LOG_FEATURES = frozenset({"order_value"})
# Pseudo-counts: (prior rate, weight). Chosen near the middle of plausible rates.
_PRIOR_EMAIL, _PRIOR_CTR, _PRIOR_CART, _PRIOR_BUY = (0.25, 2.0), (0.15, 2.0), (0.1, 2.0), (0.5, 1.0)
_PRIOR_ORDER_VALUE = 50.0


class Behaviour:
    """One user's decayed event counts; `vector` turns them into features.

    Parameters
    ----------
    half_life_s
        Event-time half-life of the counts. Long enough for rates to be
        measured (a few sessions), short enough that a change of habits shows
        within days.

    Notes
    -----
    Counts are kept relative to a base time: an event at ``t`` adds
    ``2 ** ((t - base) / half_life)``, and reading divides by the same factor at
    the newest event time. That is one power per event instead of decaying
    every count on every event; the base moves forward before the factors
    could grow large.
    """

    __slots__ = ("half_life_ms", "_per_ms", "base_ms", "ref_ms", "counts", "clicks", "impressions")

    #: Move the base forward once the newest event is this many half-lives past it.
    REBASE_HALF_LIVES = 64

    def __init__(self, half_life_s: float):
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_ms = half_life_s * 1000.0
        self._per_ms = 1.0 / self.half_life_ms
        self.base_ms: int | None = None
        self.ref_ms: int | None = None  # newest event time
        self.counts = [0.0] * 9
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
        index, per_ms, counts = _INDEX, self._per_ms, self.counts
        exp2 = math.exp2
        for event in events:
            i = index.get(event.type)
            if i is None:
                continue  # conversions and the like say nothing about shopping habits
            ts = event.ts
            if self.base_ms is None:
                self.base_ms = self.ref_ms = ts
            elif ts > self.ref_ms:
                self.ref_ms = ts
                if ts - self.base_ms > self.REBASE_HALF_LIVES * self.half_life_ms:
                    self._rebase(ts)
            weight = exp2((ts - self.base_ms) * per_ms)
            counts[i] += weight
            if i == _IMP:
                self.impressions += 1
            elif i == _CLICK:
                self.clicks += 1
            elif i == _BUY and event.value:
                counts[_SPEND] += weight * event.value

    def _rebase(self, base_ms: int) -> None:
        factor = 2.0 ** ((self.base_ms - base_ms) / self.half_life_ms)
        counts = self.counts
        for k in range(len(counts)):  # in place: update_many holds a reference to the list
            counts[k] *= factor
        self.base_ms = base_ms

    def decayed(self) -> list[float]:
        """The counts as of the newest event (each event's weight halved per half-life since)."""
        if self.ref_ms is None:
            return [0.0] * 9
        factor = 2.0 ** ((self.base_ms - self.ref_ms) / self.half_life_ms)
        return [c * factor for c in self.counts]

    @property
    def sessions(self) -> float:
        """Decayed visits (app opens plus email opens)."""
        c = self.decayed()
        return c[_EOPEN] + c[_APP]

    def vector(self, min_sessions: float = 0.0) -> dict[str, float] | None:
        """The user's features (see `FEATURES`), smoothed towards the priors;
        None with fewer than ``min_sessions`` decayed visits."""
        c = self.decayed()
        sessions = c[_EOPEN] + c[_APP]
        if sessions < min_sessions:
            return None
        return {
            "email_share": (c[_EOPEN] + _PRIOR_EMAIL[0] * _PRIOR_EMAIL[1]) / (sessions + _PRIOR_EMAIL[1]),
            "ctr": (c[_CLICK] + _PRIOR_CTR[0] * _PRIOR_CTR[1]) / (c[_IMP] + _PRIOR_CTR[1]),
            "cart_rate": (c[_CART] + _PRIOR_CART[0] * _PRIOR_CART[1]) / (c[_PV] + _PRIOR_CART[1]),
            "purchase_rate": (c[_BUY] + _PRIOR_BUY[0] * _PRIOR_BUY[1]) / (c[_CART] + _PRIOR_BUY[1]),
            "order_value": (c[_SPEND] + _PRIOR_ORDER_VALUE) / (c[_BUY] + 1.0),
            "browse_depth": (c[_PV] + 1.0) / (c[_CLICK] + c[_ECLICK] + 1.0),
        }

    def __getstate__(self):
        return (self.half_life_ms, self.base_ms, self.ref_ms, self.counts, self.clicks, self.impressions)

    def __setstate__(self, state):
        self.half_life_ms, self.base_ms, self.ref_ms, self.counts, self.clicks, self.impressions = state
        self._per_ms = 1.0 / self.half_life_ms

    def __eq__(self, other):
        return isinstance(other, Behaviour) and self.__getstate__() == other.__getstate__()


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
    """Scaler + River KMeans with a warm-up fit, online updates and versioned re-fits.

    Parameters
    ----------
    n_segments
        Clusters (segments).
    warmup
        Distinct users' vectors collected before the first fit; until then nothing is assigned.
    halflife
        River KMeans' step towards each new point (smaller: steadier centres).
    sample
        Users whose latest vectors are kept for a re-fit (the most recently active).
    seed
        Seed of the clusterer and of the fit: fits are reproducible.

    Examples
    --------
    >>> model = SegmentModel(n_segments=2, warmup=40, seed=1)
    >>> import random
    >>> rng = random.Random(0)
    >>> for i in range(40):
    ...     base = 0.1 if i % 2 else 0.8
    ...     _ = model.learn({name: base + rng.random() / 50 for name in FEATURE_NAMES}, user_id=f"u{i}")
    >>> model.version
    1
    >>> low, _ = model.assign({name: 0.1 for name in FEATURE_NAMES})
    >>> high, _ = model.assign({name: 0.8 for name in FEATURE_NAMES})
    >>> low != high
    True
    """

    def __init__(self, n_segments: int = 4, *, warmup: int = 300, halflife: float = 0.05,
                 sample: int = 5000, seed: int = 1):
        if n_segments < 2:
            raise ValueError(f"n_segments must be at least 2, got {n_segments}")
        if warmup < n_segments:
            raise ValueError(f"warmup must be at least n_segments ({n_segments}), got {warmup}")
        if not 0 < halflife <= 1:
            raise ValueError(f"halflife must be in (0, 1], got {halflife}")
        self.n_segments = n_segments
        self.warmup = warmup
        self.halflife = halflife
        self.seed = seed
        self.version = 0
        self.sample = max(sample, warmup)
        #: Per recently active user: (vector in model space, newest event time).
        self.recent: OrderedDict[str, tuple[dict[str, float], int]] = OrderedDict()
        self.scaler = preprocessing.StandardScaler()
        self.clusterer = self._new_clusterer()

    def _new_clusterer(self) -> cluster.KMeans:
        return _EuclideanKMeans(n_clusters=self.n_segments, halflife=self.halflife, sigma=1.0,
                                seed=self.seed + self.version)

    @property
    def fitted(self) -> bool:
        return self.version > 0

    def learn(self, vector: dict[str, float], user_id: str, ts: int = 0) -> tuple[int, float]:
        """Learn from one user's latest vector and assign it: ``(segment, distance)``.

        The distance is to the segment's centre (after this update moved it), in
        standard units. Before the
        first fit (the warm-up) nothing is assigned: ``(-1, nan)``.
        """
        x = _model_space(vector)
        recent = self.recent
        recent[user_id] = (x, ts)
        recent.move_to_end(user_id)
        if len(recent) > self.sample:
            recent.popitem(last=False)
        if not self.fitted:
            if len(self.recent) < self.warmup:
                return -1, math.nan
            self.refit()
        self.scaler.learn_one(x)
        scaled = self.scaler.transform_one(x)
        # The centre the update moves is the nearest before and (closer now) after it.
        segment = self.clusterer.learn_predict_one(scaled)
        centre = self.clusterer.centers[segment]
        return segment, math.sqrt(sum((value - centre[name]) ** 2 for name, value in scaled.items()))

    def assign(self, vector: dict[str, float]) -> tuple[int, float]:
        """(segment, distance to its centre in standard units), without learning; (-1, nan) before the first fit."""
        if not self.fitted:
            return -1, math.nan
        return self._nearest(self.scaler.transform_one(_model_space(vector)))

    def assign_sample(self) -> list[tuple[str, int, float, int]]:
        """``(user_id, segment, distance, ts)`` for every user in the re-fit sample.

        Called after a (re-)fit, so users seen before it get a segment (and the
        new version) without waiting for their next event.
        """
        out = []
        for user_id, (x, ts) in self.recent.items():
            segment, distance = self._nearest(self.scaler.transform_one(x))
            out.append((user_id, segment, distance, ts))
        return out

    def _nearest(self, scaled: dict[str, float]) -> tuple[int, float]:
        segment = self.clusterer.predict_one(scaled)
        centre = self.clusterer.centers[segment]
        return segment, math.sqrt(sum((value - centre[name]) ** 2 for name, value in scaled.items()))

    def refit(self) -> None:
        """A fresh scaler and clusterer fitted on the recent sample; ``version`` + 1.

        The fit is batch k-means (k-means++ seeding, Lloyd iterations) on the
        scaled sample; its centres become the River KMeans' starting centres,
        which then follow the stream one update at a time.
        """
        if len(self.recent) < self.n_segments:
            raise ValueError(f"a re-fit needs at least {self.n_segments} recent vectors, have {len(self.recent)}")
        old = self.centres_scaled() if self.fitted else None
        sample = [x for x, _ in self.recent.values()]
        self.version += 1
        self.scaler = preprocessing.StandardScaler()
        for x in sample:
            self.scaler.learn_one(x)
        scaled = np.array([[z[f] for f in FEATURE_NAMES] for z in map(self.scaler.transform_one, sample)])
        centres = kmeans(scaled, self.n_segments, seed=self.seed + self.version)
        self.clusterer = self._new_clusterer()
        for k, centre in enumerate(centres):
            self.clusterer.centers[k].update(zip(FEATURE_NAMES, map(float, centre)))
        if old is not None:
            self._keep_ids(old)

    def centres_scaled(self) -> np.ndarray:
        return np.array([[self.clusterer.centers[k][f] for f in FEATURE_NAMES] for k in range(self.n_segments)])

    def _keep_ids(self, old: np.ndarray) -> None:
        """Renumber the new clusters so each takes the id of the old one it is closest to."""
        new = self.centres_scaled()
        cost = ((new[:, None, :] - old[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        centres = dict(self.clusterer.centers)
        for new_id, old_id in zip(rows, cols):
            self.clusterer.centers[int(old_id)] = centres[int(new_id)]

    def centres(self) -> dict[int, dict[str, float]]:
        """Segment centres in the features' own units."""
        out = {}
        for segment, centre in self.clusterer.centers.items():
            row = {}
            for name in FEATURE_NAMES:
                mean = self.scaler.means.get(name, 0.0)
                std = math.sqrt(self.scaler.vars.get(name, 0.0)) or 1.0
                value = centre[name] * std + mean
                row[name] = math.expm1(value) if name in _LOG_FEATURES else value
            out[segment] = row
        return out

    def profiles(self, sizes: dict[int, int]) -> list[SegmentProfile]:
        """Profiles of every segment, given how many users each holds now."""
        if not self.fitted:
            return []
        total = sum(sizes.values()) or 1
        scaled = {k: self.clusterer.centers[k] for k in range(self.n_segments)}
        labels = unique_labels({k: label_of(c) for k, c in scaled.items()})
        return [
            SegmentProfile(
                segment=k, label=labels[k], size=sizes.get(k, 0), share=sizes.get(k, 0) / total,
                centre={name: round(value, 4) for name, value in centre.items()}, model_version=self.version,
            )
            for k, centre in sorted(self.centres().items())
        ]


class _EuclideanKMeans(cluster.KMeans):
    """River's KMeans, with its nearest-centre search specialised to p=2 and known features.

    River's generic search (any p, any feature set) is most of the cost of a
    learning step; the update rule and everything else are River's own.
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


def _model_space(vector: dict[str, float]) -> dict[str, float]:
    return {name: (math.log1p(vector[name]) if name in _LOG_FEATURES else vector[name]) for name in FEATURE_NAMES}


def label_of(scaled_centre: dict[str, float], *, top: int = 2, min_z: float = 0.5) -> str:
    """A readable label from the features that stand out most (in standard units).

    >>> label_of({"order_value": 1.4, "email_share": 0.9, "ctr": -0.2})
    'high spend, email-driven'
    >>> label_of({"ctr": 0.1})
    'typical'
    """
    standing_out = sorted(
        ((abs(z), name, z) for name, z in scaled_centre.items() if name in FEATURES and abs(z) >= min_z), reverse=True
    )[:top]
    if not standing_out:
        return "typical"
    return ", ".join(FEATURES[name][0 if z > 0 else 1] for _, name, z in standing_out)


def unique_labels(labels: dict[int, str]) -> dict[int, str]:
    """Labels made unique by appending the segment id where two would read the same."""
    seen: dict[str, int] = {}
    for label in labels.values():
        seen[label] = seen.get(label, 0) + 1
    return {k: (f"{label} ({k})" if seen[label] > 1 else label) for k, label in labels.items()}


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


def sizes_of(assignments: Iterable[int]) -> dict[int, int]:
    """Counts per segment id."""
    out: dict[int, int] = {}
    for segment in assignments:
        out[segment] = out.get(segment, 0) + 1
    return out
