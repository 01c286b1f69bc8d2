"""``tailor bench copy``: the background copy generator's throughput, and the time to warm the demo catalog.

Self-contained: a temp catalog holding the demo catalog (the simulator's items, as
``tailor up`` loads them), the default templates, and a temp copy store, with the
exported model of ``--model``. Two parts, one after the other in this process:

* ``batching``: the same ``--sample`` keys of the warm plan (every live template, style,
  tone and slot, spread over the catalog) written by `jobs.copy_generator.CopyGenerator`
  at each batch size of ``--batches``, each into a fresh store, side by side: snippets
  per second with every check and re-sample the generator does (``speedup_vs_batch_1``);
* ``warm``: ``tailor copy warm``'s work (`jobs.copy_generator.warm`) over the whole plan
  at ``TAILOR_GENERATOR_BATCH``: ``warm_demo_catalog_s`` is its wall time from plan to
  the last snippet written.

The generator runs on every CPU this process may use, on ONNX Runtime's CUDA provider
where a GPU is usable (the JSON says which provider ran).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from config.settings import Settings


def run_copy_bench(settings: Settings, args) -> int:
    from api.personalize import read_served_model
    from models.serve.manifest import ModelDirError

    model = Path(args.model).resolve()
    try:
        read_served_model(model)
    except ModelDirError as exc:
        print(f"tailor bench copy: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="tailor-bench-copy-") as tmp:
        bench = settings.replace(
            redis_url="",
            model_dir=str(model),
            catalog_db=os.path.join(tmp, "catalog.db"),
            template_db=os.path.join(tmp, "templates.db"),
            copy_db=os.path.join(tmp, "copies.db"),
        )
        items = _load_demo_catalog(bench)
        result: dict = {
            "bench": "copy",
            "model_dir": str(model),
            "catalog_items": items,
            "cpus": len(os.sched_getaffinity(0)),
            "machine": platform.machine(),
        }
        result["batching"] = _batching(bench, tmp, args.sample, args.batches)
        if not args.no_warm:
            result["warm"] = _warm(bench, quiet=args.quiet)
            result["warm_demo_catalog_s"] = result["warm"]["seconds"]
            result["snippets_per_s"] = result["warm"]["snippets_per_s"]
        else:
            best = max(result["batching"]["runs"], key=lambda r: r["snippets_per_s"])
            result["snippets_per_s"] = best["snippets_per_s"]
    print(json.dumps(result))
    return 0


def _load_demo_catalog(settings: Settings) -> int:
    from engine.content.catalog import CATALOG_SEED, build_catalog
    from store.catalog import load_items, open_catalog

    store = open_catalog(settings)
    try:
        load_items(store, build_catalog(CATALOG_SEED).items)
        return store.count()
    finally:
        store.close()


def _batching(settings: Settings, tmp: str, sample: int, batches: list[int]) -> dict:
    """The same sample of plan keys at each batch size, each into a fresh copy store."""
    from jobs.copy_generator import CopyGenerator

    runs = []
    provider = None
    planned = 0
    for batch in batches:
        leg = settings.replace(generator_batch=batch, copy_db=os.path.join(tmp, f"copies-batch-{batch}.db"))
        writer = CopyGenerator(leg)
        try:
            if writer.generator is None:
                raise RuntimeError(f"no copy model could be loaded from {settings.generation.model_dir}")
            provider = writer.generator.provider
            plan = writer.plan()
            planned = len(plan)
            # Every k-th key: every template, style, slot and tone, across the catalog.
            jobs = plan[:: max(1, len(plan) // sample)][:sample]
            writer.prime(jobs)
            written = 0
            print(f"bench copy: {len(jobs)} snippets at batch {batch}", file=sys.stderr)
            started = time.perf_counter()
            while writer.warm_left:
                written += writer.step()
            seconds = time.perf_counter() - started
            runs.append(
                {
                    "batch": batch,
                    "snippets": written,
                    "seconds": round(seconds, 2),
                    "snippets_per_s": round(written / seconds, 1),
                    "rejected": writer.rejected,
                }
            )
        finally:
            writer.close()
    base = next((r["snippets_per_s"] for r in runs if r["batch"] == 1), None)
    for run in runs:
        run["speedup_vs_batch_1"] = round(run["snippets_per_s"] / base, 2) if base else None
    return {"provider": provider, "plan_keys": planned, "sample": sample, "runs": runs}


def _warm(settings: Settings, quiet: bool) -> dict:
    from jobs.copy_generator import warm

    print(
        f"bench copy: warming the whole plan at batch {settings.generation.generator_batch} (tailor copy warm)",
        file=sys.stderr,
    )
    summary = warm(settings, progress=not quiet)
    summary["batch"] = settings.generation.generator_batch
    return summary
