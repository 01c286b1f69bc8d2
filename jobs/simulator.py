"""Simulated shoppers: a deterministic, time-ordered stream of realistic events.

Each user belongs to one latent behaviour profile (`PROFILES`): how often they
come back, which categories they like, how readily they click, add to cart and
buy, whether they pay full price, whether email brings them in. Later stages
(segmentation, drift, experiments) are tested against that ground truth, which
`Simulator.profile_of` exposes.

A user's visit is a session: an ``app_open`` (or an ``email_open``, then maybe an
``email_click`` that lands on a product), then feed pages of ``impression``
events, some of which are clicked (profile CTR) and viewed (``page_view``),
followed by related page views, ``add_to_cart`` and, at checkout, ``purchase``
at the item's sale price. Sessions start as a Poisson process whose rate follows
a daily rhythm (`diurnal_factor`, UTC, busiest in the evening).

Events come out globally in event-time order: a heap holds each user's next
event time, and a user's next session is planned only when the last one is
used up. Pure Python with one `random.Random` (and one more for ratings' noise),
no I/O: the same ``(users, seed, start_ms, catalog, drift, shape)`` always gives
the same events.

Real shops send other shapes of traffic than these sessions, so the simulator
has several (`SHAPES`), all played out from the same simulated behaviour and
so all with the same ground truth: ``sessions`` (the default, described
above), ``clicks_purchases`` (only clicks and purchases, as most shop exports
are), ``ratings`` (the same, with a star rating as a purchase's value) and
``years`` (full sessions in spells of activity separated by idle gaps of weeks
to months, so that a modest number of events spans years).

A `Drift` changes the world part-way through the stream, at a chosen event:
users re-draw their profile from a new mix, and/or prices move. Drift
detection and retraining are tested against it, and `Simulator.profile_of`
follows the change, so the ground truth stays true.

Examples
--------
>>> sim = Simulator(users=50, seed=7, start_ms=1_767_225_600_000)
>>> events = list(sim.events(200))
>>> len(events), all(a.ts <= b.ts for a, b in zip(events, events[1:]))
(200, True)
>>> events == list(Simulator(users=50, seed=7, start_ms=1_767_225_600_000).events(200))
True
>>> sim.profile_of(events[0].user_id) in PROFILES
True

From event 100 on, most users are email-driven and everything costs 20% more:

>>> drifting = Simulator(users=50, seed=7, start_ms=1_767_225_600_000,
...                      drift=Drift(at_event=100, shares=DEFAULT_DRIFT_SHARES, price_factor=1.2))
>>> list(drifting.events(100)) == events[:100], drifting.drifted
(True, False)
>>> _ = list(drifting.events(1)); drifting.drifted
True

Other shapes of traffic, from the same users:

>>> exported = Simulator(users=50, seed=7, start_ms=1_767_225_600_000, shape="clicks_purchases")
>>> sorted({e.type for e in exported.events(500)})
['click', 'purchase']
>>> sorted(SHAPES)
['clicks_purchases', 'ratings', 'sessions', 'years']
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Iterator

import msgspec

from engine.content.catalog import CATALOG_SEED, Catalog, Item, build_catalog
from engine.features.events import Event

#: 2026-01-01T00:00:00Z, the default start of simulated time.
DEFAULT_START_MS = 1_767_225_600_000

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
#: Hour of day (UTC) when people shop most, and how strongly activity swings:
#: the session rate goes from (1 - amplitude) at 08:00 to (1 + amplitude) at 20:00.
PEAK_HOUR_UTC = 20
DIURNAL_AMPLITUDE = 0.6

#: Traffic shapes, ``Simulator(shape=...)`` and ``tailor simulate --shape``: name -> what it is.
SHAPES: dict[str, str] = {
    "sessions": "sessions of app/email opens, impressions, clicks, page views, carts and purchases, a few a day",
    "clicks_purchases": "only click and purchase events, as most shop exports are",
    "ratings": "clicks and purchases whose value is a 0.5-5 star rating in half steps, not money",
    "years": "full sessions in spells of activity between idle gaps of weeks to months, spanning years",
}
#: The event kinds a shape keeps of each planned session (a shape not listed keeps every kind).
SHAPE_KINDS: dict[str, frozenset[str]] = {
    "clicks_purchases": frozenset({"click", "purchase"}),
    "ratings": frozenset({"click", "purchase"}),
}
#: ``ratings``: a purchase's rating is ``RATING_LOW + (RATING_HIGH - RATING_LOW) * q`` plus
#: Gaussian noise of sd ``RATING_NOISE``, where ``q`` in [0, 1] is the item's price rank
#: within its category (so premium tastes rate higher), rounded to half stars in [0.5, 5].
RATING_LOW = 1.5
RATING_HIGH = 4.5
RATING_NOISE = 0.6
#: ``years``: after each session, with probability ``YEARS_IDLE_PROBABILITY`` the user
#: goes idle for an exponential gap of mean ``YEARS_IDLE_MEAN_DAYS`` before the next one
#: (also before a user's first session, so users join over time). A spell of activity
#: lasts 1 / YEARS_IDLE_PROBABILITY = 2 sessions on average, and a user comes about
#: once a month: 10 users' 5,000 events span about a year and a half.
YEARS_IDLE_PROBABILITY = 0.5
YEARS_IDLE_MEAN_DAYS = 60.0


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """A latent behaviour profile: the ground truth segmentation should find.

    Probabilities are per opportunity (``ctr`` per impression, ``add_to_cart``
    per product page view, ``purchase`` per cart item at checkout).
    """

    name: str
    #: Fraction of the simulated users with this profile.
    share: float
    #: Mean sessions per day, before the daily rhythm and per-user variation.
    sessions_per_day: float
    #: Relative taste for each category; a user keeps `n_favourites` of them.
    category_weights: dict[str, float]
    n_favourites: int
    #: Probability an item shown or browsed comes from a favourite category.
    focus: float
    #: Probability a session starts from an email, and that an opened email is clicked.
    email_entry: float
    email_click: float
    #: Mean feed pages per session; each page shows 4 to 8 impressions.
    pages_per_session: float
    ctr: float
    #: Probability of one more related page view after each product page view.
    browse_on: float
    add_to_cart: float
    purchase: float
    #: Mean seconds spent on a product page.
    dwell_s: float
    #: Item preference inside a category: "cheap", "premium" or "any" ...
    price_taste: str
    #: ... and how much more a discounted item attracts this profile.
    discount_taste: float


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="bargain_hunter",
            share=0.30,
            sessions_per_day=3.0,
            category_weights={
                "grocery": 3,
                "home": 2.5,
                "beauty": 2,
                "books": 2,
                "sports": 1.5,
                "shoes": 1,
                "outerwear": 0.5,
                "electronics": 0.5,
            },
            n_favourites=4,
            focus=0.8,
            email_entry=0.35,
            email_click=0.55,
            pages_per_session=3.0,
            ctr=0.12,
            browse_on=0.55,
            add_to_cart=0.15,
            purchase=0.6,
            dwell_s=25.0,
            price_taste="cheap",
            discount_taste=4.0,
        ),
        Profile(
            name="loyal_high_spender",
            share=0.15,
            sessions_per_day=1.0,
            category_weights={
                "electronics": 3,
                "outerwear": 3,
                "shoes": 2,
                "home": 1,
                "sports": 1,
                "beauty": 1,
                "books": 0.3,
                "grocery": 0.2,
            },
            n_favourites=2,
            focus=0.92,
            email_entry=0.05,
            email_click=0.5,
            pages_per_session=1.5,
            ctr=0.28,
            browse_on=0.2,
            add_to_cart=0.4,
            purchase=0.85,
            dwell_s=60.0,
            price_taste="premium",
            discount_taste=1.0,
        ),
        Profile(
            name="window_shopper",
            share=0.35,
            sessions_per_day=4.0,
            category_weights={
                "shoes": 3,
                "outerwear": 2.5,
                "electronics": 2.5,
                "home": 2,
                "beauty": 2,
                "sports": 1,
                "books": 1,
                "grocery": 0.5,
            },
            n_favourites=4,
            focus=0.6,
            email_entry=0.08,
            email_click=0.2,
            pages_per_session=4.0,
            ctr=0.16,
            browse_on=0.65,
            add_to_cart=0.04,
            purchase=0.1,
            dwell_s=15.0,
            price_taste="any",
            discount_taste=1.2,
        ),
        Profile(
            name="email_driven",
            share=0.20,
            sessions_per_day=1.2,
            category_weights={
                "beauty": 3,
                "home": 2.5,
                "books": 2,
                "sports": 1.5,
                "grocery": 1.5,
                "shoes": 1,
                "outerwear": 1,
                "electronics": 0.5,
            },
            n_favourites=3,
            focus=0.85,
            email_entry=0.85,
            email_click=0.6,
            pages_per_session=1.5,
            ctr=0.08,
            browse_on=0.3,
            add_to_cart=0.2,
            purchase=0.55,
            dwell_s=35.0,
            price_taste="any",
            discount_taste=1.5,
        ),
    )
}


def diurnal_factor(ts_ms: int) -> float:
    """Relative activity at this event time (UTC hour of day); averages 1 over a day.

    Examples
    --------
    >>> evening = DEFAULT_START_MS + PEAK_HOUR_UTC * HOUR_MS
    >>> round(diurnal_factor(evening), 2), round(diurnal_factor(evening + 12 * HOUR_MS), 2)
    (1.6, 0.4)
    """
    hour = (ts_ms % DAY_MS) / HOUR_MS
    return 1.0 + DIURNAL_AMPLITUDE * math.cos(2 * math.pi * (hour - PEAK_HOUR_UTC) / 24)


#: A profile mix clearly unlike the profiles' own shares: email-driven users
#: take over. What ``tailor simulate --drift-at N`` switches to by default.
DEFAULT_DRIFT_SHARES: dict[str, float] = {
    "bargain_hunter": 0.10,
    "loyal_high_spender": 0.10,
    "window_shopper": 0.15,
    "email_driven": 0.65,
}


class Drift(msgspec.Struct, frozen=True, kw_only=True):
    """A change of regime at one point of the simulated stream.

    Parameters
    ----------
    at_event
        Index of the first event handed out under the new regime (``0``: all of them).
    shares
        New profile mix, ``{profile name: share}``; names must be keys of
        `PROFILES`, and shares are normalised to sum to 1 (a profile left out
        gets none). ``None`` keeps every user's profile.
    price_factor
        Multiplies the value of every purchase handed out from ``at_event`` on,
        rounded to cents; ``1.0`` keeps prices.

    Examples
    --------
    >>> Drift(at_event=10, shares={"email_driven": 3, "window_shopper": 1}).shares
    {'email_driven': 0.75, 'window_shopper': 0.25}
    >>> Drift(at_event=10, shares={"big_spender": 1})
    Traceback (most recent call last):
    ...
    ValueError: Drift shares name unknown profile(s) 'big_spender'; known: bargain_hunter, loyal_high_spender, window_shopper, email_driven
    """

    at_event: int
    shares: dict[str, float] | None = None
    price_factor: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.at_event, bool) or not isinstance(self.at_event, int) or self.at_event < 0:
            raise ValueError(f"Drift at_event must be an event index >= 0, got {self.at_event!r}")
        if not (math.isfinite(self.price_factor) and self.price_factor > 0):
            raise ValueError(f"Drift price_factor must be a finite number > 0, got {self.price_factor!r}")
        if self.shares is None:
            if self.price_factor == 1.0:
                raise ValueError("Drift changes nothing: give new shares or a price_factor other than 1.0")
            return
        unknown = [name for name in self.shares if name not in PROFILES]
        if unknown:
            raise ValueError(
                f"Drift shares name unknown profile(s) {', '.join(map(repr, unknown))}; known: {', '.join(PROFILES)}"
            )
        bad = {name: share for name, share in self.shares.items() if not (math.isfinite(share) and share >= 0)}
        if bad:
            raise ValueError(f"Drift shares must be finite and >= 0, got {bad}")
        total = sum(self.shares.values())
        if total <= 0:
            raise ValueError(f"Drift shares must not all be 0, got {self.shares}")
        # A fresh dict: the caller's stays as given, and this one sums to 1.
        msgspec.structs.force_setattr(self, "shares", {name: share / total for name, share in self.shares.items()})


# A planned event before it becomes an Event: (ts, type, item_id, category, value).
_Planned = tuple[int, str, str | None, str | None, float | None]


class _User:
    """One simulated user's traits and the session being played out.

    The profile and what follows from it change only when a `Drift` hands the
    user a new profile; ``rate_scale``, how much more or less often than their
    profile's average this person comes back, is theirs for good.
    """

    __slots__ = (
        "favourites",
        "index",
        "peak_rate_per_ms",
        "pools",
        "pos",
        "profile",
        "rate_scale",
        "session",
        "user_id",
    )

    def __init__(
        self, index: int, profile: Profile, favourites: tuple[str, ...], rate_scale: float, pools: dict[str, list[Item]]
    ):
        self.index = index
        self.user_id = f"u{index:06d}"
        self.rate_scale = rate_scale
        self.take_profile(profile, favourites, pools)
        self.session: list[_Planned] = []
        self.pos = 0

    def take_profile(self, profile: Profile, favourites: tuple[str, ...], pools: dict[str, list[Item]]) -> None:
        self.profile = profile
        self.favourites = favourites
        # Thinning samples candidate session starts at the peak rate, then keeps
        # each with probability diurnal_factor / peak.
        self.peak_rate_per_ms = profile.sessions_per_day * self.rate_scale * (1 + DIURNAL_AMPLITUDE) / DAY_MS
        self.pools = pools


class Simulator:
    """A deterministic stream of simulated user events, in event-time order.

    Parameters
    ----------
    users
        Number of simulated users, ``u000000`` .. ``u{users-1:06d}``.
    seed
        Seed of everything random: the same seed gives the same events.
    start_ms
        Simulated clock at the start (epoch ms); users' first sessions follow it.
    catalog
        The products shown and bought; default ``build_catalog(CATALOG_SEED)``,
        the catalog the rest of Tailor uses.
    drift
        A change of regime at event ``drift.at_event`` (default: none, and the
        stream is exactly what it was before drifts existed).
    shape
        The shape of traffic, a key of `SHAPES` (default ``"sessions"``, the
        stream exactly as it was before shapes existed). ``clicks_purchases``
        and ``ratings`` keep only the clicks and purchases of each session
        (`SHAPE_KINDS`); in ``ratings`` a purchase's ``value`` is a star
        rating (`RATING_LOW` .. `RATING_HIGH`), not money, so a drift there
        must not move prices. ``years`` spaces sessions out by idle gaps
        (`YEARS_IDLE_PROBABILITY`, `YEARS_IDLE_MEAN_DAYS`); events must still
        fall before 2100 (`engine.features.events.MAX_TS_MS`), which a few users'
        millions of events would pass.

    Notes
    -----
    The simulator is one stream: ``events(n)`` hands out the next ``n`` events,
    and iterating it runs forever. ``event_id`` is ``"{seed}-{start_ms}-{n}"``
    for the n-th event handed out: stable for one run, distinct between runs
    started at different times (so de-duplication never swallows a rerun).

    A drift is applied once, just before event ``at_event`` is handed out. With
    new shares, every user re-draws a profile from them; one whose profile
    changed gets the new profile's favourite categories, item tastes and visit
    rate. A session already under way finishes as planned (people do not
    change mid-visit); a user between sessions has their next one re-planned
    under the new profile from the drift's moment on, which the Poisson
    process's lack of memory makes a fair draw. The price factor applies to
    every purchase handed out from ``at_event`` on, those of sessions planned
    before the drift included.

    Shapes are applied as each session is planned, so the loop that hands out
    events is the same for all of them: a session is played out in full, and
    the shape keeps its kinds (a session with none of them is a visit that left
    no trace, and the user's next one is planned after it). Drift's
    ``at_event`` and ``event_id``'s ``n`` count the events of the shape handed
    out. The ``ratings`` noise has its own generator, seeded from ``seed``, so
    a ``ratings`` stream is the ``clicks_purchases`` stream of the same
    arguments with ratings for values.

    Examples
    --------
    >>> sim = Simulator(users=10, seed=1)
    >>> [e.type for e in sim.events(3)]
    ['app_open', 'impression', 'impression']
    >>> sim.profile_of("u000003")
    'bargain_hunter'

    The same users as star ratings, and as years of history:

    >>> rated = Simulator(users=10, seed=1, shape="ratings")
    >>> sorted({e.value for e in rated.events(300) if e.type == "purchase"})[:4]
    [1.0, 1.5, 2.0, 2.5]
    >>> spread = list(Simulator(users=10, seed=1, shape="years").events(5_000))
    >>> (spread[-1].ts - spread[0].ts) / (365 * DAY_MS) > 1
    True
    >>> Simulator(users=10, shape="movies")
    Traceback (most recent call last):
    ...
    ValueError: unknown simulator shape 'movies'; known: sessions, clicks_purchases, ratings, years
    """

    def __init__(
        self,
        users: int = 1000,
        seed: int = 7,
        start_ms: int = DEFAULT_START_MS,
        catalog: Catalog | None = None,
        drift: Drift | None = None,
        shape: str = "sessions",
    ):
        if users <= 0:
            raise ValueError(f"users must be positive, got {users}")
        if shape not in SHAPES:
            raise ValueError(f"unknown simulator shape {shape!r}; known: {', '.join(SHAPES)}")
        if shape == "ratings" and drift is not None and drift.price_factor != 1.0:
            raise ValueError(
                f"a drift's price_factor ({drift.price_factor:g}) cannot move ratings: "
                "in the ratings shape a purchase's value is a star rating, not money"
            )
        self.seed = seed
        self.shape = shape
        self.start_ms = int(start_ms)
        self.catalog = catalog if catalog is not None else build_catalog(CATALOG_SEED)
        self.drift = drift
        self._rng = random.Random(seed)
        self._id_prefix = f"{seed}-{self.start_ms}-"
        self._emitted = 0
        # The event index at which the pending drift takes over; -1, which no
        # index equals, without a drift or once it is applied.
        self._drift_at = drift.at_event if drift is not None else -1
        # Purchases are priced at checkout planning; a drift changes this.
        self._price_factor = 1.0
        # Only categories the catalog stocks can be favourites or be browsed.
        self._categories = self.catalog.categories
        self._pools = pools = {name: _item_pools(self.catalog, p) for name, p in PROFILES.items()}
        # The shape, applied once per planned session (None, 0.0: keep the session as played).
        self._keep = SHAPE_KINDS.get(shape)
        self._idle_probability = YEARS_IDLE_PROBABILITY if shape == "years" else 0.0
        self._rating_bases = _rating_bases(self.catalog) if shape == "ratings" else None
        self._rating_rng = random.Random(f"{seed}-ratings")
        self._users = [self._make_user(i, pools) for i in range(users)]
        self._by_id = {u.user_id: u for u in self._users}
        # One heap entry per user: (time of their next event, index, user).
        # The index breaks ties, so users themselves are never compared.
        self._heap = []
        for user in self._users:
            self._plan_session(user, self.start_ms)
            self._heap.append((user.session[0][0], user.index, user))
        heapq.heapify(self._heap)

    @property
    def users(self) -> tuple[str, ...]:
        """All simulated user ids."""
        return tuple(self._by_id)

    @property
    def drifted(self) -> bool:
        """Whether the drift has been applied (the stream reached ``drift.at_event``)."""
        return self.drift is not None and self._drift_at < 0

    def profile_of(self, user_id: str) -> str:
        """The latent profile name of a simulated user now (the ground truth; a drift changes it)."""
        try:
            return self._by_id[user_id].profile.name
        except KeyError:
            raise KeyError(f"{user_id!r} is not one of this simulator's users") from None

    def events(self, n: int) -> Iterator[Event]:
        """The next ``n`` events of the stream."""
        return itertools.islice(self, n)

    def __iter__(self) -> Iterator[Event]:
        heap = self._heap
        prefix = self._id_prefix
        drift_at = self._drift_at
        while True:
            n = self._emitted
            # The one cost of drifts on the hot path: an integer compare.
            if n == drift_at:
                self._apply_drift()
                drift_at = -1
            user = heap[0][2]
            ts, kind, item_id, category, value = user.session[user.pos]
            user.pos += 1
            if user.pos == len(user.session):
                self._plan_session(user, ts)
            heapq.heapreplace(heap, (user.session[user.pos][0], user.index, user))
            self._emitted = n + 1
            yield Event(f"{prefix}{n}", kind, user.user_id, ts, item_id, category, value)

    # -- drift -------------------------------------------------------------

    def _apply_drift(self) -> None:
        """Switch to the drift's regime before the next event is handed out."""
        drift = self.drift
        assert drift is not None and self._drift_at == self._emitted
        self._drift_at = -1
        factor = self._price_factor = drift.price_factor
        # Nothing handed out yet is earlier than the heap's top: re-planned
        # sessions start after it, so the stream stays in time order.
        now_ms = self._heap[0][0]
        rng = self._rng
        cum_shares = None
        if drift.shares is not None:
            cum_shares = list(itertools.accumulate(drift.shares.get(p.name, 0.0) for p in _PROFILE_LIST))
        for user in self._users:
            if cum_shares is not None:
                profile = rng.choices(_PROFILE_LIST, cum_weights=cum_shares)[0]
                if profile is not user.profile:
                    user.take_profile(
                        profile, _pick_favourites(rng, profile, self._categories), self._pools[profile.name]
                    )
                    if user.pos == 0:  # between sessions: the next one is theirs under the new profile
                        self._plan_session(user, now_ms)
                        continue  # priced at checkout with the new factor already
            if factor != 1.0:
                _reprice(user.session, user.pos, factor)
        self._heap[:] = [(u.session[u.pos][0], u.index, u) for u in self._users]
        heapq.heapify(self._heap)

    # -- users -------------------------------------------------------------

    def _make_user(self, index: int, pools: dict[str, dict[str, list[Item]]]) -> _User:
        rng = self._rng
        profile = rng.choices(_PROFILE_LIST, weights=_PROFILE_SHARES)[0]
        favourites = _pick_favourites(rng, profile, self._categories)
        # People with the same habits still differ in how often they come back.
        rate_scale = math.exp(rng.gauss(0.0, 0.35))
        return _User(index, profile, favourites, rate_scale, pools[profile.name])

    def _next_session_start(self, user: _User, after_ms: int) -> int:
        """Next start of a non-homogeneous Poisson process, by thinning."""
        rng = self._rng
        peak = 1 + DIURNAL_AMPLITUDE
        t = after_ms
        while True:
            t += int(rng.expovariate(user.peak_rate_per_ms)) + 1
            if rng.random() * peak < diurnal_factor(t):
                return t

    def _pick_item(self, user: _User, category: str | None = None) -> Item:
        rng = self._rng
        if category is None:
            if rng.random() < user.profile.focus:
                category = user.favourites[int(rng.random() * len(user.favourites))]
            else:
                category = self._categories[int(rng.random() * len(self._categories))]
        pool = user.pools[category]
        return pool[int(rng.random() * len(pool))]

    # -- sessions ----------------------------------------------------------

    def _plan_session(self, user: _User, after_ms: int) -> None:
        """Plan the user's next session after ``after_ms`` into ``user.session``, in the shape's kinds."""
        if self._idle_probability and self._rng.random() < self._idle_probability:
            after_ms += int(self._rng.expovariate(1.0 / (YEARS_IDLE_MEAN_DAYS * DAY_MS)))
        planned = self._session(user, after_ms)
        keep = self._keep
        if keep is not None:
            kept = [e for e in planned if e[1] in keep]
            while not kept:  # a visit that left no trace of the shape's kinds
                planned = self._session(user, planned[-1][0])
                kept = [e for e in planned if e[1] in keep]
            planned = kept if self._rating_bases is None else self._rated(kept)
        user.session = planned
        user.pos = 0

    def _session(self, user: _User, after_ms: int) -> list[_Planned]:
        """One whole session of the user after ``after_ms``: every kind of event, in time order."""
        rng = self._rng
        p = user.profile
        t = self._next_session_start(user, after_ms)
        out: list[_Planned] = []
        cart: list[Item] = []
        if rng.random() < p.email_entry:
            campaign = user.favourites[int(rng.random() * len(user.favourites))]
            out.append((t, "email_open", None, campaign, None))
            if rng.random() >= p.email_click:
                return out  # opened, read, left
            t += _gap(rng, 20_000)
            out.append((t, "email_click", None, campaign, None))
            # The email's link lands on a product of the campaign's category.
            t = self._view_product(out, cart, user, self._pick_item(user, campaign), t + _gap(rng, 1_500))
        else:
            out.append((t, "app_open", None, None, None))
        pages = 1
        while rng.random() < 1 - 1 / p.pages_per_session:
            pages += 1
        for _ in range(pages):
            t = self._feed_page(out, cart, user, t + _gap(rng, 3_000))
        self._checkout(out, cart, user, t)
        return out

    def _rated(self, planned: list[_Planned]) -> list[_Planned]:
        """``planned`` with each purchase's value replaced by a star rating of its item."""
        bases, rng = self._rating_bases, self._rating_rng
        rated: list[_Planned] = []
        for ts, kind, item_id, category, value in planned:
            if value is not None:
                stars = round(2 * (bases[item_id] + rng.gauss(0.0, RATING_NOISE))) / 2
                value = min(5.0, max(0.5, stars))
            rated.append((ts, kind, item_id, category, value))
        return rated

    def _feed_page(self, out: list[_Planned], cart: list[Item], user: _User, t: int) -> int:
        """A page of impressions, then clicks on some of them; returns the clock."""
        rng = self._rng
        shown = [self._pick_item(user) for _ in range(4 + int(rng.random() * 5))]
        for item in shown:
            out.append((t, "impression", item.item_id, item.category, None))
            t += 20 + int(rng.random() * 200)
        ctr = user.profile.ctr
        for item in shown:
            if rng.random() < ctr:
                t += _gap(rng, 6_000)
                out.append((t, "click", item.item_id, item.category, None))
                t = self._view_product(out, cart, user, item, t + _gap(rng, 700))
        return t

    def _view_product(self, out: list[_Planned], cart: list[Item], user: _User, item: Item, t: int) -> int:
        """A product page view, maybe a cart add, then related browsing; returns the clock."""
        rng = self._rng
        p = user.profile
        dwell_ms = p.dwell_s * 1000
        while True:
            out.append((t, "page_view", item.item_id, item.category, None))
            t += _gap(rng, dwell_ms)
            if rng.random() < p.add_to_cart:
                out.append((t, "add_to_cart", item.item_id, item.category, None))
                cart.append(item)
                t += _gap(rng, 2_000)
            if rng.random() >= p.browse_on:
                return t
            # "You may also like": the next product is from the same category.
            item = self._pick_item(user, item.category)
            t += _gap(rng, 1_500)

    def _checkout(self, out: list[_Planned], cart: list[Item], user: _User, t: int) -> None:
        rng = self._rng
        buy = user.profile.purchase
        factor = self._price_factor
        for item in cart:
            if rng.random() < buy:
                t += _gap(rng, 10_000)
                price = item.sale_price if factor == 1.0 else round(item.sale_price * factor, 2)
                out.append((t, "purchase", item.item_id, item.category, price))


_PROFILE_LIST = tuple(PROFILES.values())
_PROFILE_SHARES = tuple(p.share for p in _PROFILE_LIST)


def history_start_ms(events: int, now_ms: int, **simulator) -> int:
    """A start, at midnight UTC, from which the first ``events`` events of
    ``Simulator(**simulator)`` all fall at least a day before ``now_ms``.

    A finite stream is history up to the present: a flow judges event times
    against the clock (``TAILOR_MAX_AHEAD_S``), so a stream that started now and
    ran on for years would reach it largely dead-lettered. The stream only
    depends on the time of day, so it is the same stream moved by whole days.

    >>> now = DEFAULT_START_MS + 30 * DAY_MS + 5 * HOUR_MS
    >>> start = history_start_ms(5_000, now, users=10, seed=1, shape="years")
    >>> start % DAY_MS, list(Simulator(users=10, seed=1, start_ms=start, shape="years").events(5_000))[-1].ts < now
    (0, True)
    """
    last = DEFAULT_START_MS
    for event in Simulator(**{**simulator, "start_ms": DEFAULT_START_MS}).events(events):
        last = event.ts
    days = (last - DEFAULT_START_MS) // DAY_MS + 2
    return (now_ms // DAY_MS - days) * DAY_MS


def _gap(rng: random.Random, mean_ms: float) -> int:
    """An exponential pause of ``mean_ms`` on average, at least 1 ms."""
    return int(rng.expovariate(1.0 / mean_ms)) + 1


def _reprice(session: list[_Planned], start: int, factor: float) -> None:
    """Scale the purchase values of ``session[start:]``, the part not handed out yet."""
    for i in range(start, len(session)):
        ts, kind, item_id, category, value = session[i]
        if value is not None:
            session[i] = (ts, kind, item_id, category, round(value * factor, 2))


def _pick_favourites(rng: random.Random, profile: Profile, available: tuple[str, ...]) -> tuple[str, ...]:
    """Draw the profile's number of distinct favourite categories by its tastes."""
    names = [c for c in available if profile.category_weights.get(c, 0) > 0] or list(available)
    weights = [profile.category_weights.get(c, 1.0) for c in names]
    chosen: list[str] = []
    while len(chosen) < min(profile.n_favourites, len(names)):
        i = rng.choices(range(len(names)), weights=weights)[0]
        chosen.append(names.pop(i))
        weights.pop(i)
    return tuple(chosen)


def _rating_bases(catalog: Catalog) -> dict[str, float]:
    """Per item, the mean rating it gets: higher the higher its price ranks within its category.

    Examples
    --------
    >>> bases = _rating_bases(build_catalog(CATALOG_SEED))
    >>> min(bases.values()), max(bases.values())
    (1.5, 4.5)
    """
    bases: dict[str, float] = {}
    for category in catalog.categories:
        items = sorted(catalog.in_category(category), key=lambda i: (i.price, i.item_id))
        last = max(1, len(items) - 1)
        for rank, item in enumerate(items):
            bases[item.item_id] = RATING_LOW + (RATING_HIGH - RATING_LOW) * rank / last
    return bases


def _item_pools(catalog: Catalog, profile: Profile) -> dict[str, list[Item]]:
    """Per category, items repeated by how much the profile likes them.

    A uniform pick from the repeated list is a weighted pick at the cost of
    one random number, which keeps the simulator fast.
    """
    pools: dict[str, list[Item]] = {}
    for category in catalog.categories:
        items = catalog.in_category(category)
        prices = sorted(i.price for i in items)
        median = prices[len(prices) // 2]
        upper = prices[(2 * len(prices)) // 3]
        pool: list[Item] = []
        for item in items:
            weight = 1.0
            if profile.price_taste == "cheap" and item.price <= median:
                weight *= 3
            elif profile.price_taste == "premium":
                weight *= 6 if item.price >= upper else (2 if item.price >= median else 0.5)
            if item.discount_pct:
                weight *= profile.discount_taste
            pool.extend([item] * max(1, round(weight * 2)))
        pools[category] = pool
    return pools
