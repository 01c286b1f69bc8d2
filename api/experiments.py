"""/v1/experiments: define, start, stop and read experiments on content.

Experiments are stored like templates: in SQLite (``TAILOR_EXPERIMENT_DB``,
default ``<feature repo>/data/experiments.db``) or, with ``TAILOR_REDIS_URL``, in
Redis so that every API replica serves the same ones, with that SQLite file as the
replica's local copy, restored to a Redis that lost its data
(`RedisExperimentStore.recover`). `LiveExperiments` keeps the running ones in memory by slot (re-read when the store's revision changes,
checked every half second) and answers, per personalize request, which
experiment and variant a user is in (`engine.experiments.designs`).

Results come from the flow's per-(experiment, variant) counters in the online
store (`flows.experiments.read_arm_counters`): per variant the rate with a
Wilson interval, z-test and Welch t-test against the control (Holm or
Benjamini-Hochberg corrected across arms and metrics), Bayesian chance to beat
control and expected loss, the always-valid mSPRT p-value (safe to look as
often as you like), the sample-ratio check, guardrail metrics, and for a
factorial experiment the main effect of each factor and their interactions.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, patch, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody

from api.templates import ErrorBody
from config.settings import Settings
from engine.experiments.assignment import HOLDOUT
from engine.experiments.designs import (
    ExperimentSpec,
    FactorEffect,
    Interaction,
    Variant,
    VariantName,
    allocation_shares,
    cells,
    check_spec,
    content_for,
    factor_effects,
    kept_variant,
    targets,
    variant_of,
)
from engine.experiments.statistics import ArmStats, ExperimentReport, analyze, thompson_allocation
from store.redis_guard import StoreUnavailable, redis_call, redis_client

log = logging.getLogger("tailor.api")

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(ExperimentSpec)
REDIS_PREFIX = "tailor:experiments:"


class ExperimentError(Exception):
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


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _missing(experiment_id: str) -> ExperimentError:
    return ExperimentError(f"there is no experiment {experiment_id!r}: GET /v1/experiments lists them", 404)


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


class SQLiteExperimentStore(ExperimentStore):
    """One SQLite file (WAL); writes take the write lock first, so processes sharing the file do not race."""

    def __init__(self, path: str | Path):
        self._lock = threading.RLock()  # re-entrant: an update's ``make`` may read the store
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS experiments (id TEXT PRIMARY KEY, spec TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS experiment_meta (key TEXT PRIMARY KEY, value INTEGER)")
            self._db.execute("INSERT OR IGNORE INTO experiment_meta VALUES ('revision', 0)")

    def update(self, experiment_id, make):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT spec FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
                new = make(_decode_spec(row[0]) if row else None)
                self._db.execute(
                    "INSERT OR REPLACE INTO experiments VALUES (?, ?)", (experiment_id, _ENCODER.encode(new).decode())
                )
                self._db.execute("UPDATE experiment_meta SET value = value + 1 WHERE key = 'revision'")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return new

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def get(self, experiment_id):
        rows = self._query("SELECT spec FROM experiments WHERE id = ?", (experiment_id,))
        return _decode_spec(rows[0][0]) if rows else None

    def all(self):
        return _decode_specs(r[0] for r in self._query("SELECT spec FROM experiments ORDER BY id"))

    def revision(self):
        return self._query("SELECT value FROM experiment_meta WHERE key = 'revision'")[0][0]

    def keep(self, specs: list[ExperimentSpec]) -> None:
        """Replace every experiment with ``specs`` (as the local copy of a Redis store)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM experiments")
                self._db.executemany(
                    "INSERT INTO experiments VALUES (?, ?)", [(s.id, _ENCODER.encode(s).decode()) for s in specs]
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def put(self, spec: ExperimentSpec) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO experiments VALUES (?, ?)", (spec.id, _ENCODER.encode(spec).decode())
            )

    def close(self):
        with self._lock:
            self._db.close()


