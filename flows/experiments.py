"""The features flow's experiment steps, and the reader of what they write.

Two stateful steps (wired in `flows.features.build_flow`) count exposures and
outcomes per (experiment, variant), idempotent on ``event_id``:

- `ExposureLogic`, per user: `engine.experiments.exposures.UserExposures` decides what each
  event changes and emits per-arm deltas, and a `FirstExposure` for each
  experiment the user enters (written to the ``user_experiment`` view, where the
  API finds a user's arm once an experiment's allocation changed);
- `ArmLogic`, per arm: adds the deltas into absolute `ArmCounters` and emits
  them for the feature-store sink, which writes them as they are (so a replay
  after a crash rewrites the same rows).

`read_arm_counters` reads the counters back from the ``experiment_arm`` feature view.
"""

from __future__ import annotations

import msgspec
from bytewax.operators import StatefulBatchLogic

from engine.experiments.exposures import EXPERIMENT_EVENT_TYPES, ArmCounters, FirstExposure, UserExposures
from engine.features.events import Event
from flows import metrics

_arm_key_encoder = msgspec.json.Encoder()


def arm_key(experiment: str, variant: str) -> str:
    """The flow's routing key of one arm (JSON, so no two arms can share one)."""
    return _arm_key_encoder.encode((experiment, variant)).decode()


def experiment_events(batch: list[Event]) -> list[Event]:
    """The events the experiment steps look at: one type check per event, one call per batch."""
    return [event for event in batch if event.type in EXPERIMENT_EVENT_TYPES]


class ExposureLogic(StatefulBatchLogic):
    """One user's exposures; emits ``(arm key, ArmCounters delta)`` per arm a batch changed, and
    ``(user id, FirstExposure)`` per experiment the user entered in it."""

    def __init__(self, resume: UserExposures | None):
        self.user = resume if resume is not None else UserExposures()

    def on_batch(self, events: list[Event]):
        deltas, tally = self.user.update(events)
        for outcome, n in tally.items():
            metrics.EXPERIMENT_EVENTS.labels(outcome).inc(n)
        out: list[tuple[str, ArmCounters | FirstExposure]] = [(arm_key(d.experiment, d.variant), d) for d in deltas]
        user_id = events[0].user_id  # one user's batch
        for d in deltas:
            if d.users:  # this batch placed the user in d's arm
                arm = self.user.arms[d.experiment]
                out.append((user_id, FirstExposure(user_id, d.experiment, arm.variant, arm.exposed_ms)))
        # A user never exposed has no state (see UserExposures): Bytewax drops it.
        return out, not self.user.arms

    def snapshot(self) -> UserExposures:
        return self.user


class ArmLogic(StatefulBatchLogic):
    """One arm's absolute counters; emits ``(arm key, ArmCounters)`` (a copy) per batch."""

    def __init__(self, resume: ArmCounters | None):
        self.counters = resume

    def on_batch(self, deltas: list[ArmCounters]):
        counters = self.counters
        if counters is None:
            first = deltas[0]
            counters = self.counters = ArmCounters(experiment=first.experiment, variant=first.variant)
        for delta in deltas:
            counters.add(delta)
        # A copy: the sink may write after this state has moved on (or pickle it between workers).
        return [(arm_key(counters.experiment, counters.variant), msgspec.structs.replace(counters))], False

    def snapshot(self) -> ArmCounters | None:
        return self.counters
