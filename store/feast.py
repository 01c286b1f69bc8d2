"""The Feast side of Tailor: view names and keys, opening the store, the writer, training sets.

View, feature and entity-key names come from the definitions in `feature_repo.features`,
typed there once. Online writes skip Feast's DataFrame layer (see `FeatureWriter`); the
same rows go to Parquet parts under the offline source, for training sets. With Redis, a
write Redis cannot take is retried with backoff until it lands (never dropped).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, OnDemandFeatureView, RepoConfig
from feast.data_source import DataSource
from feast.errors import FeatureViewNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Float64

from config.settings import Settings
from engine.audience.audience import SegmentAssignment
from engine.audience.segments import SegmentProfile
from engine.experiments.exposures import ArmCounters, FirstExposure
from engine.features.tiles import FEATURES, UserActivity, finish
from feature_repo import features as definitions
from store import metrics
from store.redis_guard import OUTAGE_ERRORS
from store.sqlite_online import STORE_TYPE as SQLITE_STORE_TYPE
from store.sqlite_online import TailorSqliteOnlineStore

log = logging.getLogger("tailor.flow")

TILES_VIEW = definitions.user_activity_tiles_fv.name
SEGMENT_VIEW = definitions.user_segment_fv.name
PROFILE_VIEW = definitions.segment_profile_fv.name
ARM_VIEW = definitions.experiment_arm_fv.name
FIRST_EXPOSURE_VIEW = definitions.user_experiment_fv.name
#: The finished activity features (on demand, over `TILES_VIEW`) and the service Feast clients read them by.
ACTIVITY_VIEW = definitions.user_activity.name
ACTIVITY_SERVICE = definitions.user_activity_v1.name
#: Entity join keys.
USER_ID = definitions.user.join_key
SEGMENT_ID = definitions.segment.join_key
EXPERIMENT_ID = definitions.experiment.join_key
VARIANT = definitions.variant.join_key
#: The user_segment and segment_profile features, in schema order.
SEGMENT_FEATURES = tuple(f.name for f in definitions.user_segment_fv.features)
PROFILE_FEATURES = tuple(f.name for f in definitions.segment_profile_fv.features)
#: The experiment_arm features, in schema (and `ArmCounters` field) order; Int64 unless in `ARM_FLOATS`.
ARM_FEATURES = tuple(f.name for f in definitions.experiment_arm_fv.features)
ARM_FLOATS = frozenset(f.name for f in definitions.experiment_arm_fv.features if f.dtype == Float64)
#: The user_experiment feature holding the user's first arm.
FIRST_ARM = "arm"
#: The Feast object kinds `apply_definitions` registers (what ``feast apply`` finds in a repo).
_DEFINITION_KINDS = (Entity, DataSource, FeatureView, OnDemandFeatureView, FeatureService)
_DEFAULT_REPO = Path(Settings().store.feature_repo)
OFFLINE_SCHEMA = pa.schema(
    [
        (USER_ID, pa.string()),
        ("event_timestamp", pa.timestamp("ms", tz="UTC")),
        ("created", pa.timestamp("ms", tz="UTC")),
        ("state", pa.binary()),
    ]
)


def open_store(settings: Settings, *, redis_timeout_ms: float | None = None) -> FeatureStore:
    """The Feast store of ``settings.store.feature_repo``, on Redis when ``redis_url`` is set.

    Otherwise the online store is Tailor's SQLite store (`store.sqlite_online`), which
    ``feature_store.yaml`` names; a yaml naming Feast's plain ``sqlite`` gets it too.

    Redis calls wait at most ``redis_timeout_ms`` (default ``settings.redis.timeout_ms``)
    and go through the server's circuit breaker (`store.redis_online`).
    """
    repo = Path(settings.store.feature_repo)
    yaml_path = repo / "feature_store.yaml"
    if not yaml_path.is_file():
        raise FileNotFoundError(f"no feature_store.yaml in {repo}: set TAILOR_FEATURE_REPO to a Feast repository")
    raw = yaml.safe_load(os.path.expandvars(yaml_path.read_text()))
    if settings.redis.url:
        # skip_dedup: every write is the user's newest state, so the read-before-write
        # timestamp check Feast would do costs a round trip and saves nothing.
        from store.redis_online import STORE_TYPE

        raw["online_store"] = {
            "type": STORE_TYPE,
            "connection_string": settings.redis.url,
            "skip_dedup": True,
            "timeout_ms": redis_timeout_ms or settings.redis.timeout_ms,
            "breaker_s": settings.redis.breaker_s,
        }
    elif (online := raw.get("online_store")) is None or isinstance(online, dict) and _is_feast_sqlite(online):
        # A repository whose feature_store.yaml names Feast's own SQLite store (one copied
        # before Tailor's existed): the same file and tables, plus the flow's fast write.
        raw["online_store"] = {**(online or {}), "type": SQLITE_STORE_TYPE}
    (repo / "data").mkdir(exist_ok=True)
    return FeatureStore(repo_path=str(repo), config=RepoConfig(repo_path=repo, **raw))


def _is_feast_sqlite(online_store: dict) -> bool:
    return online_store.get("type", "sqlite") == "sqlite"  # Feast's default type


def new_repo(settings: Settings, folder: str | os.PathLike) -> Settings:
    """A Feast repo in ``folder`` (Tailor's feature_store.yaml, definitions applied).

    Returns ``settings`` pointing at it: the same topics, a store with no data.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(_DEFAULT_REPO / "feature_store.yaml", folder)
    fresh = settings.replace(feature_repo=str(folder))
    apply_definitions(open_store(fresh))
    return fresh


def apply_definitions(store: FeatureStore) -> None:
    """Register Tailor's entities, sources, views and services (what ``feast apply`` does).

    They are the Feast objects `feature_repo.features` defines, found by kind as ``feast apply``
    finds them, so a definition added there is registered without a second list here.
    """
    objects = [obj for obj in vars(definitions).values() if isinstance(obj, _DEFINITION_KINDS)]
    store.apply(objects)
    offline_dir(store).mkdir(parents=True, exist_ok=True)


def reset_feature_data(store: FeatureStore) -> None:
    """Drop what the flow wrote (online tables, offline parts); definitions stay."""
    try:
        offline = offline_dir(store)
    except FeatureViewNotFoundException:
        return  # never applied: nothing written yet
    store.teardown()
    shutil.rmtree(offline, ignore_errors=True)


def offline_dir(store: FeatureStore) -> Path:
    source = store.get_feature_view(TILES_VIEW).batch_source
    return Path(store.repo_path) / source.path


def run_apply(settings: Settings, args) -> int:
    if args.repo:
        settings = Settings.from_env(feature_repo=args.repo)
    apply_definitions(open_store(settings))
    print(f"applied Tailor's feature definitions to {settings.store.feature_repo}")
    return 0


class FeatureWriter:
    """Writes users' packed tiles to the online store and buffers offline rows.

    `write` is one online transaction for all the users given. On SQLite it
    hands rows serialized here to `TailorSqliteOnlineStore.write_rows`, one
    ``executemany`` (Feast's ``online_write_batch`` costs ~10x more, measured in
    bench/ingest); any other online store (Redis) goes through Feast's
    ``online_write_batch``, retried with backoff
    (0.1 s doubling to ``TAILOR_REDIS_RETRY_MAX_S``) while Redis cannot take it:
    the flow waits for Redis instead of exiting, and loses nothing (every row is
    a user's newest state or an absolute counter, so a write that landed before
    its reply was lost is simply written again). Offline rows go to a new
    Parquet part on `flush_offline` or when the buffer is full.
    """

    def __init__(self, settings: Settings, store: FeatureStore | None = None, offline: bool = True):
        self.store = store or open_store(settings, redis_timeout_ms=settings.redis.write_timeout_ms)
        self.retry_max_s = settings.redis.retry_max_s
        self.view = self.store.get_feature_view(TILES_VIEW)
        self.config = self.store.config
        self.online = self.store.provider.online_store
        self.offline = offline
        self.offline_path = offline_dir(self.store)
        self.offline_flush_rows = settings.flow.offline_flush_rows
        self._offline_rows: list[tuple] = []
        self._entity_keys: dict[str, bytes] = {}
        # Tailor's SQLite store takes serialized rows (`write_rows`); None for any other.
        self._sqlite = self.online if isinstance(self.online, TailorSqliteOnlineStore) else None
        if self._sqlite is not None:
            self._sqlite.prepare_writes(self.config)
        self._views = {}  # other views, looked up by warm_up (or when first written)

    def warm_up(self) -> None:
        """Do now what the first writes would do lazily, so that the first event is written at once.

        Looks every view up (an unregistered one fails here, at start-up, saying what to
        run), reads one absent row of each through the online store (its connection and
        tables, or Redis, answer now) and runs protobuf's and Parquet's first encodings.
        A Redis that cannot answer yet is waited for, with the writes' backoff.
        """
        keys = {
            TILES_VIEW: user_key(""),
            SEGMENT_VIEW: user_key(""),
            PROFILE_VIEW: segment_key(-1),
            ARM_VIEW: arm_entity_key("", ""),
            FIRST_EXPOSURE_VIEW: first_exposure_key("", ""),
        }
        for name, key in keys.items():
            view = self.view if name == TILES_VIEW else self._view(name)
            self._retrying(
                f"start-up read of {name}", lambda: self.online.online_read(self.config, view, [key]), count=False
            )
        self._entity_key_bin("")
        Value(bytes_val=b"").SerializeToString()
        pq.write_table(OFFLINE_SCHEMA.empty_table(), pa.BufferOutputStream())

    def _view(self, name: str):
        view = self._views.get(name)
        if view is None:
            try:
                view = self._views[name] = self.store.get_feature_view(name)
            except FeatureViewNotFoundException:
                raise RuntimeError(
                    f"feature view {name!r} is not registered in {self.store.repo_path}: "
                    "run `tailor apply` to register Tailor's definitions"
                ) from None
        return view

    def _entity_key_bin(self, user_id: str) -> bytes:
        key = self._entity_keys.get(user_id)
        if key is None:
            if len(self._entity_keys) > 1_000_000:
                self._entity_keys.clear()
            key = serialize_entity_key(
                user_key(user_id), entity_key_serialization_version=self.config.entity_key_serialization_version
            )
            self._entity_keys[user_id] = key
        return key

    def write(self, users: dict[str, UserActivity]) -> None:
        if not users:
            return
        now_ms = int(time.time() * 1000)
        packed = [(user_id, state.newest_ms, state.packed()) for user_id, state in users.items()]
        if self._sqlite is not None:
            now_s = now_ms // 1000
            rows = [
                (self._entity_key_bin(u), "state", Value(bytes_val=blob).SerializeToString(), ts // 1000, now_s)
                for u, ts, blob in packed
            ]
            self._sqlite.write_rows(self.config, self.view, rows)
        else:
            now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
            data = [
                (user_key(u), {"state": Value(bytes_val=blob)}, datetime.fromtimestamp(ts / 1000, tz=UTC), now)
                for u, ts, blob in packed
            ]
            self._online_write(self.view, data)
        if self.offline:
            self._offline_rows.extend((u, ts, now_ms, blob) for u, ts, blob in packed)
            if len(self._offline_rows) >= self.offline_flush_rows:
                self.flush_offline()

    def write_segments(self, users: dict[str, SegmentAssignment]) -> None:
        """Users' segments into ``user_segment`` (one transaction)."""
        if not users:
            return
        view = self._view(SEGMENT_VIEW)
        if self._sqlite is not None:
            # The common case, kept lean: serialized Values built directly (see _int64_value).
            now_s = int(time.time())
            flat = []
            for u, a in users.items():
                key, ts = self._entity_key_bin(u), a.ts // 1000
                flat.append((key, "segment", _int64_value(a.segment), ts, now_s))
                flat.append((key, "segment_distance", _double_value(a.distance), ts, now_s))
                flat.append((key, "model_version", _int64_value(a.model_version), ts, now_s))
            self._sqlite.write_rows(self.config, view, flat)
        else:
            self._upsert(view, [(user_key(u), a.ts, _segment_values(a)) for u, a in users.items()])

    def write_profiles(self, profiles: list[SegmentProfile]) -> None:
        """Segment profiles into ``segment_profile`` (entity: segment id)."""
        now_ms = int(time.time() * 1000)
        rows = []
        for p in profiles:
            rows.append(
                (
                    segment_key(p.segment),
                    now_ms,
                    {
                        "label": Value(string_val=p.label),
                        "size": Value(int64_val=p.size),
                        "share": Value(double_val=p.share),
                        "centre": Value(string_val=msgspec.json.encode(p.centre).decode()),
                        "model_version": Value(int64_val=p.model_version),
                    },
                )
            )
        self._upsert(self._view(PROFILE_VIEW), rows)

    def write_arms(self, arms: dict[str, ArmCounters]) -> None:
        """Experiment arms' absolute counters into ``experiment_arm`` (one transaction).

        The values are absolute, so writing a row again (a replay) changes nothing.
        """
        if not arms:
            return
        rows = []
        for counters in arms.values():
            values = {
                name: Value(double_val=getattr(counters, name))
                if name in ARM_FLOATS
                else Value(int64_val=getattr(counters, name))
                for name in ARM_FEATURES
            }
            rows.append((arm_entity_key(counters.experiment, counters.variant), counters.updated_ms, values))
        self._upsert(self._view(ARM_VIEW), rows)

    def write_first_exposures(self, firsts: Iterable[FirstExposure]) -> None:
        """Users' first arms into ``user_experiment`` (one transaction); a replay writes the same rows."""
        rows = [
            (
                first_exposure_key(first.user_id, first.experiment),
                first.exposed_ms,
                {FIRST_ARM: Value(string_val=first.variant), "exposed_ms": Value(int64_val=first.exposed_ms)},
            )
            for first in firsts
        ]
        if rows:
            self._upsert(self._view(FIRST_EXPOSURE_VIEW), rows)

    def _upsert(self, view, rows: list[tuple[EntityKey, int, dict[str, Value]]]) -> None:
        """Rows of (entity key, event ms, {feature: Value}) into an online view.

        SQLite takes the serialized key (made here), any other store the EntityKey.
        """
        now_ms = int(time.time() * 1000)
        if self._sqlite is not None:
            version = self.config.entity_key_serialization_version
            self._sqlite.write_rows(
                self.config,
                view,
                [
                    (key_bin, name, value.SerializeToString(), ts // 1000, now_ms // 1000)
                    for key, ts, values in rows
                    for key_bin in (serialize_entity_key(key, entity_key_serialization_version=version),)
                    for name, value in values.items()
                ],
            )
        else:
            now = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
            data = [(key, values, datetime.fromtimestamp(ts / 1000, tz=UTC), now) for key, ts, values in rows]
            self._online_write(view, data)

    def _online_write(self, view, data: list) -> None:
        """``online_write_batch``, retried with backoff until it lands (see the class docstring)."""
        self._retrying(
            f"online write of {len(data)} {view.name} rows",
            lambda: self.online.online_write_batch(self.config, view, data, None),
        )

    def _retrying(self, what: str, call, count: bool = True) -> None:
        """``call()`` until the online store takes it: backoff from 0.1 s doubling to `retry_max_s`, each retry
        logged (and counted in tailor_online_write_retries_total when ``count``)."""
        delay, failures = 0.1, 0
        while True:
            try:
                call()
                break
            except OUTAGE_ERRORS as exc:
                failures += 1
                if count:
                    metrics.ONLINE_WRITE_RETRIES.inc()
                log.warning("%s failed (%s): retrying in %.1f s (retry %d)", what, exc, delay, failures)
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
        if failures:
            log.warning("%s landed after %d retries", what, failures)

    def flush_offline(self) -> None:
        if not self._offline_rows:
            return
        columns = list(zip(*self._offline_rows))
        table = pa.Table.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, OFFLINE_SCHEMA)], schema=OFFLINE_SCHEMA
        )
        self.offline_path.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.offline_path / f".{name}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.offline_path / name)  # readers never see half a file
        metrics.OFFLINE_ROWS.inc(len(self._offline_rows))
        self._offline_rows.clear()

    def close(self) -> None:
        self.flush_offline()


