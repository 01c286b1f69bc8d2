"""``tailor bench ingest``: the flow's throughput against one push per event.

Pre-fills a topic with simulated events, runs the features flow over it in a
child process (so its peak RSS is its own) and measures first event consumed
to last feature written. In the same run, the naive path a Feast user would
write today: keep the same per-user state, and ``FeatureStore.push`` one row
per event.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time

from tqdm import tqdm

from bench.common import bench_settings, peak_rss_mb, run_child
from config.settings import Settings


def run_ingest(settings: Settings, args) -> int:
    from flows.kafka import make_producer, produce_all
    from jobs.produce import simulated_records

    start_ms = int(time.time() * 1000) - 6 * 3_600_000  # six hours of traffic ending near now
    with bench_settings(settings) as bench:
        producer = make_producer(bench.kafka.brokers)
        if args.uniform:
            records = uniform_records(args.users, args.events, start_ms)
        else:
            records = simulated_records(args.users, seed=7, n=args.events, start_ms=start_ms)
        bar = tqdm(records, total=args.events, desc="pre-filling topic", unit="ev", file=sys.stderr, mininterval=0.5)
        produce_all(producer, bench.kafka.topic, bar)
        producer.flush()
        runs = []
        for i in range(args.repeat):
            print(f"flow run {i + 1}/{args.repeat} over it ...", file=sys.stderr)
            with fresh_repo(bench) as run_settings:
                runs.append(run_child("bench.ingest:flow_child", run_settings.replace(tail=False)))
        print(f"naive path: one FeatureStore.push per event, {args.naive_events} events ...", file=sys.stderr)
        naive = naive_push(bench, args.users, args.naive_events, start_ms)
    rates = [r["consumed"] / r["seconds"] for r in runs]
    median = statistics.median(rates)
    flow = runs[rates.index(sorted(rates)[len(rates) // 2])]
    result = {
        "bench": "ingest",
        "events": flow["consumed"],
        "users": args.users,
        "traffic": "uniform" if args.uniform else "simulated",
        "seconds": flow["seconds"],
        "events_per_s": round(median),
        "events_per_s_runs": [round(r) for r in rates],
        "online_writes": flow["writes"],
        "rows_written": flow["rows"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "naive_events": naive["events"],
        "naive_events_per_s": round(naive["events_per_s"], 1),
        "speedup_vs_naive": round(median / naive["events_per_s"], 1),
        "online_store": "redis" if settings.redis.url else "sqlite",
        "batch_size": bench.kafka.batch_size,
        "partitions": bench.kafka.partitions,
    }
    print(json.dumps(result))
    return 0


@contextlib.contextmanager
def fresh_repo(settings: Settings):
    """The same topics, an empty Feast repo: every run starts from a blank store."""
    from store.feast import new_repo

    with tempfile.TemporaryDirectory(prefix="tailor-bench-run-") as tmp:
        yield new_repo(settings, tmp)


def uniform_records(users: int, n: int, start_ms: int):
    """The worst case for batching: each event from a user drawn uniformly at random."""
    import random

    from engine.features.events import Event, encode_event

    rng = random.Random(7)
    kinds = ("page_view", "click", "impression", "add_to_cart", "page_view", "impression")
    step = max(1, 6 * 3_600_000 // n)
    for i in range(n):
        user = f"u{rng.randrange(users):06d}"
        event = Event(f"uniform-{i}", rng.choice(kinds), user, start_ms + i * step, category=rng.choice("abcdefgh"))
        yield user.encode(), encode_event(event)


def flow_child() -> None:
    """Runs in the child: the flow over the pre-filled topic, to its end."""
    from bytewax.testing import run_main

    import store.feast  # noqa: F401 - Feast's import takes seconds: not part of the stream
    from flows.features import build_flow

    marks = {"first": None, "last": None, "consumed": 0, "writes": 0, "rows": 0}

    def on_consume(n: int) -> None:
        marks["consumed"] += n
        if marks["first"] is None:
            marks["first"] = time.perf_counter()

    def on_write(rows: int) -> None:
        marks["writes"] += 1
        marks["rows"] += rows
        marks["last"] = time.perf_counter()

    run_main(build_flow(Settings.from_env(), on_consume=on_consume, on_write=on_write))
    print(
        json.dumps(
            {
                "consumed": marks["consumed"],
                "seconds": round(marks["last"] - marks["first"], 3),
                "writes": marks["writes"],
                "rows": marks["rows"],
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def naive_push(settings: Settings, users: int, n: int, start_ms: int) -> dict:
    """The same simulated events, one ``FeatureStore.push`` per event (online only)."""
    import pandas as pd
    from feast.data_source import PushMode

    from engine.features.tiles import UserActivity
    from jobs.simulator import Simulator
    from store.feast import open_store

    store = open_store(settings)
    states: dict[str, UserActivity] = {}
    events = list(Simulator(users=users, seed=7, start_ms=start_ms).events(n))
    started = time.perf_counter()
    for event in events:
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = UserActivity(settings.flow.lateness_ms, settings.flow.affinity_half_life_s)
        state.update(event)
        row = pd.DataFrame(
            {
                "user_id": [event.user_id],
                "event_timestamp": [pd.Timestamp(state.newest_ms, unit="ms", tz="UTC")],
                "created": [pd.Timestamp.now(tz="UTC")],
                "state": [state.packed()],
            }
        )
        store.push("user_activity_push", row, to=PushMode.ONLINE)
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds}
