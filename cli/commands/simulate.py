"""``tailor simulate``: simulated user events to Kafka or a JSONL file (jobs/produce.py, jobs/simulator.py)."""

from __future__ import annotations

from cli.arguments import non_negative_int, positive_float, positive_int, profile_mix

#: ``--pseudonymize`` of simulate and replay.
PSEUDONYMIZE_HELP = (
    "replace each user id with its pseudonym under TAILOR_PSEUDONYM_KEY (the API's key; the "
    "API's function, as POST /v1/events applies it) before producing; without it user ids are "
    "produced as given"
)


def add_parser(subparsers) -> None:
    sim = subparsers.add_parser(
        "simulate", help="produce realistic simulated user events to Kafka (user ids as given unless --pseudonymize)"
    )
    sim.add_argument("--users", type=positive_int, default=1000, help="number of users (default 1000)")
    sim.add_argument("--events", type=int, default=0, help="stop after this many events (default: run until Ctrl-C)")
    sim.add_argument("--rate", type=float, default=0, help="events per second; 0 = as fast as possible (default 0)")
    sim.add_argument("--seed", type=int, default=7, help="random seed (default 7): same seed, same events")
    sim.add_argument(
        "--start",
        help="event time of the first event (RFC 3339; default: with --events and no --rate, "
        "early enough that the stream ends before now; otherwise now)",
    )
    sim.add_argument("--out", help="write JSONL to this file instead of producing to Kafka")
    sim.add_argument("--pseudonymize", action="store_true", help=PSEUDONYMIZE_HELP)
    sim.add_argument(
        "--drift-at",
        type=non_negative_int,
        metavar="N",
        help="from event N on, users re-draw their behaviour profile from --drift-mix and purchases "
        "cost --drift-price-factor times as much (default: no drift)",
    )
    sim.add_argument(
        "--drift-mix",
        type=profile_mix,
        metavar="MIX",
        help="profile shares after the drift, e.g. email_driven=0.65,bargain_hunter=0.1,... "
        "(default: mostly email_driven); 'none' keeps profiles, for a price drift only",
    )
    sim.add_argument(
        "--drift-price-factor",
        type=positive_float,
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


def run(settings, args) -> int:
    from jobs.produce import run_simulate

    return run_simulate(settings, args)