# Feast's Value proto, serialized by hand for the two kinds the segment rows use
# (int64_val is field 4, a varint; double_val is field 5, 8 bytes little-endian).
# Four times cheaper than building and serializing a message; a test pins them
# to protobuf's own encoding.
_INT64_VALUES: dict[int, bytes] = {}


def _int64_value(n: int) -> bytes:
    encoded = _INT64_VALUES.get(n)
    if encoded is None:
        encoded = Value(int64_val=n).SerializeToString()
        if len(_INT64_VALUES) < 4096:
            _INT64_VALUES[n] = encoded
    return encoded


def _double_value(x: float) -> bytes:
    return b")" + struct.pack("<d", x)


def _segment_values(a: SegmentAssignment) -> dict[str, Value]:
    return {
        "segment": Value(int64_val=a.segment),
        "segment_distance": Value(double_val=a.distance),
        "model_version": Value(int64_val=a.model_version),
    }


def user_key(user_id: str) -> EntityKey:
    """The ``user_activity_tiles`` and ``user_segment`` row key of one user (a pseudonym)."""
    return EntityKey(join_keys=[USER_ID], entity_values=[Value(string_val=user_id)])


def segment_key(segment: int) -> EntityKey:
    """The ``segment_profile`` row key of one segment."""
    return EntityKey(join_keys=[SEGMENT_ID], entity_values=[Value(int64_val=segment)])


