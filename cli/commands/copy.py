"""``tailor copy``: the background copy generator (jobs/copy_generator.py).

``tailor copy generate`` is the service `tailor up` and compose.yaml run: it writes the
copy the API serves, ahead of need, and the misses the API queues. ``tailor copy warm``
writes every key of the warm plan that is missing now, with a progress bar, and exits.
``tailor copy status`` says what the copy store holds and what is left to write.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading


def add_parser(subparsers) -> None:
    copy = subparsers.add_parser("copy", help="the background copy generator: generate (a service), warm, status")
    sub = copy.add_subparsers(dest="action", required=True)
    generate = sub.add_parser(
        "generate", help="write copy ahead of need and for the API's misses, until stopped (SIGTERM, Ctrl-C)"
    )
    generate.add_argument("--once", action="store_true", help="stop when nothing is queued or left to warm")
    warm = sub.add_parser("warm", help="write every missing key of the warm plan now (progress bar), then exit")
    warm.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("status", help="JSON: snippets stored, misses queued, the model, warm keys missing")


def run(settings, args) -> int:
    from jobs.copy_generator import warm
    from models.serve.manifest import ModelDirError
    from store.redis_guard import StoreUnavailable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.action == "warm":
            print(json.dumps(warm(settings, progress=not args.quiet)))
            return 0
        if args.action == "status":
            return _status(settings)
        return _generate(settings, once=args.once)
    except ModelDirError as exc:
        print(f"tailor copy {args.action}: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"tailor copy {args.action}: {exc.detail}", file=sys.stderr)
        return 1


def _status(settings) -> int:
    from jobs.copy_generator import CopyGenerator

    writer = CopyGenerator(settings)
    try:
        planned = writer.plan()
        status = {
            "model_version": writer.model_version,
            "stored": writer.copies.count(),
            "queued": writer.copies.queued(),
            "planned": len(planned),
            "planned_missing": len(writer.missing(planned)),
        }
    finally:
        writer.close()
    print(json.dumps(status))
    return 0


def _generate(settings, *, once: bool) -> int:
    from jobs.copy_generator import CopyGenerator

    if settings.generation.generator_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.generation.generator_metrics_port)
    writer = CopyGenerator(settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if once:
            while not stop.is_set() and writer.step():
                pass
        else:
            writer.run(stop)
    finally:
        writer.close()
    return 0
