"""Tile and window arithmetic, checked against a brute-force recomputation."""

import random

import pytest

from engine.features.events import Event
from engine.features.tiles import GRANULARITIES, UserActivity, finish

T0 = 1_750_000_000_000
TYPES = ["page_view", "click", "add_to_cart", "purchase", "impression", "app_open"]
INDEX = {"page_view": "page_views", "click": "clicks", "add_to_cart": "add_to_carts", "purchase": "purchases"}


def brute_force(events, now_ms, lateness_ms):
    """Recompute the features from the raw events in arrival order."""
    seen, newest, accepted, late = set(), -1, [], 0
    for e in events:
        if newest >= 0 and e.ts < newest - lateness_ms:
            late += 1
            continue
        if e.event_id in seen:
            continue
        seen.add(e.event_id)
        newest = max(newest, e.ts)
        accepted.append(e)
    out = {"late_events": late, "lifetime_events": len(accepted)}
    for name, width, n in GRANULARITIES:
        inside = [e for e in accepted if now_ms // width - n < e.ts // width <= now_ms // width]
        for kind, metric in INDEX.items():
            out[f"{metric}_{name}"] = sum(e.type == kind for e in inside)
        if name == "24h":
            out["impressions_24h"] = sum(e.type == "impression" for e in inside)
            out["spend_24h"] = sum(e.value for e in inside if e.type == "purchase")
    out["lifetime_spend"] = sum(e.value for e in accepted if e.type == "purchase")
    out["seconds_since_last_event"] = (now_ms - newest) / 1000
    return out


def random_events(rng, n, span_ms, jitter_ms):
    events, t = [], T0
    for i in range(n):
        t += rng.randrange(span_ms // n * 2 + 1)
        kind = rng.choice(TYPES)
        ts = max(T0, t - rng.randrange(jitter_ms + 1))  # out of order by up to jitter
        value = round(rng.uniform(1, 200), 2) if kind == "purchase" else None
        if events and rng.random() < 0.05:  # a producer re-sends an earlier event
            events.append(rng.choice(events))
            continue
        events.append(Event(f"e{i}", kind, "u", ts, category=rng.choice("abc"), value=value))
    return events


@pytest.mark.parametrize("seed", range(40))
def test_windows_match_brute_force(seed):
    rng = random.Random(seed)
    span = rng.choice([120_000, 3_600_000, 2 * 86_400_000])
    events = random_events(rng, rng.randrange(1, 400), span, jitter_ms=rng.choice([0, 30_000, 900_000]))
    lateness = rng.choice([0, 60_000, 600_000])
    state = UserActivity(lateness_ms=lateness, half_life_s=3600)
    for e in events:
        state.update(e)
    newest = state.newest_ms
    for now in (newest, newest + rng.randrange(1, 400_000), newest + rng.randrange(1, 90_000_000)):
        got = finish(state.packed(), now_ms=now)
        want = brute_force(events, now, lateness)
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (key, now - newest)


def test_idle_user_reads_zero_clicks_5m():
    state = UserActivity()
    for i in range(10):
        state.update(Event(f"e{i}", "click", "u", T0 + i * 1000))
    assert finish(state.packed(), now_ms=T0 + 9000)["clicks_5m"] == 10
    after_ten_minutes = finish(state.packed(), now_ms=T0 + 9000 + 600_000)
    assert after_ten_minutes["clicks_5m"] == 0
    assert after_ten_minutes["clicks_1h"] == 10
    assert after_ten_minutes["seconds_since_last_event"] == 600.0


def test_duplicates_counted_once_and_late_events_not_merged():
    state = UserActivity(lateness_ms=60_000)
    assert state.update(Event("a", "click", "u", T0))
    assert not state.update(Event("a", "click", "u", T0))
    state.update(Event("b", "click", "u", T0 + 120_000))
    state.update(Event("c", "click", "u", T0 + 90_000))  # 30 s late: allowed
    state.update(Event("d", "click", "u", T0 + 30_000))  # 90 s late: too late
    row = finish(state.packed(), now_ms=T0 + 120_000)
    assert row["clicks_1h"] == 3
    assert row["late_events"] == 1
    assert state.duplicate_events == 1


def test_out_of_order_within_lateness_lands_in_its_own_tile():
    state = UserActivity(lateness_ms=3_600_000)
    state.update(Event("new", "page_view", "u", T0 + 30 * 60_000))
    state.update(Event("old", "page_view", "u", T0))  # 30 min earlier
    row = finish(state.packed(), now_ms=T0 + 30 * 60_000)
    assert row["page_views_5m"] == 1  # the old one is not in the last 5 minutes
    assert row["page_views_1h"] == 2


def test_ctr_and_affinity():
    state = UserActivity(half_life_s=3600)
    for i in range(4):
        state.update(Event(f"i{i}", "impression", "u", T0 + i))
    state.update(Event("c", "click", "u", T0 + 10, category="shoes"))
    state.update(Event("p", "page_view", "u", T0 + 20, category="hats"))
    row = finish(state.packed(), now_ms=T0 + 20 + 3_600_000)
    assert row["ctr_24h"] == 0.25
    assert row["top_category"] == "shoes"
    assert row["top_category_affinity"] == pytest.approx(1.0, rel=1e-5)  # weight 2, one half-life


def test_unknown_user_reads_zeros():
    row = finish(None, now_ms=T0)
    assert row["clicks_5m"] == 0 and row["top_category"] is None


@pytest.mark.parametrize("packed", [b"\x93\x02\x00\x00", b"not msgpack at all", b"\xc1"])
def test_foreign_layout_is_a_clear_error(packed):
    with pytest.raises(ValueError, match="re-run the flow"):
        finish(packed, now_ms=T0)


def test_state_survives_pickling():
    import pickle

    state = UserActivity(lateness_ms=1000)
    state.update(Event("a", "purchase", "u", T0, value=5.0, category="x"))
    clone = pickle.loads(pickle.dumps(state))
    assert clone.packed() == state.packed()
    assert not clone.update(Event("a", "purchase", "u", T0, value=5.0))


def test_bad_parameters_rejected():
    with pytest.raises(ValueError):
        UserActivity(lateness_ms=-1)
    with pytest.raises(ValueError):
        UserActivity(half_life_s=0)
