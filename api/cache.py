"""The cache of generated copy: a bounded in-process LRU, and Redis when configured.

A snippet depends on the model version, the template version, the segment style
the prompt names, the slot, the tone and the featured item, and on nothing about
the user: that tuple is the key (`copy_key`), and only the user-specific parts
of a response (the caller's context) are rendered per request. The raw generated
text is cached; grounding in the item's facts and the brand rules run per request
(tens of microseconds), so a changed price or rule applies at once, and copy that
fails them is not re-generated on every request. Redis (``TAILOR_COPY_CACHE_REDIS_TTL_S`` > 0 with ``TAILOR_REDIS_URL``)
lets API replicas share what any of them generated; the LRU stays in front of it.
Redis is only a cache here: while it cannot answer (each call bounded by the
client's timeout, and skipped at once while the server's breaker is open), a
lookup is a miss and a store is skipped, so personalize still answers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import nullcontext

import msgspec

log = logging.getLogger("tailor.api")


class CachedCopy(msgspec.Struct, frozen=True, array_like=True):
    """A generated snippet, as the model wrote it."""

    text: str


def copy_key(
    model_version: str, template_id: str, template_version: int, style: str, slot: str, tone: str, item_id: str | None
) -> str:
    """The cache key of one generated snippet.

    >>> copy_key("m1", "headline-ai", 2, "bargain_hunter", "headline", "urgent", None)
    'm1|headline-ai@2|bargain_hunter|headline|urgent|-'
    """
    return f"{model_version}|{template_id}@{template_version}|{style}|{slot}|{tone}|{item_id or '-'}"


class CopyCache:
    """LRU of at most ``size`` snippets, optionally backed by Redis (``redis``: a redis.asyncio client).

    >>> import asyncio
    >>> cache = CopyCache(2)
    >>> async def demo():
    ...     await cache.put("a", CachedCopy("one")); await cache.put("b", CachedCopy("two"))
    ...     await cache.get("a"); await cache.put("c", CachedCopy("three"))  # "b" is least recent
    ...     return [await cache.get(k) for k in "abc"]
    >>> asyncio.run(demo())
    [CachedCopy(text='one'), None, CachedCopy(text='three')]
    """

    def __init__(self, size: int, *, redis=None, ttl_s: int = 0, prefix: str = "tailor:copy:", breaker=None):
        if size < 1:
            raise ValueError(f"TAILOR_COPY_CACHE_SIZE must be at least 1, got {size}")
        self.size = size
        self._lru: OrderedDict[str, CachedCopy] = OrderedDict()
        self._redis = redis
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._breaker = breaker
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> CachedCopy | None:
        """The LRU's entry (no I/O: the common case), else Redis's, which the LRU then keeps."""
        value = self._lru.get(key)
        if value is not None:
            self._lru.move_to_end(key)
        elif self._redis is not None:
            raw = await self._shared("get", self._prefix + key)
            if raw is not None:
                value = _decoder.decode(raw)
                self._remember(key, value)
        return value

    async def put(self, key: str, value: CachedCopy) -> None:
        self._remember(key, value)
        if self._redis is not None:
            await self._shared("set", self._prefix + key, _encoder.encode(value), ex=self._ttl_s)

    async def _shared(self, command: str, *args, **kwargs):
        """One Redis command, or None if Redis cannot answer now (the in-process LRU carries on)."""
        from store.redis_guard import OUTAGE_ERRORS, RedisUnavailable

        try:
            with self._breaker if self._breaker is not None else nullcontext():
                return await getattr(self._redis, command)(*args, **kwargs)
        except RedisUnavailable:
            return None
        except OUTAGE_ERRORS as exc:  # no breaker: every call pays its timeout, but still answers
            log.debug("copy cache: Redis %s failed: %s", command, exc)
            return None

    def _remember(self, key: str, value: CachedCopy) -> None:
        self._lru[key] = value
        self._lru.move_to_end(key)
        if len(self._lru) > self.size:
            self._lru.popitem(last=False)

    def __len__(self) -> int:
        return len(self._lru)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedCopy)
