"""``tailor retrain``: one retraining run now, or ``--watch`` for its triggers (drift, a falling arm)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.arguments import non_negative_int, positive_float, positive_int

if TYPE_CHECKING:
    from models.serve.registry import Trigger

#: The --watch options and their defaults (`add_parser`): given without --watch they are an error.
WATCH_ONLY = {
    "arm": None,
    "drift": None,
    "floor": 0.0,
    "relative_drop": 0.0,
    "metric": "conversion",
    "check_every_s": 60.0,
    "min_users": 500,
    "recent": 1,
}


def add_parser(subparsers) -> None:
    retrain = subparsers.add_parser(
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
        "--epochs", type=positive_int, default=2, metavar="N", help="passes over the fine-tuning set (default 2)"
    )
    retrain.add_argument(
        "--lr", type=positive_float, default=3e-4, metavar="X", help="peak learning rate (default 3e-4)"
    )
    retrain.add_argument(
        "--max-records",
        type=non_negative_int,
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
        default=WATCH_ONLY["drift"],
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
        default=WATCH_ONLY["floor"],
        metavar="RATE",
        help="trigger when the rate is under RATE, e.g. 0.02 (default 0: off)",
    )
    triggers.add_argument(
        "--relative-drop",
        type=float,
        default=WATCH_ONLY["relative_drop"],
        metavar="X",
        help="trigger when the rate is X under the mean of its earlier readings, a share: 0.3 "
        "means 30%% under (default 0: off)",
    )
    triggers.add_argument(
        "--metric",
        choices=("conversion", "click"),
        default=WATCH_ONLY["metric"],
        help="users who converted, or who clicked, per exposed user (default conversion)",
    )
    triggers.add_argument(
        "--check-every-s",
        type=positive_float,
        default=WATCH_ONLY["check_every_s"],
        metavar="S",
        help="seconds between readings of the arm counters (default 60)",
    )
    triggers.add_argument(
        "--min-users",
        type=positive_int,
        default=WATCH_ONLY["min_users"],
        metavar="N",
        help="a reading waits for N new users (default 500; a rate p over N users is "
        "uncertain by about sqrt(p(1-p)/N))",
    )
    triggers.add_argument(
        "--recent",
        type=positive_int,
        default=WATCH_ONLY["recent"],
        metavar="K",
        help="compare the mean of the last K readings (default 1)",
    )


def run(settings, args) -> int:
    import msgspec

    from models.train.retrain import RetrainConfig, RetrainError, retrain  # torch: only when a run starts
    from store.brand import brand_rules

    try:
        rules = brand_rules(settings)
        config = RetrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            max_records=args.max_records,
            replay=args.replay,
            ppl_tolerance=settings.retrain.ppl_tolerance,
            metric_tolerance=settings.retrain.metric_tolerance,
            dry_run=args.dry_run,
        )
    except ValueError as exc:
        print(f"tailor retrain: {exc}", file=sys.stderr)
        return 2
    if args.feedback and not Path(args.feedback).is_file():
        print(
            f"tailor retrain: no feedback file at {args.feedback}; write one with `tailor feedback export`",
            file=sys.stderr,
        )
        return 2

    def run_once(trigger: Trigger, reason: str, feedback: str | None = args.feedback) -> int:
        from store.audit import open_audit

        audit = open_audit(settings)  # a promotion is recorded there (refused when it cannot be)
        try:
            record = retrain(
                settings.generation.model_dir,
                settings.retrain.model_registry,
                feedback=feedback,
                trigger=trigger,
                reason=reason,
                config=config,
                brand_rules=rules,
                audit=audit,
            )
        except RetrainError as exc:
            if exc.record is not None:
                print(msgspec.json.encode(exc.record).decode(), flush=True)
            print(f"tailor retrain: {exc}", file=sys.stderr)
            return 2
        finally:
            audit.close()
        print(msgspec.json.encode(record).decode(), flush=True)
        print(f"tailor retrain: {record.decision}", file=sys.stderr)
        return 0

    if not args.watch:
        given = [
            f"--{name.replace('_', '-')}"
            for name, default in WATCH_ONLY.items()
            if getattr(args, name, default) != default
        ]
        if given:
            print(
                f"tailor retrain: {', '.join(given)} only mean something with --watch (its triggers): add --watch",
                file=sys.stderr,
            )
            return 2
        return run_once("manual", args.reason or "manual run")
    from jobs.retrain_watch import run_watch

    return run_watch(settings, args, run_once)
