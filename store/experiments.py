"""Experiments, stored, and the running ones in memory for the personalize path.

Experiments are stored like templates (`store.templates`, on the plumbing of
`store.records`): in SQLite (``TAILOR_EXPERIMENT_DB``, default
``<feature repo>/data/experiments.db``) or, with ``TAILOR_REDIS_URL``, in Redis so
that every API replica serves the same ones, with that SQLite file as the
replica's local copy, restored to a Redis that lost its data
(`RedisExperimentStore.recover`). `LiveExperiments` keeps the running ones in
memory by slot (re-read when the store's revision changes, checked every half
second) and answers, per personalize request, which experiment and variant a user
is in (`engine.experiments.designs`). `read_counters` reads an experiment's
per-(experiment, variant) counters, which the flow keeps in the online store, for
its results page (`engine.experiments.results`). The routes are `api.experiments`.

Examples
--------
>>> import pathlib, tempfile
>>> from engine.experiments.designs import ExperimentSpec, Variant
>>> store = SQLiteExperimentStore(pathlib.Path(tempfile.mkdtemp()) / "experiments.db")
>>> spec = ExperimentSpec(id="hero", slot="headline", arms=(Variant("a"), Variant("b")), status="running")
>>> store.update("hero", lambda current: spec).id, store.revision()
('hero', 1)
>>> live = LiveExperiments(store)
>>> [s.id for s in live.running("headline")], live.assign("headline", "user-1", None, None).variant
(['hero'], 'b')
>>> store.close()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

from config.settings import Settings
from engine.experiments.assignment import HOLDOUT
from engine.experiments.designs import ExperimentSpec, Variant, cells, content_for, kept_variant, targets, variant_of
from engine.experiments.results import arm_stats, bandit_weights
from engine.experiments.statistics import ArmStats
from store.records import RedisRecords, SQLiteRecords, local_path, recover_at_start, redis_store
from store.redis_guard import StoreUnavailable

log = logging.getLogger("tailor.api")

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ExperimentSpec)
REDIS_PREFIX = "tailor:experiments:"


class ExperimentError(Exception):
    """An experiment operation that cannot be done: ``reason`` says why in one line, ``status`` is its HTTP status."""

    def __init__(self, reason: str, status: int):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _decode_spec(raw: bytes | str) -> ExperimentSpec:
    """One stored spec; a 409 that says what to do when it no longer validates (stored before a rule was tightened)."""
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        try:
            stored = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            stored = {}
        name = stored.get("id") if isinstance(stored, dict) else None
        raise ExperimentError(
            f"experiment {name!r} is stored but no longer validates ({exc}): create it anew "
            f"under another id and stop serving this one (ask an operator to delete its row)",
            409,
        ) from None


def _decode_specs(raws) -> list[ExperimentSpec]:
    """Stored specs, skipping (and logging) any that no longer validate: one stale row must not stop every experiment."""
    specs = []
    for raw in raws:
        try:
            specs.append(_decode_spec(raw))
        except ExperimentError as exc:
            log.warning("skipping a stored experiment: %s", exc.reason)
    return specs


# --------------------------------------------------------------------------- stores


class ExperimentStore:
    """Experiments by id, and a revision counter bumped by every write (atomically with it)."""

    def update(self, experiment_id: str, make: Callable[[ExperimentSpec | None], ExperimentSpec]) -> ExperimentSpec:
        """Atomically: read ``experiment_id`` (None if absent), store what ``make`` returns, bump the revision."""
        raise NotImplementedError

    def get(self, experiment_id: str) -> ExperimentSpec | None:
        raise NotImplementedError

    def all(self) -> list[ExperimentSpec]:
        raise NotImplementedError

    def revision(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteExperimentStore(SQLiteRecords, ExperimentStore):
    """One SQLite file (`store.records.SQLiteRecords`): a row per experiment, plus the revision counter."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, spec TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS experiment_meta (key TEXT PRIMARY KEY, value INTEGER)",
    )
    META = "experiment_meta"

    def update(self, experiment_id, make):
        with self._transaction() as db:
            row = db.execute("SELECT spec FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            new = make(_decode_spec(row[0]) if row else None)
            db.execute(
                "INSERT OR REPLACE INTO experiments VALUES (?, ?)", (experiment_id, _ENCODER.encode(new).decode())
            )
            self._bump(db)
            return new

    def get(self, experiment_id):
        rows = self._query("SELECT spec FROM experiments WHERE id = ?", (experiment_id,))
        return _decode_spec(rows[0][0]) if rows else None

    def all(self):
        return _decode_specs(r[0] for r in self._query("SELECT spec FROM experiments ORDER BY id"))

    # -- as the local copy of a Redis store -------------------------------------------

    def keep(self, specs: list[ExperimentSpec]) -> None:
        """Replace every experiment with ``specs``."""
        with self._transaction() as db:
            db.execute("DELETE FROM experiments")
            db.executemany(
                "INSERT INTO experiments VALUES (?, ?)", [(s.id, _ENCODER.encode(s).decode()) for s in specs]
            )

    def put(self, spec: ExperimentSpec) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO experiments VALUES (?, ?)", (spec.id, _ENCODER.encode(spec).decode())
            )


