"""Feast's Redis online store with bounded calls: what ``TAILOR_REDIS_URL`` selects (`store.feast.open_store`).

Feast builds its redis-py client from ``connection_string`` alone, with redis-py's
defaults: no socket timeouts and three retries with backoff, so a read against a
refused Redis blocked for 6.7-9.2 s. Through Feast's extension point (an
`OnlineStore` subclass named by its import path in the store's config), this one
builds the client with Tailor's timeouts and a single try (`store.redis_guard`),
and sends every read and write through the server's circuit breaker: during an
outage a call fails with `RedisUnavailable` at once instead of waiting again.
The data layout, the keys and everything a plain Feast client reads are Feast's own.
"""

from __future__ import annotations

from typing import Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, RedisType
from redis import Redis

from store.redis_guard import breaker_for, client_options

#: The ``type`` of the online store in a Feast config.
STORE_TYPE = "store.redis_online.TailorRedisOnlineStore"


class TailorRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis config, plus the bound of each call and the breaker's open time."""

    type: Literal["store.redis_online.TailorRedisOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    #: Longest a connect or a reply may take (TAILOR_REDIS_TIMEOUT_MS, or the flow's write timeout).
    timeout_ms: float = 50.0
    #: After a failure, calls fail fast this long before one probes the server again.
    breaker_s: float = 1.0


class TailorRedisOnlineStore(RedisOnlineStore):
    """`RedisOnlineStore` whose client has timeouts and no retries, behind a circuit breaker (plain Redis only)."""

    def _get_client(self, online_store_config: TailorRedisOnlineStoreConfig):
        if not self._client:
            if online_store_config.redis_type != RedisType.redis:
                raise ValueError(
                    "Tailor's bounded Redis store supports a single Redis server: "
                    "set TAILOR_REDIS_URL to host:port[,password=...,db=N,ssl=true]"
                )
            nodes, kwargs = self._parse_connection_string(online_store_config.connection_string)
            kwargs.update(client_options(online_store_config.timeout_ms))
            self._client = Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **kwargs)
        return self._client

    def _breaker(self, config):
        store = config.online_store
        return breaker_for(store.connection_string, store.breaker_s)

    def _read_hash_fields(self, config, commands):
        # Every synchronous read (online_read and get_online_features) comes through here.
        with self._breaker(config):
            return super()._read_hash_fields(config, commands)

    def online_write_batch(self, config, table, data, progress) -> None:
        with self._breaker(config):
            return super().online_write_batch(config, table, data, progress)
