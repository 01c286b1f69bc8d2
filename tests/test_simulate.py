"""The catalog and the simulator: deterministic, valid, and behaviourally distinct profiles."""

from collections import Counter, defaultdict

import pytest

from engine.catalog import CATEGORIES, CATEGORY_SPECS, build_catalog
from engine.events import EVENT_TYPES, decode_event, encode_event
from engine.simulate import PEAK_HOUR_UTC, PROFILES, Simulator

START_MS = 1_767_225_600_000  # 2026-01-01T00:00Z


@pytest.fixture(scope="module")
def sim():
    simulator = Simulator(users=400, seed=3, start_ms=START_MS)
    simulator.sample = list(simulator.events(60_000))
    return simulator


@pytest.fixture(scope="module")
def by_profile(sim):
    """Per profile: event type counts and purchased values."""
    counts = defaultdict(Counter)
    spend = defaultdict(list)
    for e in sim.sample:
        profile = sim.profile_of(e.user_id)
        counts[profile][e.type] += 1
        if e.type == "purchase":
            spend[profile].append(e.value)
    return counts, spend


# -- catalog ----------------------------------------------------------------


def test_catalog_is_deterministic_and_complete():
    catalog = build_catalog(seed=5)
    assert catalog == build_catalog(seed=5)
    assert catalog != build_catalog(seed=6)
    assert len(catalog.items) == 400
    assert len({i.item_id for i in catalog.items}) == 400
    assert set(catalog.categories) == set(CATEGORIES)
    assert len(CATEGORIES) == 8


def test_catalog_items_are_well_formed():
    catalog = build_catalog(seed=5)
    for item in catalog.items:
        assert item.price > 0
        assert item.title.startswith(item.brand)
        assert item.discount_pct is None or 0 < item.discount_pct < 100
        assert set(item.attributes) == set(CATEGORY_SPECS[item.category].attributes)
        assert catalog.item(item.item_id) is item
    discounted = sum(i.discount_pct is not None for i in catalog.items) / len(catalog.items)
    assert 0.15 < discounted < 0.45
    with pytest.raises(KeyError):
        catalog.item("sku-999999")


