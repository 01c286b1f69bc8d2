"""The catalog and the simulator: deterministic, valid, and behaviourally distinct profiles."""

import hashlib
from collections import Counter, defaultdict

import msgspec
import pytest

from cli.main import build_parser
from config.settings import Settings
from engine.content.catalog import CATEGORIES, CATEGORY_SPECS, build_catalog
from engine.features.events import EVENT_TYPES, Event, decode_event, encode_event
from jobs.produce import run_simulate
from jobs.simulator import (
    DAY_MS,
    DEFAULT_DRIFT_SHARES,
    PEAK_HOUR_UTC,
    PROFILES,
    SHAPES,
    Drift,
    Simulator,
)

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
    assert {e.type for e in sim.sample} == set(EVENT_TYPES) - {"conversion", "consent"}
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
    bought = [
        sim.catalog.item(e.item_id)
        for e in sim.sample
        if e.type == "purchase" and sim.profile_of(e.user_id) == "bargain_hunter"
    ]
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


# -- simulator: drift ---------------------------------------------------------


def email_share(events):
    """Share of session starts that are an opened email."""
    starts = Counter(e.type for e in events if e.type in ("email_open", "app_open"))
    return starts["email_open"] / (starts["email_open"] + starts["app_open"])


def test_no_drift_and_an_unreached_drift_leave_the_stream_as_it_was(sim):
    assert list(Simulator(users=400, seed=3, start_ms=START_MS, drift=None).events(5_000)) == sim.sample[:5_000]
    late = Simulator(
        users=400, seed=3, start_ms=START_MS, drift=Drift(at_event=5_000, shares=DEFAULT_DRIFT_SHARES, price_factor=2.0)
    )
    assert list(late.events(5_000)) == sim.sample[:5_000]
    assert not late.drifted
    assert not sim.drifted


def test_events_before_the_drift_are_those_of_the_undrifted_stream(sim):
    drifting = Simulator(users=400, seed=3, start_ms=START_MS, drift=Drift(at_event=3_000, shares={"email_driven": 1}))
    before = list(drifting.events(3_000))
    assert before == sim.sample[:3_000]
    assert not drifting.drifted
    after = list(drifting.events(3_000))
    assert drifting.drifted
    assert after != sim.sample[3_000:6_000]
    assert [e.event_id for e in after] == [e.event_id for e in sim.sample[3_000:6_000]]
    ts = [e.ts for e in before + after]
    assert ts == sorted(ts)


def test_drift_moves_the_profile_mix_to_the_new_shares():
    drifting = Simulator(
        users=4_000, seed=5, start_ms=START_MS, drift=Drift(at_event=1_000, shares=DEFAULT_DRIFT_SHARES)
    )

    def mix():
        return Counter(drifting.profile_of(u) for u in drifting.users)

    list(drifting.events(1_000))
    old = mix()
    for name, profile in PROFILES.items():
        assert abs(old[name] / 4_000 - profile.share) < 0.03
    list(drifting.events(1))
    new = mix()
    for name, target in DEFAULT_DRIFT_SHARES.items():
        assert abs(new[name] / 4_000 - target) < 0.03, (name, new)


def test_drift_is_deterministic():
    def run():
        return list(
            Simulator(
                users=100,
                seed=2,
                start_ms=START_MS,
                drift=Drift(at_event=500, shares=DEFAULT_DRIFT_SHARES, price_factor=0.8),
            ).events(3_000)
        )

    assert run() == run()


def test_behaviour_after_the_drift_follows_the_new_mix():
    n = 30_000
    drifting = Simulator(users=400, seed=3, start_ms=START_MS, drift=Drift(at_event=n, shares=DEFAULT_DRIFT_SHARES))
    before, after = list(drifting.events(n)), list(drifting.events(n))
    # About 0.24 of sessions start from an email under the profiles' own shares,
    # about 0.46 once email-driven users are two in three.
    assert email_share(before) < 0.30
    assert email_share(after) > email_share(before) + 0.12
    # Every event after the drift is by a user under their drawn profile; those
    # now email-driven mostly come by email (a session under way may finish first).
    email_driven = [e for e in after if drifting.profile_of(e.user_id) == "email_driven"]
    assert email_share(email_driven) > 0.7


