"""The ``tailor`` command line: one console script, one subcommand per job.

Each command is a small module under ``cli/commands/`` with its parser (``add_parser``)
and its ``run``; the heavy imports wait inside ``run``, so ``tailor --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Command name -> its module, in the order ``tailor --help`` lists them.
COMMANDS = {
    "up": "cli.commands.up",
    "apply": "cli.commands.apply",
    "flow": "cli.commands.flow",
    "api": "cli.commands.api",
    "segments": "cli.commands.segments",
    "simulate": "cli.commands.simulate",
    "replay": "cli.commands.replay",
    "train": "cli.commands.train",
    "export": "cli.commands.export",
    "retrain": "cli.commands.retrain",
    "samples": "cli.commands.samples",
    "experiment": "cli.commands.experiment",
    "catalog": "cli.commands.catalog",
    "copy": "cli.commands.copy",
    "feedback": "cli.commands.feedback",
    "audit": "cli.commands.audit",
    "bench": "cli.commands.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailor", description="Tailor: streaming features and personalization.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from config.settings import Settings

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"tailor: {exc}", file=sys.stderr)
        return 2
    run = importlib.import_module(COMMANDS[args.command]).run
    try:
        return run(settings, args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
