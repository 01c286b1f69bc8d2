"""Argument types shared by the commands' parsers: each rejects a bad value with argparse's usage error."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def profile_mix(text: str) -> dict[str, float]:
    """``--drift-mix``: ``"email_driven=0.65,bargain_hunter=0.1"``, or ``none`` (``{}``: keep profiles)."""
    if text.strip().lower() == "none":
        return {}
    from jobs.simulator import Drift

    shares: dict[str, float] = {}
    for part in text.split(","):
        name, sep, share = (s.strip() for s in part.partition("="))
        if not sep or not name:
            raise argparse.ArgumentTypeError(
                f"expected profile=share pairs separated by commas "
                f"(e.g. email_driven=0.65,window_shopper=0.35) or none, got {text!r}"
            )
        if name in shares:
            raise argparse.ArgumentTypeError(f"profile {name!r} is given twice in {text!r}")
        try:
            shares[name] = float(share)
        except ValueError:
            raise argparse.ArgumentTypeError(f"share of {name!r} is not a number: {share!r}") from None
    try:
        return Drift(at_event=0, shares=shares).shares  # its checks, and shares summing to 1
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
