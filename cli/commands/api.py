"""``tailor api``: the personalization API (api/app.py)."""

from __future__ import annotations

from cli.arguments import positive_int


def add_parser(subparsers) -> None:
    api = subparsers.add_parser(
        "api", help="serve the personalization API (events, features, segments, personalize, templates, experiments)"
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="API processes sharing the port (default 1; one per core the API may use is a good start)",
    )


def run(settings, args) -> int:
    from api.app import run_api

    return run_api(settings, args)
