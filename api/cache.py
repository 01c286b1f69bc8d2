"""Generated copy as the API reads it: an in-process LRU in front of the shared copy store.

The API never generates copy. The background generator (jobs/copy_generator.py, its
own process) writes every snippet into the copy store (store/copies.py: a SQLite file
by default, Redis with ``TAILOR_REDIS_URL``), so each API replica reads what it wrote.
A snippet depends on the model version, the template version, the segment style, the
slot, the tone and the featured item's facts, and on nothing about the user: that
tuple is the key (`store.copies.copy_key`).

A lookup is the LRU (no I/O: the common case), else one read of the store (tens of
microseconds on SQLite), which the LRU then keeps. A key nobody generated yet is a
miss: `CopyCache.request` queues its job, and a background task hands the queued jobs
to the store in one write every `FLUSH_S`, so a request never waits for it. A key
already requested is not queued again for `REQUEUE_S` (the generator may be busy
warming a new model). While the store cannot answer (a Redis outage), a lookup is a
miss and the queue keeps its jobs for the next flush: personalize still answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

log = logging.getLogger("tailor.api")

#: How often queued misses go to the copy store (one write for all of them).
FLUSH_S = 0.02
#: A missed key is queued again after this long if still not generated (a lost job, a restarted generator).
REQUEUE_S = 30.0
#: Most misses held for the next flush; beyond it, new ones wait for a later request.
MAX_PENDING = 10_000


class CopyCache:
    """LRU of at most ``size`` snippets in front of ``store`` (a `store.copies.CopyStore`).

    >>> class Store:
    ...     texts = {"k1": "Hurry: 20% off"}
    ...     def get_many(self, keys): return {k: self.texts[k] for k in keys if k in self.texts}
    >>> cache = CopyCache(Store(), 2)
    >>> cache.get("k1"), cache.get("k2"), len(cache)
    ('Hurry: 20% off', None, 1)
    """

    def __init__(self, store, size: int):
        if size < 1:
            raise ValueError(f"TAILOR_COPY_CACHE_SIZE must be at least 1, got {size}")
        self.store = store
        self.size = size
        self._lru: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, object] = {}  # key -> CopyJob, for the next flush
        self._requested: dict[str, float] = {}  # key -> when it was last queued (monotonic)
        self._failing = False

    def get(self, key: str) -> str | None:
        """The snippet for ``key``: from the LRU, else the store (kept in the LRU), else None."""
        text = self._lru.get(key)
        if text is not None:
            self._lru.move_to_end(key)
            return text
        try:
            text = self.store.get_many([key]).get(key)
        except Exception as exc:  # noqa: BLE001 - the store is a cache here: a miss, never a 500
            self._report(exc)
            return None
        if text is not None:
            self._remember(key, text)
            self._requested.pop(key, None)
        return text

    def request(self, job) -> bool:
        """Queue ``job`` (a `store.copies.CopyJob`) for the generator; False if it was queued recently."""
        now = time.monotonic()
        if now - self._requested.get(job.key, -REQUEUE_S) < REQUEUE_S or len(self._pending) >= MAX_PENDING:
            return False
        self._requested[job.key] = now
        self._pending[job.key] = job
        if len(self._requested) > 4 * MAX_PENDING:  # forget the oldest requests: a bounded memory
            for key in list(self._requested)[:MAX_PENDING]:
                del self._requested[key]
        return True

    def flush(self) -> int:
        """Hand the queued misses to the store (a worker thread's call); how many went."""
        if not self._pending:
            return 0
        jobs = list(self._pending.values())
        try:
            self.store.enqueue(jobs)
        except Exception as exc:  # noqa: BLE001 - kept for the next flush
            self._report(exc)
            return 0
        for job in jobs:
            if self._pending.get(job.key) is job:
                del self._pending[job.key]
        if self._failing:
            log.warning("the copy store takes queued misses again")
            self._failing = False
        return len(jobs)

    async def flush_forever(self, every_s: float = FLUSH_S) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s)
            if self._pending:
                await loop.run_in_executor(None, self.flush)

    def _report(self, exc: Exception) -> None:
        if not self._failing:  # once per outage
            log.warning(
                "the copy store does not answer (%s: %s); serving default copy for misses", type(exc).__name__, exc
            )
            self._failing = True

    def _remember(self, key: str, text: str) -> None:
        self._lru[key] = text
        if len(self._lru) > self.size:
            self._lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)
