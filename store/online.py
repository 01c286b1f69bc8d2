"""Fast online reads for serving: a user's features and segment in about 0.1 ms.

``FeatureStore.get_online_features`` costs about 1.1 ms a call here (median,
SQLite; most of it resolving the request and running the on-demand view's
Python), which would cap a core at under 1,000 requests/s. The API instead asks
Feast's own online store (``provider.online_read``, the `OnlineStore` interface: the
SQLite store of `store.sqlite_online` or Redis, whatever ``feature_store.yaml`` and
``TAILOR_REDIS_URL`` configure) for the raw rows of ``user_activity_tiles``
and ``user_segment``, and finishes the windows with the very function the
``user_activity`` on-demand view runs (`engine.features.tiles.finish`). The values are
the ones a plain Feast client reads (a test checks it); only the overhead goes.

Segment profiles change at most once a second (the flow writes them), so they
are read through Feast and kept for `PROFILE_TTL_S`.

With Redis, every read is bounded (`store.redis_online`: timeouts, one try, the
server's circuit breaker); a read Redis cannot answer raises `StoreUnavailable`,
a 503 that says to retry, within about one timeout (one per breaker window while
Redis stays down, at once otherwise), so a dead Redis never holds the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from feast.errors import FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key

from engine.audience.segments import SegmentProfile
from engine.experiments.exposures import ArmCounters
from engine.features.tiles import finish
from store.feast import (
    ARM_FEATURES,
    ARM_FLOATS,
    ARM_VIEW,
    FIRST_ARM,
    FIRST_EXPOSURE_VIEW,
    SEGMENT_FEATURES,
    SEGMENT_VIEW,
    TILES_VIEW,
    arm_entity_key,
    first_exposure_key,
    user_key,
)
from store.redis_guard import RedisUnavailable, StoreUnavailable
from store.sqlite_online import TailorSqliteOnlineStore

log = logging.getLogger("tailor.api")

#: Seconds a read of the segment profiles is reused.
PROFILE_TTL_S = 2.0


@contextmanager
def _answering() -> Iterator[None]:
    try:
        yield
    except RedisUnavailable as exc:
        raise StoreUnavailable(
            detail=f"the online feature store is unavailable: {exc.reason}; retry in a few seconds"
        ) from None


class UserSegment(msgspec.Struct, frozen=True):
    segment: int
    distance: float | None
    model_version: int


class OnlineReader:
    """Reads one user's features and segment from the Feast online store.

    Not thread-safe with a SQLite store (Feast shares one connection): call it
    from one thread, the event loop's (a read takes about 0.1 ms).
    """

    def __init__(self, store, n_segments: int):
        self._store = store
        self._provider = store.provider
        self._config = store.config
        self._tiles = store.get_feature_view(TILES_VIEW)
        online = getattr(self._provider, "online_store", None)
        self._sqlite = online if isinstance(online, TailorSqliteOnlineStore) else None
        self._key_version = self._config.entity_key_serialization_version
        self._segments = store.get_feature_view(SEGMENT_VIEW) if n_segments else None
        try:
            self._first = store.get_feature_view(FIRST_EXPOSURE_VIEW)
        except FeatureViewNotFoundException:  # a repository applied before it existed
            log.warning(
                "no %s view in the feature repository (run `tailor apply`): after an "
                "allocation change, users already assigned to an experiment may change arms",
                FIRST_EXPOSURE_VIEW,
            )
            self._first = None
        self._n_segments = n_segments
        self._profiles: dict[int, SegmentProfile] = {}
        self._profiles_read = float("-inf")

    def features(self, user_id: str, now_ms: int | None = None) -> tuple[dict[str, Any], UserSegment | None]:
        """The finished activity features of ``user_id`` (a pseudonym) as of ``now_ms``, and its segment."""
        with _answering():
            return self._features(user_id, now_ms)

    def _read(self, view, key, key_bin: bytes | None, features: list[str]) -> dict | None:
        if key_bin is not None:  # Tailor's SQLite store: one lean read (store.sqlite_online)
            return self._sqlite.read_values(self._config, view, key_bin)
        return self._provider.online_read(self._config, view, [key], features)[0][1]

    def _features(self, user_id: str, now_ms: int | None) -> tuple[dict[str, Any], UserSegment | None]:
        key = user_key(user_id)
        key_bin = None
        if self._sqlite is not None:
            key_bin = serialize_entity_key(key, entity_key_serialization_version=self._key_version)
        row = self._read(self._tiles, key, key_bin, ["state"])
        state = row["state"].bytes_val if row and "state" in row else None
        features = finish(state, int(time.time() * 1000) if now_ms is None else now_ms)
        segment = None
        if self._segments is not None:
            seg = self._read(self._segments, key, key_bin, list(SEGMENT_FEATURES))
            if seg and seg.get("segment") is not None and seg["segment"].HasField("int64_val"):
                distance = seg.get("segment_distance")
                segment = UserSegment(
                    seg["segment"].int64_val,
                    distance.double_val if distance is not None and distance.HasField("double_val") else None,
                    seg["model_version"].int64_val if "model_version" in seg else 0,
                )
        return features, segment

    def first_arm(self, user_id: str, experiment: str) -> str | None:
        """The arm of ``user_id``'s first exposure in ``experiment``, as the flow recorded it (None: none yet)."""
        if self._first is None:
            return None
        key = first_exposure_key(user_id, experiment)
        with _answering():
            _, row = self._provider.online_read(self._config, self._first, [key], [FIRST_ARM])[0]
        arm = row.get(FIRST_ARM) if row else None
        return arm.string_val if arm is not None and arm.HasField("string_val") else None

    def profiles(self) -> dict[int, SegmentProfile]:
        """Segment id -> profile, re-read through Feast at most every `PROFILE_TTL_S` seconds.

        While the store cannot answer, the last profiles read are served (they change
        slowly); with none read yet, `StoreUnavailable`.
        """
        now = time.monotonic()
        if self._n_segments and now - self._profiles_read >= PROFILE_TTL_S:
            from store.feast import read_profiles

            try:
                self._profiles = {p.segment: p for p in read_profiles(self._store, self._n_segments)}
            except RedisUnavailable:
                if not self._profiles:
                    with _answering():
                        raise
            self._profiles_read = now
        return self._profiles


def read_arm_counters(store, experiment: str, variants: list[str]) -> dict[str, ArmCounters]:
    """Each variant's counters in ``experiment``, as the flow last wrote them; zeros for a row not written.

    Reads the provider's online store directly (Feast's ``online_read``, SQLite or
    Redis): the values ``FeatureStore.get_online_features`` returns, without its
    per-call overhead.
    """
    view = store.get_feature_view(ARM_VIEW)
    keys = [arm_entity_key(experiment, v) for v in variants]
    rows = store.provider.online_read(store.config, view, keys, list(ARM_FEATURES))
    out = {}
    for variant, (_, row) in zip(variants, rows):
        counters = ArmCounters(experiment=experiment, variant=variant)
        for name, value in (row or {}).items():
            if name in ARM_FLOATS:
                if value.HasField("double_val"):
                    setattr(counters, name, value.double_val)
            elif value.HasField("int64_val"):
                setattr(counters, name, value.int64_val)
        out[variant] = counters
    return out
