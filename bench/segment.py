"""``tailor bench segment``: what segmentation and drift monitoring cost, and how well they work.

In one invocation, on one broker:

* a stationary simulated stream (``--burn-in`` events, then ``--events``
  measured ones, ``--users``) and the same stream with a drift injected
  half-way through the measured part (``--drift-at``: the profile mix moves to
  `DEFAULT_DRIFT_SHARES`) are pre-filled into two topics. Simulated users all
  start with no history, so their features settle over the first simulated
  days; the burn-in covers that, and the drift reference is frozen at its end
  (``TAILOR_DRIFT_WARMUP`` = burn-in);
* the flow runs over the stationary topic with segmentation and drift on, and
  with them off (``TAILOR_SEGMENTS=0``), alternately, ``--repeat`` times each,
  each in a fresh child process and a fresh Feast repo: the ratio of the
  medians is the cost;
* from the segmented runs: the adjusted Rand index between the segments read
  back through Feast and the simulator's latent profiles, over the users the
  model segmented; drift alerts on the stationary stream (false alarms), and
  the highest score each drift measure reached (what thresholds must clear);
* one run over the drifted topic: the first alert after the drift point, as a
  delay in events (and simulated hours), per method.

``--shape`` picks the simulator's traffic shape (`jobs.simulator.SHAPES`):
its sessions, clicks and purchases only, ratings instead of money, or years of
history with long idle gaps. The JSON says which features the segments used,
which drift signals were skipped for want of data, and the largest rate of any
profile (``profile_rate_max``, at most 1 by construction), and the ARI a batch
k-means reaches on the same users' latest vectors (``batch_ceiling_ari``: what
the shape's features allow at all).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import msgspec
from tqdm import tqdm

from bench.common import bench_settings, peak_rss_mb, run_child
from config.settings import Settings
from jobs.simulator import Drift, Simulator, history_start_ms

SEED = 7


def run_segment(settings: Settings, args) -> int:
    from bench.ingest import fresh_repo
    from flows.kafka import ensure_topics, make_producer, produce_all
    from jobs.produce import records_of

    n, users = args.burn_in + args.events, args.users
    drift_at = args.drift_at if args.drift_at is not None else args.burn_in + args.events // 2
    os.environ["TAILOR_BENCH_USERS"] = str(users)  # the children rebuild the simulator's ground truth
    os.environ["TAILOR_BENCH_SHAPE"] = args.shape
    start_ms = start_of(args, drift_at)
    with bench_settings(settings, segments=settings.audience.segments or 4, drift_warmup=args.burn_in) as bench:
        drifted = bench.replace(topic=bench.kafka.topic + ".drifted")
        ensure_topics(bench.kafka.brokers, [drifted.kafka.topic], bench.kafka.partitions)
        producer = make_producer(bench.kafka.brokers)
        for target, drift in ((bench, None), (drifted, Drift(at_event=drift_at, shares=_default_shares()))):
            events = Simulator(users=users, seed=SEED, start_ms=start_ms, drift=drift, shape=args.shape).events(n)
            label = "pre-filling stationary topic" if drift is None else f"pre-filling topic drifted at {drift_at}"
            bar = tqdm(records_of(events), total=n, desc=label, unit="ev", file=sys.stderr, mininterval=0.5)
            produce_all(producer, target.kafka.topic, bar)
            producer.flush()
        on, off = [], []
        for i in range(args.repeat):
            for segments, runs in ((bench.audience.segments, on), (0, off)):
                what = "with segmentation and drift" if segments else "without"
                print(f"run {i + 1}/{args.repeat} {what} ...", file=sys.stderr)
                with fresh_repo(bench) as run_settings:
                    child = run_settings.replace(
                        tail=False,
                        segments=segments,
                        drift_topic=f"{bench.kafka.topic}.alerts.{len(on)}.{len(off)}",
                    )
                    ensure_topics(child.kafka.brokers, [child.kafka.drift_topic], 1)
                    runs.append(run_child("bench.segment:flow_child", child))
        print("run over the drifted topic ...", file=sys.stderr)
        with fresh_repo(drifted) as run_settings:
            child = run_settings.replace(tail=False, drift_topic=f"{drifted.kafka.topic}.alerts")
            ensure_topics(child.kafka.brokers, [child.kafka.drift_topic], 1)
            drift_run = run_child("bench.segment:flow_child", child)
    print(json.dumps(summarize(args, bench, on, off, drift_run, drift_at, start_ms)))
    return 0


def start_of(args, drift_at: int) -> int:
    """The simulated clock's start: both streams end before now, as history does (a flow
    dead-letters events ahead of its clock, and ``years`` spans years)."""
    now_ms = int(time.time() * 1000)
    return min(
        history_start_ms(args.burn_in + args.events, now_ms, users=args.users, seed=SEED, shape=args.shape, drift=drift)
        for drift in (None, Drift(at_event=drift_at, shares=_default_shares()))
    )


def summarize(
    args, bench: Settings, on: list[dict], off: list[dict], drift_run: dict, drift_at: int, start_ms: int
) -> dict:
    rate_on = statistics.median(r["consumed"] / r["seconds"] for r in on)
    rate_off = statistics.median(r["consumed"] / r["seconds"] for r in off)
    false_alarms = [len(r["alerts"]) for r in on]
    delays = detection_delays(
        args.burn_in + args.events, args.users, drift_at, drift_run["alerts"], args.shape, start_ms
    )
    return {
        "bench": "segment",
        "shape": args.shape,
        "events": args.burn_in + args.events,
        "burn_in_events": args.burn_in,
        "users": args.users,
        "start": time.strftime("%Y-%m-%d", time.gmtime(start_ms / 1000)),
        # Events the flow dead-lettered (none expected: a simulated stream is all valid, and in the past).
        "dead_letters": max(r["dead_letters"] for r in (*on, *off, drift_run)),
        "events_per_s": round(rate_on),
        "events_per_s_runs": [round(r["consumed"] / r["seconds"]) for r in on],
        "events_per_s_without": round(rate_off),
        "events_per_s_without_runs": [round(r["consumed"] / r["seconds"]) for r in off],
        "cost_of_segmentation": round(1 - rate_on / rate_off, 3),
        # Runs alternate on, off, on, off ...: each pair ran back to back, under similar noise.
        "cost_pairwise": [
            round(1 - a["consumed"] / a["seconds"] / (b["consumed"] / b["seconds"]), 3) for a, b in zip(on, off)
        ],
        "ari": statistics.median(r["ari"] for r in on),
        "ari_runs": [r["ari"] for r in on],
        # What the shape's signal allows at all: batch k-means on the same users' latest vectors.
        "batch_ceiling_ari": on[0].get("batch_ceiling_ari"),
        "segmented_users": on[0]["segmented_users"],
        "segmented_share": round(on[0]["segmented_users"] / args.users, 3),
        "profile_rate_max": max(r["profile_rate_max"] for r in (*on, drift_run)),
        "profile_sizes_sum": on[0]["profile_sizes_sum"],
        "features_used": on[0]["features_used"],
        "drift_signals_skipped": on[0]["drift_signals_skipped"],
        "model_version": on[0]["model_version"],
        "profiles": on[0]["profiles"],
        "false_alarms": false_alarms,
        "false_alarms_per_million": round(statistics.median(false_alarms) * 1e6 / args.events, 2),
        "stationary_peak_scores": on[0]["peak_scores"],
        "drift_at_event": drift_at,
        "drift_detection_delay_events": delays.get("first"),
        "drift_detection_delay_by_method": delays.get("by_method"),
        "drift_detection_delay_sim_hours": delays.get("first_hours"),
        "drift_alerts": [f"{a['feature']}/{a['method']}@{a['time']}" for a in drift_run["alerts"]][:12],
        "drift_run_ari": drift_run["ari"],
        "drift_run_profiles": drift_run["profiles"],
        "thresholds": {
            "kl": bench.audience.kl_threshold,
            "segment_kl": bench.audience.segment_kl_threshold,
            "js": bench.audience.js_threshold,
            "adwin_delta": bench.audience.adwin_delta,
            "patience": bench.audience.drift_patience,
            "window": bench.audience.drift_window,
            "reference": bench.audience.drift_reference,
            "warmup": bench.audience.drift_warmup,
        },
        "peak_rss_mb": max(r["peak_rss_mb"] for r in on),
    }


def detection_delays(n: int, users: int, drift_at: int, alerts: list[dict], shape: str, start_ms: int) -> dict:
    """Events (and simulated hours) from the drift point to each measure's first alert after it."""
    stamps = [
        e.ts
        for e in Simulator(
            users=users,
            seed=SEED,
            start_ms=start_ms,
            shape=shape,
            drift=Drift(at_event=drift_at, shares=_default_shares()),
        ).events(n)
    ]
    drift_ms = stamps[drift_at] if drift_at < n else None
    if drift_ms is None:
        return {}
    import bisect

    by_method: dict[str, int] = {}
    first_ms = None
    for alert in sorted(alerts, key=lambda a: a["time_ms"]):
        if alert["time_ms"] < drift_ms:
            continue
        delay = bisect.bisect_right(stamps, alert["time_ms"]) - drift_at
        key = f"{alert['feature']}/{alert['method']}"
        by_method.setdefault(key, delay)
        first_ms = alert["time_ms"] if first_ms is None else first_ms
    if not by_method:
        return {"first": None, "by_method": {}}
    return {
        "first": min(by_method.values()),
        "by_method": by_method,
        "first_hours": round((first_ms - drift_ms) / 3_600_000, 2),
    }


