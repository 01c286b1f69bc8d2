"""``tailor feedback export``: served copy joined with its outcomes, as a Parquet training set.

The join itself is `engine.learning.feedback`; this module is the I/O around it: the events
come from the Kafka events topic (read from the beginning up to the end offsets it
had when the export started, so a busy topic still gives a finite, repeatable read)
or from a JSONL file, the rows go to one Parquet file, and one JSON summary line
goes to stdout. ``tailor retrain`` fine-tunes the copy model on that file.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from config.settings import Settings
from engine.features.events import Event, InvalidEvent, decode_event
from engine.learning.feedback import FeedbackJoin, FeedbackRow, FeedbackSummary, format_cutoff, parse_cutoff
from jobs.produce import now_ms, read_jsonl
from store.catalog import CatalogStore, open_catalog
from store.redis_guard import StoreUnavailable

COMMAND = "tailor feedback export"
#: Reasons of bad events quoted in the summary; the rest are only counted.
MAX_QUOTED_BAD_EVENTS = 5
#: Item ids per catalog read when the export looks up the rows' item facts.
LOOKUP_BATCH = 500
#: A topic read that gets no message for this long (before reaching the end) gives up.
STALL_S = 30.0

#: The training set's columns (see `engine.learning.feedback.FeedbackRow`).
FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("style", pa.string(), nullable=False),
        pa.field("slot", pa.string(), nullable=False),
        pa.field("tone", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        # The item's facts as the catalog has them at export time (JSON; null: no item, or
        # one the catalog no longer holds). Retraining drops copy that states facts it does not back.
        pa.field("item", pa.string(), nullable=True),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("experiments", pa.string(), nullable=False),
        pa.field("impressions", pa.int64(), nullable=False),
        pa.field("clickers", pa.int64(), nullable=False),
        pa.field("converters", pa.int64(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("first_ms", pa.int64(), nullable=False),
        pa.field("last_ms", pa.int64(), nullable=False),
    ]
)
#: Parquet key-value metadata holding the export's summary (JSON).
METADATA_KEY = b"tailor.feedback"


def run_feedback(settings: Settings, args) -> int:
    if args.action != "export":  # pragma: no cover - argparse only offers export
        raise AssertionError(args.action)
    return run_export(settings, args)


def run_export(settings: Settings, args) -> int:
    """Read the events, join, write the Parquet file, print the summary; 2 for bad input, 1 for I/O trouble."""
    try:
        cutoff_ms = parse_cutoff(args.cutoff) if args.cutoff else now_ms()
        since_ms = parse_cutoff(args.since) if getattr(args, "since", None) else None
        window_ms = max(1, round(args.window_h * 3_600_000))
        join = FeedbackJoin(cutoff_ms, window_ms, since_ms, settings.privacy.consent_policy)
    except ValueError as exc:
        print(f"{COMMAND}: {exc}", file=sys.stderr)
        return 2
    bad: list[str] = []
    if args.events:
        path = Path(args.events)
        if not path.is_file():
            print(
                f"{COMMAND}: cannot read {args.events!r}: not a file; pass --events with a JSONL file, "
                "one event per line",
                file=sys.stderr,
            )
            return 2
        source = str(path)
        try:
            for event in events_of_file(path, bad):
                join.add(event)
        except OSError as exc:
            print(
                f"{COMMAND}: cannot read {args.events!r}: {exc.strerror or exc}; check the path and its permissions",
                file=sys.stderr,
            )
            return 2
    else:
        if not settings.kafka.brokers:
            print(
                f"{COMMAND}: no Kafka broker configured; set TAILOR_BROKERS=host:port, "
                "or pass --events FILE with the events as JSONL",
                file=sys.stderr,
            )
            return 2
        source = f"kafka:{settings.kafka.topic}"
        try:
            join_topic(settings, join, bad)
        except RuntimeError as exc:
            print(f"{COMMAND}: {exc}", file=sys.stderr)
            return 1
    out = Path(args.out) if args.out else default_path(settings, cutoff_ms)
    try:
        rows, report = write_export(
            join,
            bad,
            source=source,
            path=out,
            min_impressions=args.min_impressions,
            catalog=lambda: open_catalog(settings),
        )
    except StoreUnavailable as exc:
        print(
            f"{COMMAND}: the catalog is unavailable, so the rows' item facts are unknown: {exc.detail}", file=sys.stderr
        )
        return 1
    except OSError as exc:
        print(
            f"{COMMAND}: cannot write {str(out)!r}: {exc.strerror or exc}; pass --out with a writable path",
            file=sys.stderr,
        )
        return 2
    if not rows:
        print(f"{COMMAND}: no generated copy was served before the cut-off; the file has no rows", file=sys.stderr)
    print(json.dumps(report))
    return 0


def join_topic(settings: Settings, join: FeedbackJoin, bad: list[str], *, progress: bool = True) -> None:
    """The events topic, up to the end it had when called, into ``join``; from ``join.since_ms`` on when set.

    Events are stamped at most ``max_ahead_s`` after their message (later ones go to the
    DLQ), so the messages from since - max_ahead_s on hold every event from since on.
    """
    since_ms = join.since_ms
    start_ms = None if since_ms is None else since_ms - round(settings.flow.max_ahead_s * 1000)
    for event in events_of_topic(
        settings.kafka.brokers, settings.kafka.topic, bad, progress=progress, start_ms=start_ms
    ):
        join.add(event)


def write_export(
    join: FeedbackJoin,
    bad: list[str],
    *,
    source: str,
    path: Path,
    min_impressions: int = 1,
    catalog: Callable[[], CatalogStore] | None = None,
) -> tuple[list[FeedbackRow], dict]:
    """The join's rows to ``path`` as Parquet, with the report (`summary_of`) in its metadata: (rows, report).

    Each row's item facts come from the store ``catalog()`` opens, only if some row has an
    item (none given: no facts, so retraining keeps only the copy that states none).
    """
    rows, summary = join.result(min_impressions)
    facts = item_facts_of(rows, catalog)
    report = summary_of(summary, bad, source=source, path=path)
    report["items_not_in_catalog"] = len({r.item_id for r in rows if r.item_id and r.item_id not in facts})
    write_parquet(rows, path, report, facts)
    return rows, report


def item_facts_of(rows: list[FeedbackRow], catalog: Callable[[], CatalogStore] | None) -> dict[str, str]:
    """``item_id -> facts JSON`` for the rows' items that the store ``catalog()`` opens holds."""
    wanted = sorted({row.item_id for row in rows if row.item_id})
    if catalog is None or not wanted:
        return {}
    found: dict[str, str] = {}
    store = catalog()
    try:
        for start in range(0, len(wanted), LOOKUP_BATCH):
            for item_id, item in store.get_many(wanted[start : start + LOOKUP_BATCH]).items():
                found[item_id] = json.dumps(item.facts(), sort_keys=True)
    finally:
        store.close()
    return found


