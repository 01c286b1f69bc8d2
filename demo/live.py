"""``tailor up``'s live view: the watched users' features read back through Feast, twice a second.

When stdout is not a terminal (CI, tests, a pipe) the view is one plain snapshot every few seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from config.settings import Settings
from demo.storefront import Storefront
from demo.supervisor import Probe
from demo.traffic import Traffic

#: Seconds between two refreshes of the live view ...
REFRESH_S = 0.5
#: ... and between two plain snapshots when stdout is not a terminal.
SNAPSHOT_EVERY_S = 3.0
#: A watched user this long without an event gives its row to a more active one.
WATCH_IDLE_S = 60.0
#: The features shown per watched user, in column order.
COLUMNS = (
    "clicks_5m",
    "page_views_1h",
    "add_to_carts_1h",
    "purchases_24h",
    "spend_24h",
    "ctr_24h",
    "top_category",
    "seconds_since_last_event",
    "lifetime_events",
)


def pick_watched(
    current: list[str], last_seen: dict[str, float], size: int, now: float, idle_s: float = WATCH_IDLE_S
) -> list[str]:
    """The users to show: keep the current rows, give an idle user's row to the most recent other.

    >>> pick_watched([], {"u1": 5.0, "u2": 9.0, "u3": 7.0}, 2, now=10.0)
    ['u2', 'u3']
    >>> pick_watched(["u1", "u2"], {"u1": 0.0, "u2": 9.0, "u3": 7.0}, 2, now=100.0, idle_s=60)
    ['u3', 'u2']
    """
    candidates = sorted((u for u in last_seen if u not in current), key=last_seen.__getitem__, reverse=True)
    watched = list(current)
    for i, user in enumerate(watched):
        if now - last_seen.get(user, now) > idle_s and candidates:
            watched[i] = candidates.pop(0)
    while len(watched) < size and candidates:
        watched.append(candidates.pop(0))
    return watched[:size]


class FeatureView:
    """Reads the watched users' features through Feast and formats them."""

    def __init__(
        self,
        store,
        settings: Settings,
        traffic: Traffic,
        *,
        broker_note: str,
        watch: int,
        api_probe: Probe | None = None,
        storefront: Storefront | None = None,
    ):
        from store.feast import ACTIVITY_SERVICE

        self.store = store
        self.api_probe = api_probe
        self.storefront = storefront
        self.service = store.get_feature_service(ACTIVITY_SERVICE)
        self.settings = settings
        self.traffic = traffic
        self.broker_note = broker_note
        self.size = watch
        self.watched: list[str] = []
        self.started = time.monotonic()
        #: Seconds from the start to the first features read back (the flow is ready by then).
        self.first_features_s: float | None = None
        self._dlq = _DeadLetterCount(settings)

    def rows(self) -> tuple[list[dict], str | None]:
        """One dict per watched user (``user``, ``profile`` and `COLUMNS`), and a read error if any."""
        self.watched = pick_watched(self.watched, self.traffic.last_seen(), self.size, time.monotonic())
        if not self.watched:
            return [], None
        from store.feast import USER_ID

        try:
            got = self.store.get_online_features(
                features=self.service, entity_rows=[{USER_ID: self.traffic.pseudonym(u)} for u in self.watched]
            ).to_dict()
        except Exception as exc:  # noqa: BLE001 - shown in the view; the demo goes on
            return [], f"reading features failed: {type(exc).__name__}: {exc}"
        segments = self._segments()
        rows = []
        for i, user in enumerate(self.watched):
            row = {"user": user, "profile": self.traffic.simulator.profile_of(user)}
            row.update((name, got[name][i]) for name in COLUMNS)
            row["segment"] = segments.get(user)
            rows.append(row)
        elapsed = time.monotonic() - self.started
        # Only an event sent since the start proves the pipeline live: the online store
        # keeps the rows of earlier runs.
        if self.first_features_s is None and any(
            row["lifetime_events"] and (row["seconds_since_last_event"] or float("inf")) < elapsed for row in rows
        ):
            self.first_features_s = elapsed
        return rows, None

    def _segments(self) -> dict[str, str]:
        """Watched users' segment labels (none while the segment model warms up)."""
        if not self.settings.audience.segments:
            return {}
        from store.feast import SEGMENT_VIEW, USER_ID, read_profiles

        try:
            labels = {p.segment: p.label for p in read_profiles(self.store, self.settings.audience.segments)}
            got = self.store.get_online_features(
                features=[f"{SEGMENT_VIEW}:segment"],
                entity_rows=[{USER_ID: self.traffic.pseudonym(u)} for u in self.watched],
            ).to_dict()
        except Exception:  # noqa: BLE001 - the activity columns still show
            return {}
        return {u: labels.get(s, str(s)) for u, s in zip(self.watched, got["segment"]) if s is not None}

    def header(self) -> str:
        t = self.traffic
        elapsed = time.monotonic() - self.started
        dlq = self._dlq.count()
        parts = [
            f"up {elapsed:.0f} s",
            f"broker {self.settings.kafka.brokers}{self.broker_note}",
            f"{t.delivered:,} events produced ({t.produced / elapsed if elapsed else 0:,.0f}/s)",
            f"DLQ {self.settings.kafka.dlq_topic}: {'?' if dlq is None else f'{dlq:,}'} dead letters",
            "waiting for the flow's first write"
            if self.first_features_s is None
            else f"first features after {self.first_features_s:.1f} s",
        ]
        if self.api_probe is not None:
            parts.append(self.api_probe.state())
        if self.storefront is not None:
            parts.append(self._experiment())
        if t.failed:
            parts.append(f"{t.failed:,} deliveries failed")
        return " | ".join(parts)

    def _experiment(self) -> str:
        """The demo experiment's arms as the flow counted them: users, and how many converted."""
        front = self.storefront
        if front.state != "running":
            return f"experiment {front.experiment} {front.state}"
        from demo.storefront import EXPERIMENT
        from engine.experiments.designs import HOLDOUT
        from store.online import read_arm_counters

        variants = [arm["name"] for arm in EXPERIMENT["arms"]] + [HOLDOUT]
        try:
            counters = read_arm_counters(self.store, front.experiment, variants)
        except Exception as exc:  # noqa: BLE001 - shown in the view; the demo goes on
            return f"experiment {front.experiment}: reading counters failed ({type(exc).__name__})"
        arms = ", ".join(f"{v} {counters[v].users} users/{counters[v].converters} converted" for v in variants)
        share = front.generated_share
        generated = "" if share is None else f"; generated arm: {share:.0%} generated copy"
        return f"experiment {front.experiment} ({front.served:,} headlines served{generated}): {arms}"

    def close(self) -> None:
        self._dlq.close()