def test_price_factor_scales_purchases_from_the_drift_on_only(sim):
    at = 20_000
    drifting = Simulator(users=400, seed=3, start_ms=START_MS, drift=Drift(at_event=at, price_factor=1.5))
    events = list(drifting.events(40_000))
    assert all(drifting.profile_of(u) == sim.profile_of(u) for u in sim.users)
    n_before = n_after = 0
    for i, (drifted, plain) in enumerate(zip(events, sim.sample)):
        if plain.type != "purchase":
            assert drifted == plain
        elif i < at:
            assert drifted == plain
            n_before += 1
        else:
            assert drifted.value == round(plain.value * 1.5, 2) != plain.value
            assert drifted == Event(**{**msgspec.structs.asdict(plain), "value": drifted.value})
            n_after += 1
    assert n_before > 50 and n_after > 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"at_event": -1, "shares": {"email_driven": 1}}, "at_event"),
        ({"at_event": 1.5, "shares": {"email_driven": 1}}, "at_event"),
        ({"at_event": 10, "shares": {"big_spender": 1}}, "unknown profile"),
        ({"at_event": 10, "shares": {"email_driven": -0.1, "window_shopper": 1}}, ">= 0"),
        ({"at_event": 10, "shares": {"email_driven": float("nan")}}, ">= 0"),
        ({"at_event": 10, "shares": {"email_driven": 0, "window_shopper": 0}}, "all be 0"),
        ({"at_event": 10, "shares": {}}, "all be 0"),
        ({"at_event": 10, "price_factor": 0}, "price_factor"),
        ({"at_event": 10, "price_factor": -2.0}, "price_factor"),
        ({"at_event": 10, "price_factor": float("inf")}, "price_factor"),
        ({"at_event": 10}, "changes nothing"),
    ],
)
def test_bad_drift_parameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Drift(**kwargs)


def test_drift_shares_are_normalised_and_the_callers_dict_kept():
    mix = {"email_driven": 3.0, "window_shopper": 1.0}
    drift = Drift(at_event=0, shares=mix)
    assert drift.shares == {"email_driven": 0.75, "window_shopper": 0.25}
    assert mix == {"email_driven": 3.0, "window_shopper": 1.0}


# -- tailor simulate --drift-at ------------------------------------------------


def simulate(*argv):
    return run_simulate(Settings.of(brokers=""), build_parser().parse_args(["simulate", *argv]))


def test_cli_drift_writes_the_drifted_stream(tmp_path, capsys):
    out = tmp_path / "drift.jsonl"
    code = simulate(
        "--events",
        "2000",
        "--users",
        "50",
        "--start",
        "2026-01-01T00:00:00Z",
        "--out",
        str(out),
        "--drift-at",
        "500",
        "--drift-mix",
        "email_driven=0.5, window_shopper=0.5",
        "--drift-price-factor",
        "1.25",
    )
    assert code == 0
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    drift = Drift(at_event=500, shares={"email_driven": 0.5, "window_shopper": 0.5}, price_factor=1.25)
    assert events == list(Simulator(users=50, seed=7, start_ms=START_MS, drift=drift).events(2000))
    assert events[:500] == list(Simulator(users=50, seed=7, start_ms=START_MS).events(500))
    err = capsys.readouterr().err
    assert "drift injected at event 500" in err and "prices x1.25" in err


def test_cli_drift_at_alone_uses_the_default_mix(tmp_path, capsys):
    out = tmp_path / "drift.jsonl"
    assert (
        simulate(
            "--events",
            "300",
            "--users",
            "20",
            "--start",
            "2026-01-01T00:00:00Z",
            "--out",
            str(out),
            "--drift-at",
            "100",
        )
        == 0
    )
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    drift = Drift(at_event=100, shares=DEFAULT_DRIFT_SHARES)
    assert events == list(Simulator(users=20, seed=7, start_ms=START_MS, drift=drift).events(300))
    assert "drift injected at event 100 (profile mix bargain_hunter 0.10" in capsys.readouterr().err


