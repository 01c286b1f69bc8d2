"""Settings, read once from the environment (``TAILOR_*``) with working defaults."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

_ROOT = Path(__file__).resolve().parent.parent


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that changes between a laptop, CI and production.

    Each field is read from ``TAILOR_<FIELD>`` (upper case) by `from_env`.
    """

    #: Kafka bootstrap servers, comma separated; empty means "start the embedded broker".
    brokers: str = ""
    topic: str = "tailor.events"
    dlq_topic: str = "tailor.events.dlq"
    #: Partitions for topics the project creates.
    partitions: int = 3
    #: Feast repository folder (feature_store.yaml and definitions).
    feature_repo: str = str(_ROOT / "feature_repo")
    #: ``host:port`` of Redis; set it to use Redis as the Feast online store instead of SQLite.
    redis_url: str = ""
    #: Longest one Redis call of the API may take (connect, or a reply) before it fails: a
    #: healthy Redis answers in well under a millisecond, and an outage must cost a request
    #: little (personalize answers within 100 ms while Redis is down or hung).
    redis_timeout_ms: float = 50.0
    #: The same bound for the flow's online writes (a batch of up to TAILOR_BATCH_SIZE users).
    redis_write_timeout_ms: float = 2000.0
    #: After a failed Redis call, calls fail at once this long before one tries the server
    #: again: an outage costs one timeout per this many seconds, not one per request.
    redis_breaker_s: float = 1.0
    #: The flow retries a failed online write with backoff doubling from 0.1 s up to this.
    redis_retry_max_s: float = 5.0
    #: How often the API checks that Redis still holds the templates and experiments (and
    #: restores them from its local copy if Redis lost them).
    redis_check_s: float = 1.0
    #: How late (behind a user's newest event) an event may arrive and still count.
    lateness_s: float = 300.0
    #: Events stamped further ahead of their Kafka message time than this go to the DLQ.
    max_ahead_s: float = 300.0
    #: Half-life of the decayed category affinity.
    affinity_half_life_s: float = 86_400.0
    #: Most events the Kafka source hands the flow per poll (bounds an online write).
    batch_size: int = 2000
    #: Keep reading at the end of the topic (False: stop there; used by benchmarks and tests).
    tail: bool = True
    #: Longest a consumer fetch waits at the broker for new data (bounds idle latency).
    fetch_wait_ms: int = 10
    #: Writer partitions of the feature-store sink (1 suits SQLite; more for Redis).
    sink_parts: int = 1
    #: Offline (Parquet) rows are written when this many are buffered ...
    offline_flush_rows: int = 50_000
    #: ... or at every recovery snapshot (the flow's epoch), whichever is first.
    epoch_s: int = 2

    # -- segmentation and drift (engine/audience/segments.py, engine/audience/drift.py) ----------
    #: Segments the shared model keeps; 0 turns segmentation and drift monitoring off.
    segments: int = 4
    #: Distinct users' behaviour vectors collected before the first fit of the segment model.
    segment_warmup: int = 300
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
    segment_distance_step: float = 0.1
    #: Kafka topic for drift alerts (JSON).
    drift_topic: str = "tailor.drift"
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

    # -- the API (api/) ------------------------------------------------------------
    #: Secret key of the keyed HMAC that turns raw user ids into pseudonyms at the edge.
    pseudonym_key: str = ""
    #: API keys and their scopes: "KEY=ingest+serve,OTHER=admin" (scopes: ingest, serve, admin).
    api_keys: str = ""
    #: Exported copy model folder (`tailor export`); a missing one serves default copy.
    model_dir: str = str(_ROOT / "models" / "artifacts" / "onnx")
    #: Longest a personalize request waits for generated copy before it serves the
    #: template's default copy (the generation goes on and fills the cache). On a CPU
    #: a snippet takes 20-50 ms, so a new (segment, slot, item) gets default copy once
    #: and generated copy from then on; raise it (or use a GPU) to wait for the copy.
    generation_budget_ms: float = 8.0
    #: Dynamic batching of generator calls: most prompts per batch and longest wait for company.
    generation_max_batch: int = 16
    generation_max_wait_ms: float = 2.0
    #: Generated snippets kept in the in-process LRU cache ...
    copy_cache_size: int = 50_000
    #: ... and, when set (with TAILOR_REDIS_URL), in Redis for this many seconds, shared by replicas.
    copy_cache_redis_ttl_s: int = 0
    #: SQLite file of the content templates; empty: ``<feature_repo>/data/templates.db``.
    #: With TAILOR_REDIS_URL set, templates live in Redis instead (shared by API replicas).
    template_db: str = ""
    #: JSON file of brand rules (engine/content/brand.py); empty: the built-in defaults.
    brand_rules: str = ""
    #: SQLite file of the experiments; empty: ``<feature_repo>/data/experiments.db`` (Redis with TAILOR_REDIS_URL).
    experiment_db: str = ""
    #: Thompson-sampling experiments re-weigh their arms from the counters this often.
    bandit_every_s: float = 5.0
    #: Longest POST /v1/events waits for the broker to acknowledge its events (also the producer's
    #: ``message.timeout.ms``: an event not acknowledged by then fails and the answer is 503, never 202).
    produce_timeout_ms: int = 5000
    #: Most messages the API's producer queues for the broker (``queue.buffering.max.messages``); a batch
    #: that would overflow it is answered 503 at once.
    producer_queue_messages: int = 100_000

    # -- the model registry and retraining (models/serve/registry.py, models/train/retrain.py) ----
    #: Registry of exported model versions and the runs.jsonl of retrains; promotion points
    #: TAILOR_MODEL_DIR (a symlink then) at one of its versions.
    model_registry: str = str(_ROOT / "models" / "artifacts" / "registry")
    #: How often the API checks TAILOR_MODEL_DIR for a newly promoted version.
    model_reload_s: float = 2.0
    #: Whether `tailor retrain --watch` retrains on the flow's drift alerts (TAILOR_DRIFT_TOPIC): true, the
    #: default, watches them; false leaves only the experiment-arm triggers (--arm), and a --watch with
    #: neither refuses to start. --drift / --no-drift override it for one command. Nothing else reads it.
    retrain_on_drift: bool = True
    #: At most one retrain (drift and threshold triggers alike) per this many seconds; later
    #: triggers wait and coalesce into one run when the interval is over.
    retrain_min_interval_s: float = 3600.0
    #: The feedback `tailor retrain --watch` exports for each run covers this many days before
    #: the run (`tailor feedback export --since`); 0: the whole events topic.
    retrain_feedback_days: float = 14.0
    #: A candidate is promoted only if its holdout perplexity is at most (1 + this) times the current's ...
    retrain_ppl_tolerance: float = 0.02
    #: ... and its tone/length obedience and brand-rule pass rate at least the current's minus this.
    retrain_metric_tolerance: float = 0.02

    # -- the flow process's start-up (flows/features.py) ---------------------------
    #: A file the flow process writes (one JSON line: pid, seconds to ready) once it has
    #: loaded Feast, opened the online store and its consumers fetch, and removes when it
    #: stops; a supervisor waits for it. Empty: none (readiness is still logged and in
    #: the tailor_flow_ready gauge).
    ready_file: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> Settings:
        """Read ``TAILOR_*`` variables; a malformed one is a clear `ValueError`."""
        env = os.environ if environ is None else environ
        values = {}
        for name, field_type in zip(cls.__struct_fields__, _field_types(cls)):
            raw = env.get(f"TAILOR_{name.upper()}")
            if raw is None:
                continue
            try:
                values[name] = _parse_bool(raw) if field_type is bool else field_type(raw)
            except ValueError:
                raise ValueError(f"TAILOR_{name.upper()}={raw!r} is not a valid {field_type.__name__}") from None
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        if self.drift_action not in ("alert", "refit"):
            raise ValueError(f"TAILOR_DRIFT_ACTION must be 'alert' or 'refit', got {self.drift_action!r}")
        if self.segments == 1 or self.segments < 0:
            raise ValueError(f"TAILOR_SEGMENTS must be 0 (off) or at least 2, got {self.segments}")
        if not self.behaviour_max_idle_s >= self.session_gap_s:
            raise ValueError(
                f"TAILOR_BEHAVIOUR_MAX_IDLE_S must be at least TAILOR_SESSION_GAP_S "
                f"({self.session_gap_s}), got {self.behaviour_max_idle_s}"
            )
        if not self.session_gap_s > 0:
            raise ValueError(f"TAILOR_SESSION_GAP_S must be a positive number of seconds, got {self.session_gap_s}")
        if not self.produce_timeout_ms > 0:
            raise ValueError(
                f"TAILOR_PRODUCE_TIMEOUT_MS must be a positive number of milliseconds, got {self.produce_timeout_ms}"
            )
        if not self.producer_queue_messages > 0:
            raise ValueError(f"TAILOR_PRODUCER_QUEUE_MESSAGES must be at least 1, got {self.producer_queue_messages}")
        if not self.model_reload_s > 0:
            raise ValueError(f"TAILOR_MODEL_RELOAD_S must be a positive number of seconds, got {self.model_reload_s}")
        for name in ("redis_timeout_ms", "redis_write_timeout_ms", "redis_retry_max_s", "redis_check_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TAILOR_{name.upper()} must be a positive number, got {getattr(self, name)}")
        if not self.redis_breaker_s >= 0:
            raise ValueError(f"TAILOR_REDIS_BREAKER_S must be 0 or more seconds, got {self.redis_breaker_s}")
        for name in (
            "retrain_min_interval_s",
            "retrain_feedback_days",
            "retrain_ppl_tolerance",
            "retrain_metric_tolerance",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TAILOR_{name.upper()} must be 0 or more, got {getattr(self, name)}")

    @property
    def lateness_ms(self) -> int:
        return int(self.lateness_s * 1000)


def _field_types(cls) -> list[type]:
    return [f.type for f in msgspec.structs.fields(cls)]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def settings_env(settings: Settings) -> dict[str, str]:
    """``TAILOR_*`` variables that recreate ``settings`` in a child process."""
    return {
        f"TAILOR_{name.upper()}": (str(value).lower() if isinstance(value, bool) else str(value))
        for name, value in msgspec.structs.asdict(settings).items()
    }
