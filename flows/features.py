"""The user features dataflow: Kafka events -> per-user tiles and segments -> Feast.

Per user (partitioned by user id across workers): time tiles for the activity
features and decayed behaviour counts. Each user a batch changed also goes, as
a `UserUpdate`, to the audience step: one shared segment model and drift
monitor, keyed by a constant so Bytewax routes every update to the one worker
that owns it (and snapshots it with that worker's recovery state). It sends
back each user's segment, the segment profiles, and drift alerts (to
``TAILOR_DRIFT_TOPIC`` and the log).

Impressions, clicks, conversions and purchases also go through the experiment
steps (`flows.experiments`): per user, then per (experiment, variant) arm, into
absolute counters in the ``experiment_arm`` view.

Run it with recovery (what ``tailor flow`` does)::

    python -m bytewax.run "flows.features:build_flow()" -r RECOVERY_DIR -s 2 -b 0

Start-up and stopping, in that process (see `FlowReadiness`, `StopOnSignals`):
`build_flow` loads Feast, opens the online store and warms the writer before
Bytewax reads an event, and the process reports ready (a stderr line, the
``tailor_flow_ready`` gauge, ``TAILOR_READY_FILE``) once its consumers fetch.
SIGINT or SIGTERM ends the input; Bytewax drains what is in flight, the sink
flushes its Parquet buffer, the last epoch is snapshotted, and the process
exits 0 (a second signal stops it at once; the next start replays from the
last snapshot).

Bad input never stops the flow: each undecodable message goes to the dead-letter
topic with its reason, its source offset and (a prefix of) its payload.
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import msgspec
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from config.settings import Settings
from engine.audience.audience import Audience, SegmentAssignment, UserUpdate
from engine.audience.drift import DriftAlert
from engine.audience.segments import Behaviour
from engine.experiments.exposures import ArmCounters, FirstExposure
from engine.features.events import Event, InvalidEvent, check_not_ahead, decode_event
from engine.features.tiles import UserActivity
from engine.privacy import CONSENT_EVENT, ConsentGate, consent_change
from flows import metrics
from flows.experiments import ArmLogic, ExposureLogic, experiment_events
from flows.kafka import RawKafkaSource, ensure_topics

#: Bytes of a bad payload kept in its dead letter.
DLQ_PAYLOAD_BYTES = 4096
#: The one key of the audience step: every update meets the one shared model.
AUDIENCE_KEY = "audience"
#: Key of the segment profiles in the feature-store sink.
PROFILES_KEY = "segment_profiles"

log = logging.getLogger("tailor.drift")


class DeadLetter:
    """An input message that could not become an Event, and why."""

    __slots__ = ("message", "reason")

    def __init__(self, message: Message, reason: str):
        self.message = message
        self.reason = reason

    def to_sink(self) -> KafkaSinkMessage:
        msg = self.message
        payload = msg.value() or b""
        body = {
            "reason": self.reason,
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "payload_bytes": len(payload),
            "payload": payload[:DLQ_PAYLOAD_BYTES].decode("utf-8", errors="replace"),
        }
        return KafkaSinkMessage(
            key=msg.key(),
            value=json.dumps(body).encode(),
            headers=[("tailor-reason", self.reason.encode()[:512])],
        )


def decode_message(msg: Message, max_ahead_ms: int) -> Event | DeadLetter:
    try:
        event = decode_event(msg.value())
        # Judge "ahead" against the message's Kafka timestamp, not this process's
        # clock, so that a replay after a crash decides exactly as the first pass.
        kind, sent_ms = msg.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            check_not_ahead(event, sent_ms, max_ahead_ms)
        return event
    except InvalidEvent as exc:
        return DeadLetter(msg, exc.reason)


def decoder(settings: Settings) -> Callable[[list[Message]], list[Event | DeadLetter]]:
    """Decodes one polled batch (one Python call per batch, not per message)."""
    max_ahead_ms = int(settings.flow.max_ahead_s * 1000)

    def decode_batch(batch: list[Message]) -> list[Event | DeadLetter]:
        decoded = [decode_message(msg, max_ahead_ms) for msg in batch]
        dead = sum(1 for x in decoded if type(x) is DeadLetter)
        metrics.EVENTS.labels("valid").inc(len(decoded) - dead)
        if dead:
            metrics.EVENTS.labels("dead_letter").inc(dead)
        return decoded

    return decode_batch


_NOT_KEPT = metrics.EVENTS_WITHOUT_CONSENT.labels("dropped")
_DECISIONS = metrics.EVENTS_WITHOUT_CONSENT.labels("decision")


class ConsentLogic(StatefulBatchLogic):
    """One user's consent (`engine.privacy.ConsentGate`), applied in event order before anything is kept.

    Emits ``(event, experiments allowed)`` for each event of a user who allows
    analytics; consent events change the gate and go no further. A user who decided
    nothing keeps no state (the policy answers for them).
    """

    def __init__(self, policy: str, resume: ConsentGate | None):
        self.gate = resume if resume is not None else ConsentGate(policy)
        self.gate.policy = policy  # the policy of this run, whatever the snapshot's was

    def on_batch(self, events: list[Event]):
        gate = self.gate
        kept = []
        for event in events:
            if event.type == CONSENT_EVENT:
                gate.apply(*consent_change(event.props))
                _DECISIONS.inc()
            elif gate.allows("analytics"):
                kept.append((event, gate.allows("experiments")))
            else:
                _NOT_KEPT.inc()
        return kept, not gate.decided

    def snapshot(self) -> ConsentGate:
        return self.gate


class UserActivityLogic(StatefulBatchLogic):
    """One user's tiles (and behaviour counts, when segmenting).

    Emits, per batch that changed the user, ``(user_id, UserActivity, UserUpdate | None)``:
    the tiles for the store and, when segmenting, the update for the audience step.
    """

    def __init__(self, settings: Settings, resume: tuple[UserActivity, Behaviour | None] | None):
        if resume is None:
            self.state = UserActivity(settings.flow.lateness_ms, settings.flow.affinity_half_life_s)
            self.behaviour = None
        elif isinstance(resume, UserActivity):  # a snapshot from before segmentation
            self.state, self.behaviour = resume, None
        else:
            self.state, self.behaviour = resume
        if settings.audience.segments and self.behaviour is None:
            self.behaviour = settings.audience.new_behaviour()
        self.min_sessions = settings.audience.min_sessions

    def on_batch(self, events: list[Event]):
        update = self.state.update
        counted = [event for event in events if update(event)]
        if not counted:
            return [], False
        user_id = events[0].user_id
        behaviour = self.behaviour
        if behaviour is None:
            return [(user_id, self.state, None)], False
        behaviour.update_many(counted)
        clicks, impressions = behaviour.take_clicks()
        # The state object itself goes downstream: the sink packs it once per write.
        evidence = behaviour.evidence() if behaviour.visits_total >= self.min_sessions else None
        return [
            (
                user_id,
                self.state,
                UserUpdate(user_id, self.state.newest_ms, len(counted), clicks, impressions, evidence),
            )
        ], False

    def snapshot(self) -> tuple[UserActivity, Behaviour | None]:
        return self.state, self.behaviour


class AudienceLogic(StatefulBatchLogic):
    """The shared segment model and drift monitor (one per flow, see `Audience`)."""

    def __init__(
        self, settings: Settings, resume: Audience | None, on_audience: Callable[[Audience], None] | None = None
    ):
        self.on_audience = on_audience
        self._profiles_due = 0.0
        self._stale = False  # assignments since the last profiles written
        self.audience = resume or settings.audience.new_audience()

    #: Segment profiles are rewritten at most this often (and at every re-fit, and at the end of the input).
    PROFILES_EVERY_S = 1.0

    def on_batch(self, updates: list[UserUpdate]):
        due = time.monotonic() >= self._profiles_due
        result = self.audience.observe(updates, profiles=due)
        out: list = [(user_id, assignment) for user_id, assignment in result.assignments]
        if result.profiles is not None:
            out.append((PROFILES_KEY, result.profiles))
            self._profiles_due = time.monotonic() + self.PROFILES_EVERY_S
            self._stale = False
        elif result.assignments:
            self._stale = True
        for alert in result.alerts:
            log.warning(
                "drift: %s by %s = %.4g (threshold %.4g) at %s, action %s",
                alert.feature,
                alert.method,
                alert.score,
                alert.threshold,
                alert.time,
                alert.action,
            )
            metrics.DRIFT_ALERTS.labels(alert.feature, alert.method).inc()
            out.append(alert)
        metrics.observe_audience(self.audience)
        if self.on_audience is not None:
            self.on_audience(self.audience)
        return out, False

    def notify_at(self) -> datetime | None:
        # Profiles left stale by the last batch are written once the stream idles
        # (a live stream that stops, a backfill ahead of its end), not only while events flow.
        if not self._stale:
            return None
        return datetime.now(UTC) + timedelta(seconds=max(self._profiles_due - time.monotonic(), 0.0))

    def on_notify(self):
        return self._final_profiles(), False

    def on_eof(self):
        # The end of a finite input (a replay, a backfill): leave the final profiles behind.
        return self._final_profiles(), False

    def _final_profiles(self) -> list:
        if not (self._stale and self.audience.model.fitted):
            return []
        self._stale = False
        self._profiles_due = time.monotonic() + self.PROFILES_EVERY_S
        return [(PROFILES_KEY, self.audience.profiles())]

    def snapshot(self) -> Audience:
        return self.audience


def alert_message(kv: tuple[str, DriftAlert]) -> KafkaSinkMessage:
    alert = kv[1]
    return KafkaSinkMessage(key=alert.feature.encode(), value=msgspec.json.encode(alert))


class _FeatureStorePartition(StatefulSinkPartition):
    def __init__(self, settings: Settings, on_write: Callable[[int], None] | None, writer=None):
        if writer is None:  # a second partition in this process: Feast is loaded by now
            from store.feast import FeatureWriter

            writer = FeatureWriter(settings)
            gc.freeze()  # see FeatureStoreSink.open
        self.writer = writer
        self.on_write = on_write

    def write_batch(self, items: list[tuple]) -> None:
        # Items: (user_id, UserActivity, update), (user_id, SegmentAssignment),
        # (arm key, ArmCounters), (user_id, FirstExposure) or ("segment_profiles",
        # [SegmentProfile]). The newest per key and kind wins.
        tiles, segments, arms, firsts, profiles = {}, {}, {}, {}, None
        for item in items:
            key, value = item[0], item[1]
            kind = type(value)
            if kind is UserActivity:
                tiles[key] = value
            elif kind is SegmentAssignment:
                segments[key] = value
            elif kind is ArmCounters:
                arms[key] = value
            elif kind is FirstExposure:
                firsts[(key, value.experiment)] = value
            else:
                profiles = value
        with metrics.ONLINE_WRITE_SECONDS.time():
            self.writer.write(tiles)
            self.writer.write_segments(segments)
            self.writer.write_arms(arms)
            self.writer.write_first_exposures(firsts.values())
            if profiles is not None:
                self.writer.write_profiles(profiles)
        metrics.ONLINE_ROWS.inc(len(tiles) + len(segments) + len(arms) + len(firsts))
        if self.on_write is not None:
            self.on_write(len(items))

    def snapshot(self) -> None:
        # Called at each epoch's end, before the epoch's input offsets are
        # committed: flushing here means no offline row is ever lost on a crash.
        self.writer.flush_offline()

    def close(self) -> None:
        self.writer.close()


class FeatureStoreSink(FixedPartitionedSink):
    """Writes users' tiles to the Feast online store (and Parquet offline).

    One writer partition by default: SQLite takes one writer at a time. With
    Redis, raise ``TAILOR_SINK_PARTS`` to spread writes over workers.
    """

    def __init__(self, settings: Settings, on_write: Callable[[int], None] | None = None):
        self.settings = settings
        self.on_write = on_write
        self._opened: list = []  # warm writers, taken by the first partitions built

    def open(self) -> float:
        """Load Feast and open a warm writer now; returns the seconds it took.

        Bytewax 0.21 builds a sink partition when the first item reaches it, so a
        fresh flow's first events used to wait there for Feast's import and
        registry: 4-5 s here, idle or beside a 5,000 events/s load, 12.6-15.6 s
        on a busier machine (measured). `build_flow` calls this before Bytewax
        starts.
        """
        started = time.monotonic()
        from store.feast import FeatureWriter

        writer = FeatureWriter(self.settings)
        writer.warm_up()
        self._opened.append(writer)
        # Importing Feast leaves ~150k long-lived objects; a full collection that
        # walks them stalls the stream ~70 ms (measured). Nothing here frees them,
        # so move them out of the collector's sight.
        gc.freeze()
        return time.monotonic() - started

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.settings.flow.sink_parts)]

    def part_fn(self, item_key: str) -> int:
        return zlib.crc32(item_key.encode())

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _FeatureStorePartition:
        writer = self._opened.pop() if self._opened else None
        return _FeatureStorePartition(self.settings, self.on_write, writer)


def _user_of(event: Event) -> str:
    return event.user_id


def build_flow(
    settings: Settings | None = None,
    *,
    tail: bool | None = None,
    on_consume: Callable[[int], None] | None = None,
    on_write: Callable[[int], None] | None = None,
    on_audience: Callable[[Audience], None] | None = None,
) -> Dataflow:
    """The features dataflow; ``tail=False`` stops at the end of the topic.

    ``on_consume`` (per polled batch, with its size) and ``on_write`` (per online write, with its
    item count) and ``on_audience`` (after each audience batch, with the shared `Audience`)
    are hooks for benchmarks.

    Everything the first write needs is loaded here, before Bytewax reads an
    event (`FeatureStoreSink.open`); readiness is reported by `FlowReadiness`.
    When this process is ``python -m bytewax.run`` itself, SIGINT and SIGTERM
    stop the flow cleanly (`StopOnSignals`); a test or benchmark calling this
    keeps its own signal handling.
    """
    settings = settings or Settings.from_env()
    tail = settings.kafka.tail if tail is None else tail
    if not settings.kafka.brokers:
        raise ValueError("TAILOR_BROKERS is not set: point it at Kafka (host:port), or use `tailor up`")
    brokers = settings.kafka.brokers.split(",")
    readiness = FlowReadiness(settings)
    stop = threading.Event()
    signals = StopOnSignals(stop, readiness).install() if _is_flow_process() else None
    sink = FeatureStoreSink(settings, on_write)
    readiness.loaded_s = sink.open()
    flow = Dataflow("user_features")
    source = RawKafkaSource(
        brokers,
        [settings.kafka.topic],
        tail=tail,
        batch_size=settings.kafka.batch_size,
        add_config={"fetch.wait.max.ms": str(settings.kafka.fetch_wait_ms)},
        stop=stop,
        on_assigned=readiness.assigned,
        on_fetching=readiness.fetching,
    )
    messages = op.input("events", flow, source)
    # confluent_kafka.Message
    decode = decoder(settings)
    if on_consume is not None:
        decode_batch = decode

        def decode(batch: list[Message]) -> list[Event | DeadLetter]:
            on_consume(len(batch))
            return decode_batch(batch)

    decoded = op.flat_map_batch("decode", messages, decode)
    # Event | DeadLetter
    valid = op.branch("valid", decoded, lambda x: isinstance(x, Event))
    dead_letters = op.map("dead_letter", valid.falses, DeadLetter.to_sink)
    # KafkaSinkMessage with the reason
    op.output("dlq", dead_letters, KafkaSink(brokers, settings.kafka.dlq_topic))
    by_user = op.key_on("by_user", valid.trues, _user_of)
    # (user_id, Event)
    policy = settings.privacy.consent_policy
    gated = op.stateful_batch("consent", by_user, lambda resume: ConsentLogic(policy, resume))
    # (user_id, (Event, experiments allowed)): the events of users who allow analytics, consent events applied
    kept = op.map("kept", gated, _event_of)
    # (user_id, Event)
    users = op.stateful_batch("user_activity", kept, lambda resume: UserActivityLogic(settings, resume))
    # (user_id, (user_id, UserActivity, UserUpdate | None))
    rows = [users]
    if settings.audience.segments:
        updates = op.filter_map("to_audience", users, _to_audience)
        # ("audience", UserUpdate): one key, so every worker's updates meet on one worker
        audience = op.stateful_batch("audience", updates, lambda resume: AudienceLogic(settings, resume, on_audience))
        # ("audience", (user_id, SegmentAssignment) | ("segment_profiles", [SegmentProfile]) | DriftAlert)
        alerts = op.branch("alerts", audience, _is_alert)
        op.output(
            "drift",
            op.map("drift_message", alerts.trues, alert_message),
            KafkaSink(brokers, settings.kafka.drift_topic),
        )
        rows.append(op.map("by_row_key", alerts.falses, _keyed))
        # (key, (key, SegmentAssignment | [SegmentProfile])), keyed by user or "segment_profiles"
    in_experiments = op.filter_map("experiments_allowed", gated, _experiment_event)
    # Event of a user who allows experiments
    exp_events = op.flat_map_batch("experiment_events", in_experiments, experiment_events)
    # Event of type impression, click, conversion or purchase (every other type stops here)
    exp_by_user = op.key_on("exposures_by_user", exp_events, _user_of)
    # (user_id, Event)
    exposed = op.stateful_batch("exposures", exp_by_user, ExposureLogic)
    # (user_id, (arm key, ArmCounters delta) | (user_id, FirstExposure)): what each user's batch changed
    firsts = op.branch("first_exposures", exposed, _is_first_exposure)
    rows.append(op.map("first_exposure_rows", firsts.trues, _keyed))
    # (user_id, (user_id, FirstExposure)): the arm each user entered, for sticky assignment
    deltas = firsts.falses
    arms = op.stateful_batch("experiment_arms", op.map("by_arm", deltas, _value), ArmLogic)
    # (arm key, (arm key, ArmCounters)): absolute counters
    rows.append(op.map("arm_rows", arms, _keyed))
    op.output("feature_store", op.merge("rows", *rows), sink)
    if signals is not None:
        signals.running = True
    return flow


def _event_of(kv):
    return kv[0], kv[1][0]


def _experiment_event(kv) -> Event | None:
    event, allowed = kv[1]
    return event if allowed else None


def _to_audience(kv) -> tuple[str, UserUpdate] | None:
    update = kv[1][2]
    return None if update is None else (AUDIENCE_KEY, update)


def _is_alert(kv) -> bool:
    return type(kv[1]) is DriftAlert


def _is_first_exposure(kv) -> bool:
    return type(kv[1][1]) is FirstExposure


def _value(kv):
    return kv[1]


def _keyed(kv):
    row = kv[1]
    return row[0], row


class FlowReadiness:
    """When this process's flow can write, said three ways, once.

    Ready means: Feast is imported, the online store open and the writer warm
    (`build_flow` does that before Bytewax starts), and every Kafka partition
    this process consumes fetches (its start offset resolved). Then:

    - stderr: ``tailor flow: ready in 5.1 s (Feast loaded in 4.4 s, ...)``;
    - the gauge ``tailor_flow_ready`` is 1 (0 while starting and once stopping);
    - ``TAILOR_READY_FILE``, when set, is written atomically: one JSON line,
      ``{"pid": ..., "ready_s": ...}``. It is removed at start-up (a stale one
      from a killed run), when a stop begins and when the process exits.

    A process of a cluster that owns no Kafka partition never reports ready.
    """

    def __init__(self, settings: Settings):
        self.started = time.monotonic()
        self.topic = settings.kafka.topic
        self.online = "redis" if settings.redis.url else "sqlite"
        self.ready_file = Path(settings.flow.ready_file) if settings.flow.ready_file else None
        self.loaded_s: float | None = None
        self.ready = False
        self._assigned: set[str] = set()
        self._fetching: set[str] = set()
        self._lock = threading.Lock()
        metrics.FLOW_READY.set(0)
        if self.ready_file is not None:
            self.ready_file.unlink(missing_ok=True)
            atexit.register(self.withdraw)

    def assigned(self, part: str) -> None:
        with self._lock:
            self._assigned.add(part)

    def fetching(self, part: str) -> None:
        with self._lock:
            self._fetching.add(part)
            now_ready = not self.ready and self._fetching >= self._assigned
            self.ready = self.ready or now_ready
        if now_ready:
            self._announce()

    def _announce(self) -> None:
        ready_s = time.monotonic() - self.started
        metrics.FLOW_READY.set(1)
        if self.ready_file is not None:
            tmp = self.ready_file.with_name(f".{self.ready_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "ready_s": round(ready_s, 3)}) + "\n")
            tmp.replace(self.ready_file)  # a reader never sees half a file
        loaded = f"Feast loaded in {self.loaded_s:.1f} s, " if self.loaded_s is not None else ""
        print(
            f"tailor flow: ready in {ready_s:.1f} s ({loaded}online store {self.online}, "
            f"{len(self._fetching)} partition(s) of {self.topic} fetching, pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )

    def withdraw(self) -> None:
        """Not ready any more (stopping, exiting): the gauge to 0, the ready file gone."""
        metrics.FLOW_READY.set(0)
        if self.ready_file is not None and self.ready:
            self.ready_file.unlink(missing_ok=True)


class StopOnSignals:
    """SIGINT and SIGTERM end the flow's input, so that Bytewax stops it cleanly.

    Bytewax 0.21.1 on its own: SIGINT becomes a KeyboardInterrupt in whatever
    Python call the worker is in, then a Rust panic (exit 1, ~90 lines of
    backtrace, no close or final snapshot); SIGTERM kills the process where it
    stands. Here the first signal sets ``stop``; every Kafka partition ends at
    its next poll (milliseconds), the steps and sinks drain and close (the
    Parquet buffer is flushed), the epoch is snapshotted and the process exits
    0. A second signal stops the process at once, by the signal's default
    action. Before the flow is built (Feast still loading) a signal exits at
    once: nothing has been read.
    """

    def __init__(self, stop: threading.Event, readiness: FlowReadiness):
        self.stop = stop
        self.readiness = readiness
        self.running = False  # the flow is built: stopping means draining it

    def install(self) -> StopOnSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            print(
                f"tailor flow: {name} again: stopping now (the next start replays from the last snapshot)",
                file=sys.stderr,
                flush=True,
            )
            self.readiness.withdraw()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.stop.set()
        self.readiness.withdraw()
        if not self.running:
            print(f"tailor flow: {name} during start-up: exiting", file=sys.stderr, flush=True)
            raise SystemExit(0)
        print(
            f"tailor flow: {name}: stopping (draining, flushing the offline store, snapshotting; "
            f"{name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )


def _is_flow_process() -> bool:
    """Whether this process is ``python -m bytewax.run`` (not a test or benchmark calling `build_flow`)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "bytewax.run" and threading.current_thread() is threading.main_thread()


