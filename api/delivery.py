"""Events the broker acknowledged: the API's Kafka producer, its delivery reports and its health.

`EventProducer` wraps confluent-kafka's `Producer` so that ``POST /v1/events``
answers 202 only for events the broker acknowledged. Each request produces its
events with a delivery callback and awaits an asyncio future that the callbacks
resolve (through ``loop.call_soon_threadsafe``); a background thread keeps
calling ``poll()``, so delivery reports are served whatever the traffic and the
local queue always drains. ``message.timeout.ms`` is the request's bound
(`Settings.produce_timeout_ms`): librdkafka fails a message it could not deliver
by then, instead of keeping it queued for ever.

It refuses at once, without producing anything, when the batch would overflow
the local queue or the producer cannot deliver (librdkafka reported every
broker down, or a delivery just timed out); the poll thread then probes the
broker's metadata every second and lifts the refusal when it answers again.
`problem` says why it cannot deliver, for ``/readyz``.

Impressions logged by ``/v1/personalize`` (`expose`) share the producer but are
never awaited: one that cannot be queued or delivered is counted, not retried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer
from prometheus_client import Counter

from config.settings import Settings

log = logging.getLogger("tailor.api")

DELIVERY_FAILED = Counter(
    "tailor_events_delivery_failed_total",
    "Valid events POST /v1/events answered 503 for, by reason: unavailable (refused while the "
    "producer cannot deliver), queue_full, timed_out (not acknowledged in time), broker_error.",
    ["reason"],
)
EXPOSURES_DROPPED = Counter(
    "tailor_exposures_dropped_total",
    "Impression events not logged: the producer's queue was full, the broker was down, or it never acknowledged them.",
)

#: How often the poll thread asks a producer that cannot deliver whether the broker answers again.
PROBE_EVERY_S = 1.0
#: Undelivered events are logged at most this often per reason, with the count since the last line.
LOG_EVERY_S = 1.0


class Undelivered:
    """Why one event was not delivered: a metric label (`reason`) and a sentence (`text`)."""

    __slots__ = ("reason", "text")

    def __init__(self, reason: str, text: str):
        self.reason, self.text = reason, text

    def __repr__(self) -> str:
        return f"Undelivered({self.reason!r}, {self.text!r})"


class _Batch:
    """One request's events: delivery reports in, one future resolved once every produced event reported."""

    __slots__ = ("results", "future", "_loop", "_on_failure", "_lock", "_reported", "_expected")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, n: int, unreported: Undelivered, on_failure: Callable[[KafkaError], None]
    ):
        self.results: list[Undelivered | None] = [unreported] * n
        self.future: asyncio.Future = loop.create_future()
        self._loop = loop
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._reported = 0
        self._expected: int | None = None  # known once every event is produced

    def report(self, index: int, err: KafkaError | None, _msg) -> None:
        """Delivery callback (the poll thread)."""
        if err is None:
            self.results[index] = None
        else:
            self.results[index] = _undelivered(err)
            self._on_failure(err)
        with self._lock:
            self._reported += 1
            done = self._reported == self._expected
        if done:
            try:
                self._loop.call_soon_threadsafe(self._settle)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def seal(self, produced: int) -> None:
        """Every event that will report is produced (the event loop's thread)."""
        with self._lock:
            self._expected = produced
            done = self._reported == produced
        if done:
            self._settle()

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class _Health:
    """What the producer's callbacks learn: why it cannot deliver (`unable`), or None.

    Set by the poll thread and its callbacks, read anywhere. The callbacks hold this, not
    the `EventProducer`: were they to hold it, the librdkafka client would hold itself
    (client -> callback -> EventProducer -> client) and, frozen by the lifespan's
    ``gc.freeze()``, keep reconnecting after shutdown.
    """

    __slots__ = ("brokers", "timeout_ms", "unable")

    def __init__(self, brokers: str, timeout_ms: int):
        self.brokers, self.timeout_ms = brokers, timeout_ms
        self.unable: str | None = None

    def on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback."""
        if err.code() == KafkaError._ALL_BROKERS_DOWN and self.unable is None:
            self.unable = f"no broker answers at {self.brokers} ({err.str()})"
            log.warning("producer: %s; refusing events until it answers", self.unable)

    def on_failure(self, err: KafkaError) -> None:
        """A delivery failed: one that timed out means the broker cannot take events now."""
        if err.code() == KafkaError._MSG_TIMED_OUT and self.unable is None:
            self.unable = f"a delivery to {self.brokers} timed out after {self.timeout_ms} ms"
            log.warning("producer: %s; refusing events until the broker answers", self.unable)

    def on_exposure(self, err: KafkaError | None, _msg) -> None:
        """An impression's delivery report."""
        if err is not None:
            EXPOSURES_DROPPED.inc()
            self.on_failure(err)