def test_cli_drift_of_prices_only_and_a_drift_not_reached(tmp_path, capsys):
    out = tmp_path / "drift.jsonl"
    assert (
        simulate(
            "--events",
            "300",
            "--users",
            "20",
            "--start",
            "2026-01-01T00:00:00Z",
            "--out",
            str(out),
            "--drift-at",
            "1000",
            "--drift-mix",
            "none",
            "--drift-price-factor",
            "2",
        )
        == 0
    )
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    assert events == list(Simulator(users=20, seed=7, start_ms=START_MS).events(300))
    assert "drift at event 1000 not reached" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--drift-at", "-1"],
        ["--drift-at", "ten"],
        ["--drift-at", "10", "--drift-mix", "big_spender=1"],
        ["--drift-at", "10", "--drift-mix", "email_driven"],
        ["--drift-at", "10", "--drift-mix", "email_driven=lots"],
        ["--drift-at", "10", "--drift-mix", "email_driven=1,email_driven=2"],
        ["--drift-at", "10", "--drift-mix", "email_driven=0"],
        ["--drift-at", "10", "--drift-price-factor", "0"],
        ["--drift-at", "10", "--drift-price-factor", "nan"],
    ],
)
def test_cli_rejects_bad_drift_options(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["simulate", *argv])
    assert exit_.value.code == 2
    assert "--drift-" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--drift-mix", "email_driven=1"], "need --drift-at"),
        (["--drift-price-factor", "1.1"], "need --drift-at"),
        (["--drift-at", "10", "--drift-mix", "none"], "--drift-price-factor"),
    ],
)
def test_cli_drift_options_that_do_not_add_up_say_why(argv, message, tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    assert simulate("--events", "10", "--out", str(out), *argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# -- simulator: shapes of traffic ---------------------------------------------

SESSION_KINDS = set(EVENT_TYPES) - {"conversion", "consent"}
SHAPE_KINDS = {
    "sessions": SESSION_KINDS,
    "clicks_purchases": {"click", "purchase"},
    "ratings": {"click", "purchase"},
    "years": SESSION_KINDS,
}


def stream_digest(events):
    digest = hashlib.sha256()
    for e in events:
        digest.update(encode_event(e) + b"\n")
    return digest.hexdigest()


@pytest.fixture(scope="module")
def shaped():
    """Per shape, a simulator of the `sim` fixture's users and 20,000 of its events."""
    out = {}
    for shape in SHAPES:
        simulator = Simulator(users=400, seed=3, start_ms=START_MS, shape=shape)
        simulator.sample = list(simulator.events(20_000))
        out[shape] = simulator
    return out


def test_sessions_shape_is_the_stream_from_before_shapes(sim):
    # Digests of the JSON lines the simulator wrote before shapes existed (commit 156f891).
    assert stream_digest(sim.sample[:20_000]) == "4d41db69b0330c5920d15d2767d59b568728ef92c508c65d2f46922708cd07b7"
    drift = Drift(at_event=5_000, shares=DEFAULT_DRIFT_SHARES, price_factor=1.2)
    drifting = Simulator(users=400, seed=3, start_ms=START_MS, drift=drift, shape="sessions")
    assert stream_digest(drifting.events(20_000)) == "09e3a52ec6f9b582124e901482085196dcbec61d44a802fd512976d4c3fb4641"
    assert list(Simulator(users=400, seed=3, start_ms=START_MS, shape="sessions").events(2_000)) == sim.sample[:2_000]


def test_shapes_are_named_and_described():
    assert list(SHAPES) == ["sessions", "clicks_purchases", "ratings", "years"]
    assert all(isinstance(what, str) and what and "\n" not in what for what in SHAPES.values())


def test_an_unknown_shape_is_rejected_with_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown simulator shape 'movies'; known: sessions, clicks_purchases, ratings, years"
    ):
        Simulator(users=10, shape="movies")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_emits_only_its_kinds(shaped, shape):
    assert {e.type for e in shaped[shape].sample} == SHAPE_KINDS[shape]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shapes_are_deterministic_time_ordered_and_numbered(shaped, shape):
    sample = shaped[shape].sample
    assert list(Simulator(users=400, seed=3, start_ms=START_MS, shape=shape).events(3_000)) == sample[:3_000]
    other = list(Simulator(users=400, seed=4, start_ms=START_MS, shape=shape).events(3_000))
    assert [(e.user_id, e.ts) for e in other] != [(e.user_id, e.ts) for e in sample[:3_000]]
    ts = [e.ts for e in sample]
    assert ts == sorted(ts) and ts[0] >= START_MS
    assert [e.event_id for e in sample] == [f"3-{START_MS}-{n}" for n in range(len(sample))]
    for e in sample[:2_000]:
        assert decode_event(encode_event(e)) == e


@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_keeps_the_users_latent_profiles(sim, shaped, shape):
    simulator = shaped[shape]
    assert simulator.users == sim.users
    assert all(simulator.profile_of(u) == sim.profile_of(u) for u in sim.users)
    assert {simulator.profile_of(e.user_id) for e in simulator.sample} == set(PROFILES)


def test_clicks_and_purchases_still_tell_the_profiles_apart(shaped):
    simulator = shaped["clicks_purchases"]
    counts, spend = defaultdict(Counter), defaultdict(list)
    for e in simulator.sample:
        profile = simulator.profile_of(e.user_id)
        counts[profile][e.type] += 1
        if e.type == "purchase":
            spend[profile].append(e.value)
            item = simulator.catalog.item(e.item_id)
            assert e.value == item.sale_price and e.category == item.category
    users = Counter(simulator.profile_of(u) for u in simulator.users)

    def buys_per_click(profile):
        return counts[profile]["purchase"] / counts[profile]["click"]

    def clicks_per_user(profile):
        return counts[profile]["click"] / users[profile]

    def mean_spend(profile):
        return sum(spend[profile]) / len(spend[profile])

    assert buys_per_click("window_shopper") * 10 < buys_per_click("loyal_high_spender")
    assert buys_per_click("window_shopper") < buys_per_click("bargain_hunter")
    assert (
        clicks_per_user("window_shopper") > 2 * clicks_per_user("bargain_hunter") > 2 * clicks_per_user("email_driven")
    )
    assert mean_spend("loyal_high_spender") > 2 * mean_spend("bargain_hunter")


def test_ratings_are_half_stars_that_follow_the_profiles_tastes(shaped):
    simulator = shaped["ratings"]
    ratings = defaultdict(list)
    for e in simulator.sample:
        if e.type == "purchase":
            assert 0.5 <= e.value <= 5 and (2 * e.value).is_integer(), e
            ratings[simulator.profile_of(e.user_id)].append(e.value)
        else:
            assert e.value is None
    assert len({v for values in ratings.values() for v in values}) >= 8

    def mean(values):
        return sum(values) / len(values)

    # Premium tastes buy the dearer items of a category, which rate higher.
    assert mean(ratings["loyal_high_spender"]) > mean(ratings["bargain_hunter"]) + 0.5


def test_ratings_are_the_clicks_and_purchases_with_stars_for_values(shaped):
    bought = shaped["clicks_purchases"].sample
    rated = shaped["ratings"].sample
    assert len(rated) == len(bought)
    for stars, money in zip(rated, bought):
        assert stars == msgspec.structs.replace(money, value=stars.value)


def test_ratings_refuse_a_drift_of_prices():
    with pytest.raises(ValueError, match="not money"):
        Simulator(users=10, shape="ratings", drift=Drift(at_event=10, price_factor=1.5))
    drift = Drift(at_event=10, shares=DEFAULT_DRIFT_SHARES)
    assert len(list(Simulator(users=10, shape="ratings", drift=drift).events(50))) == 50


def test_years_spans_years_with_long_idle_gaps():
    simulator = Simulator(users=50, seed=3, start_ms=START_MS, shape="years")
    events = list(simulator.events(30_000))
    assert (events[-1].ts - events[0].ts) > 2 * 365 * DAY_MS
    last_seen, longest = {}, Counter()
    for e in events:
        if e.user_id in last_seen:
            longest[e.user_id] = max(longest[e.user_id], e.ts - last_seen[e.user_id])
        last_seen[e.user_id] = e.ts
    assert sum(gap > 30 * DAY_MS for gap in longest.values()) > 0.8 * len(simulator.users)
    # ... and within a spell, sessions are hours apart, as in the sessions shape.
    starts = defaultdict(list)
    for e in events:
        if e.type in ("app_open", "email_open"):
            starts[e.user_id].append(e.ts)
    gaps = sorted(b - a for ts in starts.values() for a, b in zip(ts, ts[1:]))
    assert gaps[len(gaps) // 4] < DAY_MS


def test_drift_works_with_a_shape_and_counts_its_events(shaped):
    plain = shaped["clicks_purchases"].sample
    drifting = Simulator(
        users=400,
        seed=3,
        start_ms=START_MS,
        shape="clicks_purchases",
        drift=Drift(at_event=5_000, shares={"email_driven": 1}, price_factor=2.0),
    )
    before = list(drifting.events(5_000))
    assert before == plain[:5_000] and not drifting.drifted
    after = list(drifting.events(5_000))
    assert drifting.drifted
    assert all(drifting.profile_of(u) == "email_driven" for u in drifting.users)
    assert {e.type for e in after} == {"click", "purchase"}
    assert [e.event_id for e in after] == [e.event_id for e in plain[5_000:10_000]]
    ts = [e.ts for e in before + after]
    assert ts == sorted(ts)
    for e in after:
        if e.type == "purchase":
            assert e.value == round(drifting.catalog.item(e.item_id).sale_price * 2.0, 2)


# -- tailor simulate --shape ----------------------------------------------------


def test_cli_shape_writes_only_its_kinds(tmp_path, capsys):
    out = tmp_path / "shop.jsonl"
    assert (
        simulate(
            "--shape",
            "clicks_purchases",
            "--events",
            "100",
            "--users",
            "50",
            "--start",
            "2026-01-01T00:00:00Z",
            "--out",
            str(out),
        )
        == 0
    )
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    assert len(events) == 100
    assert {e.type for e in events} == {"click", "purchase"}
    assert events == list(Simulator(users=50, seed=7, start_ms=START_MS, shape="clicks_purchases").events(100))
    assert "clicks_purchases shape" in capsys.readouterr().err


def test_cli_years_without_a_start_is_history_that_ends_before_now(tmp_path):
    # Started now, 20,000 events of the years shape ran a year past the clock, and a flow
    # dead-lettered them as ahead of it (the segment bench lost 15 of 1,000 users that way).
    import time

    out = tmp_path / "years.jsonl"
    assert simulate("--shape", "years", "--events", "20000", "--users", "50", "--out", str(out)) == 0
    events = [decode_event(line) for line in out.read_bytes().splitlines()]
    assert len(events) == 20_000
    now = time.time() * 1000
    assert events[-1].ts < now - 86_400_000
    assert (events[-1].ts - events[0].ts) > 300 * 86_400_000  # still years-like, only moved
    shifted = Simulator(users=50, seed=7, start_ms=events[0].ts - events[0].ts % 86_400_000, shape="years")
    assert [e.type for e in shifted.events(2_000)] == [e.type for e in events[:2_000]]


def test_cli_shape_defaults_to_sessions_and_rejects_unknown_shapes(capsys):
    assert build_parser().parse_args(["simulate"]).shape == "sessions"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["simulate", "--shape", "movies"])
    assert exit_.value.code == 2
    assert "invalid choice: 'movies'" in capsys.readouterr().err


def test_cli_ratings_with_a_price_drift_says_why(tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    assert (
        simulate(
            "--shape",
            "ratings",
            "--events",
            "10",
            "--out",
            str(out),
            "--drift-at",
            "5",
            "--drift-mix",
            "none",
            "--drift-price-factor",
            "2",
        )
        == 2
    )
    assert "not money" in capsys.readouterr().err
    assert not out.exists()
