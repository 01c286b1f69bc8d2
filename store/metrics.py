"""The store writer's Prometheus metrics (the flow process exports them beside its own)."""

from prometheus_client import Counter

ONLINE_WRITE_RETRIES = Counter(
    "tailor_online_write_retries_total",
    "Online-store writes retried because the store (Redis) could not take them; the flow waits and retries "
    "with backoff, losing nothing.",
)
OFFLINE_ROWS = Counter("tailor_offline_rows_total", "Rows written to the offline store (Parquet).")
