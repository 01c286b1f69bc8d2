"""``tailor flow``: the features dataflow until stopped (flows/features.py)."""

from __future__ import annotations

from cli.arguments import positive_int


def add_parser(subparsers) -> None:
    flow = subparsers.add_parser("flow", help="run the features dataflow (Bytewax) until stopped")
    flow.add_argument("--recovery-dir", help="Bytewax recovery folder; created and initialised when missing")
    flow.add_argument("--workers", type=positive_int, default=1, help="worker threads (default 1)")
    flow.add_argument("--process-id", type=int, default=None, help="this process's index in a cluster (Bytewax -i)")
    flow.add_argument("--addresses", help="host:port of every cluster process, ';'-separated (Bytewax -a)")


def run(settings, args) -> int:
    from flows.features import run_flow

    return run_flow(settings, args)
