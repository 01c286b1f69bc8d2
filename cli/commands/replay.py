"""``tailor replay``: events from a JSONL file to Kafka, bad lines skipped and listed (jobs/produce.py)."""

from __future__ import annotations

from cli.commands.simulate import PSEUDONYMIZE_HELP


def add_parser(subparsers) -> None:
    replay = subparsers.add_parser(
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
        help=PSEUDONYMIZE_HELP + " (a file of ids that are pseudonyms already: leave it off)",
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


def run(settings, args) -> int:
    from jobs.produce import run_replay

    return run_replay(settings, args)