def _default_shares() -> dict[str, float]:
    from jobs.simulator import DEFAULT_DRIFT_SHARES

    return dict(DEFAULT_DRIFT_SHARES)


def flow_child() -> None:
    """In the child: the flow to the end of the topic, then quality read back through Feast."""
    from bytewax.testing import run_main

    import store.feast  # noqa: F401 - Feast's import takes seconds: not part of the stream
    from flows.features import build_flow

    settings = Settings.from_env()
    marks = {"first": None, "last": None, "consumed": 0}
    seen = {}

    def on_consume(n: int) -> None:
        marks["consumed"] += n
        if marks["first"] is None:
            marks["first"] = time.perf_counter()

    def on_write(_rows: int) -> None:
        marks["last"] = time.perf_counter()

    def on_audience(audience) -> None:
        seen["audience"] = audience

    run_main(build_flow(settings, on_consume=on_consume, on_write=on_write, on_audience=on_audience))
    from prometheus_client import REGISTRY

    result = {
        "consumed": marks["consumed"],
        "seconds": round(marks["last"] - marks["first"], 3),
        "dead_letters": int(REGISTRY.get_sample_value("tailor_events_total", {"outcome": "dead_letter"}) or 0),
        "peak_rss_mb": peak_rss_mb(),
    }
    if settings.audience.segments:
        result.update(quality(settings, seen["audience"]))
    print(json.dumps(result))


