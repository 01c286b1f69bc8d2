"""``tailor up``: the whole pipeline on one machine with a live view (demo/up.py)."""

from __future__ import annotations

from cli.arguments import positive_int


def add_parser(subparsers) -> None:
    up = subparsers.add_parser(
        "up", help="run the demo: embedded broker, Feast (SQLite), the flow, simulated traffic, live view"
    )
    up.add_argument("--users", type=positive_int, default=200, help="simulated users (default 200)")
    up.add_argument("--rate", type=float, default=200.0, help="simulated events per second (default 200)")
    up.add_argument("--seconds", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    up.add_argument("--watch", type=positive_int, default=6, help="users shown in the live view (default 6)")
    up.add_argument("--api-port", type=positive_int, default=8000, help="port of the API (default 8000)")
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


def run(settings, args) -> int:
    from demo.up import run_up

    return run_up(settings, args)