class EventProducer:
    """The API's producer: awaited deliveries for events, fire-and-forget impressions, and its health."""

    def __init__(self, settings: Settings, **config):
        self.brokers = settings.kafka.brokers
        self.timeout_ms = settings.kafka.produce_timeout_ms
        self.capacity = settings.kafka.producer_queue_messages
        self.probe_topic = settings.kafka.topic
        self._health = health = _Health(settings.kafka.brokers, self.timeout_ms)
        self.producer = Producer(
            {
                "bootstrap.servers": settings.kafka.brokers,
                # Each request waits for its acknowledgement, so lingering adds straight to its latency
                # (raw produce-to-ack on Tansu here, p50: 0.24 ms at 0 ms, 2.6 ms at 2 ms); events produced
                # while a request is in flight still go to the broker together.
                "linger.ms": 0,
                # A message the broker did not acknowledge by then fails (its report says so) and leaves
                # the queue: without it librdkafka retries for 300 s and a burst in an outage fills the queue.
                "message.timeout.ms": self.timeout_ms,
                "queue.buffering.max.messages": self.capacity,
                # A broker back after an outage is reconnected within a second, not librdkafka's 10 s.
                "reconnect.backoff.max.ms": 1000,
                "error_cb": health.on_error,
                **config,
            }
        )
        # Undelivered events not logged yet, and when the next line may be, per reason (the event loop's).
        self._unlogged: dict[str, int] = {}
        self._log_after: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="tailor-delivery-reports", daemon=True)
        self._thread.start()

    # -- the event loop's side ---------------------------------------------------------

    async def deliver(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[Undelivered | None]:
        """Produce ``(key, value)`` records and wait for the broker: per record None (delivered) or why not.

        Never waits longer than about `timeout_ms`; nothing is produced when the
        whole batch cannot be (queue full, producer unable to deliver).
        """
        n = len(records)
        if self._health.unable is not None:
            return self._refuse(
                n, Undelivered("unavailable", f"the broker cannot take events now: {self._health.unable}")
            )
        queued = len(self.producer)
        if queued + n > self.capacity:
            return self._refuse(
                n,
                Undelivered(
                    "queue_full",
                    f"the producer's queue is full ({queued} of {self.capacity} messages wait for the broker)",
                ),
            )
        batch = _Batch(
            asyncio.get_running_loop(),
            n,
            Undelivered("timed_out", f"the broker did not acknowledge it within {self.timeout_ms} ms"),
            self._health.on_failure,
        )
        produced = 0
        for key, value in records:
            try:
                self.producer.produce(topic, value, key, on_delivery=functools.partial(batch.report, produced))
            except BufferError:  # the byte limit (queue.buffering.max.kbytes) was hit first
                batch.results[produced:] = [Undelivered("queue_full", "the producer's queue is full")] * (n - produced)
                break
            produced += 1
        batch.seal(produced)
        # librdkafka reports every message by message.timeout.ms; the margin covers its timeout scan.
        try:
            await asyncio.wait_for(asyncio.shield(batch.future), self.timeout_ms / 1000 + 1.5)
        except TimeoutError:
            pass  # unreported ones keep their "timed out" result
        results = list(batch.results)
        self._count(results)
        return results

    def expose(self, topic: str, key: bytes, value: bytes) -> None:
        """Log an impression without waiting: one that cannot be queued or delivered is counted and dropped."""
        if self._health.unable is not None:
            EXPOSURES_DROPPED.inc()
            return
        try:
            self.producer.produce(topic, value, key, on_delivery=self._health.on_exposure)
        except BufferError:  # the local queue is full: the response still goes out
            EXPOSURES_DROPPED.inc()

    def problem(self) -> str | None:
        """Why the producer cannot deliver now (for ``/readyz``), or None."""
        if self._health.unable is not None:
            return f"cannot deliver: {self._health.unable}"[:200]
        queued = len(self.producer)
        if queued >= self.capacity:
            return f"cannot deliver: the producer's queue is full ({queued} of {self.capacity} messages waiting)"
        return None

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop the poll thread and flush what is queued; returns how many messages were left undelivered."""
        self._stop.set()
        self._thread.join(5)
        return self.producer.flush(timeout_s)

    def _refuse(self, n: int, why: Undelivered) -> list[Undelivered | None]:
        results: list[Undelivered | None] = [why] * n
        self._count(results)
        return results

    def _count(self, results: list[Undelivered | None]) -> None:
        """Count undelivered events by reason; log each reason at most once a second (an outage is many requests)."""
        failed: dict[str, Undelivered] = {}
        counts: dict[str, int] = {}
        for result in results:
            if result is not None:
                failed.setdefault(result.reason, result)
                counts[result.reason] = counts.get(result.reason, 0) + 1
        now = time.monotonic()
        for reason, count in counts.items():
            DELIVERY_FAILED.labels(reason).inc(count)
            unlogged = self._unlogged.get(reason, 0) + count
            if now < self._log_after.get(reason, 0.0):
                self._unlogged[reason] = unlogged
                continue
            log.warning(
                "%d events not delivered to Kafka (%s) since the last such line: %s",
                unlogged,
                reason,
                failed[reason].text,
            )
            self._unlogged[reason], self._log_after[reason] = 0, now + LOG_EVERY_S

    # -- the poll thread's side ----------------------------------------------------------

    def _serve(self) -> None:
        """Serve delivery reports for ever; while the producer cannot deliver, probe the broker."""
        next_probe = 0.0
        while not self._stop.is_set():
            self.producer.poll(0.05)
            if self._health.unable is not None and time.monotonic() >= next_probe:
                self._probe()
                next_probe = time.monotonic() + PROBE_EVERY_S

    def _probe(self) -> None:
        try:
            topic = self.producer.list_topics(self.probe_topic, timeout=0.5).topics.get(self.probe_topic)
        except KafkaException:
            return
        if topic is not None and topic.error is None:
            log.warning("the broker at %s answers again: accepting events", self.brokers)
            self._health.unable = None


def _undelivered(err: KafkaError) -> Undelivered:
    if err.code() == KafkaError._MSG_TIMED_OUT:
        return Undelivered("timed_out", f"the broker did not acknowledge it in time ({err.str()})")
    return Undelivered("broker_error", f"the broker refused it: {err.str()}")