def test_category_price_levels_differ():
    catalog = build_catalog(seed=5)

    def median_price(category):
        prices = sorted(i.price for i in catalog.in_category(category))
        return prices[len(prices) // 2]

    assert median_price("grocery") < median_price("books") < median_price("shoes") < median_price("outerwear")


# -- simulator: the stream ----------------------------------------------------


def test_same_seed_same_events_other_seed_other_events(sim):
    again = list(Simulator(users=400, seed=3, start_ms=START_MS).events(2_000))
    assert again == sim.sample[:2_000]
    other = list(Simulator(users=400, seed=4, start_ms=START_MS).events(2_000))
    assert [(e.user_id, e.type, e.ts) for e in other] != [(e.user_id, e.type, e.ts) for e in again]


def test_events_continue_the_stream():
    simulator = Simulator(users=50, seed=3, start_ms=START_MS)
    first, second = list(simulator.events(100)), list(simulator.events(100))
    assert first + second == list(Simulator(users=50, seed=3, start_ms=START_MS).events(200))


def test_every_event_round_trips_through_the_decoder(sim):
    for e in sim.sample:
        assert decode_event(encode_event(e)) == e


def test_event_ids_are_unique_and_include_the_run_start(sim):
    ids = [e.event_id for e in sim.sample]
    assert len(set(ids)) == len(ids)
    rerun = next(iter(Simulator(users=400, seed=3, start_ms=START_MS + 60_000)))
    assert rerun.event_id != sim.sample[0].event_id


def test_events_are_in_time_order_globally_and_per_user(sim):
    ts = [e.ts for e in sim.sample]
    assert ts == sorted(ts)
    assert ts[0] >= START_MS
    last_seen = {}
    for e in sim.sample:
        assert e.ts >= last_seen.get(e.user_id, 0)
        last_seen[e.user_id] = e.ts


def test_user_ids_and_types(sim):
    assert {e.type for e in sim.sample} == set(EVENT_TYPES) - {"conversion"}
    assert all(e.user_id in sim.users for e in sim.sample[:1000])
    assert sim.users[42] == "u000042"
    with pytest.raises(KeyError):
        sim.profile_of("u999999")


def test_clicks_follow_impressions_and_purchases_follow_carts(sim):
    shown, carted = set(), set()
    for e in sim.sample:
        key = (e.user_id, e.item_id)
        if e.type == "impression":
            shown.add(key)
        elif e.type == "click":
            assert key in shown, e
        elif e.type == "add_to_cart":
            carted.add(key)
        elif e.type == "purchase":
            assert key in carted, e


def test_purchase_value_is_the_sale_price(sim):
    purchases = [e for e in sim.sample if e.type == "purchase"]
    assert purchases
    for e in purchases:
        item = sim.catalog.item(e.item_id)
        assert e.value == pytest.approx(item.price * (1 - (item.discount_pct or 0) / 100), abs=0.01)
        assert e.category == item.category


def test_diurnal_rhythm_is_visible(sim):
    per_hour = Counter((e.ts // 3_600_000) % 24 for e in sim.sample)
    evening = sum(per_hour[(PEAK_HOUR_UTC + d) % 24] for d in range(-2, 3))
    morning = sum(per_hour[(PEAK_HOUR_UTC + 12 + d) % 24] for d in range(-2, 3))
    assert evening > 2 * morning


# -- simulator: profiles behave differently -----------------------------------


def test_every_profile_is_present(sim):
    present = Counter(sim.profile_of(u) for u in sim.users)
    assert set(present) == set(PROFILES)
    for name, profile in PROFILES.items():
        assert abs(present[name] / len(sim.users) - profile.share) < 0.08


def test_window_shoppers_rarely_buy_loyal_spenders_often(by_profile):
    counts, _ = by_profile

    def purchases_per_view(profile):
        return counts[profile]["purchase"] / counts[profile]["page_view"]

    assert purchases_per_view("window_shopper") * 10 < purchases_per_view("loyal_high_spender")
    assert purchases_per_view("window_shopper") < purchases_per_view("bargain_hunter")


def test_click_through_rate_differs_by_profile(by_profile):
    counts, _ = by_profile
    ctr = {p: c["click"] / c["impression"] for p, c in counts.items()}
    assert ctr["loyal_high_spender"] > 1.5 * ctr["bargain_hunter"]
    assert ctr["bargain_hunter"] > ctr["email_driven"]


def test_high_spenders_spend_more_bargain_hunters_buy_discounts(sim, by_profile):
    _, spend = by_profile

    def mean(values):
        return sum(values) / len(values)

    assert mean(spend["loyal_high_spender"]) > 2 * mean(spend["bargain_hunter"])
    bought = [sim.catalog.item(e.item_id) for e in sim.sample
              if e.type == "purchase" and sim.profile_of(e.user_id) == "bargain_hunter"]
    assert sum(i.discount_pct is not None for i in bought) / len(bought) > 0.5


def test_email_brings_email_driven_users(by_profile):
    counts, _ = by_profile

    def email_share(profile):
        c = counts[profile]
        return c["email_open"] / (c["email_open"] + c["app_open"])

    assert email_share("email_driven") > 0.7
    assert email_share("bargain_hunter") > 2 * email_share("loyal_high_spender")
    assert email_share("window_shopper") < 0.2


def test_loyal_spenders_stick_to_few_categories(sim):
    categories = defaultdict(set)
    for e in sim.sample:
        if e.type == "purchase":
            categories[e.user_id].add(e.category)
    loyal = [len(c) for u, c in categories.items() if sim.profile_of(u) == "loyal_high_spender"]
    assert loyal and max(loyal) <= 4


def test_invalid_user_count_is_rejected():
    with pytest.raises(ValueError, match="users"):
        Simulator(users=0)
