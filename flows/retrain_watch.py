"""``tailor retrain --watch``: drift alerts from Kafka -> debounced retrain runs.

The flow writes each `DriftAlert` as JSON to ``settings.drift_topic``. This loop reads
them with the offsets of the consumer group ``tailor-retrain`` (a restart goes on where
it stopped; a first start reads only alerts sent from then on), asks
`engine.retrain_policy` whether an alert counts and whether a run may start now, and
calls ``on_trigger(reason)``: the caller runs the retrain. Runs block the loop, so
alerts that arrive meanwhile are read afterwards and, being too soon, wait for the
interval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection

import msgspec

from engine.drift import DriftAlert
from engine.retrain_policy import TriggerState, debounce, drift_reason
from engine.settings import Settings

log = logging.getLogger(__name__)
GROUP = "tailor-retrain"


def watch_drift(settings: Settings, on_trigger: Callable[[str], object], *, min_interval_s: float,
                features: Collection[str] = (), stop: threading.Event | None = None,
                ready: threading.Event | None = None, poll_s: float = 1.0,
                clock: Callable[[], float] = time.time, group: str = GROUP) -> TriggerState:
    """Consume drift alerts until ``stop`` is set (forever without one); returns the last trigger state.

    ``ready`` is set once the consumer has its positions (alerts sent from then on are seen).
    """
    from confluent_kafka import Consumer, TopicPartition

    from flows.kafka import ensure_topics

    decode = msgspec.json.Decoder(DriftAlert).decode
    ensure_topics(settings.brokers, [settings.drift_topic], settings.partitions)
    consumer = Consumer({"bootstrap.servers": settings.brokers, "group.id": group, "enable.auto.commit": True,
                         "client.id": "tailor-retrain-watch"})
    # Explicit assignment of every partition (one watcher reads all alerts; no rebalance to wait
    # for), positions from the group's committed offsets; a partition never committed starts at
    # its current end, so a first start reads alerts sent from now on.
    partitions = consumer.list_topics(settings.drift_topic, timeout=10).topics[settings.drift_topic].partitions
    positions = consumer.committed([TopicPartition(settings.drift_topic, p) for p in partitions], timeout=10)
    for position in positions:
        if position.offset < 0:
            position.offset = consumer.get_watermark_offsets(position, timeout=10)[1]
    consumer.assign(positions)
    if ready is not None:
        ready.set()
    state = TriggerState()
    try:
        while stop is None or not stop.is_set():
            message = consumer.poll(poll_s)
            reason = None
            if message is not None and message.error() is None:
                try:
                    reason = drift_reason(decode(message.value()), features)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.warning("skipping a message on %s that is not a drift alert: %s", settings.drift_topic, exc)
                    continue
            elif message is not None:
                log.warning("drift topic %s: %s", settings.drift_topic, message.error())
            state, run = debounce(state, reason, clock(), min_interval_s)
            if run is not None:
                on_trigger(run)
    finally:
        consumer.close()
    return state