class RedisExperimentStore(ExperimentStore):
    """A Redis hash of id -> spec JSON and a revision counter; writes WATCH the hash (one MULTI each).

    ``breaker`` bounds an outage's cost (`StoreUnavailable`, a 503, while Redis is down);
    ``copy``, a `SQLiteExperimentStore`, is the local copy `recover` restores from.
    """

    def __init__(self, client, prefix: str = REDIS_PREFIX, *, breaker=None, copy: SQLiteExperimentStore | None = None):
        from store.redis_guard import Breaker

        self._redis = client
        self._specs = f"{prefix}specs"
        self._revision = f"{prefix}revision"
        self._breaker = breaker or Breaker(prefix, open_s=0)
        self.copy = copy
        self._copied: int | None = None  # the Redis revision the copy holds
        self._recovering = threading.Lock()
        self._seen = copy is not None and bool(copy.all())  # whether Redis should hold experiments
        #: (time.monotonic(), what) of the last restore (what: "" if none yet), for /readyz.
        self.recovered: tuple[float, str] = (0.0, "")
        self._restore = client.register_script(_RESTORE_EXPERIMENTS)

    def _call(self):
        return redis_call(self._breaker, "experiment store (Redis)")

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
            pipe.incr(self._revision)
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

    def revision(self):
        with self._call():
            raw = self._redis.get(self._revision)
        if raw is not None:
            self._seen = True
        elif self._seen:  # Redis lost them since this process saw them: put them back first
            self.recover()
            with self._call():
                raw = self._redis.get(self._revision)
        return int(raw or 0)

    def recover(self) -> str:
        """Keep the local copy in step with Redis, or restore Redis from it; returns what was done ("" if nothing).

        As `api.templates.RedisTemplateStore.recover`: a revision counter gone or gone
        back means Redis lost its data; the copy's experiments are put back (those Redis
        holds winning). The copy lags another replica's change by at most one check.
        """
        if self.copy is None:
            return ""
        with self._recovering:
            with self._call():
                raw = self._redis.get(self._revision)
            revision = None if raw is None else int(raw)
            if revision is not None and (self._copied is None or revision >= self._copied):
                if revision != self._copied:
                    self.copy.keep(self.all())
                    self._copied = revision
                return ""
            kept = self.copy.all()
            if not kept:
                self._copied = revision
                return ""
            args: list[Any] = [self._copied or 0]
            for spec in kept:
                args += [spec.id, _ENCODER.encode(spec)]
            with self._call():
                self._copied = int(self._restore(keys=[self._specs, self._revision], args=args))
        log.warning("Redis had lost the experiments: restored %d from the local copy", len(kept))
        self.recovered = (time.monotonic(), f"restored {len(kept)} experiments from the local copy")
        return self.recovered[1]

    def close(self):
        self._redis.close()
        if self.copy is not None:
            self.copy.close()


#: Puts experiments back (HSETNX: what Redis holds wins) and moves the revision past both its
#: own and the copy's. KEYS: the specs hash, the revision; ARGV: the copy's revision, then (id, JSON) pairs.
_RESTORE_EXPERIMENTS = """
for i = 2, #ARGV, 2 do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
end
local revision = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[1]))
redis.call('SET', KEYS[2], revision + 1)
return revision + 1
"""


