"""A deterministic product catalog: what the simulated users browse and buy.

The same ``(seed, n_items)`` always gives the same catalog, so simulated events,
generated marketing copy and tests all talk about the same items. Each category
has its own price level (log-normal around a typical price), its own brands and
its own attributes, so "cheap discounted grocery" and "expensive outerwear" are
things a segment can actually prefer.

Examples
--------
>>> catalog = build_catalog(seed=7, n_items=40)
>>> len(catalog.items), catalog.items[0].item_id
(40, 'sku-000000')
>>> catalog == build_catalog(seed=7, n_items=40)
True
>>> item = catalog.item("sku-000003")
>>> item.category in CATEGORIES and item.sale_price <= item.price
True
"""

from __future__ import annotations

import math
import random
from typing import Annotated, Any

import msgspec

Pct = Annotated[int, msgspec.Meta(ge=0, lt=100)]


class Item(msgspec.Struct, frozen=True, omit_defaults=True):
    """One product: identity, a human title, where it sits and what it costs.

    ``discount_pct`` is a whole percentage (``20`` means 20 % off); ``None``
    means the item is at full price. ``attributes`` are category-specific
    (``colour`` and ``material`` for clothing, ``format`` for books, ...).
    """

    item_id: str
    title: str
    brand: str
    category: str
    price: float
    discount_pct: Pct | None = None
    attributes: dict[str, str] = {}

    @property
    def sale_price(self) -> float:
        """What a buyer pays today: the price after any discount, in cents precision."""
        if not self.discount_pct:
            return self.price
        return round(self.price * (100 - self.discount_pct) / 100, 2)

    def facts(self) -> dict[str, Any]:
        """What a template and copy grounding may state about the item: its fields and its sale price.

        >>> Item("i1", "Acme Rain Shell", "Acme", "outerwear", 120.0, 25).facts()["sale_price"]
        90.0
        """
        return {**msgspec.structs.asdict(self), "sale_price": self.sale_price}


class Catalog(msgspec.Struct, frozen=True):
    """All items of one generated catalog, in ``item_id`` order."""

    seed: int
    items: tuple[Item, ...]

    def item(self, item_id: str) -> Item:
        """The item with this id; `KeyError` when the catalog has none."""
        prefix, _, number = item_id.partition("-")
        if prefix == "sku" and number.isdigit() and int(number) < len(self.items):
            found = self.items[int(number)]
            if found.item_id == item_id:
                return found
        raise KeyError(f"no item {item_id!r} in this catalog")

    def in_category(self, category: str) -> tuple[Item, ...]:
        """The items of one category, in ``item_id`` order."""
        return tuple(i for i in self.items if i.category == category)

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories that have at least one item, in `CATEGORIES` order."""
        present = {i.category for i in self.items}
        return tuple(c for c in CATEGORIES if c in present)


class CategorySpec(msgspec.Struct, frozen=True):
    """How one category's items are made up: price level, names, attributes."""

    #: Median list price; prices are log-normal around it with spread `price_sigma`.
    median_price: float
    price_sigma: float
    #: Relative share of the catalog.
    share: float
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]
    attributes: dict[str, tuple[str, ...]]


_CLOTH_COLOURS = ("black", "navy", "olive", "sand", "charcoal", "burgundy", "white", "forest green")

