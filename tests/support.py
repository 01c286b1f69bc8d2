"""What the tests share: the API keys, a clock, events to send, and produce, consume, read features back."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from engine.experiments.exposures import ArmCounters
from engine.features.events import Event, encode_event
from engine.learning.feedback import FeedbackRow
from flows.kafka import make_producer, produce_all, read_topic

#: The repository root (tests/ is one level down).
ROOT = Path(__file__).resolve().parent.parent
#: The API tests' pseudonym key and API keys (a serving key and an admin key).
KEY = "0123456789abcdef0123456789abcdef"
SERVE = {"X-API-Key": "server"}
ADMIN = {"X-API-Key": "boss"}


def now_ms() -> int:
    return int(time.time() * 1000)


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


# -- events like a real producer fleet's (the recovery and scale tests) ---------------------------

EVENT_TYPES = ["page_view", "click", "impression", "add_to_cart", "purchase", "app_open"]


def messy_events(n: int, users: int, seed: int) -> list[Event]:
    """Events with re-sends and out-of-order times, like a real producer fleet."""
    rng = random.Random(seed)
    start, events = now_ms() - 4 * 3_600_000, []  # 200 ms apart: 60k events end 40 min ago
    for i in range(n):
        if events and rng.random() < 0.03:
            events.append(rng.choice(events[-500:]))
            continue
        kind = rng.choice(EVENT_TYPES)
        ts = start + i * 200 - rng.randrange(0, 120_000)
        events.append(
            Event(
                f"e{i}",
                kind,
                f"u{rng.randrange(users)}",
                ts,
                category=rng.choice("abcd"),
                value=round(rng.uniform(5, 90), 2) if kind == "purchase" else None,
            )
        )
    return events


# -- an experiment's story and its counters (the exposure and experiment-flow tests) ----------------

STORY_T = 1_767_225_600_000  # 2026-01-01


def impression(eid, user, ts, experiment="hero", variant="a"):
    return Event(eid, "impression", user, ts, experiment=experiment, variant=variant)


def experiment_story(T: int = STORY_T) -> dict[str, list[Event]]:
    """Three exposed users in two variants, one who never saw the experiment; the exposure and flow tests count it."""
    return {
        "u1": [
            impression("u1-i1", "u1", T),
            Event("u1-c1", "click", "u1", T + 1, experiment="hero", variant="a"),
            Event("u1-c2", "click", "u1", T + 2, experiment="hero"),
            Event("u1-p1", "purchase", "u1", T + 3, value=30.0),
            Event("u1-p1", "purchase", "u1", T + 3, value=30.0),  # a re-send: counted once
            impression("u1-i2", "u1", T + 4, variant="b"),  # intention-to-treat: stays in "a"
            impression("u1-x1", "u1", T + 10, experiment="cta", variant="x"),
            Event("u1-p2", "purchase", "u1", T + 11, value=7.0),  # both experiments: hero total 37, cta 7
            Event("u1-v1", "page_view", "u1", T + 12),  # not an experiment event
        ],
        "u2": [
            Event("u2-p0", "purchase", "u2", T - 10, value=5.0),  # before any exposure: unattributed
            impression("u2-i1", "u2", T),
            Event("u2-k1", "conversion", "u2", T + 5, experiment="hero", value=10.0),
            Event("u2-p1", "purchase", "u2", T + 6, value=20.0),  # u2's hero total: 30
        ],
        "u3": [
            impression("u3-i1", "u3", T, variant="b"),
            Event("u3-c0", "click", "u3", T - 1, experiment="hero"),  # before the exposure: unexposed
            Event("u3-k1", "conversion", "u3", T + 1),  # no value
            Event("u3-c1", "click", "u3", T + 2),  # names no experiment: not an experiment click
        ],
        "u4": [  # never exposed
            Event("u4-c1", "click", "u4", T, experiment="hero"),
            Event("u4-p1", "purchase", "u4", T + 1, experiment="hero", value=50.0),
        ],
    }


def experiment_counters(T: int = STORY_T) -> dict[tuple[str, str], ArmCounters]:
    """The arms' counters after `experiment_story`."""
    return {
        ("hero", "a"): ArmCounters(
            experiment="hero",
            variant="a",
            users=2,
            impressions=3,
            clickers=1,
            clicks=2,
            converters=2,
            conversions=4,
            value_sum=67.0,
            value_sum_sq=37.0**2 + 30.0**2,
            updated_ms=T + 11,
        ),
        ("hero", "b"): ArmCounters(
            experiment="hero", variant="b", users=1, impressions=1, converters=1, conversions=1, updated_ms=T + 1
        ),
        ("cta", "x"): ArmCounters(
            experiment="cta",
            variant="x",
            users=1,
            impressions=1,
            converters=1,
            conversions=1,
            value_sum=7.0,
            value_sum_sq=49.0,
            updated_ms=T + 11,
        ),
    }


