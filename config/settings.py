"""Settings, read once from the environment (``TAILOR_*``) with working defaults, grouped by concern.

`Settings` holds one section per stage (``settings.kafka.brokers``, ``settings.redis.timeout_ms``,
``settings.audience.segments`` ...), and a component is handed the section it needs, whole. Each field is
still read from one flat variable, ``TAILOR_<NAME>``, where NAME is the field's setting name (its msgspec
``name``: ``TAILOR_REDIS_TIMEOUT_MS`` for ``redis.timeout_ms``).

>>> s = Settings.of(brokers="k:9092", redis_timeout_ms=20.0)
>>> s.kafka.brokers, s.redis.timeout_ms, s.audience.segments
('k:9092', 20.0, 4)
>>> Settings.from_env({"TAILOR_SEGMENTS": "0"}).audience.segments
0
>>> s.replace(segments=6).audience.segments, s.audience.segments
(6, 4)
>>> settings_env(s)["TAILOR_REDIS_TIMEOUT_MS"]
'20.0'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import field

if TYPE_CHECKING:
    from engine.audience.audience import Audience
    from engine.audience.segments import Behaviour

_ROOT = Path(__file__).resolve().parent.parent


class _Section(msgspec.Struct, frozen=True, kw_only=True):
    """A group of settings; a field's msgspec ``name`` is its setting name (``TAILOR_`` + upper case)."""


class KafkaSettings(_Section):
    #: Kafka bootstrap servers, comma separated; empty means "start the embedded broker".
    brokers: str = ""
    topic: str = "tailor.events"
    dlq_topic: str = "tailor.events.dlq"
    #: Kafka topic for drift alerts (JSON).
    drift_topic: str = "tailor.drift"
    #: Partitions for topics the project creates.
    partitions: int = 3
    #: Most events the Kafka source hands the flow per poll (bounds an online write).
    batch_size: int = 2000
    #: Keep reading at the end of the topic (False: stop there; used by benchmarks and tests).
    tail: bool = True
    #: Longest a consumer fetch waits at the broker for new data (bounds idle latency).
    fetch_wait_ms: int = 10
    #: Longest POST /v1/events waits for the broker to acknowledge its events (also the producer's
    #: ``message.timeout.ms``: an event not acknowledged by then fails and the answer is 503, never 202).
    produce_timeout_ms: int = 5000
    #: Most messages the API's producer queues for the broker (``queue.buffering.max.messages``); a batch
    #: that would overflow it is answered 503 at once.
    producer_queue_messages: int = 100_000

    def __post_init__(self):
        if not self.produce_timeout_ms > 0:
            raise ValueError(
                f"TAILOR_PRODUCE_TIMEOUT_MS must be a positive number of milliseconds, got {self.produce_timeout_ms}"
            )
        if not self.producer_queue_messages > 0:
            raise ValueError(f"TAILOR_PRODUCER_QUEUE_MESSAGES must be at least 1, got {self.producer_queue_messages}")


class RedisSettings(_Section):
    #: ``host:port`` of Redis; set it to use Redis as the Feast online store instead of SQLite.
    url: str = field(default="", name="redis_url")
    #: Longest one Redis call of the API may take (connect, or a reply) before it fails: a
    #: healthy Redis answers in well under a millisecond, and an outage must cost a request
    #: little (personalize answers within 100 ms while Redis is down or hung).
    timeout_ms: float = field(default=50.0, name="redis_timeout_ms")
    #: The same bound for the flow's online writes (a batch of up to TAILOR_BATCH_SIZE users).
    write_timeout_ms: float = field(default=2000.0, name="redis_write_timeout_ms")
    #: After a failed Redis call, calls fail at once this long before one tries the server
    #: again: an outage costs one timeout per this many seconds, not one per request.
    breaker_s: float = field(default=1.0, name="redis_breaker_s")
    #: The flow retries a failed online write with backoff doubling from 0.1 s up to this.
    retry_max_s: float = field(default=5.0, name="redis_retry_max_s")
    #: How often the API checks that Redis still holds the templates and experiments (and
    #: restores them from its local copy if Redis lost them).
    check_s: float = field(default=1.0, name="redis_check_s")

    def __post_init__(self):
        for name in ("timeout_ms", "write_timeout_ms", "retry_max_s", "check_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TAILOR_REDIS_{name.upper()} must be a positive number, got {getattr(self, name)}")
        if not self.breaker_s >= 0:
            raise ValueError(f"TAILOR_REDIS_BREAKER_S must be 0 or more seconds, got {self.breaker_s}")


