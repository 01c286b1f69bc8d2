"""Drift: has the traffic moved away from what the segments were learned on?

Measures: `kl_divergence` and `js_distance` between histograms of counts.
Empty bins are smoothed (additive, Laplace-style) so KL never reaches
infinity; both inputs are normalised after smoothing.

`DriftMonitor` applies them to a stream: per feature, a reference histogram
(frozen after a warm-up, or set explicitly) against a sliding current one (the
last ``window`` units of weight, kept as ``blocks`` block histograms so sliding
costs one block at a time), plus the same for the distribution of segment
sizes. The flow weighs each user update by the events it covers, so windows
are measured in events whether a batch brings one event per user (live) or a
hundred (a replay); and River's ADWIN over a per-event click-through stream for abrupt
changes. A score above its threshold for ``patience`` consecutive checks is a
`DriftAlert`; it re-arms once the score falls back below.

A signal with no data is skipped, not scored: a feature whose values are NaN
(the segmentation does not use it, because the traffic never feeds it) in the
reference or in the current window, and click-through on a stream without
impressions. `DriftMonitor.signals` says which signals are watched.

Examples
--------
>>> round(kl_divergence([50, 50], [90, 10], smoothing=0.0), 4)  # 0.9 ln 1.8 + 0.1 ln 0.2
0.3681
>>> kl_divergence([1, 0], [0, 1]) < float("inf")
True
>>> round(js_distance([1, 0], [0, 1], smoothing=0.0), 4)
0.8326
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import numpy as np
from river import drift as river_drift
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr

#: Pseudo-count added to every bin before normalising.
DEFAULT_SMOOTHING = 0.5


def _distribution(counts: Sequence[float], smoothing: float) -> np.ndarray:
    values = np.asarray(counts, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"a histogram is a non-empty 1-d sequence of counts, got shape {values.shape}")
    if np.any(values < 0) or not np.all(np.isfinite(values)):
        raise ValueError("histogram counts must be finite and >= 0")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    values = values + smoothing
    total = values.sum()
    if total <= 0:
        raise ValueError("a histogram with no counts has no distribution: add smoothing or data")
    return values / total


def _pair(reference, current, smoothing) -> tuple[np.ndarray, np.ndarray]:
    p = _distribution(current, smoothing)
    q = _distribution(reference, smoothing)
    if p.shape != q.shape:
        raise ValueError(f"histograms need the same bins: {q.size} reference vs {p.size} current")
    return p, q


def kl_divergence(reference: Sequence[float], current: Sequence[float], smoothing: float = DEFAULT_SMOOTHING) -> float:
    """KL(current || reference) in nats: how surprising the current traffic is.

    ``smoothing`` pseudo-counts per bin keep the value finite when a bin is
    empty on one side.
    """
    p, q = _pair(reference, current, smoothing)
    return float(np.sum(rel_entr(p, q)))


def js_distance(reference: Sequence[float], current: Sequence[float], smoothing: float = DEFAULT_SMOOTHING) -> float:
    """Jensen-Shannon distance (base e): symmetric, bounded by sqrt(ln 2)."""
    p, q = _pair(reference, current, smoothing)
    return float(jensenshannon(p, q))


def histogram(values: Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Counts of ``values`` in the bins ``edges`` (outer bins catch everything beyond).

    >>> histogram([0.5, 1.5, 99.0, -3.0], [0.0, 1.0, 2.0]).tolist()
    [2, 2]
    """
    edges = np.asarray(edges, dtype=float)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("edges must be at least two strictly increasing numbers")
    clipped = np.clip(np.asarray(values, dtype=float), edges[0], np.nextafter(edges[-1], -np.inf))
    counts, _ = np.histogram(clipped, bins=edges)
    return counts


class DriftAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A drift that lasted: what moved, measured how, by how much, when."""

    feature: str
    #: "kl", "js" or "adwin".
    method: str
    score: float
    threshold: float
    #: Observations in the current window (ADWIN: the width of its window).
    window: int
    #: Event time of the newest observation when the alert fired (epoch ms, and RFC 3339).
    time_ms: int
    time: str
    #: Consecutive checks above the threshold (ADWIN: 1).
    checks: int
    model_version: int = 0
    #: What the flow does about it: "alert" (report only) or "refit" (re-fit the segments).
    action: str = "alert"
    #: ADWIN: the click-through estimate before the change (``score`` is after).
    reference: float | None = None


#: Name of the segment-size "feature" in scores and alerts.
SEGMENT_SIZES = "segment_sizes"
#: Name of the per-event click-through stream ADWIN watches.
CLICK_THROUGH = "click_through"


class DriftMonitor:
    """Reference vs sliding-window histograms per feature, and ADWIN on click-through.

    Parameters
    ----------
    features
        Names of the numeric features observed.
    n_segments
        Segment ids are ``0 .. n_segments - 1``.
    warmup
        Weight (events, in the flow) observed before the reference is frozen
        (after `rebase`, again); long enough for the features to settle.
    reference
        The reference is the last ``reference`` weight of the warm-up (default: all of it).
    window
        Weight in the current window; a check runs each time a block
        (``window // blocks``) completes and the window is full.
    bins
        Quantile bins per feature, from the reference's own values.
    kl_threshold, js_threshold
        Alert thresholds for the features; 0 turns a method's alerts off (its scores are still kept).
    segment_kl_threshold
        KL threshold for the segment sizes: a coarse, steady summary, so a much
        lower threshold than the features' (see README: measured noise).
    patience
        Consecutive checks above threshold before an alert.
    adwin_delta
        ADWIN's confidence; smaller means fewer false alarms and slower detection.
        0 turns the click-through detector off.

    Examples
    --------
    >>> monitor = DriftMonitor(["x"], n_segments=2, warmup=1000, window=400, blocks=2, patience=2)
    >>> rng = np.random.default_rng(0)
    >>> for step in range(10):
    ...     shift = 0.0 if step < 5 else 3.0
    ...     values = [{"x": v} for v in rng.normal(shift, 1, 200)]
    ...     alerts = monitor.observe(values, [0, 1] * 100, [1] * 200, time_ms=step)
    ...     if alerts:
    ...         print(step, alerts[0].feature, alerts[0].method)
    7 x kl
    """

    def __init__(
        self,
        features: Sequence[str],
        n_segments: int,
        *,
        warmup: int = 20_000,
        reference: int | None = None,
        window: int = 20_000,
        blocks: int = 10,
        bins: int = 10,
        kl_threshold: float = 0.05,
        js_threshold: float = 0.0,
        segment_kl_threshold: float | None = None,
        patience: int = 3,
        adwin_delta: float = 1e-5,
        smoothing: float = DEFAULT_SMOOTHING,
    ):
        if not features:
            raise ValueError("a drift monitor needs at least one feature")
        reference = warmup if reference is None else reference
        if not bins <= reference <= warmup or window < blocks or blocks < 1:
            raise ValueError(
                f"need bins <= reference <= warmup and window >= blocks >= 1, got "
                f"{bins=}, {reference=}, {warmup=}, {window=}, {blocks=}"
            )
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if min(kl_threshold, js_threshold, segment_kl_threshold or 0) < 0 or not 0 <= adwin_delta < 1:
            raise ValueError("thresholds must be >= 0 and adwin_delta in [0, 1)")
        self.features = tuple(features)
        self.n_segments = n_segments
        self.warmup, self.reference_size, self.window, self.blocks, self.bins = warmup, reference, window, blocks, bins
        self.block_size = window // blocks
        self.thresholds = {"kl": kl_threshold, "js": js_threshold}
        self.segment_kl_threshold = kl_threshold if segment_kl_threshold is None else segment_kl_threshold
        self.patience = patience
        self.adwin_delta = adwin_delta
        self.smoothing = smoothing
        self.adwin = river_drift.ADWIN(delta=adwin_delta) if adwin_delta else None
        self._clicks_seen = False
        #: Latest score per (feature, method), for metrics; and the highest since the reference was set.
        self.scores: dict[tuple[str, str], float] = {}
        self.peak_scores: dict[tuple[str, str], float] = {}
        #: Features (and segment sizes) skipped at the last check for want of data.
        self.no_data: set[str] = set()
        self.rebase()

    # -- reference ------------------------------------------------------------

    def rebase(self) -> None:
        """Forget the reference; the next ``warmup`` observations become the new one."""
        self.edges: dict[str, np.ndarray] | None = None
        self.reference: dict[str, np.ndarray] | None = None
        self.peak_scores = {}
        self._warm: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()
        self._warm_count = 0.0  # weight seen since the warm-up began
        self._warm_kept = 0.0  # weight of the parts kept in _warm
        self._fed: set[str] = set()  # features observed with a value (not NaN) since the rebase
        self._segments_warm: np.ndarray | None = None  # segment sizes re-learned after a re-fit (rebase_segment_sizes)
        self._segments_warm_count = 0.0
        self._reset_window()

    def rebase_segment_sizes(self) -> None:
        """Re-learn only the segment-size reference (the segments were re-fit; the features did not move).

        The feature references stay; segment sizes are skipped (no data) until
        the next ``reference`` weight of observations has set their new reference.
        Before the monitor is ready this does nothing: the warm-up sets both.
        """
        if self.reference is None:
            return
        self.reference[SEGMENT_SIZES] = np.zeros(self.n_segments)
        self._segments_warm = np.zeros(self.n_segments)
        self._segments_warm_count = 0.0

    def _learn_segment_sizes(self, segments: np.ndarray, weights: np.ndarray) -> None:
        self._segments_warm += np.bincount(segments, weights=weights, minlength=self.n_segments)[: self.n_segments]
        self._segments_warm_count += float(weights.sum())
        if self._segments_warm_count >= self.reference_size:
            self.reference[SEGMENT_SIZES] = self._segments_warm
            self._segments_warm = None

    def _reset_window(self) -> None:
        self._block: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._block_count = 0
        self._recent: deque[dict[str, np.ndarray]] = deque(maxlen=self.blocks)
        self._above: dict[tuple[str, str], int] = {}

    @property
    def ready(self) -> bool:
        """Whether a reference is in place (warm-up over, or set explicitly)."""
        return self.reference is not None

    def set_reference(self, edges: dict[str, Sequence[float]], counts: dict[str, Sequence[float]]) -> None:
        """Use an explicit reference: inner bin edges per feature and counts per feature
        (``len(edges) + 1`` bins), plus counts per segment under `SEGMENT_SIZES`."""
        missing = set(self.features) - set(edges) | (set(self.features) | {SEGMENT_SIZES}) - set(counts)
        if missing:
            raise ValueError(f"the reference lacks {sorted(missing)}")
        new_edges = {f: np.asarray(edges[f], dtype=float) for f in self.features}
        reference = {name: np.asarray(c, dtype=float) for name, c in counts.items()}
        for f in self.features:
            if reference[f].size != new_edges[f].size + 1:
                raise ValueError(f"{f}: {new_edges[f].size} inner edges need {new_edges[f].size + 1} counts")
        if reference[SEGMENT_SIZES].size != self.n_segments:
            raise ValueError(f"{SEGMENT_SIZES}: need {self.n_segments} counts")
        self.edges, self.reference = new_edges, reference
        self._warm, self._warm_count, self._warm_kept = deque(), 0.0, 0.0
        self._reset_window()

    def _freeze_reference(self) -> None:
        values, segments, weights = (np.concatenate(parts) for parts in zip(*self._warm))
        quantiles = np.linspace(0, 1, self.bins + 1)[1:-1]
        self.edges = {}
        for i, f in enumerate(self.features):
            known = ~np.isnan(values[:, i])
            self.edges[f] = (
                np.unique(_weighted_quantiles(values[known, i], weights[known], quantiles))
                if known.any()
                else np.array([])
            )
        self.reference = self._histograms(values, segments, weights)
        self._warm, self._warm_kept = deque(), 0.0

    def _histograms(self, values: np.ndarray, segments: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
        # NaN (no data) lands in the last bin with weight 0: it counts nowhere.
        out = {
            f: np.bincount(
                np.searchsorted(self.edges[f], values[:, i], side="right"),
                weights=np.where(np.isnan(values[:, i]), 0.0, weights),
                minlength=self.edges[f].size + 1,
            )
            for i, f in enumerate(self.features)
        }
        out[SEGMENT_SIZES] = np.bincount(segments, weights=weights, minlength=self.n_segments)[: self.n_segments]
        return out

    # -- observing ------------------------------------------------------------

    def observe(
        self,
        vectors: Sequence[dict[str, float]],
        segments: Sequence[int],
        weights: Sequence[float],
        *,
        time_ms: int,
        model_version: int = 0,
    ) -> list[DriftAlert]:
        """Add a batch of observations (a vector, its segment, its weight); returns new alerts.

        A block boundary falls between observations, so a block holds at least
        ``window // blocks`` of weight.
        """
        if not len(vectors) == len(segments) == len(weights):
            raise ValueError("one segment and one weight per vector")
        if not vectors:
            return []
        values = np.array([[v[f] for f in self.features] for v in vectors], dtype=float)
        if len(self._fed) < len(self.features):
            has_value = ~np.isnan(values).all(axis=0)
            self._fed.update(f for f, fed in zip(self.features, has_value) if fed)
        segs = np.asarray(segments, dtype=np.int64)
        w = np.asarray(weights, dtype=float)
        ends = np.cumsum(w)
        alerts: list[DriftAlert] = []
        start, done = 0, 0.0
        while start < len(values):
            if self.reference is None:
                need, filled = self.warmup, self._warm_count
            else:
                need, filled = self.block_size, self._block_count
            # observations up to (and including) the one that fills the need
            stop = int(np.searchsorted(ends, done + need - filled, side="left")) + 1
            stop = min(max(stop, start + 1), len(values))
            part = (values[start:stop], segs[start:stop], w[start:stop])
            added = float(ends[stop - 1] - done)
            done = float(ends[stop - 1])
            if self.reference is None:
                self._warm.append(part)
                self._warm_count += added
                self._warm_kept += added
                # keep only the warm-up's last `reference_size` of weight
                while self._warm_kept - self._warm[0][2].sum() >= self.reference_size:
                    self._warm_kept -= self._warm.popleft()[2].sum()
                if self._warm_count >= self.warmup:
                    self._freeze_reference()
            else:
                if self._segments_warm is not None:
                    self._learn_segment_sizes(part[1], part[2])
                self._block.append(part)
                self._block_count += added
                if self._block_count >= self.block_size:
                    self._recent.append(self._histograms(*(np.concatenate(p) for p in zip(*self._block))))
                    self._block, self._block_count = [], 0
                    if len(self._recent) == self.blocks:
                        alerts += self._check(time_ms, model_version)
            start = stop
        return alerts

    @property
    def signals(self) -> dict[str, bool]:
        """Per signal (each feature, `SEGMENT_SIZES`, `CLICK_THROUGH`): whether it is watched (has data).

        A feature is watched once it was observed with a value (not NaN) and while
        the last check had data for it; click-through once an impression was seen
        (and ADWIN is on).
        """
        out = {name: name in self._fed and name not in self.no_data for name in self.features}
        out[SEGMENT_SIZES] = SEGMENT_SIZES not in self.no_data
        out[CLICK_THROUGH] = self._clicks_seen
        return out

    def __setstate__(self, state):
        # Snapshots from before signals without data were skipped.
        state.setdefault("no_data", set())
        state.setdefault("_fed", set(state.get("features", ())))
        state.setdefault("_clicks_seen", state.get("adwin") is not None and state["adwin"].width > 0)
        # Snapshots from before a re-fit could re-learn the segment sizes alone.
        state.setdefault("_segments_warm", None)
        state.setdefault("_segments_warm_count", 0.0)
        self.__dict__.update(state)

    def _check(self, time_ms: int, model_version: int) -> list[DriftAlert]:
        alerts = []
        self.no_data = set()
        for name, reference in self.reference.items():
            current = sum(block[name] for block in self._recent)
            if not reference.sum() > 0 or not current.sum() > 0:
                # Nothing to compare: the signal is skipped, its score forgotten, its alarm re-armed.
                self.no_data.add(name)
                for method in ("kl", "js"):
                    self.scores.pop((name, method), None)
                    self._above[(name, method)] = 0
                continue
            for method, measure in (("kl", kl_divergence), ("js", js_distance)):
                score = measure(reference, current, self.smoothing)
                key = (name, method)
                self.scores[key] = score
                self.peak_scores[key] = max(score, self.peak_scores.get(key, 0.0))
                threshold = self.segment_kl_threshold if key == (SEGMENT_SIZES, "kl") else self.thresholds[method]
                if not threshold or score <= threshold:
                    self._above[key] = 0
                    continue
                self._above[key] = self._above.get(key, 0) + 1
                if self._above[key] == self.patience:
                    alerts.append(
                        _alert(name, method, score, threshold, self.window, time_ms, self.patience, model_version)
                    )
        return alerts

    def observe_clicks(
        self, clicks: int, impressions: int, *, time_ms: int, model_version: int = 0
    ) -> list[DriftAlert]:
        """Feed ADWIN one user's impressions: 1 for each clicked, 0 for the others, clicks spread evenly.

        Click-through is clicks per impression: without impressions there is no
        signal (clicks alone are skipped), and clicks beyond the impressions
        count as every impression clicked. An alert's ``score`` is the
        click-through of the window ADWIN keeps (after the change),
        ``reference`` that of the older part it dropped (before it).
        """
        adwin = self.adwin
        if adwin is None or impressions <= 0:
            return []
        self._clicks_seen = True
        total = impressions
        clicks = min(clicks, impressions)
        alerts = []
        fed = 0
        # The window as of the last bit fed; River's ADWIN starts afresh after a detection.
        width, ones_in = (0, 0) if adwin.drift_detected else (adwin.width, adwin.total)
        update = _adwin_update(adwin)
        for j in range(1, total + 1):
            ones = j * clicks // total
            bit = 1 if ones > fed else 0
            fed = ones
            width += 1
            ones_in += bit
            if update(bit):
                kept_width, kept_ones = adwin.width, adwin.total
                dropped = width - kept_width
                alerts.append(
                    DriftAlert(
                        feature=CLICK_THROUGH,
                        method="adwin",
                        score=round(kept_ones / kept_width, 6),
                        threshold=self.adwin_delta,
                        window=int(kept_width),
                        time_ms=time_ms,
                        time=_iso(time_ms),
                        checks=1,
                        model_version=model_version,
                        reference=round((ones_in - kept_ones) / dropped, 6) if dropped else None,
                    )
                )
                width, ones_in = 0, 0
        self.scores[(CLICK_THROUGH, "adwin")] = self.adwin.estimation
        return alerts


def _adwin_update(adwin: river_drift.ADWIN):
    """``update(x) -> drift detected``: River's ADWIN.update, minus its per-call Python wrapper.

    ADWIN.update is "reset if the last update detected drift, then feed the
    Rust window"; per click-through event the wrapper costs 4x the work. This
    does the same through the pinned River's internals, and falls back to the
    public API if they are not there (tests check both agree).
    """
    if not hasattr(adwin, "_helper") or not hasattr(adwin, "_reset"):

        def public(x) -> bool:
            adwin.update(x)
            return adwin.drift_detected

        return public

    def fast(x) -> bool:
        if adwin._drift_detected:
            adwin._reset()
        adwin._drift_detected = detected = adwin._helper.update(x)
        return detected

    return fast


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return values[order][np.searchsorted(cumulative, quantiles * cumulative[-1], side="right").clip(0, len(values) - 1)]


def _alert(feature, method, score, threshold, window, time_ms, checks, model_version) -> DriftAlert:
    return DriftAlert(
        feature=feature,
        method=method,
        score=round(score, 6),
        threshold=threshold,
        window=window,
        time_ms=time_ms,
        time=_iso(time_ms),
        checks=checks,
        model_version=model_version,
    )


def _iso(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