def arm_entity_key(experiment: str, variant: str) -> EntityKey:
    """The ``experiment_arm`` row key of one (experiment, variant)."""
    return EntityKey(
        join_keys=[EXPERIMENT_ID, VARIANT], entity_values=[Value(string_val=experiment), Value(string_val=variant)]
    )


def first_exposure_key(user_id: str, experiment: str) -> EntityKey:
    """The ``user_experiment`` row key of one (user, experiment)."""
    return EntityKey(
        join_keys=[EXPERIMENT_ID, USER_ID], entity_values=[Value(string_val=experiment), Value(string_val=user_id)]
    )


def historical_features_for(store: FeatureStore, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time user_activity features for each (user_id, event_timestamp) row.

    Feast joins each row to the newest tiles written at or before its
    timestamp; the windows are then finished as of that same timestamp, so no
    row sees an event from its future.
    """
    # Feast's file store drops entity rows with no tiles yet; carry a row number
    # through the join so every input row comes back, with zeros for "no history".
    rows_in = entity_df.reset_index(drop=True).assign(_tailor_row=lambda df: range(len(df)))
    joined = store.get_historical_features(entity_df=rows_in, features=[f"{TILES_VIEW}:state"]).to_df()
    states = dict(zip(joined["_tailor_row"], joined["state"]))
    stamps = pd.to_datetime(rows_in["event_timestamp"], utc=True)
    rows = [
        finish(_bytes_or_none(states.get(i)), int(ts.timestamp() * 1000))
        for i, ts in zip(rows_in["_tailor_row"], stamps)
    ]
    features = pd.DataFrame.from_records(rows, columns=[name for name, _ in FEATURES])
    return pd.concat([rows_in.drop(columns=["_tailor_row"]), features], axis=1)


def _bytes_or_none(value) -> bytes | None:
    return value if isinstance(value, bytes) and value else None


def read_profiles(store, n_segments: int) -> list[SegmentProfile]:
    """Profiles of segments ``0 .. n_segments - 1`` that the flow has written."""
    got = store.get_online_features(
        features=[f"{PROFILE_VIEW}:{name}" for name in PROFILE_FEATURES],
        entity_rows=[{SEGMENT_ID: k} for k in range(n_segments)],
    ).to_dict()
    return [
        SegmentProfile(segment=k, label=label, size=size, share=share, centre=json.loads(centre), model_version=version)
        for k, label, size, share, centre, version in zip(
            got[SEGMENT_ID], got["label"], got["size"], got["share"], got["centre"], got["model_version"]
        )
        if label is not None
    ]