def format_value(name: str, value) -> str:
    """A feature as the view shows it.

    >>> format_value("spend_24h", 12.5), format_value("ctr_24h", 0.125), format_value("top_category", None)
    ('12.50', '0.12', '-')
    """
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if name == "spend_24h":
        return f"{value:.2f}"
    if name == "ctr_24h":
        return f"{value:.2f}"
    if name == "seconds_since_last_event":
        return f"{value:.1f}"
    return str(value)


class _DeadLetterCount:
    """Messages in the dead-letter topic, from its watermarks, at most every two seconds."""

    EVERY_S = 2.0

    def __init__(self, settings: Settings):
        from confluent_kafka import Consumer

        self.topic = settings.kafka.dlq_topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.brokers,
                "group.id": f"tailor-up-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "client.id": "tailor-up-dlq-count",
            }
        )
        self._at = 0.0
        self._count: int | None = None

    def count(self) -> int | None:
        if time.monotonic() - self._at >= self.EVERY_S:
            self._at = time.monotonic()
            self._count = self._read()
        return self._count

    def _read(self) -> int | None:
        from flows.kafka import watermarks

        try:
            return sum(max(0, high - low) for low, high in watermarks(self._consumer, self.topic, timeout_s=2).values())
        except Exception:  # noqa: BLE001 - a count we cannot get shows as "?"
            return None

    def close(self) -> None:
        self._consumer.close()


def _ticks(deadline: float | None, check) -> Iterator[None]:
    """Yields every `REFRESH_S` until the deadline (forever without one), checking children first."""
    while deadline is None or time.monotonic() < deadline:
        check()
        yield
        time.sleep(REFRESH_S)


def live_view(view: FeatureView, deadline: float | None, check) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    def render():
        rows, error = view.rows()
        table = Table(expand=False, header_style="bold")
        for name in ("user", "profile", *COLUMNS, "segment"):
            table.add_column(
                "last event s" if name == "seconds_since_last_event" else name,
                justify="left" if name in ("user", "profile", "top_category", "segment") else "right",
            )
        for row in rows:
            table.add_row(*(format_value(k, v) for k, v in row.items()))
        lines = [Text(view.header(), style="dim")]
        if error:
            lines.append(Text(error, style="red"))
        if not rows and not error:
            lines.append(Text("waiting for the first events ..."))
        return Group(*lines, table, Text("Ctrl-C to stop", style="dim"))

    try:
        with Live(render(), console=Console(), auto_refresh=False) as live_view:
            for _ in _ticks(deadline, check):
                live_view.update(render(), refresh=True)
    finally:
        view.close()


def plain_view(view: FeatureView, deadline: float | None, check) -> None:
    def snapshot() -> None:
        rows, error = view.rows()
        lines = [f"snapshot | {view.header()}"]
        if error:
            lines.append(f"  {error}")
        for row in rows:
            cells = " ".join(f"{k}={format_value(k, v)}" for k, v in row.items() if k not in ("user", "profile"))
            lines.append(f"  {row['user']} {row['profile']:<18} {cells}")
        print("\n".join(lines), flush=True)

    last = time.monotonic()
    try:
        for _ in _ticks(deadline, check):
            if time.monotonic() - last >= SNAPSHOT_EVERY_S:
                last = time.monotonic()
                snapshot()
        snapshot()  # the state at the end of a timed run
    finally:
        view.close()
