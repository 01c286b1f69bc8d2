"""`tailor retrain --watch` on a real broker: drift alerts retrain at most once per interval."""

from __future__ import annotations

import threading
import uuid

import msgspec
import pytest

pytestmark = pytest.mark.integration

# -- the drift trigger (Kafka) --------------------------------------------------


@pytest.mark.integration
def test_watch_retrains_on_drift_alerts_at_most_once_per_interval(broker):
    from confluent_kafka import Producer

    from config.settings import Settings
    from engine.audience.drift import DriftAlert
    from flows.kafka import ensure_topics
    from jobs.retrain_watch import watch

    settings = Settings.of(brokers=broker.address, drift_topic=f"drift-{uuid.uuid4().hex[:8]}")
    ensure_topics(settings.kafka.brokers, [settings.kafka.drift_topic], 1)
    now = [1000.0]
    reasons: list[str] = []
    stop, ready = threading.Event(), threading.Event()
    watcher = threading.Thread(
        target=watch,
        args=(settings, lambda _trigger, reason: reasons.append(reason)),
        daemon=True,
        kwargs={
            "min_interval_s": 3600,
            "stop": stop,
            "ready": ready,
            "poll_s": 0.1,
            "clock": lambda: now[0],
            "group": f"test-{uuid.uuid4().hex[:8]}",
        },
    )
    watcher.start()
    producer = Producer({"bootstrap.servers": settings.kafka.brokers})

    def send(value: bytes) -> None:
        producer.produce(settings.kafka.drift_topic, value)
        producer.flush(10)

    def alert(feature: str) -> bytes:
        return msgspec.json.encode(
            DriftAlert(
                feature=feature,
                method="kl",
                score=0.7,
                threshold=0.4,
                window=10,
                time_ms=0,
                time="2026-01-01T00:00:00Z",
                checks=3,
            )
        )

    def wait_for(n: int) -> None:
        for _ in range(200):
            if len(reasons) >= n:
                return
            threading.Event().wait(0.05)
        raise AssertionError(f"expected {n} runs, got {reasons}")

    try:
        assert ready.wait(30), "the watcher never got its partitions"
        send(b"not an alert")  # skipped, not fatal
        send(alert("clicks_5m"))
        wait_for(1)
        send(alert("segment_sizes"))
        send(alert("sessions_1h"))
        threading.Event().wait(1.0)
        assert len(reasons) == 1  # too soon: waiting
        now[0] += 3600
        wait_for(2)
    finally:
        stop.set()
        watcher.join(10)
    assert reasons[0].startswith("drift: clicks_5m kl 0.7 > 0.4")
    assert reasons[1].startswith("drift: sessions_1h") and "(and 1 earlier trigger while waiting)" in reasons[1]