class StoreSettings(_Section):
    #: Feast repository folder (feature_store.yaml and definitions).
    feature_repo: str = str(_ROOT / "feature_repo")
    #: SQLite file of the content templates; empty: ``<feature_repo>/data/templates.db``.
    #: With TAILOR_REDIS_URL set, templates live in Redis instead (shared by API replicas).
    template_db: str = ""
    #: SQLite file of the experiments; empty: ``<feature_repo>/data/experiments.db`` (Redis with TAILOR_REDIS_URL).
    experiment_db: str = ""
    #: SQLite file of the item catalog; empty: ``<feature_repo>/data/catalog.db`` (Redis with TAILOR_REDIS_URL).
    catalog_db: str = ""
    #: SQLite file of the hash-chained audit log (store/audit.py); empty: ``<feature_repo>/data/audit.db``
    #: (a Redis list with TAILOR_REDIS_URL).
    audit_db: str = ""
    #: JSON file of brand rules (engine/content/brand.py); empty: the built-in defaults.
    brand_rules: str = ""


class FlowSettings(_Section):
    """The features flow (flows/features.py) and its process's start-up."""

    #: How late (behind a user's newest event) an event may arrive and still count.
    lateness_s: float = 300.0
    #: Events stamped further ahead of their Kafka message time than this go to the DLQ.
    max_ahead_s: float = 300.0
    #: Half-life of the decayed category affinity.
    affinity_half_life_s: float = 86_400.0
    #: Writer partitions of the feature-store sink (1 suits SQLite; more for Redis).
    sink_parts: int = 1
    #: Offline (Parquet) rows are written when this many are buffered ...
    offline_flush_rows: int = 50_000
    #: ... or at every recovery snapshot (the flow's epoch), whichever is first.
    epoch_s: int = 2
    #: A file the flow process writes (one JSON line: pid, seconds to ready) once it has
    #: loaded Feast, opened the online store and its consumers fetch, and removes when it
    #: stops; a supervisor waits for it. Empty: none (readiness is still logged and in
    #: the tailor_flow_ready gauge).
    ready_file: str = ""

    @property
    def lateness_ms(self) -> int:
        return int(self.lateness_s * 1000)


class AudienceSettings(_Section):
    """Segmentation and drift (engine/audience/): `new_audience` and `new_behaviour` build them."""

    #: Segments the shared model keeps; 0 turns segmentation and drift monitoring off.
    segments: int = 4
    #: Distinct users' behaviour vectors collected before the first fit of the segment model.
    warmup: int = field(default=300, name="segment_warmup")
    #: Event-time half-life of each user's behaviour counts (3 days).
    behaviour_half_life_s: float = 259_200.0
    #: An event this long after a user's previous one starts a new visit (explicit app and
    #: email opens always do): sessions by inactivity gap, as analytics tools count them.
    session_gap_s: float = 1800.0
    #: The longest idle gap that decays a user's behaviour counts (1 day): a user back after
    #: months is read from their habits, not from their last visit alone.
    behaviour_max_idle_s: float = 86_400.0
    #: Visits (in all, not decayed) a user needs before being segmented.
    min_sessions: float = 2.0
    #: A user's segment row is rewritten when the segment or model changes, or the
    #: distance to the centre moved by this much (standard units) since the last write.
    distance_step: float = field(default=0.1, name="segment_distance_step")
    #: Events (of segmented users) after the model's fit before the drift reference is frozen ...
    drift_warmup: int = 300_000
    #: ... the reference being the last this-many events of that warm-up ...
    drift_reference: int = 100_000
    #: ... the sliding window of events compared with it (checked every tenth of it) ...
    drift_window: int = 50_000
    #: ... and how many consecutive checks above threshold raise an alert.
    drift_patience: int = 3
    #: KL divergence (nats) above which a feature's distribution counts as drifted ...
    kl_threshold: float = 0.4
    #: ... and the segment sizes' (steadier, so lower; README shows the measurements).
    segment_kl_threshold: float = 0.05
    #: Jensen-Shannon distance threshold; 0: JS is measured and exported but never alerts.
    js_threshold: float = 0.0
    #: ADWIN confidence on per-event click-through; 0 turns it off.
    adwin_delta: float = 1e-5
    #: "alert" (report drift) or "refit" (also re-fit the segments, model version + 1).
    drift_action: str = "alert"

    def __post_init__(self):
        if self.drift_action not in ("alert", "refit"):
            raise ValueError(f"TAILOR_DRIFT_ACTION must be 'alert' or 'refit', got {self.drift_action!r}")
        if self.segments == 1 or self.segments < 0:
            raise ValueError(f"TAILOR_SEGMENTS must be 0 (off) or at least 2, got {self.segments}")
        if not self.session_gap_s > 0:
            raise ValueError(f"TAILOR_SESSION_GAP_S must be a positive number of seconds, got {self.session_gap_s}")
        if not self.behaviour_max_idle_s >= self.session_gap_s:
            raise ValueError(
                f"TAILOR_BEHAVIOUR_MAX_IDLE_S must be at least TAILOR_SESSION_GAP_S "
                f"({self.session_gap_s}), got {self.behaviour_max_idle_s}"
            )

    def new_audience(self) -> Audience:
        """The shared segment model and drift monitor these settings describe."""
        from engine.audience.audience import Audience  # the API never builds one: keep its start-up light

        return Audience(
            self.segments,
            warmup=self.warmup,
            drift_warmup=self.drift_warmup,
            drift_reference=self.drift_reference,
            drift_window=self.drift_window,
            drift_patience=self.drift_patience,
            kl_threshold=self.kl_threshold,
            segment_kl_threshold=self.segment_kl_threshold,
            js_threshold=self.js_threshold,
            adwin_delta=self.adwin_delta,
            drift_action=self.drift_action,
            distance_step=self.distance_step,
        )

    def new_behaviour(self) -> Behaviour:
        """One user's behaviour counts, decayed as these settings say."""
        from engine.audience.segments import Behaviour

        return Behaviour(self.behaviour_half_life_s, self.session_gap_s, self.behaviour_max_idle_s)


