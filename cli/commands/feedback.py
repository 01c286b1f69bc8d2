"""``tailor feedback export``: served copy joined with the outcomes it earned, as Parquet (jobs/feedback.py)."""

from __future__ import annotations

from cli.arguments import positive_float, positive_int


def add_parser(subparsers) -> None:
    feedback = subparsers.add_parser(
        "feedback", help="the feedback loop: served copy joined with the outcomes it earned"
    )
    feedback_sub = feedback.add_subparsers(dest="action", required=True)
    fexport = feedback_sub.add_parser(
        "export",
        help="write the fine-tuning set (Parquet): generated copy, weighted "
        "by engagement, as of a cut-off; prints a JSON summary",
    )
    fexport.add_argument("--cutoff", help="nothing after this time counts: RFC 3339 or epoch ms (default: now)")
    fexport.add_argument(
        "--window-h",
        type=positive_float,
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
        type=positive_int,
        default=1,
        metavar="N",
        help="leave out copy served fewer than N times (default 1)",
    )


def run(settings, args) -> int:
    from jobs.feedback import run_feedback

    return run_feedback(settings, args)
