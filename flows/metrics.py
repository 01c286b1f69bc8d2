"""Prometheus metrics of the features flow.

They live in prometheus_client's default registry, which Bytewax serves with
its own metrics on ``:3030/metrics`` when ``BYTEWAX_DATAFLOW_API_ENABLED=true``.
Counted per batch, not per event, so they cost nothing measurable.
"""

import warnings

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("tailor_events_total", "Events read by the features flow, by outcome.", ["outcome"])
ONLINE_ROWS = Counter("tailor_online_rows_total", "User rows written to the online store.")
ONLINE_WRITE_SECONDS = Histogram(
    "tailor_online_write_seconds",
    "Time of one online-store write (one batch of changed users).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)

SEGMENT_MODEL_VERSION = Gauge("tailor_segment_model_version", "Version of the segment model (bumps on every re-fit).")
SEGMENT_SIZE = Gauge("tailor_segment_size", "Users whose latest segment is this one.", ["segment"])
DRIFT_SCORE = Gauge("tailor_drift_score", "Latest drift score per feature and method.", ["feature", "method"])
DRIFT_ALERTS = Counter("tailor_drift_alerts_total", "Drift alerts raised.", ["feature", "method"])


DRIFT_SIGNAL = Gauge(
    "tailor_drift_signal_watched",
    "1 while the drift monitor watches this signal, 0 while it skips it for want of data (a feature the "
    "traffic never feeds, click-through without impressions); its tailor_drift_score is then absent.",
    ["feature"],
)
SEGMENT_FEATURE_USED = Gauge(
    "tailor_segment_feature_used",
    "1 if the segment model uses this feature, 0 if it leaves it out (too few users have evidence for it).",
    ["feature"],
)


def observe_audience(audience) -> None:
    """Copy the audience step's model version, segment sizes, features, drift signals and scores into gauges."""
    SEGMENT_MODEL_VERSION.set(audience.model.version)
    for segment, size in audience.sizes.items():
        SEGMENT_SIZE.labels(str(segment)).set(size)
    used = set(audience.model.features) if audience.model.fitted else set()
    for name in audience.monitor.features:
        SEGMENT_FEATURE_USED.labels(name).set(1 if name in used else 0)
    monitor = audience.monitor
    for signal, watched in monitor.signals.items():
        DRIFT_SIGNAL.labels(signal).set(1 if watched else 0)
        if not watched:
            for method in ("kl", "js", "adwin"):
                with warnings.catch_warnings():
                    # Importing Feast sets PROMETHEUS_MULTIPROC_DIR, so prometheus-client warns that
                    # removal is not implemented in multi-process mode; these gauges live in this
                    # process's own registry (served by Bytewax), where removal works.
                    warnings.simplefilter("ignore", UserWarning)
                    try:
                        DRIFT_SCORE.remove(signal, method)
                    except KeyError:
                        pass
    for (feature, method), score in monitor.scores.items():
        DRIFT_SCORE.labels(feature, method).set(score)


EXPERIMENT_EVENTS = Counter(
    "tailor_experiment_events_total",
    "Impressions, clicks, conversions and purchases by what the experiment counters did with them: "
    "counted, duplicate (event_id seen), unexposed (named an experiment the user had not seen by then), "
    "unattributed (no experiment named, none seen by then), ignored (no experiment or variant to count).",
    ["outcome"],
)

EVENTS_WITHOUT_CONSENT = Counter(
    "tailor_flow_events_without_consent_total",
    "Events the flow did not keep because their user does not allow analytics (revoked, or not granted "
    "under TAILOR_CONSENT_POLICY=opt_in); consent decisions applied are counted as outcome 'decision'.",
    ["outcome"],
)

FLOW_READY = Gauge(
    "tailor_flow_ready",
    "1 once the flow process can write (Feast loaded, online store open, consumers fetching); 0 while "
    "starting or stopping.",
)
