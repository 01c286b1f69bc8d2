"""The audience: one shared segmentation model and drift monitor for all users.

The flow's per-user step sends a `UserUpdate` for each user a batch changed;
all of them reach one `Audience` (in Bytewax, a stateful step keyed by one
constant key, so it lives on one worker and in that worker's recovery
snapshots). For each update it turns the user's evidence into features,
smoothed towards the traffic's own pooled values (`TrafficPriors`), learns,
assigns the user a segment, keeps count of who is where, and watches for
drift; an alert can re-fit the model.

Examples
--------
>>> from engine.features.events import Event
>>> from engine.audience.segments import Behaviour
>>> audience = Audience(n_segments=2, warmup=4, drift_warmup=100, drift_reference=100)
>>> updates = []
>>> for i in range(6):
...     b = Behaviour(3 * 86_400)
...     kinds = ["app_open", "impression", "click", "app_open"] + ["impression"] * (1 + 8 * (i % 2))
...     b.update_many(Event(f"e{i}-{j}", kind, f"u{i}", 1_767_225_600_000 + j) for j, kind in enumerate(kinds))
...     updates.append(UserUpdate(f"u{i}", 1_767_225_600_000, len(kinds), *b.take_clicks(), b.evidence()))
>>> result = audience.observe(updates)
>>> audience.model.version, len(result.assignments), sorted(audience.sizes.values())
(1, 6, [3, 3])
>>> audience.segment_of("u5") in (0, 1), audience.segment_of("nobody")
(True, None)
"""

from __future__ import annotations

import math

import msgspec

from engine.audience.drift import DriftAlert, DriftMonitor
from engine.audience.segments import (
    FEATURE_NAMES,
    SegmentModel,
    SegmentProfile,
    TrafficPriors,
    feature_vector,
    ratio_parts,
)

#: What a drift alert does: report only, or re-fit the segmentation too.
DRIFT_ACTIONS = ("alert", "refit")


class UserUpdate(msgspec.Struct, frozen=True, array_like=True):
    """One user's change in one batch: what the audience stage needs to know."""

    user_id: str
    #: Newest event time of the user (epoch ms).
    ts: int
    #: Events this update covers (its weight in the drift windows).
    events: int
    #: Clicks and impressions in this batch (for the click-through detector).
    clicks: int
    impressions: int
    #: The user's behaviour evidence (`Behaviour.evidence`), or None while they have too few visits.
    evidence: tuple[float, ...] | None


class SegmentAssignment(msgspec.Struct, frozen=True, array_like=True):
    """A user's segment as the online store keeps it (feature view ``user_segment``)."""

    segment: int
    distance: float
    model_version: int
    ts: int


class AudienceResult(msgspec.Struct):
    assignments: list[tuple[str, SegmentAssignment]]
    alerts: list[DriftAlert]
    #: New profiles when anything changed (sizes, centres, version), else None.
    profiles: list[SegmentProfile] | None


