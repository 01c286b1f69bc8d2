"""``tailor up``'s simulated traffic: users' events at a steady rate, stamped with the wall clock, into Kafka."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

import msgspec

from config.settings import Settings
from demo.storefront import Storefront
from engine.features.events import encode_event
from flows.kafka import make_producer
from jobs.produce import live, now_ms, paced
from jobs.simulator import Simulator

#: Simulated events that start a session: the demo storefront serves the user a headline then.
SESSION_STARTS = frozenset({"app_open", "email_click"})
#: Items a user looked at lately that the storefront's headline may feature (a "recently viewed" shelf).
RECENT_ITEMS = 5


class Traffic:
    """Simulated users' events at a steady rate, stamped with the wall clock, into Kafka.

    A thread rather than a child process: the view reads the counts and each
    user's last event time straight from it, and `profile_of` from its simulator.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        users: int,
        rate: float,
        seed: int,
        pseudonym: Callable[[str], str] = str,
        storefront: Storefront | None = None,
    ):
        self.settings = settings
        self.storefront = storefront
        #: Raw user id -> the id Kafka and the stores see (the API's edge does the same).
        self.pseudonym = functools.lru_cache(maxsize=None)(pseudonym)
        self.rate = rate
        self.simulator = Simulator(users=users, seed=seed, start_ms=now_ms())
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.error: str | None = None
        self._last_seen: dict[str, float] = {}
        self._recent: dict[str, list[str]] = {}  # raw user id -> item ids seen lately, newest first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tailor-up-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _recent_item(self, user: str, item_id: str) -> None:
        recent = self._recent.setdefault(user, [])
        if item_id in recent:
            recent.remove(item_id)
        recent.insert(0, item_id)
        del recent[RECENT_ITEMS:]

    def last_seen(self) -> dict[str, float]:
        """Each user's latest event, as ``time.monotonic()``; in first-seen order."""
        with self._lock:
            return dict(self._last_seen)

    def _on_delivery(self, err, _msg) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def _run(self) -> None:
        producer = make_producer(
            self.settings.kafka.brokers, on_delivery=self._on_delivery, **{"client.id": "tailor-up-traffic"}
        )
        # paced() sleeps on the stop event, so stopping never waits out a slow rate.
        events = live(paced(self.simulator, self.rate, sleep=self._stop.wait))
        try:
            for event in events:
                if self._stop.is_set():
                    break
                raw = event.user_id
                if self.storefront is not None:
                    if event.item_id is not None:
                        self._recent_item(raw, event.item_id)
                    if event.type in SESSION_STARTS:
                        self.storefront.session_started(raw, tuple(self._recent.get(raw, ())))
                    elif event.type == "click" and event.experiment is None:
                        # A click after a served headline: the storefront reports it for the experiment.
                        experiment = self.storefront.experiment_of(raw, event.ts)
                        if experiment is not None:
                            event = msgspec.structs.replace(event, experiment=experiment)
                key = self.pseudonym(raw).encode()
                value = encode_event(msgspec.structs.replace(event, user_id=key.decode()))
                while not self._stop.is_set():
                    try:
                        producer.produce(self.settings.kafka.topic, value, key)
                        break
                    except BufferError:  # the broker is slow: let the local queue drain
                        producer.poll(0.05)
                else:
                    break  # stopped while the queue was full
                producer.poll(0)
                self.produced += 1
                with self._lock:
                    self._last_seen[raw] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported by the view, which stops the demo
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            producer.flush(5)
