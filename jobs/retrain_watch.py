"""``tailor retrain --watch``: drift alerts and experiment arms' rates -> debounced retrain runs on fresh feedback.

Two kinds of trigger feed one debounce (`engine.learning.retrain_policy.debounce`, at most one
run per ``TAILOR_RETRAIN_MIN_INTERVAL_S``):

- drift: the flow writes each `DriftAlert` as JSON to ``settings.kafka.drift_topic``; the
  watch reads them with the offsets of the consumer group ``tailor-retrain`` (a restart
  goes on where it stopped; a first start reads only alerts sent from then on) and
  asks `drift_reason` whether an alert counts. On when ``TAILOR_RETRAIN_ON_DRIFT`` is
  true (the default) or ``--drift`` is passed; ``--no-drift`` turns it off.
- threshold: every ``--check-every-s`` seconds the watch reads each ``--arm``'s
  counters from the online store (`flows.experiments.read_arm_counters`, what the flow
  wrote) and `arm_check` adds the rate of the users who arrived since the previous
  reading to the arm's series, asking `threshold_reason` about it.

A run the debounce lets through calls ``on_trigger(trigger, reason)``. `run_watch`,
the command's glue, first exports fresh feedback (cut-off now, the events topic read
to its end, the file at `jobs.feedback.default_path`) unless ``--feedback`` names a
file, then calls the retrain. Runs block the loop: alerts that arrive meanwhile are
read afterwards and, being too soon, wait for the interval.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import msgspec

from config.settings import Settings
from engine.audience.drift import DriftAlert
from engine.learning.retrain_policy import (
    ArmSeries,
    ArmThreshold,
    TriggerState,
    arm_check,
    debounce,
    drift_reason,
    trigger_of,
)

log = logging.getLogger(__name__)
GROUP = "tailor-retrain"
COMMAND = "tailor retrain --watch"

#: ``on_trigger(trigger, reason)``: run a retrain ("drift" or "threshold", and why).
OnTrigger = Callable[[str, str], object]


class RetrainWatch:
    """The watch's memory: the debounce state and each arm's series; `offer` reasons, `check_arms` reads the store.

    Plain and synchronous, so a test drives it step by step; `watch` runs it in a loop.
    """

    def __init__(
        self,
        on_trigger: OnTrigger,
        *,
        min_interval_s: float,
        arms: Sequence[ArmThreshold] = (),
        store=None,
        clock: Callable[[], float] = time.time,
    ):
        if arms and store is None:
            raise ValueError("watching arms needs the online store they are read from")
        self.on_trigger = on_trigger
        self.min_interval_s = min_interval_s
        self.arms = list(arms)
        self.store = store
        self.clock = clock
        self.state = TriggerState()
        self.series: dict[str, ArmSeries] = {arm.name: ArmSeries() for arm in self.arms}

    def offer(self, reason: str | None) -> str | None:
        """A reason to retrain (None: a tick); runs the retrain when the debounce allows, returns the run's reason."""
        self.state, run = debounce(self.state, reason, self.clock(), self.min_interval_s)
        if run is not None:
            self.on_trigger(trigger_of(run), run)
        return run

    def check_arms(self) -> list[str]:
        """Read every arm's counters once; offers the reasons they give (each one, in order) and returns them."""
        from store.online import read_arm_counters

        by_experiment: dict[str, list[ArmThreshold]] = defaultdict(list)
        for arm in self.arms:
            by_experiment[arm.experiment].append(arm)
        reasons = []
        for experiment, arms in by_experiment.items():
            try:
                counters = read_arm_counters(self.store, experiment, [arm.variant for arm in arms])
            except Exception as exc:  # noqa: BLE001 - a store hiccup skips a check, never ends the watch
                log.warning("%s: could not read the counters of experiment %r: %s", COMMAND, experiment, exc)
                continue
            for arm in arms:
                c = counters[arm.variant]
                successes = c.converters if arm.metric == "conversion" else c.clickers
                self.series[arm.name], reason = arm_check(arm, self.series[arm.name], c.users, successes)
                if reason is not None:
                    reasons.append(reason)
        for reason in reasons:
            self.offer(reason)
        return reasons


