"""Kafka plumbing shared by the flow, the producers and the tests: topics, producers, the flow's source.

The code never knows which broker it talks to: Apache Kafka in production, the
embedded Tansu broker (`dev.services.EmbeddedBroker`) for development and tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable

from bytewax.connectors.kafka import KafkaSource, _KafkaSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def ensure_topics(brokers: str, topics: Iterable[str], partitions: int, timeout_s: float = 30.0) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = AdminClient({"bootstrap.servers": brokers})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no Kafka broker answers at {brokers}: {exc}") from None
            time.sleep(0.2)
    missing = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics if t not in existing]
    if not missing:
        return
    for topic, future in admin.create_topics(missing).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"could not create topic {topic} on {brokers}: {exc}") from None
    # Metadata for a new topic can lag its creation; wait until it is visible.
    names = {t.topic for t in missing}
    while not names <= set(admin.list_topics(timeout=5).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {sorted(names)} were created but never appeared on {brokers}")
        time.sleep(0.1)


def watermarks(
    consumer: Consumer, topic: str, partitions: Iterable[int] | None = None, timeout_s: float = 10.0
) -> dict[int, tuple[int, int]]:
    """Each partition's (low, high) watermark offsets: its first message, and where the next one lands.

    ``partitions`` defaults to every partition of the topic. Raises `KafkaException` when the
    broker does not answer within ``timeout_s``.
    """
    if partitions is None:
        partitions = consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s) for p in partitions}


def end_offsets(
    consumer: Consumer, topic: str, partitions: Iterable[int] | None = None, timeout_s: float = 10.0
) -> dict[int, int]:
    """Each partition's end (high watermark): a read that gets there has read all that was produced so far."""
    return {p: high for p, (_, high) in watermarks(consumer, topic, partitions, timeout_s).items()}


#: What `make_producer` sets unless told otherwise. ``linger.ms`` 50, not 5: live traffic
#: lingered 5 ms lands as many small record batches, and the embedded broker's fetch cost
#: grows with the batches in its log; at 1,000 events/s the flow fell 25,707 events behind
#: in 3 minutes (broker CPU up to 100 %), with 50 ms it stayed level (final lag 0, broker
#: CPU median 26 %; `tailor bench freshness --live`, README). Kafka indexes its log and does
#: not care; 50 ms is still far inside the freshness budget of simulated and replayed load.
PRODUCER_DEFAULTS: dict[str, int | str] = {
    "linger.ms": 50,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "compression.type": "lz4",
}


def make_producer(brokers: str, **config) -> Producer:
    """A producer tuned for event streams: batched, compressed, idempotent keys."""
    return Producer({"bootstrap.servers": brokers, **PRODUCER_DEFAULTS, **config})


def produce_all(producer: Producer, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) records, waiting out a full local queue; returns the count."""
    n = 0
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 10_000 == 0:
            producer.poll(0)
    return n


class RawKafkaSource(KafkaSource):
    """Bytewax's `KafkaSource`, handing the flow librdkafka's messages as they are.

    Partition discovery, assignment, recovery offsets, end-of-topic handling and
    consumer metrics are the connector's own; only the per-message
    `KafkaSourceMessage` wrapper is skipped, which halves the source's cost per
    message (measured in bench/ingest: ~11 us -> ~5.5 us here). Consumer
    errors stop the flow, as with the connector's ``raise_on_errors=True``.

    ``stop``, once set, ends every partition at its next poll, as the end of a
    finite topic does: Bytewax then drains the flow, snapshots and exits.
    ``on_assigned`` and ``on_fetching`` are told each partition's name when it
    is built and at its first poll once its start offset is known (the broker
    answered; the consumer fetches from there).
    """

    def __init__(
        self,
        brokers: list[str],
        topics: list[str],
        *,
        stop: threading.Event | None = None,
        on_assigned: Callable[[str], None] | None = None,
        on_fetching: Callable[[str], None] | None = None,
        **kwargs,
    ):
        super().__init__(brokers, topics, **kwargs)
        self._stop = stop
        self._on_assigned = on_assigned
        self._on_fetching = on_fetching

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RawKafkaPartition:
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise ValueError(f"can't resume from a different set of Kafka topics ({topic} is not configured)")
        config = {
            # Offsets live in Bytewax's recovery store, not in a consumer group.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": ",".join(self._brokers),
            "enable.partition.eof": str(not self._tail),
            "statistics.interval.ms": 1000,
        }
        config.update(self._add_config)
        part = _RawKafkaPartition(
            step_id, config, topic, int(idx), self._starting_offset, resume_state, self._batch_size, True
        )
        part.watch(for_part, self._stop, self._on_fetching)
        if self._on_assigned is not None:
            self._on_assigned(for_part)
        return part


class _RawKafkaPartition(_KafkaSourcePartition):
    def __init__(self, *args):
        super().__init__(*args)
        self._name = ""
        self._stop = None
        self._on_fetching = None
        self._resolved = self._resolve_start()

    def _resolve_start(self) -> bool:
        """Turn a logical start offset (a fresh flow's: the beginning) into a real one, now.

        librdkafka looks a logical offset up only once it knows the partition's
        leader; assigned before any metadata, as here, it retries on a fixed
        500 ms timer (measured on Tansu). Asking the broker directly and assigning
        the answer starts the fetch at once, and tells that the broker answers.
        """
        if self._offset >= 0:
            return True
        try:
            low, high = watermarks(self._consumer, self._topic, [self._part_idx])[self._part_idx]
        except KafkaException:
            return False  # no broker yet: the consumer keeps trying on its own
        if self._offset == OFFSET_BEGINNING:
            self._offset = low
        elif self._offset == OFFSET_END:
            self._offset = high
        else:
            return False  # another logical offset: librdkafka resolves it
        self._consumer.assign([TopicPartition(self._topic, self._part_idx, self._offset)])
        return True

    def watch(self, name: str, stop: threading.Event | None, on_fetching: Callable[[str], None] | None) -> None:
        self._name, self._stop, self._on_fetching = name, stop, on_fetching

    def next_batch(self) -> list[Message]:
        if self._eof or (self._stop is not None and self._stop.is_set()):
            raise StopIteration()
        batch = self._consumer.consume(self._batch_size, 0.001)
        for i, msg in enumerate(batch):
            error = msg.error()
            if error is None:
                continue
            if error.code() != KafkaError._PARTITION_EOF:
                raise RuntimeError(f"error consuming from Kafka topic {self._topic!r}: {error}")
            # Emit what came before the end; stop at the next call.
            self._eof = True
            batch = batch[:i]
            break
        if batch:
            self._offset = batch[-1].offset() + 1
        if self._on_fetching is not None and (self._resolved or batch):
            # Told at the first poll, not when built: by then Bytewax has built every partition.
            self._on_fetching(self._name)
            self._on_fetching = None
        return batch


def read_topic(brokers: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[Message]:
    """Read a topic from the start until ``expected`` messages arrived (or ``timeout_s`` ran out)."""
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    # Explicit assignment: no consumer-group rebalance to wait for.
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                out.append(msg)
    finally:
        consumer.close()
    return out
