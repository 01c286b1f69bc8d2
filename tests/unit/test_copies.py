"""The copy store: generated copy by key and the queue of misses, in SQLite and in Redis."""

from __future__ import annotations

import pytest

from store.copies import CopyJob, RedisCopies, SQLiteCopies, copy_key

ITEM = {"item_id": "i-77", "title": "Trail Shoe", "price": 80.0}


def job(key: str, requested_ms: int = 1) -> CopyJob:
    return CopyJob(
        key=key,
        model_version="m1",
        template_id="headline-ai",
        template_version=1,
        style="bargain_hunter",
        slot="headline",
        tone="urgent",
        item=ITEM,
        requested_ms=requested_ms,
    )


def exercise(store, other) -> None:
    """What both backends must do; ``other`` is a second client of the same store (another replica)."""
    assert store.get_many(["a"]) == {} and store.count() == 0
    store.put_many({"a": "Hurry! Trail Shoe, today only", "b": "Shop now"})
    assert other.get_many(["a", "b", "c"]) == {"a": "Hurry! Trail Shoe, today only", "b": "Shop now"}
    assert other.get_many(["b"]) == {"b": "Shop now"} and other.count() == 2
    # Misses: queued once per key, never for a key already generated, taken oldest first.
    assert store.enqueue([job("c"), job("d"), job("a")]) == 2
    assert other.enqueue([job("c"), job("e")]) == 1
    assert store.queued() == 3
    taken = other.take(2)
    assert [j.key for j in taken] == ["c", "d"] and taken[0] == job("c")
    assert [j.key for j in store.take(10)] == ["e"] and store.take(10) == []
    assert store.enqueue([job("c")]) == 1  # taken, not generated yet: a later miss queues it again
    store.put_many({"a": "Last chance: Trail Shoe"})
    assert other.get_many(["a"]) == {"a": "Last chance: Trail Shoe"}


def test_sqlite_copies_are_shared_through_the_file(tmp_path):
    path = tmp_path / "copy.db"
    store, other = SQLiteCopies(path), SQLiteCopies(path)
    try:
        exercise(store, other)
    finally:
        store.close()
        other.close()


def test_a_read_never_waits_for_a_write_in_progress(tmp_path):
    """The API reads on its event loop while its worker thread queues misses; another process may hold the write lock."""
    import sqlite3
    import threading

    path = tmp_path / "copy.db"
    store = SQLiteCopies(path)
    store.put_many({"a": "Shop now"})
    holder = sqlite3.connect(path, isolation_level=None)  # the generator, mid-transaction
    holder.execute("BEGIN IMMEDIATE")
    queued = threading.Thread(target=store.enqueue, args=([job("q")],), daemon=True)
    try:
        queued.start()  # waits for the write lock, holding the store's write side
        queued.join(0.2)
        assert queued.is_alive(), "the queueing write should be waiting for the generator's lock"
        answers = []
        reader = threading.Thread(target=lambda: answers.append((store.get_many(["a"]), store.queued())), daemon=True)
        reader.start()
        reader.join(5)  # well under the 10 s busy timeout the write waits
        assert answers == [({"a": "Shop now"}, 0)], "a read waited for the write in progress"
    finally:
        holder.execute("COMMIT")
        holder.close()
        queued.join(10)
    assert store.queued() == 1
    store.close()


@pytest.mark.integration
def test_redis_copies_are_shared_through_redis(redis_server):
    from store.redis_guard import redis_client

    store = RedisCopies(redis_client(redis_server.url), prefix="test-copies:")
    other = RedisCopies(redis_client(redis_server.url), prefix="test-copies:")
    try:
        exercise(store, other)
    finally:
        store.close()
        other.close()


def test_keys_change_with_the_items_facts():
    same = copy_key("m1", "headline-ai", 1, "bargain_hunter", "headline", "urgent", ITEM)
    assert same == copy_key("m1", "headline-ai", 1, "bargain_hunter", "headline", "urgent", dict(ITEM))
    cheaper = copy_key("m1", "headline-ai", 1, "bargain_hunter", "headline", "urgent", ITEM | {"price": 70.0})
    assert cheaper != same and cheaper.startswith("m1|headline-ai@1|bargain_hunter|headline|urgent|i-77#")
