"""Helpers for integration tests: produce, consume, read features back."""

from __future__ import annotations

import json

from engine.features.events import Event, encode_event
from flows.kafka import make_producer, produce_all, read_topic


def produce_events(settings, events: list[Event]) -> None:
    produce_raw(settings, [(e.user_id.encode(), encode_event(e)) for e in events])


def produce_raw(settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings.kafka.brokers, **{"message.max.bytes": 2_000_000})
    produce_all(producer, settings.kafka.topic, records)
    assert producer.flush(30) == 0, "producer did not deliver everything"


def consume_all(brokers: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """Read a topic from the start until ``expected`` messages arrived (or time ran out)."""
    return read_topic(brokers, topic, expected, timeout_s)


def dead_letters(settings, expected: int) -> list[dict]:
    return [json.loads(m.value()) for m in consume_all(settings.kafka.brokers, settings.kafka.dlq_topic, expected)]


def online_features(settings, user_ids: list[str]) -> dict[str, list]:
    from store.feast import open_store

    store = open_store(settings)
    return store.get_online_features(
        features=store.get_feature_service("user_activity_v1"),
        entity_rows=[{"user_id": u} for u in user_ids],
    ).to_dict()


def online_states(settings, user_ids: list[str]) -> dict[str, bytes | None]:
    from store.feast import open_store

    store = open_store(settings)
    got = store.get_online_features(
        features=["user_activity_tiles:state"], entity_rows=[{"user_id": u} for u in user_ids]
    ).to_dict()
    return dict(zip(got["user_id"], got["state"]))


def uninterrupted_run(settings, folder):
    """The same topic read in-process, start to end, into a second Feast repo in ``folder``."""
    from bytewax.testing import run_main

    from flows.features import build_flow
    from store.feast import new_repo

    reference = new_repo(settings, folder)
    run_main(build_flow(reference, tail=False))
    return reference


def feed_audience(
    audience,
    events,
    batch_size: int = 2000,
    half_life_s: float = 259_200.0,
    min_sessions: float = 2.0,
    behaviours: dict | None = None,
    session_gap_s: float = 1800.0,
    max_idle_s: float = 86_400.0,
):
    """What the flow does, without Kafka: batches of events -> per-user behaviour -> the audience.

    Yields ``(events handed out so far, AudienceResult)`` per batch.
    """
    from engine.audience.audience import UserUpdate
    from engine.audience.segments import Behaviour

    behaviours = {} if behaviours is None else behaviours
    batch: dict[str, list] = {}
    seen = 0

    def flush():
        updates = []
        for user_id, user_events in batch.items():
            b = behaviours.get(user_id)
            if b is None:
                b = behaviours[user_id] = Behaviour(half_life_s, session_gap_s, max_idle_s)
            for e in user_events:
                b.update(e)
            clicks, impressions = b.take_clicks()
            updates.append(
                UserUpdate(
                    user_id,
                    user_events[-1].ts,
                    len(user_events),
                    clicks,
                    impressions,
                    b.evidence() if b.visits_total >= min_sessions else None,
                )
            )
        batch.clear()
        return audience.observe(updates)

    for event in events:
        batch.setdefault(event.user_id, []).append(event)
        seen += 1
        if seen % batch_size == 0:
            yield seen, flush()
    if batch:
        yield seen, flush()
