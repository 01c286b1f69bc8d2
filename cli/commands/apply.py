"""``tailor apply``: ``feast apply`` of the feature repository (store/feast.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    apply = subparsers.add_parser("apply", help="apply the Feast feature repository (feast apply)")
    apply.add_argument("--repo", help="feature repo folder (default: TAILOR_FEATURE_REPO)")


def run(settings, args) -> int:
    from store.feast import run_apply

    return run_apply(settings, args)