class RedisExperimentStore(RedisRecords, ExperimentStore):
    """A Redis hash of id -> spec JSON and a revision counter; writes WATCH the hash (one MULTI each).

    `store.records.RedisRecords` bounds every call (`StoreUnavailable`, a 503, while Redis
    is down); ``copy``, a `SQLiteExperimentStore`, is the local copy `recover` restores from.
    """

    WHAT = "experiment store (Redis)"
    #: Puts experiments back (HSETNX: what Redis holds wins) and moves the revision past both its
    #: own and the copy's. KEYS: the specs hash, the revision; ARGV: the copy's revision, then (id, JSON) pairs.
    RESTORE = """
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local revision = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[2], revision + 1)
return revision + 1
"""

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None, copy: SQLiteExperimentStore | None = None):
        self._specs = f"{prefix}specs"
        super().__init__(client, prefix, breaker=breaker, copy=copy)

    def update(self, experiment_id, make):
        with self._call():
            new = self._update(experiment_id, make)
        if self.copy is not None:
            self.copy.put(new)  # written through: this replica's own writes are kept at once
        return new

    def _update(self, experiment_id, make):
        def attempt(pipe) -> ExperimentSpec:
            raw = pipe.hget(self._specs, experiment_id)
            new = make(_decode_spec(raw) if raw else None)
            pipe.multi()
            pipe.hset(self._specs, experiment_id, _ENCODER.encode(new))
            pipe.incr(self._revision_key)
            return new

        return self._redis.transaction(attempt, self._specs, value_from_callable=True)

    def get(self, experiment_id):
        with self._call():
            raw = self._redis.hget(self._specs, experiment_id)
        return None if raw is None else _decode_spec(raw)

    def all(self):
        with self._call():
            raws = self._redis.hvals(self._specs)
        return sorted(_decode_specs(raws), key=lambda s: s.id)

    # -- the restore (`store.records.RedisRecords.recover`) -------------------------------

    def _copy_has_records(self) -> bool:
        return bool(self.copy.all())

    def _sync_copy(self) -> None:
        self.copy.keep(self.all())

    def _kept(self) -> list[ExperimentSpec]:
        return self.copy.all()

    def _nothing_kept(self, revision: int | None) -> str:
        self._copied = revision
        return ""

    def _restore_args(self, kept: list[ExperimentSpec]) -> tuple[list[str], list[Any]]:
        args: list[Any] = [self._copied or 0]
        for spec in kept:
            args += [spec.id, _ENCODER.encode(spec)]
        return [self._specs, self._revision_key], args

    def _restored(self, kept: list[ExperimentSpec]) -> str:
        log.warning("Redis had lost the experiments: restored %d from the local copy", len(kept))
        return f"restored {len(kept)} experiments from the local copy"


def open_experiment_store(settings: Settings) -> ExperimentStore:
    """The store ``settings`` name (Redis if ``redis_url`` is set, else SQLite)."""
    path = local_path(settings.store.experiment_db, settings, "experiments.db")
    if not settings.redis.url:
        return SQLiteExperimentStore(path)
    store = redis_store(settings, RedisExperimentStore, SQLiteExperimentStore, path)
    try:
        recover_at_start(store)  # Redis down: LiveExperiments serves the local copy; /readyz says so
    except BaseException:
        store.close()
        raise
    return store


# --------------------------------------------------------------------------- serving


