"""The ``tailor`` command line: one console script, one subcommand per job.

Subcommands import their implementation lazily so ``tailor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _profile_mix(text: str) -> dict[str, float]:
    """``--drift-mix``: ``"email_driven=0.65,bargain_hunter=0.1"``, or ``none`` (``{}``: keep profiles)."""
    if text.strip().lower() == "none":
        return {}
    from jobs.simulator import Drift

    shares: dict[str, float] = {}
    for part in text.split(","):
        name, sep, share = (s.strip() for s in part.partition("="))
        if not sep or not name:
            raise argparse.ArgumentTypeError(
                f"expected profile=share pairs separated by commas "
                f"(e.g. email_driven=0.65,window_shopper=0.35) or none, got {text!r}"
            )
        if name in shares:
            raise argparse.ArgumentTypeError(f"profile {name!r} is given twice in {text!r}")
        try:
            shares[name] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"share of {name!r} is not a number: {share!r}") from None
    try:
        return Drift(at_event=0, shares=shares).shares  # its checks, and shares summing to 1
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailor", description="Tailor: streaming features and personalization.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="run the demo: embedded broker, Feast (SQLite), the flow, simulated traffic, live view"
    )
    up.add_argument("--users", type=_positive_int, default=200, help="simulated users (default 200)")
    up.add_argument("--rate", type=float, default=200.0, help="simulated events per second (default 200)")
    up.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--watch", type=_positive_int, default=6, help="users shown in the live view (default 6)")
    up.add_argument("--api-port", type=_positive_int, default=8000, help="port of the API (default 8000)")
    up.add_argument(
        "--no-model",
        action="store_true",
        help="do not build the copy model when there is none (the API serves default copy)",
    )
    up.add_argument(
        "--no-experiment",
        action="store_true",
        help="do not run the demo experiment (a storefront asking the API for simulated users' headlines)",
    )

    apply = sub.add_parser("apply", help="apply the Feast feature repository (feast apply)")
    apply.add_argument("--repo", help="feature repo folder (default: TAILOR_FEATURE_REPO)")

    flow = sub.add_parser("flow", help="run the features dataflow (Bytewax) until stopped")
    flow.add_argument("--recovery-dir", help="Bytewax recovery folder; created and initialised when missing")
    flow.add_argument("--workers", type=_positive_int, default=1, help="worker threads (default 1)")
    flow.add_argument("--process-id", type=int, default=None, help="this process's index in a cluster (Bytewax -i)")
    flow.add_argument("--addresses", help="host:port of every cluster process, ';'-separated (Bytewax -a)")

    api = sub.add_parser(
        "api", help="serve the personalization API (events, features, segments, personalize, templates, experiments)"
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)

    segs = sub.add_parser("segments", help="print the segment profiles the flow keeps in Feast")
    segs.add_argument("--json", action="store_true", help="print JSON instead of a table")

    pseudonymize = (
        "replace each user id with its pseudonym under TAILOR_PSEUDONYM_KEY (the API's key; the "
        "API's function, as POST /v1/events applies it) before producing; without it user ids are "
        "produced as given"
    )
    sim = sub.add_parser(
        "simulate", help="produce realistic simulated user events to Kafka (user ids as given unless --pseudonymize)"
    )
    sim.add_argument("--users", type=_positive_int, default=1000, help="number of users (default 1000)")
    sim.add_argument("--events", type=int, default=0, help="stop after this many events (default: run until Ctrl-C)")
    sim.add_argument("--rate", type=float, default=0, help="events per second; 0 = as fast as possible (default 0)")
    sim.add_argument("--seed", type=int, default=7, help="random seed (default 7): same seed, same events")
    sim.add_argument(
        "--start",
        help="event time of the first event (RFC 3339; default: with --events and no --rate, "
        "early enough that the stream ends before now; otherwise now)",
    )
    sim.add_argument("--out", help="write JSONL to this file instead of producing to Kafka")
    sim.add_argument("--pseudonymize", action="store_true", help=pseudonymize)
    sim.add_argument(
        "--drift-at",
        type=_non_negative_int,
        metavar="N",
        help="from event N on, users re-draw their behaviour profile from --drift-mix and purchases "
        "cost --drift-price-factor times as much (default: no drift)",
    )
    sim.add_argument(
        "--drift-mix",
        type=_profile_mix,
        metavar="MIX",
        help="profile shares after the drift, e.g. email_driven=0.65,bargain_hunter=0.1,... "
        "(default: mostly email_driven); 'none' keeps profiles, for a price drift only",
    )
    sim.add_argument(
        "--drift-price-factor",
        type=_positive_float,
        default=1.0,
        metavar="F",
        help="multiply purchase values from the drift on by F (default 1.0)",
    )
    from jobs.simulator import SHAPES

    sim.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default="sessions",
        help="shape of the traffic (default sessions): "
        + "; ".join(f"{name}: {what}" for name, what in SHAPES.items()),
    )

    replay = sub.add_parser(
        "replay",
        help="produce events from a JSONL file to Kafka, skipping and listing bad lines "
        "(exit status 1 if any); user ids as given unless --pseudonymize; "
        "--dry-run checks the file only",
    )
    replay.add_argument("file", help="JSONL file, one event per line")
    replay.add_argument(
        "--rebase-time",
        action="store_true",
        help="shift event times so the newest lands at now, keeping gaps; events are checked after "
        "the shift, so times before 2000 are fine once shifted into 2000-2100",
    )
    replay.add_argument("--rate", type=float, default=0, help="events per second; 0 = as fast as possible (default 0)")
    replay.add_argument(
        "--pseudonymize",
        action="store_true",
        help=pseudonymize + " (a file of ids that are pseudonyms already: leave it off)",
    )
    replay.add_argument(
        "--allow-bad-lines",
        action="store_true",
        help="exit 0 although bad lines were skipped (they are still listed and counted)",
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="check the file without producing (no broker needed): print one JSON object with the "
        "counts of lines, valid, bad and blank ones, users, types, first and last times, the "
        "shift and the first bad lines",
    )

    train = sub.add_parser("train", help="train the copy model (tokenizer + small GPT-2) on the generated corpus")
    train.add_argument(
        "--out", default="models/artifacts/trained", help="output folder (default models/artifacts/trained)"
    )
    train.add_argument(
        "--base", help="a local Hugging Face causal-LM folder to fine-tune instead of training from scratch"
    )
    train.add_argument("--size", choices=("tiny", "small"), default="small", help="model size (default small)")
    train.add_argument("--epochs", type=_positive_int, default=1, help="passes over the corpus (default 1)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="records per batch (default 32)")
    train.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    train.add_argument("--max-records", type=int, default=0, help="train on at most this many records (default: all)")

    export = sub.add_parser("export", help="export a trained model to ONNX (Optimum) with a manifest")
    export.add_argument("model", nargs="?", default="models/artifacts/trained", help="trained model folder")
    export.add_argument("--out", default="models/artifacts/onnx", help="output folder (default models/artifacts/onnx)")
    export.add_argument("--quantize", action="store_true", help="also int8 dynamic quantization; serve that file")
    export.add_argument("--version", help="model version (default: time stamp and corpus hash)")

    retrain = sub.add_parser(
        "retrain",
        help="fine-tune the served copy model on feedback; promote it only if no worse (prints the run record as JSON)",
    )
    retrain.add_argument(
        "--feedback",
        metavar="PATH",
        help="feedback Parquet (tailor feedback export); default: fine-tune on a corpus replay only",
    )
    retrain.add_argument("--reason", metavar="TEXT", help="why this run, kept in the run record (default 'manual run')")
    retrain.add_argument(
        "--epochs", type=_positive_int, default=2, metavar="N", help="passes over the fine-tuning set (default 2)"
    )
    retrain.add_argument(
        "--lr", type=_positive_float, default=3e-4, metavar="X", help="peak learning rate (default 3e-4)"
    )
    retrain.add_argument(
        "--max-records",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="fine-tune on at most N rows, feedback and replay shrunk alike (default: no cap)",
    )
    retrain.add_argument(
        "--replay",
        type=float,
        default=1.0,
        metavar="R",
        help="original-corpus rows replayed per feedback row, against forgetting (default 1.0)",
    )
    retrain.add_argument("--dry-run", action="store_true", help="evaluate and decide, never export or promote")
    retrain.add_argument(
        "--watch",
        action="store_true",
        help="keep running: retrain when a trigger fires, at most once per "
        "TAILOR_RETRAIN_MIN_INTERVAL_S: the flow's drift alerts (TAILOR_DRIFT_TOPIC) while "
        "TAILOR_RETRAIN_ON_DRIFT is true (the default; --no-drift overrides) and each --arm's "
        "rate; without --feedback each run first exports fresh feedback (cut-off now) to "
        "<feature repo>/data/feedback/",
    )
    triggers = retrain.add_argument_group("--watch triggers")
    triggers.add_argument(
        "--drift",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="retrain on drift alerts, or not (default: TAILOR_RETRAIN_ON_DRIFT, true)",
    )
    triggers.add_argument(
        "--arm",
        action="append",
        metavar="EXPERIMENT/VARIANT",
        help="retrain when this arm's rate falls (repeatable; the rules below apply to each): "
        "every --check-every-s the rate of the users who arrived since the last reading",
    )
    triggers.add_argument(
        "--floor",
        type=float,
        default=0.0,
        metavar="RATE",
        help="trigger when the rate is under RATE, e.g. 0.02 (default 0: off)",
    )
    triggers.add_argument(
        "--relative-drop",
        type=float,
        default=0.0,
        metavar="X",
        help="trigger when the rate is X under the mean of its earlier readings, a share: 0.3 "
        "means 30%% under (default 0: off)",
    )
    triggers.add_argument(
        "--metric",
        choices=("conversion", "click"),
        default="conversion",
        help="users who converted, or who clicked, per exposed user (default conversion)",
    )
    triggers.add_argument(
        "--check-every-s",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="seconds between readings of the arm counters (default 60)",
    )
    triggers.add_argument(
        "--min-users",
        type=_positive_int,
        default=500,
        metavar="N",
        help="a reading waits for N new users (default 500; a rate p over N users is "
        "uncertain by about sqrt(p(1-p)/N))",
    )
    triggers.add_argument(
        "--recent",
        type=_positive_int,
        default=1,
        metavar="K",
        help="compare the mean of the last K readings (default 1)",
    )

    samples = sub.add_parser("samples", help="what an exported model writes per segment, slot and tone")
    samples.add_argument("model", nargs="?", default="models/artifacts/onnx", help="exported model folder")
    samples.add_argument("--sample", action="store_true", help="sample (top-p 0.9, temperature 0.8) instead of greedy")
    samples.add_argument("--seed", type=int, default=0)
    samples.add_argument("--json", action="store_true", help="JSON rows instead of a Markdown table")

    exp = sub.add_parser("experiment", help="experiments: plan one (sample size and duration)")
    exp_sub = exp.add_subparsers(dest="action", required=True)
    plan = exp_sub.add_parser("plan", help="users per arm and days for a baseline rate and a detectable effect")
    plan.add_argument("--baseline", type=float, required=True, help="the control's conversion rate, e.g. 0.05")
    plan.add_argument(
        "--mde",
        type=float,
        required=True,
        help="minimum detectable effect, relative: 0.1 means 10%% better than the baseline",
    )
    plan.add_argument("--alpha", type=float, default=0.05, help="false positive rate (default 0.05, two-sided)")
    plan.add_argument("--power", type=float, default=0.8, help="chance to detect the effect (default 0.8)")
    plan.add_argument("--arms", type=int, default=2, help="arms, control included (default 2)")
    plan.add_argument("--daily-users", type=_positive_float, help="new users a day, for the duration")
    plan.add_argument("--share", type=float, default=1.0, help="share of traffic in the experiment (default 1.0)")

    feedback = sub.add_parser("feedback", help="the feedback loop: served copy joined with the outcomes it earned")
    feedback_sub = feedback.add_subparsers(dest="action", required=True)
    fexport = feedback_sub.add_parser(
        "export",
        help="write the fine-tuning set (Parquet): generated copy, weighted "
        "by engagement, as of a cut-off; prints a JSON summary",
    )
    fexport.add_argument("--cutoff", help="nothing after this time counts: RFC 3339 or epoch ms (default: now)")
    fexport.add_argument(
        "--window-h",
        type=_positive_float,
        default=24.0,
        help="hours after an exposure an outcome still counts for it (default 24)",
    )
    fexport.add_argument(
        "--since",
        help="leave out exposures and outcomes before this time: RFC 3339 or epoch ms "
        "(default: none); Kafka is read from the messages of that time on",
    )
    fexport.add_argument("--events", metavar="FILE", help="read events from this JSONL file instead of Kafka")
    fexport.add_argument(
        "--out", metavar="PATH", help="Parquet file (default <feature repo>/data/feedback/feedback-<cutoff>.parquet)"
    )
    fexport.add_argument(
        "--min-impressions",
        type=_positive_int,
        default=1,
        metavar="N",
        help="leave out copy served fewer than N times (default 1)",
    )

    bench = sub.add_parser("bench", help="benchmarks; each prints one JSON object")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    ingest = bench_sub.add_parser("ingest", help="flow throughput vs one FeatureStore.push per event")
    ingest.add_argument("--events", type=_positive_int, default=200_000)
    ingest.add_argument("--users", type=_positive_int, default=10_000)
    ingest.add_argument("--naive-events", type=_positive_int, default=1_000, help="events for the naive push path")
    ingest.add_argument(
        "--uniform", action="store_true", help="worst case: users drawn uniformly per event, no sessions"
    )
    ingest.add_argument("--repeat", type=_positive_int, default=3, help="flow runs; the median is reported (default 3)")
    fresh = bench_sub.add_parser("freshness", help="probe send -> first Feast read that sees it, under load")
    fresh.add_argument("--rate", type=float, default=5000.0)
    fresh.add_argument("--seconds", type=float, default=20.0)
    fresh.add_argument("--users", type=_positive_int, default=10_000)
    fresh.add_argument("--no-recovery", action="store_true", help="run the flow without Bytewax recovery snapshots")
    fresh.add_argument(
        "--cold",
        action="store_true",
        help="measure a fresh flow's start: ready_ms, cold_servable_ms, first_probes_p99_ms, then warm",
    )
    fresh.add_argument(
        "--backlog",
        type=_non_negative_int,
        default=20_000,
        help="--cold: simulated events already in the topic when the flow starts (default 20,000)",
    )
    fresh.add_argument(
        "--first-probes",
        type=_positive_int,
        default=20,
        help="--cold: probes sent right after ready, the first at the moment of readiness (default 20)",
    )
    fresh.add_argument(
        "--live",
        action="store_true",
        help="the load starts after the flow is ready, into an empty topic: max_lag_events, "
        "final_lag_events (lag when the load stops), drain_ms, probes' p99_ms",
    )
    fresh.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="--live: longest wait for the flow to reach the end once the load stops (default 120 s)",
    )
    seg = bench_sub.add_parser("segment", help="segmentation and drift: cost, ARI, false alarms, detection delay")
    seg.add_argument(
        "--events",
        type=_positive_int,
        default=1_000_000,
        help="measured events per stream, after the burn-in (default 1,000,000)",
    )
    seg.add_argument(
        "--burn-in",
        type=int,
        default=400_000,
        help="events before the drift reference is frozen, while new users' features settle (default 400,000)",
    )
    seg.add_argument("--users", type=_positive_int, default=1000, help="simulated users (default 1000)")
    seg.add_argument(
        "--drift-at",
        type=int,
        default=None,
        help="event of the injected drift (default: half-way through the measured events)",
    )
    seg.add_argument("--repeat", type=_positive_int, default=3, help="runs with and without segmentation (default 3)")
    seg.add_argument(
        "--shape",
        choices=tuple(SHAPES),
        default="sessions",
        help="the simulated traffic's shape (default sessions): "
        + "; ".join(f"{name}: {text}" for name, text in SHAPES.items()),
    )
    gen = bench_sub.add_parser("generate", help="copy generation: Tailor's runtime vs Optimum vs PyTorch")
    gen.add_argument("--model", default="models/artifacts/onnx", help="exported model folder")
    gen.add_argument("--trained", default="models/artifacts/trained", help="trained model folder (PyTorch leg)")
    gen.add_argument("--concurrency", type=_positive_int, default=16)
    gen.add_argument("--new-tokens", type=_positive_int, default=24)
    gen.add_argument("--requests", type=_positive_int, default=320)
    gen.add_argument("--max-wait-ms", type=float, default=3.0, help="dynamic batching: longest wait for company")
    gen.add_argument(
        "--slot",
        choices=("headline", "description", "cta", "email_subject"),
        default="headline",
        help="what the prompts ask for (default headline; description runs to --new-tokens)",
    )
    gen.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where all three run (cuda: ONNX Runtime's CUDA provider, torch on the GPU)",
    )
    bapi = bench_sub.add_parser(
        "api", help="the API under open-loop and peak load, beside feast serve on the same store"
    )
    bapi.add_argument(
        "--users", type=_positive_int, default=10_000, help="simulated users with features (default 10,000)"
    )
    bapi.add_argument("--seconds", type=_positive_float, default=10.0, help="each open-loop run (default 10)")
    bapi.add_argument(
        "--rate", type=_positive_float, default=1000.0, help="offered rps of /v1/personalize (default 1000)"
    )
    bapi.add_argument(
        "--feature-rates",
        type=lambda t: [_positive_float(r) for r in t.split(",")],
        default=[500.0, 1000.0],
        metavar="R1,R2",
        help="offered rps of the features route and of feast serve (default 500,1000)",
    )
    bapi.add_argument("--wrk-seconds", type=_positive_float, default=10.0, help="each wrk peak run (default 10)")
    bapi.add_argument("--connections", type=_positive_int, default=32, help="wrk connections (default 32)")
    bapi.add_argument("--model", default="models/artifacts/onnx", help="exported copy model the API serves")
    bapi.add_argument("--no-wrk", action="store_true", help="skip the wrk peak runs")
    bapi.add_argument("--no-feast", action="store_true", help="skip feast serve")
    bapi.add_argument("--no-personalize", action="store_true", help="skip /v1/personalize (no model needed)")
    clus = bench_sub.add_parser("clusterers", help="River clusterers compared on simulated traffic (ARI, µs/update)")
    clus.add_argument("--events", type=_positive_int, default=1_000_000)
    clus.add_argument("--users", type=_positive_int, default=1000)
    bexp = bench_sub.add_parser("experiment", help="experiments: assign/analyze cost, A/A false positives, power")
    bexp.add_argument(
        "--experiments", type=_positive_int, default=2000, help="simulated experiments per error rate (default 2000)"
    )
    bexp.add_argument("--looks", type=_positive_int, default=20, help="looks per simulated experiment (default 20)")
    bexp.add_argument("--seed", type=int, default=7, help="seed of the simulations (default 7)")
    bexp.add_argument("--quick", action="store_true", help="fewer timed calls and repeats (for tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from config.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        from demo.up import run_up as run
    elif args.command == "apply":
        from store.feast import run_apply as run
    elif args.command == "flow":
        from flows.features import run_flow as run
    elif args.command == "train":
        from models.train.build import run_train as run
    elif args.command == "export":
        from models.train.export import run_export as run
    elif args.command == "retrain":
        from cli.retrain import run_retrain as run
    elif args.command == "samples":
        from models.serve.samples import run_samples as run
    elif args.command == "api":
        from api.app import run_api as run
    elif args.command == "experiment":
        from cli.experiment import run_experiment as run
    elif args.command == "feedback":
        from jobs.feedback import run_feedback as run
    elif args.command == "segments":
        from cli.segments import run_segments as run
    elif args.command == "simulate":
        from jobs.produce import run_simulate as run
    elif args.command == "replay":
        from jobs.produce import run_replay as run
    elif args.command == "bench" and args.bench == "ingest":
        from bench.ingest import run_ingest as run
    elif args.command == "bench" and args.bench == "freshness":
        from bench.freshness import run_freshness as run
    elif args.command == "bench" and args.bench == "generate":
        from bench.generate import run_generate as run
    elif args.command == "bench" and args.bench == "api":
        from bench.api import run_api_bench as run
    elif args.command == "bench" and args.bench == "clusterers":
        from bench.clusterers import run_clusterers as run
    elif args.command == "bench" and args.bench == "segment":
        from bench.segment import run_segment as run
    elif args.command == "bench" and args.bench == "experiment":
        from bench.experiment import run_experiment_bench as run
    else:  # pragma: no cover - argparse rejects unknown commands
        raise AssertionError(args.command)
    try:
        return run(settings, args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
