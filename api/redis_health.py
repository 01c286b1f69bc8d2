"""Whether Redis answers and still holds Tailor's templates and experiments: for ``/readyz``.

`RedisHealth.check` pings Redis (bounded, through the server's breaker) and asks
each Redis store to `recover`: a store whose data Redis lost is restored from the
replica's local copy. The lifespan runs it every ``TAILOR_REDIS_CHECK_S`` (off the
event loop) and ``/readyz`` runs it once more, so a flush is noticed and repaired
within about a second, and said: ``/readyz`` reports what was restored for
`NOTE_S` seconds after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

log = logging.getLogger("tailor.api")

#: Seconds /readyz keeps saying that Redis lost its data and what was restored.
NOTE_S = 300.0


class RedisHealth:
    """``client``: a blocking redis-py client; ``stores``: Redis stores (``recover()``, ``recovered``)."""

    def __init__(self, client, breaker, stores: list, every_s: float = 1.0):
        self.client = client
        self.breaker = breaker
        self.stores = stores
        self.every_s = every_s
        self.status = "ok"

    async def watch(self) -> None:
        """`check` every ``every_s`` seconds, off the event loop, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.every_s)
            status = await loop.run_in_executor(None, self.check)
            if status.startswith("ok") != self.status.startswith("ok"):
                log.warning("Redis: %s", status)
            self.status = status

    def check(self) -> str:
        """ "ok" (with what was restored lately, if anything), or "unreachable: <why>"."""
        from store.redis_guard import RedisUnavailable

        try:
            with self.breaker:
                self.client.ping()
            for store in self.stores:
                store.recover()
        except RedisUnavailable as exc:
            return f"unreachable: {exc.reason}"[:300]
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, never raised
            detail = getattr(exc, "detail", "") or f"{type(exc).__name__}: {exc}"
            return f"unreachable: {detail}"[:300]
        # A store may have restored itself (its revision read found Redis empty): say so too.
        now = time.monotonic()
        notes = [
            f"{what} at {_clock_time(at)}"
            for store in self.stores
            for at, what in [store.recovered]
            if what and now - at < NOTE_S
        ]
        return f"ok (Redis had lost its data: {'; '.join(notes)})" if notes else "ok"

    def close(self) -> None:
        self.client.close()


def _clock_time(monotonic_at: float) -> str:
    at = datetime.now(UTC).timestamp() - (time.monotonic() - monotonic_at)
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def open_redis_health(settings, stores: list) -> RedisHealth:
    """The health check of ``settings.redis.url`` for ``stores``, with the API's bounds and breaker."""
    from store.redis_guard import breaker_for, redis_client

    return RedisHealth(
        redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
        breaker_for(settings.redis.url, settings.redis.breaker_s),
        stores,
        settings.redis.check_s,
    )