def open_experiment_store(settings: Settings) -> ExperimentStore:
    path = Path(settings.store.experiment_db or Path(settings.store.feature_repo) / "data" / "experiments.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    if settings.redis.url:
        from store.redis_guard import breaker_for

        store = RedisExperimentStore(
            redis_client(settings.redis.url, timeout_ms=settings.redis.timeout_ms),
            breaker=breaker_for(settings.redis.url, settings.redis.breaker_s),
            copy=SQLiteExperimentStore(path),
        )
        try:
            store.recover()  # a Redis that lost them gets this replica's copy back
        except StoreUnavailable as exc:  # down at start: LiveExperiments serves the copy; /readyz says so
            log.warning("%s: starting from the local copy %s", exc.detail, path)
        except BaseException:
            store.close()
            raise
        return store
    return SQLiteExperimentStore(path)


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


def bandit_weights(spec: ExperimentSpec, stats: dict[str, ArmStats]) -> dict[str, float]:
    """Thompson-sampling shares of the arms on the primary metric, each at least ``bandit_floor``."""
    names = [a.name for a in spec.arms if a.weight > 0]
    pairs = [(stats[n].conversions, stats[n].n - stats[n].conversions) if n in stats else (0, 0) for n in names]
    shares = thompson_allocation(pairs, floor=min(spec.bandit_floor, 1 / len(names)), seed=0)
    return dict(zip(names, shares))


# --------------------------------------------------------------------------- results


class VariantCounts(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    users: int
    impressions: int
    clickers: int
    clicks: int
    converters: int
    conversions: int
    value_sum: float
    expected_share: float


class GuardrailResult(msgspec.Struct, frozen=True, kw_only=True):
    """A guardrail: whether any arm is significantly *worse* than the control on it."""

    metric: str
    harmed: list[str]
    report: ExperimentReport


class Results(msgspec.Struct, frozen=True, kw_only=True):
    experiment: str
    status: str
    primary_metric: str
    control: str
    users: int
    variants: list[VariantCounts]
    #: The primary metric per arm (rates, intervals, tests, Bayesian and sequential read-outs, SRM).
    primary: ExperimentReport | None
    guardrails: list[GuardrailResult] = []
    #: Factorial experiments: each factor's main effect, and interactions of pairs of factors.
    factors: list[FactorEffect] = []
    interactions: list[Interaction] = []
    #: Thompson allocation: the arms' current weights.
    bandit_weights: dict[str, float] | None = None
    #: Arms in the holdout vs in the experiment, on the primary metric (treatment: every arm together).
    holdout: ExperimentReport | None = None
    notes: list[str] = []


def _stats(counters: dict[str, Any], metric: str) -> dict[str, ArmStats]:
    """Per variant, `ArmStats` of a metric: "click" / "conversion" (users), or "value" (conversion's value sums)."""
    return {v: c.stats("click" if metric == "click" else "conversion") for v, c in counters.items()}


#: Monte Carlo draws of the chance to beat control per treatment arm: 100,000 (the default) up to
#: about 20 arms, fewer beyond, so that a results read stays near 0.2 s on one core (at 100 arms,
#: 20,000 draws: a chance of 0.5 is then within about +/-0.007 at 95 %).
MAX_DRAWS, MIN_DRAWS, DRAWS_BUDGET = 100_000, 10_000, 2_000_000


def draws_for(arms: int) -> int:
    """Draws per treatment for an analysis of ``arms`` arms (see `DRAWS_BUDGET`)."""
    return max(MIN_DRAWS, min(MAX_DRAWS, DRAWS_BUDGET // max(arms - 1, 1)))


def results(spec: ExperimentSpec, counters: dict[str, Any], weights: dict[str, float] | None = None) -> Results:
    """The results page of ``spec`` from its counters (``{variant: engine.experiments.exposures.ArmCounters}``)."""
    names = cells(spec)
    draws = draws_for(len(names))
    shares = allocation_shares(spec, weights)
    control = spec.control_name
    notes: list[str] = []
    rows = [
        VariantCounts(
            variant=v,
            users=c.users,
            impressions=c.impressions,
            clickers=c.clickers,
            clicks=c.clicks,
            converters=c.converters,
            conversions=c.conversions,
            value_sum=c.value_sum,
            expected_share=round(shares.get(v, 0.0), 6),
        )
        for v, c in counters.items()
    ]
    primary_stats = _stats(counters, spec.primary_metric)
    arms = [primary_stats[v] for v in names]
    in_arms = sum(a.n for a in arms)
    primary = None
    if counters[control].users > 0 and in_arms > counters[control].users:
        # SRM: the arms' users against their expected shares (the holdout is checked apart, below).
        primary = analyze(
            arms, control, weights=[shares[v] for v in names], alpha=spec.alpha, correction=spec.correction, draws=draws
        )
        if primary.srm_alarm and not spec.reallocated and spec.allocation == "fixed":
            notes.append(
                f"sample ratio mismatch (p = {primary.srm_p_value:.2g} < 0.001): the split differs from the "
                "allocation; find the cause (bots, a broken exposure log, targeting) before trusting results"
            )
    else:
        notes.append("not enough data yet: the control and at least one other arm need exposed users")
    if spec.reallocated and spec.allocation != "thompson":
        notes.append(
            f"the allocation changed while running (last at {spec.reallocated}): users already exposed "
            "kept their arm, so the split mixes the old and new allocations: the sample-ratio check "
            "compares it with the current one only, and raises no alarm"
        )
    if spec.allocation == "thompson":
        notes.append(
            "Thompson allocation moves weights as data arrives: the split is adaptive, so the sample-ratio "
            "check and fixed-horizon p-values are indicative only; the mSPRT p-values stay valid"
        )
    guardrails = []
    for metric in spec.guardrails:
        if primary is None:
            break
        stats = _stats(counters, metric)
        report = analyze(
            [stats[v] for v in names],
            control,
            weights=[shares[v] for v in names],
            alpha=spec.alpha,
            correction=spec.correction,
            draws=draws,
        )
        treated = [a for a in report.arms if a.arm != control]
        if metric == "value":
            harmed = [
                a.arm
                for a in treated
                if a.value_p_adjusted is not None and a.value_p_adjusted < spec.alpha and (a.value_t or 0) < 0
            ]
        else:
            harmed = [a.arm for a in treated if a.significant and a.z is not None and a.z < 0]
        guardrails.append(GuardrailResult(metric=metric, harmed=harmed, report=report))
        if harmed:
            notes.append(f"guardrail {metric}: {', '.join(harmed)} significantly worse than {control}")
    effects, interactions = ([], [])
    if spec.factorial and primary is not None:
        effects, interactions = factor_effects(spec, primary_stats)
    holdout = None
    held = primary_stats.get(HOLDOUT)
    if held is not None and held.n > 0 and in_arms > 0:
        pooled = ArmStats(
            arm="experiment",
            n=in_arms,
            conversions=sum(a.conversions for a in arms),
            value_sum=sum(a.value_sum for a in arms),
            value_sum_sq=sum(a.value_sum_sq for a in arms),
        )
        holdout = analyze(
            [msgspec.structs.replace(held, arm=HOLDOUT), pooled],
            HOLDOUT,
            weights=[shares[HOLDOUT], 1 - shares[HOLDOUT]],
            alpha=spec.alpha,
        )
    return Results(
        experiment=spec.id,
        status=spec.status,
        primary_metric=spec.primary_metric,
        control=control,
        users=sum(c.users for c in counters.values()),
        variants=rows,
        primary=primary,
        guardrails=guardrails,
        factors=effects,
        interactions=interactions,
        bandit_weights=weights if spec.allocation == "thompson" else None,
        holdout=holdout,
        notes=notes,
    )


# --------------------------------------------------------------------------- routes


class _Body(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class AllocationPatch(_Body):
    """A new allocation: weights by arm name (others keep theirs) and/or the holdout share.

    Users already assigned keep their arm unless their arm's weight fell or another grew
    (see `engine.experiments.assignment`: the fewest users possible move).
    """

    weights: dict[VariantName, Annotated[float, msgspec.Meta(ge=0, le=1e6)]] = {}
    holdout: Annotated[float, msgspec.Meta(ge=0, lt=1)] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    texts = {
        400: "the body is malformed: not JSON, wrong types or unknown fields",
        401: "no API key, or an unknown one",
        403: "the API key lacks the route's scope",
        404: "there is no such experiment",
        409: "the experiment's state does not allow it (the reason says why)",
        422: "the design is invalid (the reason says why)",
    }
    return {code: ResponseSpec(ErrorBody, description=texts[code]) for code in (401, 403, *codes)}


@contextmanager
def _http_errors() -> Iterator[None]:
    try:
        yield
    except ExperimentError as exc:
        if exc.status == 404:
            raise NotFoundException(detail=exc.reason) from None
        raise HTTPException(status_code=exc.status, detail=exc.reason) from None
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None


def _check_content(spec: ExperimentSpec, templates, model_versions: Callable[[], set[str]]) -> None:
    """Every pinned template exists for its slot, and every model version can be served."""
    for slot in spec.slots:
        variants = spec.factors[slot] if spec.factorial else spec.arms
        for v in variants:
            if v.template_id is not None:
                try:
                    template = templates.store.get(v.template_id, v.template_version)
                except LookupError:
                    version = f" version {v.template_version}" if v.template_version else ""
                    raise ValueError(
                        f"variant {v.name!r}: there is no template {v.template_id!r}{version}: "
                        "create it with POST /v1/templates first"
                    ) from None
                if template.slot != slot:
                    raise ValueError(
                        f"variant {v.name!r}: template {v.template_id!r} is for the {template.slot} slot, not {slot}"
                    )
            if v.model_version is not None and v.model_version not in model_versions():
                raise ValueError(
                    f"variant {v.name!r}: copy model version {v.model_version!r} is not being served "
                    f"nor in the model registry (known: {sorted(model_versions())})"
                )


class ExperimentController(Controller):
    """Experiments on content: A/B/n and factorial, with holdouts, targeting and guardrails."""

    path = "/v1/experiments"
    tags = ("experiments",)

    @post(summary="Create an experiment", opt={"scope": "admin"}, sync_to_thread=True, responses=_errors(409, 422))
    def create_experiment(self, request: Request, data: JSONBody[ExperimentSpec]) -> ExperimentSpec:
        """Define an experiment (status ``draft``; start it with POST /v1/experiments/{id}/start).

        A/B/n: ``slot`` and ``arms``. Factorial: ``factors`` (two or more slots, each with its levels).
        Each arm pins a template, serves default or generated copy, or names a copy model version.
        """
        state = request.app.state
        spec = msgspec.structs.replace(data, status="draft", created=_now(), started="", stopped="", reallocated="")
        with _http_errors():
            check_spec(spec)
            _check_content(spec, state.templates, state.writer.model_versions)

            def make(current: ExperimentSpec | None) -> ExperimentSpec:
                if current is not None:
                    raise ExperimentError(f"experiment {spec.id!r} exists already: pick another id", 409)
                return spec

            return state.experiment_store.update(spec.id, make)

    @get(summary="List experiments", opt={"scope": "serve"}, sync_to_thread=True, responses=_errors())
    def list_experiments(
        self, request: Request, status: Literal["draft", "running", "stopped"] | None = None
    ) -> list[ExperimentSpec]:
        """Every experiment, by id (``?status=running`` for the live ones)."""
        return [s for s in request.app.state.experiment_store.all() if status is None or s.status == status]

    @get(
        "/{experiment_id:str}",
        summary="Read an experiment",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def get_experiment(self, request: Request, experiment_id: FromPath[str]) -> ExperimentSpec:
        """One experiment's definition and status."""
        with _http_errors():
            return self._get(request, experiment_id)

    def _get(self, request: Request, experiment_id: str) -> ExperimentSpec:
        spec = request.app.state.experiment_store.get(experiment_id)
        if spec is None:
            raise _missing(experiment_id)
        return spec

    def _transition(
        self, request: Request, experiment_id: str, change: Callable[[ExperimentSpec], ExperimentSpec]
    ) -> ExperimentSpec:
        state = request.app.state

        def make(current: ExperimentSpec | None) -> ExperimentSpec:
            if current is None:
                raise _missing(experiment_id)
            return change(current)

        with _http_errors():
            spec = state.experiment_store.update(experiment_id, make)
        state.experiments.refresh(force=True)
        return spec

    @post(
        "/{experiment_id:str}/start",
        summary="Start an experiment",
        opt={"scope": "admin"},
        sync_to_thread=True,
        status_code=200,
        responses=_errors(404, 409, 422),
    )
    def start_experiment(self, request: Request, experiment_id: FromPath[str]) -> ExperimentSpec:
        """Start assigning users. Refused (409) if another running experiment uses one of its slots."""
        state = request.app.state

        def start(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status != "draft":
                raise ExperimentError(
                    f"experiment {spec.id!r} is {spec.status}: only a draft can start (to run it "
                    "again, create a new experiment: a new id reshuffles users)",
                    409,
                )
            _check_content(spec, state.templates, state.writer.model_versions)
            for other in state.experiment_store.all():
                clash = set(other.slots) & set(spec.slots)
                if other.status == "running" and clash:
                    raise ExperimentError(
                        f"experiment {other.id!r} is running on {sorted(clash)}: stop it first "
                        "(one experiment per slot keeps their results apart)",
                        409,
                    )
            return msgspec.structs.replace(spec, status="running", started=_now())

        return self._transition(request, experiment_id, start)

    @post(
        "/{experiment_id:str}/stop",
        summary="Stop an experiment",
        opt={"scope": "admin"},
        sync_to_thread=True,
        status_code=200,
        responses=_errors(404, 409),
    )
    def stop_experiment(self, request: Request, experiment_id: FromPath[str]) -> ExperimentSpec:
        """Stop assigning users: everyone gets normal content again. Results stay readable."""

        def stop(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status != "running":
                raise ExperimentError(f"experiment {spec.id!r} is {spec.status}, not running", 409)
            return msgspec.structs.replace(spec, status="stopped", stopped=_now())

        return self._transition(request, experiment_id, stop)

    @patch(
        "/{experiment_id:str}",
        summary="Change an experiment's allocation",
        opt={"scope": "admin"},
        sync_to_thread=True,
        responses=_errors(400, 404, 409, 422),
    )
    def update_allocation(
        self, request: Request, experiment_id: FromPath[str], data: JSONBody[AllocationPatch]
    ) -> ExperimentSpec:
        """Change arm weights, the holdout share or the description (running or not)."""

        def change(spec: ExperimentSpec) -> ExperimentSpec:
            if spec.status == "stopped":
                raise ExperimentError(f"experiment {spec.id!r} is stopped", 409)
            if data.weights and spec.factorial:
                raise ValueError("a factorial experiment's levels are equally likely: it has no weights to change")
            if spec.allocation == "thompson" and any(w > 0 for w in data.weights.values()):
                raise ValueError(
                    "a Thompson experiment's weights follow its counters: a weight can only be set to "
                    "0 (the arm leaves the bandit)"
                )
            unknown = set(data.weights) - {a.name for a in spec.arms}
            if unknown:
                raise ValueError(f"no arms named {sorted(unknown)}: the arms are {[a.name for a in spec.arms]}")
            arms = [msgspec.structs.replace(a, weight=data.weights.get(a.name, a.weight)) for a in spec.arms]
            new = msgspec.structs.replace(
                spec,
                arms=arms,
                holdout=spec.holdout if data.holdout is None else data.holdout,
                description=spec.description if data.description is None else data.description,
            )
            if spec.status == "running" and (new.arms != spec.arms or new.holdout != spec.holdout):
                new = msgspec.structs.replace(new, reallocated=_now())  # users already assigned stay put
            return check_spec(new)

        return self._transition(request, experiment_id, change)

    @get(
        "/{experiment_id:str}/results",
        summary="An experiment's results",
        opt={"scope": "serve"},
        sync_to_thread=True,
        responses=_errors(404),
    )
    def experiment_results(self, request: Request, experiment_id: FromPath[str]) -> Results:
        """Per variant: users, rates with 95% intervals, tests against the control, chance to beat it,
        the always-valid sequential p-value, the sample-ratio check, guardrails and factorial effects."""
        state = request.app.state
        with _http_errors():
            spec = self._get(request, experiment_id)
        counters = read_counters(state.store, spec)
        return results(spec, counters, state.experiments.weights.get(spec.id))


def read_counters(store, spec: ExperimentSpec) -> dict[str, Any]:
    """``{variant: ArmCounters}`` for every cell and the holdout (zeros where nothing was counted)."""
    from store.online import read_arm_counters

    return read_arm_counters(store, spec.id, [*cells(spec), HOLDOUT])


def open_experiments(settings: Settings, feature_store) -> LiveExperiments:
    store = open_experiment_store(settings)

    def counters(spec: ExperimentSpec) -> dict[str, ArmStats]:
        return _stats(read_counters(feature_store, spec), spec.primary_metric)

    try:
        return LiveExperiments(store, counters, bandit_every_s=settings.api.bandit_every_s)
    except BaseException:
        store.close()
        raise
