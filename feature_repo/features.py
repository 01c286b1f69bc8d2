"""Feast definitions for Tailor's user features.

``user_activity_tiles`` holds what the flow writes: per-user time tiles (see
``engine/features/tiles.py``), packed into one bytes field so a user's update is one
small online write.
``user_activity`` finishes the windows at read time, so every Feast client
(``get_online_features``, ``feast serve``) reads values that are correct now.

Names are typed here once: ``store.feast`` takes its view, feature and entity-key names
from these objects, and registers every Feast object of this module (``tailor apply``).
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bytes, Float64, Int64, String

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A pseudonymous user id (never a raw id).",
)

user_activity_tiles_source = FileSource(
    name="user_activity_tiles_source",
    path="data/offline/user_activity_tiles",
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
    description="Parquet parts the flow appends: one row per user per write.",
)

# What a plain Feast client would use to write tiles itself (FeatureStore.push);
# the flow writes through the online store directly, which is far cheaper.
user_activity_push_source = PushSource(
    name="user_activity_push",
    batch_source=user_activity_tiles_source,
)

user_activity_tiles_fv = FeatureView(
    name="user_activity_tiles",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(
            name="state",
            dtype=Bytes,
            description="Time tiles, totals and affinity; msgpack, layout in engine/features/tiles.py.",
        ),
    ],
    source=user_activity_push_source,
    online=True,
    description="Raw per-user tiles written by the flow; read user_activity instead.",
)


@on_demand_feature_view(
    sources=[user_activity_tiles_fv],
    schema=[
        *(
            Field(name=f"{metric}_{window}", dtype=Int64)
            for window in ("5m", "1h", "24h")
            for metric in ("page_views", "clicks", "add_to_carts", "purchases")
        ),
        Field(name="impressions_24h", dtype=Int64),
        Field(name="spend_24h", dtype=Float64),
        Field(name="ctr_24h", dtype=Float64),
        Field(name="seconds_since_last_event", dtype=Float64),
        Field(name="top_category", dtype=String),
        Field(name="top_category_affinity", dtype=Float64),
        Field(name="lifetime_events", dtype=Int64),
        Field(name="lifetime_spend", dtype=Float64),
        Field(name="late_events", dtype=Int64),
    ],
    mode="python",
    # Feast compares these fields with the ones it infers, descriptions included,
    # so the meanings live in engine/features/tiles.py and README instead.
    description="User activity windows finished at read time: correct as of now.",
)
def user_activity(inputs: dict) -> dict:
    # Shipped to Feast by source: imports stay inside.
    import time

    from engine.features.tiles import FEATURES, finish

    now_ms = int(time.time() * 1000)
    out = {name: [] for name, _ in FEATURES}
    for state in inputs["state"]:
        try:
            row = finish(state, now_ms)
        except ValueError:
            # A state in another layout (or Feast's schema probe at apply time):
            # impossible values (-1 counts, NaN), never plausible zeros.
            row = {name: -1 if kind == "int" else "" if kind == "str" else float("nan") for name, kind in FEATURES}
        for name, values in out.items():
            values.append(row[name])
    return out


user_activity_v1 = FeatureService(
    name="user_activity_v1",
    features=[user_activity],
    description="The user activity features the personalization API reads.",
)

# -- segments (engine/audience/segments.py, written by the flow's audience step) --------

segment = Entity(
    name="segment",
    join_keys=["segment_id"],
    value_type=ValueType.INT64,
    description="A behaviour segment of the shared segment model (0 .. TAILOR_SEGMENTS - 1).",
)

user_segment_source = FileSource(
    name="user_segment_source",
    path="data/offline/user_segment",
    timestamp_field="event_timestamp",
    description="Offline copy of user_segment (not written yet: the online view is the source of truth).",
)

user_segment_push_source = PushSource(name="user_segment_push", batch_source=user_segment_source)

user_segment_fv = FeatureView(
    name="user_segment",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="segment", dtype=Int64, description="Segment id; see segment_profile for what it means."),
        Field(name="segment_distance", dtype=Float64, description="Distance to the segment centre, in standard units."),
        Field(name="model_version", dtype=Int64, description="Version of the segment model that assigned it."),
    ],
    source=user_segment_push_source,
    online=True,
    description="Each user's behaviour segment, updated by the flow as they act.",
)

segment_profile_source = FileSource(
    name="segment_profile_source",
    path="data/offline/segment_profile",
    timestamp_field="event_timestamp",
    description="Offline copy of segment_profile (not written yet).",
)

segment_profile_push_source = PushSource(name="segment_profile_push", batch_source=segment_profile_source)

segment_profile_fv = FeatureView(
    name="segment_profile",
    entities=[segment],
    ttl=timedelta(0),
    schema=[
        Field(name="label", dtype=String, description="Readable label from the features that stand out."),
        Field(name="size", dtype=Int64, description="Users whose latest assignment is this segment."),
        Field(name="share", dtype=Float64, description="size over all segmented users."),
        Field(name="centre", dtype=String, description="JSON: the centre in the features' own units."),
        Field(name="model_version", dtype=Int64, description="Segment model version."),
    ],
    source=segment_profile_push_source,
    online=True,
    description="What each segment looks like, for the API and `tailor segments`.",
)

user_segment_v1 = FeatureService(
    name="user_segment_v1",
    features=[user_segment_fv],
    description="A user's segment, as the personalization API reads it.",
)

# -- experiments (engine/experiments/exposures.py, written by the flow's experiment steps) --

experiment = Entity(
    name="experiment",
    join_keys=["experiment_id"],
    value_type=ValueType.STRING,
    description="An experiment id, as impressions and outcomes name it.",
)

variant = Entity(
    name="variant",
    join_keys=["variant"],
    value_type=ValueType.STRING,
    description="A variant (arm) of an experiment; 'holdout' for users on default content.",
)

experiment_arm_source = FileSource(
    name="experiment_arm_source",
    path="data/offline/experiment_arm",
    timestamp_field="event_timestamp",
    description="Offline copy of experiment_arm (not written yet: the online view is the source of truth).",
)

experiment_arm_push_source = PushSource(name="experiment_arm_push", batch_source=experiment_arm_source)

experiment_arm_fv = FeatureView(
    name="experiment_arm",
    entities=[experiment, variant],
    ttl=timedelta(0),
    schema=[
        Field(name="users", dtype=Int64, description="Distinct users exposed, in the variant of their first exposure."),
        Field(name="impressions", dtype=Int64, description="Impressions of the experiment shown to those users."),
        Field(name="clickers", dtype=Int64, description="Exposed users who clicked at least once after exposure."),
        Field(name="clicks", dtype=Int64, description="Clicks naming the experiment, after exposure."),
        Field(name="converters", dtype=Int64, description="Exposed users who converted at least once after exposure."),
        Field(name="conversions", dtype=Int64, description="Conversions and purchases attributed to the experiment."),
        Field(name="value_sum", dtype=Float64, description="Sum over users of each user's total attributed value."),
        Field(name="value_sum_sq", dtype=Float64, description="Sum over users of (user's total value) squared."),
        Field(name="updated_ms", dtype=Int64, description="Event time (epoch ms) of the newest event counted."),
    ],
    source=experiment_arm_push_source,
    online=True,
    description="Per-arm experiment counters, absolute and idempotent on event_id; see engine/experiments/exposures.py.",
)

user_experiment_source = FileSource(
    name="user_experiment_source",
    path="data/offline/user_experiment",
    timestamp_field="event_timestamp",
    description="Offline copy of user_experiment (not written: the online view is the source of truth).",
)

user_experiment_push_source = PushSource(name="user_experiment_push", batch_source=user_experiment_source)

user_experiment_fv = FeatureView(
    name="user_experiment",
    entities=[experiment, user],
    ttl=timedelta(0),
    schema=[
        Field(name="arm", dtype=String, description="The variant of the user's first exposure."),
        Field(name="exposed_ms", dtype=Int64, description="Event time (epoch ms) of that first exposure."),
    ],
    source=user_experiment_push_source,
    online=True,
    description="Each user's arm per experiment, from their first impression: the API keeps users there once "
    "the experiment's allocation changes.",
)
