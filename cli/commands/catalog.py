"""``tailor catalog load``: the simulator's catalog into the catalog store, the demo catalog.

The simulated users browse and buy the items of `engine.content.catalog.build_catalog`
(seed `engine.content.catalog.CATALOG_SEED`, 400 items, as jobs/simulator.py uses);
loading them lets ``/v1/personalize`` pick from the same items the events talk about.
Written straight into the store (`store.catalog.open_catalog`: the SQLite file, or Redis
with TAILOR_REDIS_URL), in batches as ``PUT /v1/items`` writes them; loading twice changes nothing.
"""

from __future__ import annotations

import sys

from cli.arguments import positive_int


def add_parser(subparsers) -> None:
    cat = subparsers.add_parser("catalog", help="the item catalog: load the simulator's items (the demo catalog)")
    cat_sub = cat.add_subparsers(dest="action", required=True)
    load = cat_sub.add_parser("load", help="write the simulator's catalog into the catalog store")
    load.add_argument("--items", type=positive_int, default=400, help="number of items (default 400, the simulator's)")
    load.add_argument("--seed", type=int, help="catalog seed (default: the simulator's, CATALOG_SEED)")
    load.add_argument("--quiet", action="store_true", help="no progress bar")


def run(settings, args) -> int:
    from tqdm import tqdm

    from engine.content.catalog import CATALOG_SEED, build_catalog
    from store.catalog import load_items, open_catalog
    from store.redis_guard import StoreUnavailable

    if args.action != "load":  # pragma: no cover - argparse only offers load
        raise AssertionError(args.action)
    seed = CATALOG_SEED if args.seed is None else args.seed
    items = build_catalog(seed, args.items).items
    store = open_catalog(settings)
    where = "Redis" if settings.redis.url else str(store.path)
    try:
        with tqdm(total=len(items), unit="item", file=sys.stderr, leave=False, disable=args.quiet) as bar:
            counts = load_items(store, items, bar.update)
        total = store.count()
    except StoreUnavailable as exc:
        print(f"tailor catalog load: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(
        f"loaded {len(items)} items (seed {seed}) into the catalog in {where}: {counts['created']} created, "
        f"{counts['updated']} updated, {counts['unchanged']} unchanged; {total} items in all"
    )
    return 0
