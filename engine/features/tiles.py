"""Per-user time tiles: the state the flow keeps and the online store holds.

Windowed counts are kept the way Tecton tiles them: each user has three small
rings of time tiles (1-minute tiles for the 5-minute window, 5-minute tiles for
the hour, 1-hour tiles for the day), indexed by *event* time. The flow only ever
adds to tiles; the window is finished at read time by `finish`, so a user who
went quiet ten minutes ago reads ``clicks_5m == 0`` without any write.

Window semantics (what the brute-force test pins): an event at time ``t`` counts
in a window of ``n`` tiles of width ``w`` read at ``now`` when
``now // w - n < t // w <= now // w``. So ``*_5m`` covers the current minute and
the four before it, ``*_1h`` the current five minutes and the eleven before,
``*_24h`` the current hour and the 23 before: windows slide one tile at a time.

Per user, an event older than the user's newest event time minus the allowed
lateness is counted in ``late_events`` and nowhere else (a re-sent copy of an
old event included); the others are de-duplicated by ``event_id``. Everything else is order-independent: the
same events in any order within the lateness give the same features.

Examples
--------
>>> from engine.features.events import Event
>>> t0 = 1_700_000_000_000
>>> state = UserActivity(lateness_ms=60_000, half_life_s=3600)
>>> state.update(Event("e1", "click", "u1", t0, category="shoes"))
True
>>> state.update(Event("e1", "click", "u1", t0, category="shoes"))
False
>>> row = finish(state.packed(), now_ms=t0 + 60_000)
>>> row["clicks_5m"], row["clicks_1h"], row["top_category"]
(1, 1, 'shoes')
>>> finish(state.packed(), now_ms=t0 + 10 * 60_000)["clicks_5m"]
0
"""

from __future__ import annotations

import msgspec

from engine.features.events import Event

# (feature suffix, tile width ms, tiles kept)
GRANULARITIES: tuple[tuple[str, int, int], ...] = (
    ("5m", 60_000, 5),
    ("1h", 300_000, 12),
    ("24h", 3_600_000, 24),
)
# Metrics kept in every tile, in this order.
METRICS = ("page_views", "clicks", "add_to_carts", "purchases", "impressions", "spend")
_METRIC_OF_TYPE = {"page_view": 0, "click": 1, "add_to_cart": 2, "purchase": 3, "impression": 4}
_SPEND = 5
_M = len(METRICS)
_MINUTE = GRANULARITIES[0][1]  # the finest tile; coarser widths are multiples of it

# How much each kind of event says about interest in its category.
AFFINITY_WEIGHT = {"page_view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
MAX_CATEGORIES = 16

LAYOUT_VERSION = 1
# The online encoding is a msgpack array: this header, then the three rings (in
# GRANULARITIES order, newest tile first, METRICS per tile), then the affinity
# map {category: score as of affinity_ref_ms}. Counts are ints, so a mostly
# empty ring packs to about one byte a slot.
HEADER = (
    "layout_version",
    "newest_ms",
    "lifetime_events",
    "lifetime_spend",
    "late_events",
    "duplicate_events",
    "half_life_s",
    "affinity_ref_ms",
)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple).decode

#: The finished features, as Feast serves them (name, kind).
FEATURES: tuple[tuple[str, str], ...] = (
    *((f"{m}_{g}", "int") for g, _, _ in GRANULARITIES for m in METRICS[:4]),
    ("impressions_24h", "int"),
    ("spend_24h", "float"),
    ("ctr_24h", "float"),
    ("seconds_since_last_event", "float"),
    ("top_category", "str"),
    ("top_category_affinity", "float"),
    ("lifetime_events", "int"),
    ("lifetime_spend", "float"),
    ("late_events", "int"),
)