CATEGORY_SPECS: dict[str, CategorySpec] = {
    "shoes": CategorySpec(
        85.0,
        0.45,
        1.0,
        ("Nordvik", "Stridewell", "Kestrel", "Alder & Oak"),
        ("Trail", "Urban", "Cloud", "Summit", "Classic", "Featherlight"),
        ("Runner", "Sneaker", "Chelsea Boot", "Loafer", "Sandal", "High-Top", "Hiking Boot"),
        {"colour": _CLOTH_COLOURS, "material": ("leather", "suede", "mesh", "canvas", "recycled knit")},
    ),
    "outerwear": CategorySpec(
        140.0,
        0.5,
        0.8,
        ("Nordvik", "Fjellstad", "Harbour Line", "Kestrel"),
        ("Storm", "Alpine", "Coastal", "Heritage", "Packable", "Insulated"),
        ("Parka", "Rain Jacket", "Puffer", "Trench Coat", "Fleece", "Windbreaker", "Gilet"),
        {"colour": _CLOTH_COLOURS, "material": ("wool", "down", "recycled nylon", "waxed cotton", "fleece")},
    ),
    "electronics": CategorySpec(
        120.0,
        0.9,
        1.0,
        ("Voltra", "Lumen", "Acoustiq", "Pixelwright"),
        ("Wireless", "Noise-Cancelling", "Smart", "Compact", "Pro", "Portable"),
        ("Headphones", "Earbuds", "Speaker", "Smartwatch", "E-Reader", "Charger", "Tablet"),
        {"colour": ("graphite", "silver", "white", "midnight blue"), "warranty": ("1 year", "2 years", "3 years")},
    ),
    "home": CategorySpec(
        45.0,
        0.7,
        1.2,
        ("Hearth & Loom", "Casa Vela", "Birchwood", "Stillroom"),
        ("Linen", "Ceramic", "Handwoven", "Nordic", "Rustic", "Minimal"),
        ("Throw Blanket", "Table Lamp", "Cushion", "Vase", "Dinner Set", "Scented Candle", "Wall Clock"),
        {
            "colour": ("oat", "terracotta", "sage", "ivory", "slate"),
            "material": ("linen", "stoneware", "oak", "glass", "cotton"),
        },
    ),
    "beauty": CategorySpec(
        22.0,
        0.5,
        1.0,
        ("Aurelle", "Dewpoint", "Botanica", "Maison Lys"),
        ("Hydrating", "Radiance", "Gentle", "Overnight", "Vitamin C", "Calming"),
        ("Serum", "Moisturiser", "Lip Balm", "Face Mask", "Shampoo", "Eau de Parfum", "Cleanser"),
        {"skin_type": ("all", "dry", "oily", "sensitive"), "size": ("30 ml", "50 ml", "100 ml", "250 ml")},
    ),
    "sports": CategorySpec(
        55.0,
        0.7,
        0.9,
        ("Kestrel", "Peakform", "Tidewater", "Stridewell"),
        ("Pro", "Grip", "Endurance", "Studio", "All-Weather", "Lightweight"),
        ("Yoga Mat", "Dumbbell Set", "Water Bottle", "Tennis Racket", "Cycling Gloves", "Resistance Bands", "Backpack"),
        {
            "colour": ("black", "coral", "teal", "grey", "lime"),
            "material": ("rubber", "steel", "nylon", "cork", "neoprene"),
        },
    ),
    "books": CategorySpec(
        16.0,
        0.35,
        1.2,
        ("Harbour Press", "Lantern Books", "Quillstone", "Northlight"),
        ("Midnight", "Quiet", "Wild", "Forgotten", "Everyday", "Complete"),
        ("Cookbook", "Thriller", "Field Guide", "Novel", "Atlas", "Memoir", "Poetry Collection"),
        {"format": ("hardback", "paperback", "audiobook"), "language": ("English", "French", "German", "Spanish")},
    ),
    "grocery": CategorySpec(
        6.0,
        0.6,
        1.1,
        ("Green Larder", "Maple & Mill", "Oliveto", "Bean Collective"),
        ("Organic", "Single-Origin", "Stone-Ground", "Cold-Pressed", "Artisan", "Fair-Trade"),
        ("Olive Oil", "Coffee Beans", "Dark Chocolate", "Granola", "Green Tea", "Pasta", "Honey"),
        {
            "diet": ("vegan", "vegetarian", "gluten-free", "none"),
            "origin": ("Italy", "Colombia", "Kenya", "Spain", "local"),
        },
    ),
}

#: The categories of the catalog, in a fixed order.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_SPECS)

#: Seed of the catalog everything shares by default (simulator, copy generation),
#: so item ids mean the same product whatever seed a simulation runs with.
CATALOG_SEED = 1

# Share of items on sale, and the discounts shops actually use.
DISCOUNTED_SHARE = 0.3
DISCOUNTS_PCT = (10, 15, 20, 25, 30, 40, 50)


def build_catalog(seed: int, n_items: int = 400) -> Catalog:
    """Generate a catalog of ``n_items`` items; the same seed gives the same catalog.

    Parameters
    ----------
    seed
        Seed of the catalog's own random stream (independent of any simulator's).
    n_items
        Number of items; categories get them in proportion to their ``share``.

    Returns
    -------
    Catalog
        Items ``sku-000000`` .. ``sku-{n_items-1:06d}``.

    Examples
    --------
    >>> items = build_catalog(seed=1, n_items=200).items
    >>> books = [i.price for i in items if i.category == "books"]
    >>> phones = [i.price for i in items if i.category == "electronics"]
    >>> sum(books) / len(books) < sum(phones) / len(phones)
    True
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    rng = random.Random(f"catalog-{seed}")
    shares = [spec.share for spec in CATEGORY_SPECS.values()]
    categories = rng.choices(CATEGORIES, weights=shares, k=n_items)
    # Every category appears at least once when there is room for it, so no
    # profile is left preferring an empty shelf.
    if n_items >= len(CATEGORIES):
        categories[: len(CATEGORIES)] = CATEGORIES
        rng.shuffle(categories)
    items = tuple(_make_item(rng, number, category) for number, category in enumerate(categories))
    return Catalog(seed=seed, items=items)


def _make_item(rng: random.Random, number: int, category: str) -> Item:
    spec = CATEGORY_SPECS[category]
    brand = rng.choice(spec.brands)
    title = f"{brand} {rng.choice(spec.adjectives)} {rng.choice(spec.nouns)}"
    price = _shop_price(spec.median_price * math.exp(rng.gauss(0.0, spec.price_sigma)))
    discount = rng.choice(DISCOUNTS_PCT) if rng.random() < DISCOUNTED_SHARE else None
    attributes = {name: rng.choice(values) for name, values in spec.attributes.items()}
    return Item(
        item_id=f"sku-{number:06d}",
        title=title,
        brand=brand,
        category=category,
        price=price,
        discount_pct=discount,
        attributes=attributes,
    )


def _shop_price(raw: float) -> float:
    """Round to a price a shop would print: 4.49, 19.99, 129.00."""
    if raw < 10:
        return max(0.99, round(round(raw * 2) / 2 - 0.01, 2))
    if raw < 100:
        return round(round(raw) - 0.01, 2)
    return float(round(raw / 5) * 5)
