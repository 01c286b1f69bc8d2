"""``tailor segments``: the segment profiles, as the flow keeps them in Feast.

The profiles live in the online store (feature view ``segment_profile``, one
row per segment id), so the API and this command read them the same way.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config.settings import Settings
    from engine.audience.segments import SegmentProfile


def add_parser(subparsers) -> None:
    segs = subparsers.add_parser("segments", help="print the segment profiles the flow keeps in Feast")
    segs.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(settings: Settings, args) -> int:
    from store.feast import open_store, read_profiles

    if not settings.audience.segments:
        print("tailor segments: segmentation is off (TAILOR_SEGMENTS=0)", file=sys.stderr)
        return 2
    profiles = read_profiles(open_store(settings), settings.audience.segments)
    if args.json:
        import msgspec

        print(msgspec.json.encode(profiles).decode())
        return 0
    if not profiles:
        print(
            "no segment profiles yet: the flow writes them once its segment model has warmed up "
            f"({settings.audience.warmup} users with enough history)",
            file=sys.stderr,
        )
        return 1
    print_table(profiles)
    return 0


def print_table(profiles: list[SegmentProfile], file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from engine.audience.segments import FEATURE_NAMES

    table = Table(title=f"Segments (model version {profiles[0].model_version})")
    table.add_column("id", justify="right")
    table.add_column("label")
    table.add_column("users", justify="right")
    table.add_column("share", justify="right")
    # Only the features the model uses: one the traffic never feeds has no column.
    used = [name for name in FEATURE_NAMES if any(name in p.centre for p in profiles)]
    for name in used:
        table.add_column(name.replace("_", " "), justify="right")
    for p in profiles:
        table.add_row(
            str(p.segment), p.label, str(p.size), f"{p.share:.0%}", *(_fmt(name, p.centre.get(name)) for name in used)
        )
    Console(file=file or sys.stdout, width=220).print(table)


def _fmt(name: str, value: float | None) -> str:
    """A centre's value as people read it; "-" for a feature the model does not use (no signal in the traffic)."""
    if value is None:
        return "-"
    if name == "order_value":
        return f"{value:,.2f}"
    if name == "browse_depth":
        return f"{value:.1f}/visit"
    if name == "visit_frequency":
        return f"{value:.2f}/day"
    return f"{value:.1%}"