class Assignment(msgspec.Struct, frozen=True):
    """The experiment a request falls in: its id, the user's variant, and what the slot shows (None: holdout)."""

    experiment: str
    variant: str
    content: Variant | None


class LiveExperiments:
    """The running experiments by slot, in memory; `refresh` re-reads the store when its revision moved.

    A Thompson-sampling experiment's arm weights are recomputed from its counters
    every ``bandit_every_s`` (``read_counters(spec) -> {variant: ArmStats}``), with
    a fixed seed so that every replica computes the same weights from the same counts.
    """

    def __init__(
        self,
        store: ExperimentStore,
        read_counters: Callable[[ExperimentSpec], dict[str, ArmStats]] | None = None,
        bandit_every_s: float = 5.0,
    ):
        self.store = store
        self.read_counters = read_counters
        self.bandit_every_s = bandit_every_s
        self.weights: dict[str, dict[str, float]] = {}
        self._by_slot: dict[str, list[ExperimentSpec]] = {}
        self._revision: int | None = None
        self._bandit_due = 0.0
        from store.redis_guard import RedisUnavailable

        try:
            self.refresh()
        except (StoreUnavailable, RedisUnavailable):
            # Redis is down at start: serve the local copy's experiments until it answers (refresh then reloads).
            copy = getattr(store, "copy", None)
            if copy is None:
                raise
            self._load(copy.all(), None)
            log.warning(
                "the experiment store cannot be reached: serving its local copy (%d experiments) until it answers",
                len(copy.all()),
            )

    def refresh(self, force: bool = False) -> None:
        revision = self.store.revision()
        if force or revision != self._revision:
            self._load(self.store.all(), revision)
        if self.read_counters is not None and time.monotonic() >= self._bandit_due:
            self._bandit_due = time.monotonic() + self.bandit_every_s
            self.weights = {
                spec.id: bandit_weights(spec, self.read_counters(spec))
                for specs in self._by_slot.values()
                for spec in specs
                if spec.allocation == "thompson"
            }

    def _load(self, specs: list[ExperimentSpec], revision: int | None) -> None:
        by_slot: dict[str, list[ExperimentSpec]] = {}
        for spec in sorted((s for s in specs if s.status == "running"), key=lambda s: s.started):
            for slot in spec.slots:
                by_slot.setdefault(slot, []).append(spec)
        self._by_slot, self._revision = by_slot, revision
        self._bandit_due = 0.0

    def running(self, slot: str) -> list[ExperimentSpec]:
        return self._by_slot.get(slot, [])

    def assign(
        self,
        slot: str,
        pseudonym: str,
        segment: int | None,
        label: str | None,
        first_arm: Callable[[str, str], str | None] | None = None,
    ) -> Assignment | None:
        """The first running experiment on ``slot`` that targets this user, and the user's variant in it.

        Assignment is the sticky hash (`variant_of`) until an experiment's allocation changes
        (``reallocated``; a Thompson experiment's changes all the time): from then on
        ``first_arm(pseudonym, experiment)``, the arm of the user's first exposure as the flow
        recorded it, keeps users already assigned where they were, unless that arm closed.
        """
        for spec in self._by_slot.get(slot, ()):
            if targets(spec, segment, label):
                weights = self.weights.get(spec.id)
                variant = None
                if first_arm is not None and (spec.reallocated or spec.allocation == "thompson"):
                    first = first_arm(pseudonym, spec.id)
                    if first is not None and kept_variant(spec, first, weights):
                        variant = first
                if variant is None:
                    variant = variant_of(spec, pseudonym, weights)
                return Assignment(spec.id, variant, content_for(spec, variant, slot))
        return None


def read_counters(store, spec: ExperimentSpec) -> dict[str, Any]:
    """``{variant: ArmCounters}`` for every cell and the holdout (zeros where nothing was counted)."""
    from store.online import read_arm_counters

    return read_arm_counters(store, spec.id, [*cells(spec), HOLDOUT])


def open_experiments(settings: Settings, feature_store) -> LiveExperiments:
    store = open_experiment_store(settings)

    def counters(spec: ExperimentSpec) -> dict[str, ArmStats]:
        return arm_stats(read_counters(feature_store, spec), spec.primary_metric)

    try:
        return LiveExperiments(store, counters, bandit_every_s=settings.api.bandit_every_s)
    except BaseException:
        store.close()
        raise