# -- a user and an item for the API (personalize, model swap, experiments) -----------------------

ITEM = {
    "item_id": "i-77",
    "title": "Trail Shoe",
    "brand": "Acme",
    "category": "shoes",
    "price": 80.0,
    "discount_pct": 25,
}


def seed_user(settings, user_id: str, *, clicks: int = 3, category: str = "shoes", segment: int | None = 2) -> str:
    """Write a user's activity (and segment, with its profile) straight into the online store."""
    from engine.audience.audience import SegmentAssignment
    from engine.audience.segments import SegmentProfile
    from engine.features.tiles import UserActivity
    from engine.privacy import Pseudonymizer
    from store.feast import FeatureWriter

    pseudonym = Pseudonymizer(KEY).pseudonym(user_id)
    activity = UserActivity(settings.flow.lateness_ms, settings.flow.affinity_half_life_s)
    now = now_ms()
    for n in range(clicks):
        activity.update(
            Event(event_id=f"{user_id}-{n}", type="click", user_id=pseudonym, ts=now - 1000 + n, category=category)
        )
    writer = FeatureWriter(settings, offline=False)
    writer.write({pseudonym: activity})
    if segment is not None:
        writer.write_segments({pseudonym: SegmentAssignment(segment, 0.4, 1, now)})
        writer.write_profiles(
            [
                SegmentProfile(
                    segment=segment,
                    label="buys what they cart, budget",
                    size=10,
                    share=0.25,
                    centre={},
                    model_version=1,
                )
            ]
        )
    writer.close()
    return pseudonym


# -- templates that validate but cannot render (issue 13): the engine's and the routes' cases --------

NINES = "9" * 400  # past the largest float: `| money` overflows (300 nines still fit, at 1e300)
#: Bodies the small language allows that cannot render for any caller, and what the refusal says.
UNRENDERABLE = [
    ("{% if 1 %}" * 99 + "x" + "{% endif %}" * 99, "nests too deeply"),
    ("{{ " + NINES + " | money }}", "OverflowError"),
    ("{% if user.vip == 'yes' %}{{ " + NINES + " | money }}{% endif %}", "OverflowError"),  # a branch samples miss
    ("{{ 1.5 | round(2, 'sideways') }}", "method"),
    ("{{ 'x' | trim(5) }}", "TypeError"),
    ("{{ item.title | money }}", "ValueError"),
    ("{% if item.price > 'cheap' %}x{% endif %}", "not supported"),
]


# -- tailor retrain (tiny models) -----------------------------------------------------------------


def write_feedback(path, records, weights=None, metadata=None) -> Path:
    """Feedback as `tailor feedback export` writes it (the columns retrain reads, last_ms, the summary).

    The ``item`` column holds each record's item facts as JSON (null for generic copy).
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "style": [r.segment for r in records],
            "slot": [r.slot for r in records],
            "tone": [r.tone for r in records],
            "text": [r.text for r in records],
            "item": [json.dumps(r.item) if r.item else None for r in records],
            "weight": weights or [1.0] * len(records),
            "last_ms": [1_700_000_000_000 + i for i in range(len(records))],
        }
    )
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def retrain_config(**overrides):
    """`tailor retrain`'s configuration for the tiny models of the tests."""
    from models.train.retrain import RetrainConfig

    # Small on purpose: a few dozen steps and 128 sampled texts per model keep a run near 15 s.
    values = {"epochs": 2, "lr": 1e-2, "max_records": 800, "eval_samples": 2, "eval_records": 600}
    return RetrainConfig(**{**values, **overrides})


# -- tailor retrain --watch --------------------------------------------------------------------------