def watch(
    settings: Settings,
    on_trigger: OnTrigger,
    *,
    min_interval_s: float,
    drift: bool = True,
    features: Collection[str] = (),
    arms: Sequence[ArmThreshold] = (),
    check_every_s: float = 60.0,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.time,
    group: str = GROUP,
) -> TriggerState:
    """Watch drift alerts (``drift``) and ``arms`` until ``stop`` is set (forever without one); returns the last state.

    ``ready`` is set once the consumer has its positions (alerts sent from then on are
    seen) and the arms' first reading, the starting point of their rates, is taken.
    ``clock`` is the debounce's; arm checks are paced by the monotonic clock.
    """
    if not drift and not arms:
        raise ValueError("nothing to watch: turn drift on or name an arm")
    store = None
    if arms:
        from feast.errors import FeatureViewNotFoundException

        from store.feast import ARM_VIEW, open_store

        store = open_store(settings)
        try:
            store.get_feature_view(ARM_VIEW)
        except FeatureViewNotFoundException:
            raise RuntimeError(
                f"feature view {ARM_VIEW!r} is not registered in {settings.store.feature_repo}: run "
                "`tailor apply` (the flow writes the arm counters there)"
            ) from None
    watcher = RetrainWatch(on_trigger, min_interval_s=min_interval_s, arms=arms, store=store, clock=clock)
    consumer = _drift_consumer(settings, group) if drift else None
    decode = msgspec.json.Decoder(DriftAlert).decode
    try:
        next_check = time.monotonic()
        if arms:
            watcher.check_arms()
            next_check += check_every_s
        if ready is not None:
            ready.set()
        while stop is None or not stop.is_set():
            reason = None
            if consumer is not None:
                message = consumer.poll(poll_s)
                if message is not None and message.error() is None:
                    try:
                        reason = drift_reason(decode(message.value()), features)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        log.warning(
                            "skipping a message on %s that is not a drift alert: %s", settings.kafka.drift_topic, exc
                        )
                elif message is not None:
                    log.warning("drift topic %s: %s", settings.kafka.drift_topic, message.error())
            elif stop is not None:
                stop.wait(max(0.0, min(poll_s, next_check - time.monotonic())))
            else:
                time.sleep(max(0.0, min(poll_s, next_check - time.monotonic())))
            watcher.offer(reason)
            if arms and time.monotonic() >= next_check:
                watcher.check_arms()
                next_check = time.monotonic() + check_every_s
    finally:
        if consumer is not None:
            consumer.close()
    return watcher.state


def _drift_consumer(settings: Settings, group: str):
    """A consumer of every partition of the drift topic, at the group's offsets (the end when never committed)."""
    from confluent_kafka import Consumer, TopicPartition

    from flows.kafka import end_offsets, ensure_topics

    ensure_topics(settings.kafka.brokers, [settings.kafka.drift_topic], settings.kafka.partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.brokers,
            "group.id": group,
            "enable.auto.commit": True,
            "client.id": "tailor-retrain-watch",
        }
    )
    # Explicit assignment of every partition (one watcher reads all alerts; no rebalance to wait
    # for), positions from the group's committed offsets; a partition never committed starts at
    # its current end, so a first start reads alerts sent from now on.
    partitions = (
        consumer.list_topics(settings.kafka.drift_topic, timeout=10).topics[settings.kafka.drift_topic].partitions
    )
    positions = consumer.committed([TopicPartition(settings.kafka.drift_topic, p) for p in partitions], timeout=10)
    ends = end_offsets(
        consumer, settings.kafka.drift_topic, [p.partition for p in positions if p.offset < 0], timeout_s=10
    )
    for position in positions:
        if position.offset < 0:
            position.offset = ends[position.partition]
    consumer.assign(positions)
    return consumer


def export_fresh_feedback(settings: Settings, *, window_h: float = 24.0, cutoff_ms: int | None = None) -> Path:
    """`tailor feedback export` as of now (the events topic to its end), to its default path; returns the path.

    It covers ``settings.retrain.feedback_days`` before the cut-off (0: the whole topic).

    Raises `RuntimeError` when the topic cannot be read and `OSError` when the file
    cannot be written.
    """
    from engine.learning.feedback import FeedbackJoin
    from jobs.feedback import default_path, join_topic, write_export
    from jobs.produce import now_ms

    cutoff_ms = now_ms() if cutoff_ms is None else cutoff_ms
    days = settings.retrain.feedback_days
    since_ms = cutoff_ms - round(days * 86_400_000) if days > 0 else None
    join = FeedbackJoin(cutoff_ms, max(1, round(window_h * 3_600_000)), since_ms, settings.privacy.consent_policy)
    bad: list[str] = []
    join_topic(settings, join, bad, progress=False)
    path = default_path(settings, cutoff_ms)
    rows, report = write_export(join, bad, source=f"kafka:{settings.kafka.topic}", path=path)
    print(
        f"{COMMAND}: exported {len(rows)} rows of feedback ({report['exposures']} exposures, "
        f"{report['outcomes_counted']} outcomes counted, cut-off {report['cutoff']}) to {path}",
        file=sys.stderr,
    )
    return path


