"""The API's copy cache: the LRU in front of the copy store, and misses queued for the generator."""

from __future__ import annotations

from types import SimpleNamespace

from api.cache import MAX_PENDING, CopyCache


class Store:
    """A copy store in memory that can be made to fail (a Redis outage)."""

    def __init__(self):
        self.texts: dict[str, str] = {}
        self.queued: list = []
        self.reads = 0
        self.down = False

    def get_many(self, keys):
        self.reads += 1
        if self.down:
            raise ConnectionError("redis is down")
        return {k: self.texts[k] for k in keys if k in self.texts}

    def enqueue(self, jobs):
        if self.down:
            raise ConnectionError("redis is down")
        self.queued += jobs
        return len(jobs)


def job(key: str):
    return SimpleNamespace(key=key)


def test_a_hit_is_read_from_the_store_once_then_from_the_lru():
    store = Store()
    store.texts["k"] = "Hurry: 20% off"
    cache = CopyCache(store, 8)
    assert cache.get("k") == cache.get("k") == "Hurry: 20% off"
    assert store.reads == 1
    assert cache.get("missing") is None and cache.get("missing") is None
    assert store.reads == 3  # a miss asks the store each time: the generator may have written it since


def test_misses_are_queued_once_and_flushed_in_one_write():
    store = Store()
    cache = CopyCache(store, 8)
    assert cache.request(job("a")) and cache.request(job("b"))
    assert not cache.request(job("a"))  # queued a moment ago
    assert store.queued == []  # nothing written on the request path
    assert cache.flush() == 2 and [j.key for j in store.queued] == ["a", "b"]
    assert not cache.request(job("a"))  # still within REQUEUE_S
    assert cache.flush() == 0


def test_a_store_that_cannot_answer_is_a_miss_and_keeps_the_queue():
    store = Store()
    cache = CopyCache(store, 8)
    store.down = True
    assert cache.get("k") is None
    assert cache.request(job("k"))
    assert cache.flush() == 0  # kept for the next flush
    store.down = False
    assert cache.flush() == 1 and [j.key for j in store.queued] == ["k"]


def test_the_queue_is_bounded():
    store = Store()
    store.down = True
    cache = CopyCache(store, 8)
    accepted = sum(cache.request(job(f"k{i}")) for i in range(MAX_PENDING + 5))
    assert accepted == MAX_PENDING