def retrain_args(*argv: str):
    from cli.main import build_parser

    return build_parser().parse_args(["retrain", "--watch", *argv])


# -- tailor up ---------------------------------------------------------------------------------------


def up_env(feature_repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAILOR_")}
    env["TAILOR_FEATURE_REPO"] = str(feature_repo)  # empty TAILOR_BROKERS: the embedded broker
    return env


# -- tailor simulate and replay ----------------------------------------------------------------------


SIM_START = "2026-01-01T00:00:00Z"
SIM_START_MS = 1_767_225_600_000


def cli_args(*argv):
    from cli.main import build_parser

    return build_parser().parse_args(list(argv))


DAY_MS = 86_400_000


def rfc3339(ts_ms):
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restamped(events, times):
    """The events as JSON lines stamped with ``times``, every third as RFC 3339 (the Event type refuses pre-2000)."""
    lines = []
    for n, (event, ts) in enumerate(zip(events, times)):
        stamp = rfc3339(ts) if n % 3 == 0 else ts
        lines.append(json.dumps(msgspec.to_builtins(event) | {"ts": stamp}))
    return lines


# -- tailor feedback export --------------------------------------------------------------------------


T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
HOUR = 3_600_000


def served_copy(
    event_id,
    user,
    ts,
    text,
    *,
    experiment="hero",
    style="bargain_hunter",
    tone="urgent",
    slot="headline",
    generated=True,
    model_version="v1",
    more=None,
) -> Event:
    props = {
        "slot": slot,
        "template": "hero_default@3",
        "style": style,
        "tone": tone,
        "segment": 2,
        "model_version": model_version,
        "generated": generated,
        f"copy.{slot}": text,
    }
    props.update(more or {})
    return Event(
        event_id, "impression", user, ts, experiment=experiment, variant="ai" if experiment else None, props=props
    )


def click(event_id, user, ts, experiment="hero", exposure_id=None) -> Event:
    return Event(
        event_id, "click", user, ts, experiment=experiment, props={"exposure_id": exposure_id} if exposure_id else None
    )


def purchase(event_id, user, ts, value, experiment=None) -> Event:
    return Event(event_id, "purchase", user, ts, value=value, experiment=experiment)


def feedback_row(text, **fields) -> FeedbackRow:
    values = {
        "style": "bargain_hunter",
        "slot": "headline",
        "tone": "urgent",
        "text": text,
        "model_version": "v1",
        "experiments": "hero",
        "first_ms": T0,
        "last_ms": T0,
    }
    values.update(fields)
    return FeedbackRow(**values)


def point_in_time_events() -> list[Event]:
    return [
        served_copy("x1", "u1", T0, "Half price today"),
        click("c1", "u1", T0 + MIN),
        purchase("p1", "u1", T0 + 3 * HOUR, 50.0),  # after a 2 h cut-off, inside the 24 h window
        served_copy("x2", "u2", T0 + 3 * HOUR, "Deals end soon"),  # served_copy after a 2 h cut-off
        click("c2", "u2", T0 + 3 * HOUR + MIN),
    ]


def feedback_export_args(*argv):
    from cli.main import build_parser

    return build_parser().parse_args(["feedback", "export", *argv])


def read_feedback_rows(path) -> list[FeedbackRow]:
    import pyarrow.parquet as pq

    return [FeedbackRow(**{k: v for k, v in r.items() if k != "item"}) for r in pq.read_table(path).to_pylist()]


# -- the background copy generator, run in the test's process -----------------------------------


def write_queued_copy(client, settings) -> int:
    """What the background generator does for a test: the API's queued misses (and the warm plan) written.

    Flushes the app's queued misses to the copy store, then runs `jobs.copy_generator.CopyGenerator`
    rounds here until nothing is left to write; returns how many snippets it wrote.
    """
    from jobs.copy_generator import CopyGenerator

    client.app.state.writer.cache.flush()
    generator = CopyGenerator(settings)
    written = 0
    while True:
        step = generator.step()
        if not step:
            return written
        written += step


def served_after_generation(client, settings, request, **body):
    """A personalize response that missed (default copy, the key queued), then the one after the generator ran."""
    first = request(client, **body).json()
    write_queued_copy(client, settings)
    return first, request(client, **body).json()
