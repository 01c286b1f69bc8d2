"""``tailor api``: the personalization API (api/app.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    api = subparsers.add_parser(
        "api", help="serve the personalization API (events, features, segments, personalize, templates, experiments)"
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)


def run(settings, args) -> int:
    from api.app import run_api

    return run_api(settings, args)