def parse_arm(text: str) -> tuple[str, str]:
    """``EXPERIMENT/VARIANT`` -> (experiment, variant); `ValueError` that says what was expected.

    >>> parse_arm("hero/b")
    ('hero', 'b')
    """
    experiment, sep, variant = text.partition("/")
    if not sep or not experiment or not variant or "/" in variant:
        raise ValueError(f"--arm expects EXPERIMENT/VARIANT (e.g. hero/b), got {text!r}")
    return experiment, variant


def arms_of(args) -> list[ArmThreshold]:
    """The `ArmThreshold` of each ``--arm``, with the shared rules; `ValueError` for options that cannot work."""
    names = args.arm or []
    if not names:
        if args.floor or args.relative_drop:
            raise ValueError("--floor and --relative-drop apply to an arm: add --arm EXPERIMENT/VARIANT")
        return []
    pairs = [parse_arm(name) for name in dict.fromkeys(names)]
    if not args.floor and not args.relative_drop:
        raise ValueError("--arm needs --floor RATE, --relative-drop X or both: with neither nothing can trigger")
    return [
        ArmThreshold(
            experiment=experiment,
            variant=variant,
            metric=args.metric,
            floor=args.floor,
            relative_drop=args.relative_drop,
            min_users=args.min_users,
            recent=args.recent,
        )
        for experiment, variant in pairs
    ]


def run_watch(
    settings: Settings,
    args,
    retrain: Callable[[str, str, str | None], object],
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
    poll_s: float = 1.0,
) -> int:
    """``tailor retrain --watch``: ``retrain(trigger, reason, feedback path)`` on each run the triggers allow.

    Without ``args.feedback`` each run first exports fresh feedback; when that export
    fails the run is skipped (the next trigger after the interval tries again).
    Returns 2 when the options or the settings cannot work.
    """
    try:
        arms = arms_of(args)
    except ValueError as exc:
        print(f"{COMMAND}: {exc}", file=sys.stderr)
        return 2
    drift = settings.retrain.on_drift if args.drift is None else args.drift
    if not drift and not arms:
        print(
            f"{COMMAND}: nothing to watch: drift triggers are off (TAILOR_RETRAIN_ON_DRIFT=false or --no-drift) "
            f"and no --arm EXPERIMENT/VARIANT is given",
            file=sys.stderr,
        )
        return 2
    if not settings.kafka.brokers and (drift or not args.feedback):
        needs = " and ".join(
            n for n in ("drift alerts" if drift else "", "" if args.feedback else "fresh feedback") if n
        )
        print(
            f"{COMMAND}: set TAILOR_BROKERS to the Kafka the {needs} come from"
            f"{'' if drift else ' (or pass --feedback PATH)'}",
            file=sys.stderr,
        )
        return 2

    def on_trigger(trigger: str, reason: str) -> None:
        feedback = args.feedback
        if not feedback:
            try:
                feedback = str(export_fresh_feedback(settings))
            except (RuntimeError, OSError) as exc:
                print(
                    f"{COMMAND}: no run for '{reason}': the feedback export failed ({exc}); watching on",
                    file=sys.stderr,
                )
                return
        try:
            retrain(trigger, reason, feedback)
        except Exception as exc:  # noqa: BLE001 - recorded in runs.jsonl; the watch goes on
            print(f"{COMMAND}: the run failed ({type(exc).__name__}: {exc}); watching on", file=sys.stderr)

    watched = []
    if drift:
        watched.append(f"drift alerts from {settings.kafka.drift_topic}")
    for arm in arms:
        rules = [
            f"under {arm.floor:g}" if arm.floor else "",
            f"{arm.relative_drop:.0%} under its past" if arm.relative_drop else "",
        ]
        watched.append(
            f"{arm.name} {arm.metric} rate {' or '.join(r for r in rules if r)} "
            f"(checked every {args.check_every_s:g} s, per {arm.min_users}+ new users)"
        )
    data = f"on {args.feedback}" if args.feedback else "on feedback exported afresh for each run"
    print(
        f"{COMMAND}: retraining {data} on {'; '.join(watched)}, at most once per "
        f"{settings.retrain.min_interval_s:g} s (Ctrl-C stops)",
        file=sys.stderr,
    )
    try:
        watch(
            settings,
            on_trigger,
            min_interval_s=settings.retrain.min_interval_s,
            drift=drift,
            arms=arms,
            check_every_s=args.check_every_s,
            stop=stop,
            ready=ready,
            poll_s=poll_s,
        )
    except (RuntimeError, FileNotFoundError) as exc:  # no broker answers; no Feast repository
        print(f"{COMMAND}: {exc}", file=sys.stderr)
        return 2
    return 0