class ApiSettings(_Section):
    #: Secret key of the keyed HMAC that turns raw user ids into pseudonyms at the edge.
    pseudonym_key: str = ""
    #: API keys and their scopes: "KEY=ingest+serve,OTHER=admin" (scopes: ingest, serve, admin).
    api_keys: str = ""
    #: Thompson-sampling experiments re-weigh their arms from the counters this often.
    bandit_every_s: float = 5.0


class GenerationSettings(_Section):
    """The copy model, the background generator that writes its copy (jobs/copy_generator.py), and where copy lives."""

    #: Exported copy model folder (`tailor export`); a missing one serves default copy.
    model_dir: str = str(_ROOT / "models" / "artifacts" / "onnx")
    #: How often the API and the generator check TAILOR_MODEL_DIR for a newly promoted version.
    model_reload_s: float = 2.0
    #: Generated snippets each API process keeps in its LRU in front of the copy store.
    copy_cache_size: int = 50_000
    #: SQLite file of generated copy and queued misses; empty: ``<feature_repo>/data/copy.db``
    #: (Redis instead with TAILOR_REDIS_URL).
    copy_db: str = ""
    #: > 0: copy in Redis expires after this many seconds (0: kept; new keys come with a new
    #: model, template version or item facts).
    copy_ttl_s: int = 0
    #: Prompts per ONNX Runtime batch of the background generator.
    generator_batch: int = 32
    #: Seconds the idle generator sleeps between looks at the queue.
    generator_poll_s: float = 0.05
    #: Samples tried per key until one passes the fact and brand checks (the last one greedy).
    generator_attempts: int = 3
    #: > 0: the generator serves Prometheus metrics on this port.
    generator_metrics_port: int = 0

    def __post_init__(self):
        if not self.model_reload_s > 0:
            raise ValueError(f"TAILOR_MODEL_RELOAD_S must be a positive number of seconds, got {self.model_reload_s}")
        for name, value in (
            ("TAILOR_COPY_CACHE_SIZE", self.copy_cache_size),
            ("TAILOR_GENERATOR_BATCH", self.generator_batch),
            ("TAILOR_GENERATOR_ATTEMPTS", self.generator_attempts),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.copy_ttl_s < 0 or not 0 <= self.generator_metrics_port < 65536:
            raise ValueError(
                "TAILOR_COPY_TTL_S must be 0 or more and TAILOR_GENERATOR_METRICS_PORT a port (0: none), "
                f"got {self.copy_ttl_s} and {self.generator_metrics_port}"
            )
        if not self.generator_poll_s > 0:
            raise ValueError(
                f"TAILOR_GENERATOR_POLL_S must be a positive number of seconds, got {self.generator_poll_s}"
            )


class RetrainSettings(_Section):
    """The model registry and retraining (models/serve/registry.py, models/train/retrain.py, jobs/retrain_watch.py)."""

    #: Registry of exported model versions and the runs.jsonl of retrains; promotion points
    #: TAILOR_MODEL_DIR (a symlink then) at one of its versions.
    model_registry: str = str(_ROOT / "models" / "artifacts" / "registry")
    #: Whether `tailor retrain --watch` retrains on the flow's drift alerts (TAILOR_DRIFT_TOPIC): true, the
    #: default, watches them; false leaves only the experiment-arm triggers (--arm), and a --watch with
    #: neither refuses to start. --drift / --no-drift override it for one command. Nothing else reads it.
    on_drift: bool = field(default=True, name="retrain_on_drift")
    #: At most one retrain (drift and threshold triggers alike) per this many seconds; later
    #: triggers wait and coalesce into one run when the interval is over.
    min_interval_s: float = field(default=3600.0, name="retrain_min_interval_s")
    #: The feedback `tailor retrain --watch` exports for each run covers this many days before
    #: the run (`tailor feedback export --since`); 0: the whole events topic.
    feedback_days: float = field(default=14.0, name="retrain_feedback_days")
    #: A candidate is promoted only if its holdout perplexity is at most (1 + this) times the current's ...
    ppl_tolerance: float = field(default=0.02, name="retrain_ppl_tolerance")
    #: ... and its tone/length obedience and brand-rule pass rate at least the current's minus this.
    metric_tolerance: float = field(default=0.02, name="retrain_metric_tolerance")

    def __post_init__(self):
        for f in msgspec.structs.fields(self):
            if f.type is float and not getattr(self, f.name) >= 0:
                raise ValueError(f"TAILOR_{f.encode_name.upper()} must be 0 or more, got {getattr(self, f.name)}")


class PrivacySettings(_Section):
    """Consent (engine/privacy.py, store/consent.py): who may be profiled, personalized for, experimented on."""

    #: A purpose the user has not decided on: "opt_out" (the default) allows it until they revoke it,
    #: "opt_in" refuses it until they grant it. Opt-out is the default because turning consent on must
    #: not silently stop every site's ingestion and personalization on upgrade, and many sites already
    #: gate what they send behind their own consent banner; where consent is your legal basis
    #: (GDPR art. 6(1)(a), ePrivacy), set opt_in and record consent before sending events.
    consent_policy: str = "opt_out"
    #: SQLite file of the consent records; empty: ``<feature_repo>/data/consent.db`` (Redis with TAILOR_REDIS_URL).
    consent_db: str = ""
    #: Event ``props`` keys the API keeps (comma-separated, ``prefix*`` for a prefix, ``*`` for all); every
    #: other key is dropped at the edge and counted, so personal data a client puts there never reaches Kafka.
    props_allowed: str = "exposure_id,slot,template,style,tone,generated,segment,label,model_version,copy.*"

    def __post_init__(self):
        if self.consent_policy not in ("opt_in", "opt_out"):
            raise ValueError(f"TAILOR_CONSENT_POLICY must be 'opt_in' or 'opt_out', got {self.consent_policy!r}")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that changes between a laptop, CI and production, one section per concern.

    `from_env` reads them from ``TAILOR_*``; `of` and `replace` take the same flat setting names
    (``brokers=``, ``redis_url=``, ``segment_warmup=``) for code and tests.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    flow: FlowSettings = field(default_factory=FlowSettings)
    audience: AudienceSettings = field(default_factory=AudienceSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        """Read ``TAILOR_*`` variables (then ``overrides``, by setting name); a malformed one is a clear `ValueError`."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (_, f) in _NAMES.items():
            raw = env.get(f"TAILOR_{name.upper()}")
            if raw is None:
                continue
            try:
                values[name] = _parse_bool(raw) if f.type is bool else f.type(raw)
            except ValueError:
                raise ValueError(f"TAILOR_{name.upper()}={raw!r} is not a valid {f.type.__name__}") from None
        values.update(overrides)
        return cls.of(**values)

    @classmethod
    def of(cls, **values) -> Settings:
        """The defaults with some settings changed, by setting name: ``Settings.of(brokers="")``."""
        return cls().replace(**values)

    def replace(self, **values) -> Settings:
        """A copy with some settings changed, by setting name (``TAILOR_`` + upper case is its variable)."""
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            try:
                section, f = _NAMES[name]
            except KeyError:
                raise TypeError(f"unknown setting {name!r}; the settings are {', '.join(_NAMES)}") from None
            changes.setdefault(section, {})[f.name] = value
        sections = {
            section: msgspec.structs.replace(getattr(self, section), **fields) for section, fields in changes.items()
        }
        return msgspec.structs.replace(self, **sections)


_SECTIONS: dict[str, type[_Section]] = {
    "kafka": KafkaSettings,
    "redis": RedisSettings,
    "store": StoreSettings,
    "flow": FlowSettings,
    "audience": AudienceSettings,
    "api": ApiSettings,
    "generation": GenerationSettings,
    "retrain": RetrainSettings,
    "privacy": PrivacySettings,
}

#: Each setting's name (``TAILOR_`` + upper case is its variable) -> (its section, its field).
_NAMES: dict[str, tuple[str, msgspec.structs.FieldInfo]] = {
    f.encode_name: (section, f) for section, kind in _SECTIONS.items() for f in msgspec.structs.fields(kind)
}


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def settings_env(settings: Settings) -> dict[str, str]:
    """``TAILOR_*`` variables that recreate ``settings`` in a child process."""
    env = {}
    for name, (section, f) in _NAMES.items():
        value = getattr(getattr(settings, section), f.name)
        env[f"TAILOR_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