class Audience:
    """Segment model + who is in which segment + drift monitor.

    Parameters
    ----------
    n_segments, warmup, seed, refit_gain
        The `SegmentModel`'s. A re-fit the model finds due (`SegmentModel.consolidate`: a
        fresh fit on its sample is better by ``refit_gain``) is made like one after drift.
    drift_warmup, drift_reference, drift_window, drift_patience, kl_threshold, segment_kl_threshold,
    js_threshold, adwin_delta
        The `DriftMonitor`'s (its ``warmup``, ``reference``, ``window``, ``patience`` ...).
    drift_action
        ``"alert"``: report alerts only; ``"refit"``: a feature or segment-size
        alert also re-fits the model on recent vectors (version + 1) and
        re-bases the drift reference.
    distance_step
        A user's assignment is sent to the store when their segment or the
        model version changes, or their distance moved by at least this much
        (standard units) since the last one sent: most updates change nothing
        a reader would act on, and skipping them saves most segment writes.
    """

    def __init__(
        self,
        n_segments: int = 4,
        *,
        warmup: int = 300,
        seed: int = 1,
        refit_gain: float = 0.03,
        drift_warmup: int = 300_000,
        drift_reference: int = 100_000,
        drift_window: int = 50_000,
        drift_patience: int = 3,
        kl_threshold: float = 0.4,
        segment_kl_threshold: float = 0.05,
        js_threshold: float = 0.0,
        adwin_delta: float = 1e-5,
        drift_action: str = "alert",
        distance_step: float = 0.1,
    ):
        if drift_action not in DRIFT_ACTIONS:
            raise ValueError(f"drift_action must be one of {DRIFT_ACTIONS}, got {drift_action!r}")
        self.model = SegmentModel(n_segments, warmup=warmup, seed=seed, refit_gain=refit_gain)
        self.priors = TrafficPriors()
        self.monitor = DriftMonitor(
            FEATURE_NAMES,
            n_segments,
            warmup=drift_warmup,
            reference=min(drift_reference, drift_warmup),
            window=drift_window,
            patience=drift_patience,
            kl_threshold=kl_threshold,
            segment_kl_threshold=segment_kl_threshold,
            js_threshold=js_threshold,
            adwin_delta=adwin_delta,
        )
        self.drift_action = drift_action
        self.distance_step = distance_step
        #: Per user: (segment, distance, model version) as last sent to the store.
        self.members: dict[str, tuple[int, float, int]] = {}
        self.sizes: dict[int, int] = {}
        self.newest_ms = 0
        #: The latest alerts, newest last (at most 100), and how many there were in all.
        self.alert_log: list[DriftAlert] = []
        self.alerts_total = 0

    def observe(self, updates: list[UserUpdate], *, profiles: bool = True) -> AudienceResult:
        """Learn from, assign and watch one batch of updates.

        ``profiles=False`` skips computing the segment profiles unless the model
        version changed (the flow asks for them at most once a second).
        """
        model, monitor = self.model, self.monitor
        alerts: list[DriftAlert] = []
        assignments: list[tuple[str, SegmentAssignment]] = []
        vectors: list[dict[str, float]] = []
        segments: list[int] = []
        weights: list[int] = []
        version_before = model.version
        # Each update's ratio parts, once: the priors pool them and the features smooth them.
        parts = [None if u.evidence is None else ratio_parts(u.evidence) for u in updates]
        self.priors.observe_parts([p for p in parts if p is not None])
        priors = self.priors.values()
        for update, update_parts in zip(updates, parts):
            if update.ts > self.newest_ms:
                self.newest_ms = update.ts
            if update.impressions:
                alerts += monitor.observe_clicks(
                    update.clicks, update.impressions, time_ms=self.newest_ms, model_version=model.version
                )
            if update.evidence is None:
                continue
            vector, fed = feature_vector(update.evidence, priors, update_parts)
            version = model.version
            segment, distance = model.learn(vector, update.user_id, update.ts, fed, update.events)
            if segment < 0:
                continue  # still warming up
            if model.version != version:  # the first fit: everyone waiting gets a segment now
                assignments += self._assign_sample()
            if self._changed(update.user_id, segment, distance, model.version):
                assignments.append(
                    (update.user_id, SegmentAssignment(segment, round(distance, 4), model.version, update.ts))
                )
            vectors.append(vector)
            segments.append(segment)
            weights.append(update.events)
        if vectors:
            # Features the model leaves out (no signal in this traffic) are no data to the drift monitor.
            unused = [name for name in FEATURE_NAMES if name not in model.features]
            for vector in vectors if unused else ():
                for name in unused:
                    vector[name] = math.nan
            alerts += monitor.observe(vectors, segments, weights, time_ms=self.newest_ms, model_version=model.version)
        if alerts:
            alerts, reassigned = self._act_on(alerts)
            assignments += reassigned
        if model.version == version_before:
            due = model.consolidate()
            if due:  # a better fit than the current segments exists: the histories matured past the fit
                # The traffic did not move, only the segments: the features keep their drift reference.
                assignments += self.refit(features_moved=False)
            elif due is not None:  # the same segments, refined: users whose segment moved are re-sent
                assignments += self._assign_sample()
        refitted = model.version != version_before
        wanted = refitted or (profiles and bool(assignments))
        return AudienceResult(assignments, alerts, model.profiles(self.sizes) if wanted else None)

    def _assign_sample(self) -> list[tuple[str, SegmentAssignment]]:
        version = self.model.version
        return [
            (user_id, SegmentAssignment(segment, round(distance, 4), version, ts))
            for user_id, segment, distance, ts in self.model.assign_sample()
            if self._changed(user_id, segment, distance, version)
        ]

    def _changed(self, user_id: str, segment: int, distance: float, version: int) -> bool:
        """Record the user's assignment; whether it differs enough from the last one sent."""
        old = self.members.get(user_id)
        if old is not None and old[0] == segment and old[2] == version and abs(old[1] - distance) < self.distance_step:
            return False
        if old is None or old[0] != segment:
            if old is not None:
                self.sizes[old[0]] -= 1
            self.sizes[segment] = self.sizes.get(segment, 0) + 1
        self.members[user_id] = (segment, distance, version)
        return True

    def segment_of(self, user_id: str) -> int | None:
        """The user's current segment, or None if never segmented."""
        member = self.members.get(user_id)
        return None if member is None else member[0]

    def _act_on(self, alerts: list[DriftAlert]) -> tuple[list[DriftAlert], list[tuple[str, SegmentAssignment]]]:
        # ADWIN on click-through alone does not say the segments are stale;
        # distribution shifts in the features or segment sizes do.
        reassigned = []
        if self.drift_action == "refit" and any(a.method != "adwin" for a in alerts):
            reassigned = self.refit()
            alerts = [msgspec.structs.replace(a, action="refit") if a.method != "adwin" else a for a in alerts]
        self.alert_log = (self.alert_log + alerts)[-100:]
        self.alerts_total += len(alerts)
        return alerts, reassigned

    def refit(self, *, features_moved: bool = True) -> list[tuple[str, SegmentAssignment]]:
        """Re-fit the model on recent vectors and re-base the drift reference; returns the
        re-assignments of the users in the sample (new version).

        After drift (``features_moved``) the whole reference is re-learned; after a
        re-fit of matured histories only the segment sizes' (`DriftMonitor.rebase_segment_sizes`).
        """
        self.model.refit()
        if features_moved:
            self.monitor.rebase()
        else:
            self.monitor.rebase_segment_sizes()
        return self._assign_sample()

    def profiles(self) -> list[SegmentProfile]:
        return self.model.profiles(self.sizes)

    def __setstate__(self, state):
        # Snapshots from before the traffic's own priors: they start afresh.
        state.setdefault("priors", TrafficPriors())
        self.__dict__.update(state)
