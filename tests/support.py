"""Helpers for integration tests: produce, consume, read features back."""

from __future__ import annotations

import json

from engine.events import Event, encode_event
from flows.kafka import make_producer, produce_all, read_topic


def produce_events(settings, events: list[Event]) -> None:
    produce_raw(settings, [(e.user_id.encode(), encode_event(e)) for e in events])


def produce_raw(settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings.brokers, **{"message.max.bytes": 2_000_000})
    produce_all(producer, settings.topic, records)
    assert producer.flush(30) == 0, "producer did not deliver everything"


def consume_all(brokers: str, topic: str, expected: int, timeout_s: float = 20.0) -> list:
    """Read a topic from the start until ``expected`` messages arrived (or time ran out)."""
    return read_topic(brokers, topic, expected, timeout_s)


def dead_letters(settings, expected: int) -> list[dict]:
    return [json.loads(m.value()) for m in consume_all(settings.brokers, settings.dlq_topic, expected)]


def online_features(settings, user_ids: list[str]) -> dict[str, list]:
    from flows.store import open_store

    store = open_store(settings)
    return store.get_online_features(
        features=store.get_feature_service("user_activity_v1"),
        entity_rows=[{"user_id": u} for u in user_ids],
    ).to_dict()


def online_states(settings, user_ids: list[str]) -> dict[str, bytes | None]:
    from flows.store import open_store

    store = open_store(settings)
    got = store.get_online_features(
        features=["user_activity_tiles:state"], entity_rows=[{"user_id": u} for u in user_ids]
    ).to_dict()
    return dict(zip(got["user_id"], got["state"]))


def uninterrupted_run(settings, folder):
    """The same topic read in-process, start to end, into a second Feast repo in ``folder``."""
    from bytewax.testing import run_main

    from flows.features import build_flow
    from flows.store import new_repo

    reference = new_repo(settings, folder)
    run_main(build_flow(reference, tail=False))
    return reference
