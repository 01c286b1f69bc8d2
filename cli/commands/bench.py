"""``tailor bench <name>``: the benchmarks under bench/; each prints one JSON object."""

from __future__ import annotations

import importlib

from cli.arguments import non_negative_int, positive_float, positive_int

#: Each benchmark's function, as "module:function", imported only when it runs.
BENCHMARKS = {
    "ingest": "bench.ingest:run_ingest",
    "freshness": "bench.freshness:run_freshness",
    "segment": "bench.segment:run_segment",
    "generate": "bench.generate:run_generate",
    "api": "bench.api:run_api_bench",
    "copy": "bench.copies:run_copy_bench",
    "clusterers": "bench.clusterers:run_clusterers",
    "experiment": "bench.experiment:run_experiment_bench",
}


def add_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks; each prints one JSON object")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    ingest = bench_sub.add_parser("ingest", help="flow throughput vs one FeatureStore.push per event")
    ingest.add_argument("--events", type=positive_int, default=200_000)
    ingest.add_argument("--users", type=positive_int, default=10_000)
    ingest.add_argument("--naive-events", type=positive_int, default=1_000, help="events for the naive push path")
    ingest.add_argument(
        "--uniform", action="store_true", help="worst case: users drawn uniformly per event, no sessions"
    )
    ingest.add_argument("--repeat", type=positive_int, default=3, help="flow runs; the median is reported (default 3)")
    fresh = bench_sub.add_parser("freshness", help="probe send -> first Feast read that sees it, under load")
    fresh.add_argument("--rate", type=float, default=5000.0)
    fresh.add_argument("--seconds", type=float, default=20.0)
    fresh.add_argument("--users", type=positive_int, default=10_000)
    fresh.add_argument("--no-recovery", action="store_true", help="run the flow without Bytewax recovery snapshots")
    fresh.add_argument(
        "--cold",
        action="store_true",
        help="measure a fresh flow's start: ready_ms, cold_servable_ms, first_probes_p99_ms, then warm",
    )
    fresh.add_argument(
        "--backlog",
        type=non_negative_int,
        default=20_000,
        help="--cold: simulated events already in the topic when the flow starts (default 20,000)",
    )
    fresh.add_argument(
        "--first-probes",
        type=positive_int,
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
        type=positive_int,
        default=1_000_000,
        help="measured events per stream, after the burn-in (default 1,000,000)",
    )
    seg.add_argument(
        "--burn-in",
        type=int,
        default=400_000,
        help="events before the drift reference is frozen, while new users' features settle (default 400,000)",
    )
    seg.add_argument("--users", type=positive_int, default=1000, help="simulated users (default 1000)")
    seg.add_argument(
        "--drift-at",
        type=int,
        default=None,
        help="event of the injected drift (default: half-way through the measured events)",
    )
    seg.add_argument("--repeat", type=positive_int, default=3, help="runs with and without segmentation (default 3)")
    from jobs.simulator import SHAPES

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
    gen.add_argument("--concurrency", type=positive_int, default=16)
    gen.add_argument("--new-tokens", type=positive_int, default=24)
    gen.add_argument("--requests", type=positive_int, default=320)
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
        "--users", type=positive_int, default=10_000, help="simulated users with features (default 10,000)"
    )
    bapi.add_argument("--seconds", type=positive_float, default=10.0, help="each open-loop run (default 10)")
    bapi.add_argument(
        "--rate", type=positive_float, default=1000.0, help="offered rps of /v1/personalize (default 1000)"
    )
    bapi.add_argument(
        "--feature-rates",
        type=lambda t: [positive_float(r) for r in t.split(",")],
        default=[500.0, 1000.0],
        metavar="R1,R2",
        help="offered rps of the features route and of feast serve (default 500,1000)",
    )
    bapi.add_argument("--wrk-seconds", type=positive_float, default=10.0, help="each wrk peak run (default 10)")
    bapi.add_argument("--connections", type=positive_int, default=32, help="wrk connections (default 32)")
    bapi.add_argument("--model", default="models/artifacts/onnx", help="exported copy model the API serves")
    bapi.add_argument("--no-wrk", action="store_true", help="skip the wrk peak runs")
    bapi.add_argument("--no-feast", action="store_true", help="skip feast serve")
    bapi.add_argument("--no-personalize", action="store_true", help="skip /v1/personalize (no model needed)")
    bcopy = bench_sub.add_parser(
        "copy", help="the background copy generator: snippets/s by batch size, time to warm the demo catalog"
    )
    bcopy.add_argument("--model", default="models/artifacts/onnx", help="exported copy model to generate with")
    bcopy.add_argument(
        "--sample", type=positive_int, default=256, help="plan keys written at each batch size (default 256)"
    )
    bcopy.add_argument(
        "--batches",
        type=lambda t: [positive_int(b) for b in t.split(",")],
        default=[1, 8, 32],
        metavar="B1,B2",
        help="generator batch sizes compared side by side (default 1,8,32)",
    )
    bcopy.add_argument("--no-warm", action="store_true", help="skip warming the whole demo catalog")
    bcopy.add_argument("--quiet", action="store_true", help="no progress bar")
    clus = bench_sub.add_parser("clusterers", help="River clusterers compared on simulated traffic (ARI, µs/update)")
    clus.add_argument("--events", type=positive_int, default=1_000_000)
    clus.add_argument("--users", type=positive_int, default=1000)
    bexp = bench_sub.add_parser("experiment", help="experiments: assign/analyze cost, A/A false positives, power")
    bexp.add_argument(
        "--experiments", type=positive_int, default=2000, help="simulated experiments per error rate (default 2000)"
    )
    bexp.add_argument("--looks", type=positive_int, default=20, help="looks per simulated experiment (default 20)")
    bexp.add_argument("--seed", type=int, default=7, help="seed of the simulations (default 7)")
    bexp.add_argument("--quick", action="store_true", help="fewer timed calls and repeats (for tests)")


def run(settings, args) -> int:
    module, _, function = BENCHMARKS[args.bench].partition(":")
    return getattr(importlib.import_module(module), function)(settings, args)
