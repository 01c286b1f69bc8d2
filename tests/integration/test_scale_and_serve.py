"""Two Bytewax workers give the same features; `feast serve` returns finished values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from bytewax.testing import run_main

from config.settings import settings_env
from dev.services import free_port
from flows.features import build_flow, flow_command
from tests.support import messy_events, now_ms, online_features, online_states, produce_events, uninterrupted_run

pytestmark = pytest.mark.integration


def test_two_workers_partition_users_and_match_one_worker(make_settings, tmp_path):
    settings = make_settings(lateness_s=60, tail=False, partitions=4)
    events = messy_events(6_000, users=120, seed=3)
    produce_events(settings, events)
    users = sorted({e.user_id for e in events})

    one = uninterrupted_run(settings, tmp_path / "one-worker")

    env = {**os.environ, **settings_env(settings)}
    subprocess.run(flow_command(settings, None, workers=2), env=env, check=True, timeout=300)
    assert online_states(settings, users) == online_states(one, users)


def test_feast_serve_returns_features_finished_at_read_time(make_settings):
    from engine.features.events import Event

    settings = make_settings()
    now = now_ms()
    produce_events(settings, [Event(f"f{i}", "click", "frank", now - 10 * 60_000 + i) for i in range(3)])
    run_main(build_flow(settings, tail=False))
    assert online_features(settings, ["frank"])["clicks_1h"] == [3]

    port = free_port()
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    server = subprocess.Popen(
        [feast, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=settings.store.feature_repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = json.dumps({"feature_service": "user_activity_v1", "entities": {"user_id": ["frank"]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/get-online-features", data=body, headers={"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    got = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, "feast serve exited"
                assert time.monotonic() < deadline, "feast serve did not answer within two minutes"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(20)
    names = got["metadata"]["feature_names"]
    values = {name: result["values"][0] for name, result in zip(names, got["results"])}
    assert values["clicks_1h"] == 3
    assert values["clicks_5m"] == 0  # ten minutes idle: finished at read time, over HTTP too
    assert values["seconds_since_last_event"] >= 600