def batch_ceiling(model, sim: Simulator) -> float | None:
    """ARI against the latent profiles of a batch k-means (10 restarts) on the model's sample: each
    user's latest vector, the features in use, in standard units of the sample. What an online
    procedure can at best recover from this shape's features, whatever its order of updates."""
    import numpy as np

    from engine.audience.segments import adjusted_rand_index, kmeans

    if len(model.recent) < model.n_segments:
        return None
    raw = np.array([[x[name] for name in model.features] for x, _, _ in model.recent.values()])
    std = raw.std(0)
    std[std == 0] = 1.0
    points = (raw - raw.mean(0)) / std
    centres = kmeans(points, model.n_segments, seed=SEED, restarts=10)
    labels = ((points[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    return round(adjusted_rand_index([sim.profile_of(u) for u in model.recent], labels.tolist()), 3)


def quality(settings: Settings, audience) -> dict:
    """ARI of the segments read through Feast vs. the latent profiles; alerts from the drift topic."""
    from engine.audience.segments import adjusted_rand_index
    from flows.kafka import read_topic
    from store.feast import SEGMENT_VIEW, USER_ID, open_store

    store = open_store(settings)
    users = sorted(audience.members)  # every user the model segmented
    got = store.get_online_features(
        features=[f"{SEGMENT_VIEW}:segment", f"{SEGMENT_VIEW}:model_version"], entity_rows=[{USER_ID: u} for u in users]
    ).to_dict()
    truth_sim = Simulator(
        users=int(os.environ["TAILOR_BENCH_USERS"]), seed=SEED, shape=os.environ.get("TAILOR_BENCH_SHAPE", "sessions")
    )
    pairs = [(truth_sim.profile_of(u), s) for u, s in zip(got[USER_ID], got["segment"]) if s is not None and s >= 0]
    alerts = [
        msgspec.json.decode(m.value())
        for m in read_topic(settings.kafka.brokers, settings.kafka.drift_topic, audience.alerts_total, timeout_s=10)
    ]
    from engine.audience.segments import RATE_FEATURES

    profiles = audience.profiles()
    rates = [value for p in profiles for name, value in p.centre.items() if name in RATE_FEATURES]
    return {
        "ari": round(adjusted_rand_index([t for t, _ in pairs], [s for _, s in pairs]), 3) if len(pairs) > 1 else None,
        "segmented_users": len(pairs),
        "batch_ceiling_ari": batch_ceiling(audience.model, truth_sim),
        "profile_rate_max": round(max(rates), 4) if rates else None,
        "profile_sizes_sum": sum(p.size for p in profiles),
        "features_used": list(audience.model.features),
        "drift_signals_skipped": sorted(name for name, watched in audience.monitor.signals.items() if not watched),
        "model_version": audience.model.version,
        "profiles": {p.segment: f"{p.label} ({p.share:.0%})" for p in profiles},
        "alerts": alerts,
        "peak_scores": {f"{f}/{m}": round(v, 4) for (f, m), v in sorted(audience.monitor.peak_scores.items())},
    }
