"""Prometheus metrics of the features flow.

They live in prometheus_client's default registry, which Bytewax serves with
its own metrics on ``:3030/metrics`` when ``BYTEWAX_DATAFLOW_API_ENABLED=true``.
Counted per batch, not per event, so they cost nothing measurable.
"""

from prometheus_client import Counter, Histogram

EVENTS = Counter("tailor_events_total", "Events read by the features flow, by outcome.", ["outcome"])
ONLINE_ROWS = Counter("tailor_online_rows_total", "User rows written to the online store.")
ONLINE_WRITE_SECONDS = Histogram(
    "tailor_online_write_seconds",
    "Time of one online-store write (one batch of changed users).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
OFFLINE_ROWS = Counter("tailor_offline_rows_total", "Rows written to the offline store (Parquet).")