def init_recovery(recovery_dir: str | os.PathLike, parts: int = 1) -> None:
    """Create Bytewax's recovery partitions in ``recovery_dir`` unless present."""
    path = Path(recovery_dir)
    if path.is_dir() and any(path.glob("part-*.sqlite3")):
        return
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(path), str(parts)], check=True)


def flow_command(
    settings: Settings,
    recovery_dir: str | None,
    workers: int = 1,
    process_id: int | None = None,
    addresses: str | None = None,
) -> list[str]:
    """The command line that runs the flow as its own process (or one of a cluster)."""
    cmd = [sys.executable, "-m", "bytewax.run", "flows.features:build_flow()", "-w", str(workers)]
    if addresses:
        cmd += ["-i", str(process_id or 0), "-a", addresses]
    if recovery_dir:
        cmd += ["-r", str(recovery_dir), "-s", str(settings.flow.epoch_s), "-b", "0"]
    return cmd


def run_flow(settings: Settings, args) -> int:
    if not settings.kafka.brokers:
        print("tailor flow: set TAILOR_BROKERS to your Kafka (host:port), or run `tailor up`", file=sys.stderr)
        return 2
    ensure_topics(
        settings.kafka.brokers,
        [settings.kafka.topic, settings.kafka.dlq_topic, settings.kafka.drift_topic],
        settings.kafka.partitions,
    )
    if args.recovery_dir:
        init_recovery(args.recovery_dir)
    cmd = flow_command(settings, args.recovery_dir, args.workers, args.process_id, args.addresses)
    # Become the Bytewax process, so that signals (Ctrl-C, SIGTERM) reach it directly.
    os.execv(cmd[0], cmd)
    return 0  # not reached
