"""The same rows reach the offline store, and training sets are point-in-time correct."""

from __future__ import annotations

import pandas as pd
import pytest
from bytewax.testing import run_main

from engine.features.events import Event
from flows.features import build_flow
from store.feast import historical_features_for, open_store
from tests.support import now_ms, produce_events

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def test_training_set_is_point_in_time_correct(make_settings):
    settings = make_settings(lateness_s=7200)
    now = now_ms()
    morning = [Event(f"m{i}", "click", "dana", now - 3 * HOUR - i * 60_000, category="books") for i in range(4)]
    evening = [
        Event(f"e{i}", "purchase", "dana", now - HOUR + i * 60_000, value=10.0, category="home") for i in range(3)
    ]

    produce_events(settings, morning)
    run_main(build_flow(settings, tail=False))  # writes dana's state as of the morning
    produce_events(settings, evening)
    run_main(build_flow(settings, tail=False))  # re-reads the topic: state as of the evening

    at = lambda ms: pd.Timestamp(ms, unit="ms", tz="UTC")  # noqa: E731
    entity_df = pd.DataFrame(
        {
            "user_id": ["dana", "dana", "dana", "erin"],
            "event_timestamp": [at(now - 4 * HOUR), at(now - 2 * HOUR), at(now), at(now)],
        }
    )
    got = historical_features_for(open_store(settings), entity_df).sort_values("event_timestamp").reset_index(drop=True)
    dana = got[got.user_id == "dana"].reset_index(drop=True)
    assert dana.lifetime_events.tolist() == [0, 4, 7]  # nothing from each row's future
    assert dana.purchases_24h.tolist() == [0, 0, 3]
    assert dana.clicks_1h.tolist() == [0, 0, 0]  # at 2 h ago the morning clicks are > 1 h old
    assert dana.clicks_24h.tolist() == [0, 4, 4]
    assert dana.top_category.tolist()[1] == "books"
    assert got[got.user_id == "erin"].lifetime_events.tolist() == [0]


def test_hand_encoded_values_match_protobuf():
    from feast.protos.feast.types.Value_pb2 import Value

    from store.feast import _double_value, _int64_value

    for n in (0, 1, 3, 127, 128, 300, 2**40, -1):
        assert _int64_value(n) == Value(int64_val=n).SerializeToString()
    for x in (0.0, -0.0, 1.5, 0.1234, 1e300, -7.25):
        assert _double_value(x) == Value(double_val=x).SerializeToString()
        assert Value.FromString(_double_value(x)).double_val == x