def default_path(settings: Settings, cutoff_ms: int) -> Path:
    """``<feature repo>/data/feedback/feedback-<cutoff>.parquet``, the cut-off compact and file-name safe."""
    stamp = datetime.fromtimestamp(cutoff_ms // 1000, tz=UTC).strftime("%Y%m%dT%H%M%S")
    if cutoff_ms % 1000:
        stamp += f".{cutoff_ms % 1000:03d}"
    return Path(settings.store.feature_repo) / "data" / "feedback" / f"feedback-{stamp}Z.parquet"


def summary_of(summary: FeedbackSummary, bad: list[str], *, source: str, path: Path) -> dict:
    """The one-line JSON report: counts first, then where the data came from and went."""
    counts = msgspec.structs.asdict(summary)
    cutoff_ms, window_ms, since_ms = counts.pop("cutoff_ms"), counts.pop("window_ms"), counts.pop("since_ms")
    return {
        "rows": counts.pop("rows"),
        **counts,
        "bad_events": len(bad),
        "bad_reasons": bad[:MAX_QUOTED_BAD_EVENTS],
        "cutoff": format_cutoff(cutoff_ms),
        "cutoff_ms": cutoff_ms,
        "since": format_cutoff(since_ms) if since_ms is not None else None,
        "window_h": window_ms / 3_600_000,
        "source": source,
        "path": str(path),
    }


def write_parquet(
    rows: list[FeedbackRow], path: Path, report: dict | None = None, facts: dict[str, str] | None = None
) -> None:
    """Write the rows as one Parquet file, atomically (a reader never sees half a file).

    ``facts`` (``item_id -> JSON``) fills the ``item`` column; an item it lacks is null.
    """
    facts = facts or {}
    columns = {name: [getattr(row, name) for row in rows] for name in FEEDBACK_SCHEMA.names if name != "item"}
    columns["item"] = [facts.get(row.item_id) for row in rows]
    schema = FEEDBACK_SCHEMA
    if report is not None:
        schema = schema.with_metadata({METADATA_KEY: json.dumps(report).encode()})
    table = pa.Table.from_pydict(columns, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        pq.write_table(table, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _from_time(consumer, topic: str, starts: list, ends: dict[int, int], start_ms: int) -> list:
    """``starts`` moved to each partition's first message stamped at or after ``start_ms``."""
    from confluent_kafka import KafkaException, TopicPartition

    try:
        found = consumer.offsets_for_times([TopicPartition(topic, tp.partition, start_ms) for tp in starts], timeout=10)
    except KafkaException as exc:
        print(f"{COMMAND}: the broker cannot look offsets up by time ({exc}); reading {topic!r} whole", file=sys.stderr)
        return starts
    moved = []
    for tp, at in zip(starts, found):
        if at.error is not None:
            moved.append(tp)  # read it whole: the join still leaves out what is too old
        elif at.offset < 0:  # no message that recent: nothing to read
            ends.pop(tp.partition, None)
        else:
            moved.append(TopicPartition(topic, tp.partition, max(tp.offset, at.offset)))
    return moved


def events_of_file(path: Path, bad: list[str]) -> Iterator[Event]:
    """The valid events of a JSONL file (`jobs.produce.read_jsonl`, the replay's reader); each bad
    line's ``"line N: reason"`` goes to ``bad``."""
    lines: list[tuple[int, str]] = []
    for event in read_jsonl(path, lines):
        bad.extend(f"line {number}: {reason}" for number, reason in lines)
        lines.clear()
        yield event
    bad.extend(f"line {number}: {reason}" for number, reason in lines)


def events_of_topic(
    brokers: str, topic: str, bad: list[str], *, progress: bool = True, start_ms: int | None = None
) -> Iterator[Event]:
    """The valid events of a topic, start (or ``start_ms``) to the end it had when called; bad ones go to ``bad``."""
    for message in topic_to_end(brokers, topic, progress=progress, start_ms=start_ms):
        try:
            yield decode_event(message.value())
        except InvalidEvent as exc:
            bad.append(f"partition {message.partition()} offset {message.offset()}: {exc.reason}")


def topic_to_end(
    brokers: str, topic: str, *, progress: bool = True, stall_s: float = STALL_S, start_ms: int | None = None
) -> Iterator:
    """Every message of ``topic`` from the beginning up to the high watermarks read at the start.

    With ``start_ms``, each partition is read from its first message stamped at or
    after it (Kafka's offsets for times); a broker that cannot say is read whole.

    Messages produced while it runs are left for the next export, so the read
    ends even on a busy topic (a partition's end is the larger of its high
    watermark at the start and the one its first fetch reports). A progress bar
    goes to stderr. Raises `RuntimeError` with a one-line reason when the broker
    or topic is not there.
    """
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from flows.kafka import watermarks

    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"tailor-feedback-{uuid.uuid4().hex}",  # offsets are assigned, never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    bar = None
    try:
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        except KafkaException as exc:
            raise RuntimeError(f"no Kafka broker answers at {brokers}: {exc}") from None
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise RuntimeError(
                f"topic {topic!r} does not exist on {brokers}; set TAILOR_TOPIC to the events "
                "topic, or pass --events FILE"
            )
        ends: dict[int, int] = {}
        starts = []
        try:
            offsets = watermarks(consumer, topic, sorted(metadata.partitions), timeout_s=10)
        except KafkaException as exc:
            raise RuntimeError(f"could not read the offsets of {topic!r} on {brokers}: {exc}") from None
        for partition, (low, high) in offsets.items():
            if high > low:
                ends[partition] = high
                starts.append(TopicPartition(topic, partition, low))
        if start_ms is not None and starts:
            starts = _from_time(consumer, topic, starts, ends, start_ms)
        total = sum(ends[tp.partition] - tp.offset for tp in starts)
        bar = tqdm(total=total, unit="ev", file=sys.stderr, leave=False, mininterval=0.5, disable=not progress)
        if not starts:
            return
        consumer.assign(starts)
        checked: set[int] = set()
        heard = time.monotonic()
        while ends:
            batch = consumer.consume(1000, 0.5)
            if not batch:
                if time.monotonic() - heard > stall_s:
                    raise RuntimeError(f"reading {topic!r} on {brokers} stalled for {stall_s:.0f} s before its end")
                continue
            heard = time.monotonic()
            handed = 0
            for message in batch:
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        ends.pop(partition, None)
                        continue
                    raise RuntimeError(f"error reading Kafka topic {topic!r}: {error}")
                end = ends.get(partition)
                if end is None:
                    continue
                if partition not in checked:
                    # Some brokers (Tansu) answer ListOffsets with the start of the last record
                    # batch + 1; the first fetch's high watermark is right, and still close to the start.
                    checked.add(partition)
                    fetched_end = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
                    if fetched_end > end:
                        bar.total += fetched_end - end
                        bar.refresh()
                        end = ends[partition] = fetched_end
                if message.offset() >= end:
                    continue  # produced after the export started
                yield message
                handed += 1
                if message.offset() + 1 >= end:
                    ends.pop(partition)
            bar.update(handed)
    finally:
        if bar is not None:
            bar.close()
        consumer.close()
