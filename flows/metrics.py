"""Prometheus metrics of the features flow.

They live in prometheus_client's default registry, which Bytewax serves with
its own metrics on ``:3030/metrics`` when ``BYTEWAX_DATAFLOW_API_ENABLED=true``.
Counted per batch, not per event, so they cost nothing measurable.
"""

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("tailor_events_total", "Events read by the features flow, by outcome.", ["outcome"])
ONLINE_ROWS = Counter("tailor_online_rows_total", "User rows written to the online store.")
ONLINE_WRITE_SECONDS = Histogram(
    "tailor_online_write_seconds",
    "Time of one online-store write (one batch of changed users).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
OFFLINE_ROWS = Counter("tailor_offline_rows_total", "Rows written to the offline store (Parquet).")

SEGMENT_MODEL_VERSION = Gauge("tailor_segment_model_version", "Version of the segment model (bumps on every re-fit).")
SEGMENT_SIZE = Gauge("tailor_segment_size", "Users whose latest segment is this one.", ["segment"])
DRIFT_SCORE = Gauge("tailor_drift_score", "Latest drift score per feature and method.", ["feature", "method"])
DRIFT_ALERTS = Counter("tailor_drift_alerts_total", "Drift alerts raised.", ["feature", "method"])


def observe_audience(audience) -> None:
    """Copy the audience step's model version, segment sizes and drift scores into gauges."""
    SEGMENT_MODEL_VERSION.set(audience.model.version)
    for segment, size in audience.sizes.items():
        SEGMENT_SIZE.labels(str(segment)).set(size)
    for (feature, method), score in audience.monitor.scores.items():
        DRIFT_SCORE.labels(feature, method).set(score)

EXPERIMENT_EVENTS = Counter(
    "tailor_experiment_events_total",
    "Impressions, clicks, conversions and purchases by what the experiment counters did with them: "
    "counted, duplicate (event_id seen), unexposed (named an experiment the user had not seen by then), "
    "unattributed (no experiment named, none seen by then), ignored (no experiment or variant to count).",
    ["outcome"],
)
