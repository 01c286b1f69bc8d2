"""Bounded Redis calls: timeouts, no retry loops, and a circuit breaker per server.

redis-py 6+ retries a failed command three times with jittered backoff (up to
10 s between tries) by default: a read against a refused Redis blocked 6.7-9.2 s
(measured), and the API's event loop with it. Every client Tailor builds
(`client_options`) has connect and read timeouts and tries once.

A Redis that is down would still cost one timeout per call; the `Breaker` makes it
cost one per ``open_s`` instead: after a failure, calls fail at once with
`RedisUnavailable` until ``open_s`` passed, then one call probes the server (the
others keep failing fast) and a success closes the breaker. Every client of one
server in a process shares its breaker (`breaker_for`), so an outage seen by the
template store also spares the feature reads.

>>> b = Breaker("localhost:6379", open_s=1.0, clock=iter([0.0, 0.1, 0.5, 1.2, 1.3]).__next__)
>>> try:
...     with b:
...         raise ConnectionError("refused")
... except RedisUnavailable as exc:
...     print(exc)
Redis at localhost:6379 is unreachable (ConnectionError: refused)
>>> try:
...     with b:
...         pass  # not attempted: the breaker is open
... except RedisUnavailable:
...     print("failed fast")
failed fast
>>> with b:  # 1.2 s later: this call probes, and closes the breaker
...     pass
>>> b.failing
''
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: What a call to a Redis that is down, hung or gone raises (redis-py's and the socket's own).
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


class RedisUnavailable(RedisConnectionError):
    """Redis did not answer (or the breaker is open); ``reason`` says why in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Breaker:
    """Fails calls fast for ``open_s`` seconds after one failed (see the module docstring). Thread-safe."""

    def __init__(self, name: str, open_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        if not open_s >= 0:
            raise ValueError(f"TAILOR_REDIS_BREAKER_S must be 0 or more seconds, got {open_s}")
        self.name = name
        self.open_s = open_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = float("-inf")
        #: Why the last call failed, while failing ("" once a call succeeded).
        self.failing = ""
        #: Times the breaker opened (a healthy call closed it between two).
        self.openings = 0

    def __enter__(self) -> Breaker:
        with self._lock:
            now = self._clock()
            if self.failing:
                if now < self._open_until:
                    raise RedisUnavailable(self._reason())
                self._open_until = now + self.open_s  # this call probes; the others still fail fast
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            if self.failing:
                with self._lock:
                    self.failing, self._open_until = "", float("-inf")
            return False
        if isinstance(exc, RedisUnavailable):
            return False
        if isinstance(exc, OUTAGE_ERRORS):
            with self._lock:
                if not self.failing:
                    self.openings += 1
                self.failing = f"{type(exc).__name__}: {exc}"[:160]
                self._open_until = self._clock() + self.open_s
            raise RedisUnavailable(self._reason()) from exc
        return False

    def _reason(self) -> str:
        return f"Redis at {self.name} is unreachable ({self.failing})"


_breakers: dict[str, Breaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(url: str, open_s: float = 1.0) -> Breaker:
    """This process's breaker for the Redis at ``url`` (one per server, shared by its clients)."""
    address = url.split(",")[0].split("://")[-1].split("/")[0].rsplit("@", 1)[-1]
    with _breakers_lock:
        breaker = _breakers.get(address)
        if breaker is None:
            breaker = _breakers[address] = Breaker(address, open_s)
        return breaker


def client_options(timeout_ms: float, *, use_async: bool = False) -> dict[str, Any]:
    """redis-py keyword arguments: connect and read timeouts of ``timeout_ms``, one try per command."""
    if not timeout_ms > 0:
        raise ValueError(f"TAILOR_REDIS_TIMEOUT_MS must be a positive number of milliseconds, got {timeout_ms}")
    if use_async:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    from redis.backoff import NoBackoff

    timeout_s = timeout_ms / 1000
    return {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s, "retry": Retry(NoBackoff(), 0)}


class StoreUnavailable(Exception):
    """A store in Redis did not answer: the API answers 503 with ``detail``, which says so and to retry."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@contextmanager
def redis_call(breaker, what: str) -> Iterator[None]:
    """A Redis call through ``breaker`` (None: none); an outage becomes `StoreUnavailable` naming ``what``."""
    try:
        with breaker if breaker is not None else nullcontext():
            yield
    except RedisUnavailable as exc:
        raise StoreUnavailable(detail=f"the {what} is unavailable: {exc.reason}; retry in a few seconds") from None


def redis_client(url: str, *, use_async: bool = False, timeout_ms: float = 2000.0):
    """A redis-py client for ``url``: ``host:port[,password=...,db=N,ssl=true]`` (Feast's form) or ``redis://...``.

    ``use_async``: a ``redis.asyncio`` client (the copy cache's) instead of a blocking one.
    Every call waits at most ``timeout_ms`` to connect and for a reply, and is tried once
    (`store.redis_guard.client_options`): redis-py's own retries stalled a call for seconds.
    """
    import redis
    import redis.asyncio

    client = redis.asyncio.Redis if use_async else redis.Redis
    bounds = client_options(timeout_ms, use_async=use_async)
    if "://" in url:
        return client.from_url(url, **bounds)
    address, *options = url.split(",")
    host, _, port = address.rpartition(":")
    kwargs: dict[str, Any] = {"host": host or "localhost", "port": int(port or 6379), **bounds}
    for option in options:
        key, _, value = option.partition("=")
        key = key.strip()
        if key == "db":
            kwargs["db"] = int(value)
        elif key == "ssl":
            kwargs["ssl"] = value.strip().lower() in ("1", "true", "yes")
        elif key in ("password", "username"):
            kwargs[key] = value
        else:
            raise ValueError(f"TAILOR_REDIS_URL option {key!r} is not known: use password, username, db or ssl")
    return client(**kwargs)
