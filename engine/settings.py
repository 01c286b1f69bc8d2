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

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
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
                raise ValueError(
                    f"TAILOR_{name.upper()}={raw!r} is not a valid {field_type.__name__}"
                ) from None
        values.update(overrides)
        return cls(**values)

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