class UserActivity:
    """The flow's state for one user: rings of tiles, lifetime totals, affinity.

    Parameters
    ----------
    lateness_ms
        How far behind the user's newest event time an event may arrive and
        still be counted.
    half_life_s
        Half-life of the category affinity decay, in seconds.
    """

    __slots__ = (
        "lateness_ms",
        "half_life_s",
        "newest_ms",
        "lifetime_events",
        "lifetime_spend",
        "late_events",
        "duplicate_events",
        "rings",
        "affinity",
        "affinity_ref_ms",
        "seen",
        "_prune_at",
    )

    def __init__(self, lateness_ms: int = 300_000, half_life_s: float = 86_400.0):
        if lateness_ms < 0:
            raise ValueError(f"lateness_ms must be >= 0, got {lateness_ms}")
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.lateness_ms = lateness_ms
        self.half_life_s = half_life_s
        self.newest_ms = -1
        self.lifetime_events = 0
        self.lifetime_spend = 0.0
        self.late_events = 0
        self.duplicate_events = 0
        self.rings = [[0] * (n * _M) for _, _, n in GRANULARITIES]
        self.affinity: dict[str, float] = {}
        self.affinity_ref_ms = -1
        self.seen: dict[str, int] = {}
        self._prune_at = 64

    # Bytewax pickles state into recovery snapshots.
    def __getstate__(self):
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, values):
        for slot, value in zip(self.__slots__, values):
            setattr(self, slot, value)

    def update(self, event: Event) -> bool:
        """Fold one event in; return whether it changed the features.

        Duplicates change nothing; late events only bump ``late_events``.
        """
        ts = event.ts
        newest = self.newest_ms
        if ts < newest - self.lateness_ms:
            self.late_events += 1
            return True
        seen = self.seen
        if event.event_id in seen:
            self.duplicate_events += 1
            return False
        seen[event.event_id] = ts
        if ts > newest:
            if ts // _MINUTE != newest // _MINUTE or newest < 0:
                self._shift_rings(ts)
            self.newest_ms = newest = ts
        kind = event.type
        metric = _METRIC_OF_TYPE.get(kind)
        if metric is not None:
            spend = event.value if kind == "purchase" and event.value else 0.0
            if ts // _MINUTE == newest // _MINUTE:
                # The common case: the event is in every ring's newest tile.
                for ring in self.rings:
                    ring[metric] += 1
                    if spend:
                        ring[_SPEND] += spend
            else:
                self._add_to_older_tiles(ts, metric, spend)
        self.lifetime_events += 1
        if kind == "purchase" and event.value:
            self.lifetime_spend += event.value
        if event.category is not None:
            weight = AFFINITY_WEIGHT.get(kind)
            if weight is not None:
                self._add_affinity(event.category, weight, ts)
        if len(seen) >= self._prune_at:
            self._prune_seen()
        return True

    def _shift_rings(self, ts: int) -> None:
        """Age every ring so that its first tile holds ``ts``."""
        newest = self.newest_ms
        for (_, width, n), ring in zip(GRANULARITIES, self.rings):
            shift = ts // width - newest // width
            if newest < 0 or shift >= n:
                ring[:] = [0] * (n * _M)
            elif shift > 0:
                ring[:0] = [0] * (shift * _M)
                del ring[n * _M :]

    def _add_to_older_tiles(self, ts: int, metric: int, spend: float) -> None:
        newest = self.newest_ms
        for (_, width, n), ring in zip(GRANULARITIES, self.rings):
            age = newest // width - ts // width
            if age < n:
                base = age * _M
                ring[base + metric] += 1
                if spend:
                    ring[base + _SPEND] += spend

    def _add_affinity(self, category: str, weight: float, ts: int) -> None:
        # Scores are held relative to affinity_ref_ms and re-based once the
        # newest event is a half-life past it, so numbers stay small.
        half_life_ms = self.half_life_s * 1000.0
        if self.affinity_ref_ms < 0:
            self.affinity_ref_ms = ts
        elif self.newest_ms - self.affinity_ref_ms > half_life_ms:
            factor = 2.0 ** (-(self.newest_ms - self.affinity_ref_ms) / half_life_ms)
            self.affinity = {c: s * factor for c, s in self.affinity.items()}
            self.affinity_ref_ms = self.newest_ms
        gain = weight * 2.0 ** ((ts - self.affinity_ref_ms) / half_life_ms)
        self.affinity[category] = self.affinity.get(category, 0.0) + gain
        if len(self.affinity) > MAX_CATEGORIES:
            weakest = min(self.affinity, key=self.affinity.__getitem__)
            del self.affinity[weakest]

    def _prune_seen(self) -> None:
        # Ids older than the lateness horizon can only come back as late events,
        # which are rejected before the duplicate check matters.
        horizon = self.newest_ms - self.lateness_ms
        self.seen = {e: t for e, t in self.seen.items() if t >= horizon}
        self._prune_at = max(64, 2 * len(self.seen))

    def packed(self) -> bytes:
        """The online-store encoding of this state (see `HEADER`)."""
        return _encode(
            (
                LAYOUT_VERSION,
                self.newest_ms,
                self.lifetime_events,
                self.lifetime_spend,
                self.late_events,
                self.duplicate_events,
                self.half_life_s,
                self.affinity_ref_ms,
                *self.rings,
                self.affinity,
            )
        )


def finish(packed: bytes | None, now_ms: int) -> dict[str, int | float | str | None]:
    """Finish the windows of one packed state as of ``now_ms``.

    A user with no state reads zero counts and ``None`` where nothing is known;
    a state in another layout is a `ValueError`.
    """
    if not packed:
        return _EMPTY.copy()
    try:
        row = _decode(packed)
    except msgspec.DecodeError:
        row = ()
    if len(row) != len(HEADER) + len(GRANULARITIES) + 1 or row[0] != LAYOUT_VERSION:
        raise ValueError(
            f"user_activity state is not layout {LAYOUT_VERSION} ({len(packed)} bytes): "
            "re-run the flow with this version of Tailor"
        )
    _, newest_ms, lifetime_events, lifetime_spend, late, _, half_life_s, affinity_ref_ms = row[: len(HEADER)]
    out: dict[str, int | float | str | None] = {}
    for (name, width, n), ring in zip(GRANULARITIES, row[len(HEADER) :]):
        # Tiles are aged against now; reading before the newest event counts all.
        age0 = max(0, now_ms // width - newest_ms // width)
        live = ring[: max(0, n - age0) * _M]
        sums = [sum(live[m::_M]) for m in range(_M)]
        for m in range(4):
            out[f"{METRICS[m]}_{name}"] = sums[m]
        if name == "24h":
            out["impressions_24h"] = sums[4]
            out["spend_24h"] = round(float(sums[_SPEND]), 6)
            out["ctr_24h"] = sums[1] / sums[4] if sums[4] else 0.0
    out["seconds_since_last_event"] = max(0.0, (now_ms - newest_ms) / 1000.0)
    affinity = row[-1]
    if affinity:
        top = max(affinity, key=affinity.__getitem__)
        out["top_category"] = top
        out["top_category_affinity"] = affinity[top] * 2.0 ** (-(now_ms - affinity_ref_ms) / (half_life_s * 1000.0))
    else:
        out["top_category"] = None
        out["top_category_affinity"] = 0.0
    out["lifetime_events"] = lifetime_events
    out["lifetime_spend"] = round(float(lifetime_spend), 6)
    out["late_events"] = late
    return out


_EMPTY: dict[str, int | float | str | None] = {
    name: (0 if kind == "int" else 0.0 if kind == "float" else None) for name, kind in FEATURES
}
_EMPTY["seconds_since_last_event"] = None
