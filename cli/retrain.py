"""``tailor retrain``: one retraining run now, or ``--watch`` for its triggers (drift, a falling arm)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from models.serve.registry import Trigger
from models.train.retrain import RetrainConfig, RetrainError, retrain
from store.brand import brand_rules

#: The --watch options and their defaults (cli/main.py's parser): given without --watch they are an error.
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


def run_retrain(settings, args) -> int:
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
        try:
            record = retrain(
                settings.generation.model_dir,
                settings.retrain.model_registry,
                feedback=feedback,
                trigger=trigger,
                reason=reason,
                config=config,
                brand_rules=rules,
            )
        except RetrainError as exc:
            if exc.record is not None:
                print(msgspec.json.encode(exc.record).decode(), flush=True)
            print(f"tailor retrain: {exc}", file=sys.stderr)
            return 2
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
