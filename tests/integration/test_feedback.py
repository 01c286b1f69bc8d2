"""``tailor feedback export`` from Kafka: the topic read to its end, and --since against what it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.features.events import encode_event
from jobs.feedback import run_feedback
from tests.support import (
    HOUR,
    MIN,
    T0,
    feedback_export_args,
    feedback_row,
    point_in_time_events,
    read_feedback_rows,
)

pytestmark = pytest.mark.integration


def test_export_from_kafka_reads_the_topic_to_its_end(make_settings, tmp_path, capsys):
    from tests.support import produce_events, produce_raw

    settings = make_settings()
    produce_events(settings, point_in_time_events())
    produce_raw(settings, [(b"u9", b"not json")])
    assert run_feedback(settings, feedback_export_args("--cutoff", str(T0 + 4 * HOUR), "--window-h", "2")) == 0
    summary = json.loads(capsys.readouterr().out)
    expected_path = Path(settings.store.feature_repo) / "data" / "feedback" / "feedback-20260101T040000Z.parquet"
    assert summary["path"] == str(expected_path) and summary["source"] == f"kafka:{settings.kafka.topic}"
    rows = read_feedback_rows(expected_path)
    # A 2 h window: the purchase 3 h after its exposure no longer counts.
    assert sorted(rows, key=lambda r: r.text) == [
        feedback_row(
            "Deals end soon", impressions=1, clickers=1, weight=1.0, first_ms=T0 + 3 * HOUR, last_ms=T0 + 3 * HOUR
        ),
        feedback_row("Half price today", impressions=1, clickers=1, weight=1.0),
    ]
    assert (summary["events"], summary["bad_events"], summary["outcomes_outside_window"]) == (5, 1, 1)
    assert summary["bad_reasons"][0].startswith("partition ")


def test_export_since_leaves_out_what_kafka_holds_from_before(make_settings, capsys):
    from flows.kafka import make_producer

    settings = make_settings()
    producer = make_producer(settings.kafka.brokers)
    old, new = point_in_time_events()[:2], point_in_time_events()[3:]
    for event in old:  # messages stamped at their event time, two hours before --since
        producer.produce(settings.kafka.topic, encode_event(event), event.user_id.encode(), timestamp=event.ts)
    for event in new:
        producer.produce(settings.kafka.topic, encode_event(event), event.user_id.encode(), timestamp=event.ts)
    assert producer.flush(30) == 0
    since = T0 + 2 * HOUR + 10 * MIN  # past the old ones by more than TAILOR_MAX_AHEAD_S (5 min)
    assert run_feedback(settings, feedback_export_args("--cutoff", str(T0 + 4 * HOUR), "--since", str(since))) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 1 and summary["exposures"] == 1 and summary["outcomes_counted"] == 1
    assert summary["since"] == "2026-01-01T02:10:00Z"
    # Tansu 0.6 answers a ListOffsets by time with the log's start (whatever the time), so the whole
    # topic is read and the join drops the old events; Apache Kafka seeks past them (events == 2).
    assert (summary["events"], summary["events_before_since"]) == (4, 2)
