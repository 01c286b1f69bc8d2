"""SIGKILL the flow at arbitrary points; the end state must equal one clean run."""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from config.settings import settings_env
from flows.features import flow_command, init_recovery
from tests.support import messy_events, online_states, produce_events, uninterrupted_run

pytestmark = pytest.mark.integration


def test_sigkill_at_arbitrary_points_ends_like_an_uninterrupted_run(make_settings, tmp_path):
    # Small batches and short epochs so that kills land mid-stream, between snapshots.
    settings = make_settings(batch_size=10, epoch_s=1, lateness_s=60, tail=False)
    events = messy_events(60_000, users=300, seed=11)
    produce_events(settings, events)
    user_ids = sorted({e.user_id for e in events})

    expected = online_states(uninterrupted_run(settings, tmp_path / "reference"), user_ids)
    assert all(expected.values())

    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    env = {**os.environ, **settings_env(settings)}
    rng = random.Random(5)
    for kill in range(3):
        proc = subprocess.Popen(flow_command(settings, str(recovery)), env=env)
        # Kill anywhere after the flow's first snapshot, so that it dies mid-stream
        # with work done since that snapshot (startup alone takes seconds).
        wait_for_snapshot(recovery, proc)
        time.sleep(rng.uniform(0.1, 1.5))
        assert proc.poll() is None, f"the flow finished before kill {kill + 1}: give it more events"
        proc.kill()  # SIGKILL: no cleanup, no final snapshot
        proc.wait()
    assert online_states(settings, user_ids) != expected  # the kills did cut it short
    started = time.monotonic()
    finished = subprocess.run(flow_command(settings, str(recovery)), env=env, timeout=300)
    print(f"last run took {time.monotonic() - started:.1f} s")
    assert finished.returncode == 0
    assert online_states(settings, user_ids) == expected


def wait_for_snapshot(recovery, proc, timeout_s=60.0):
    def stamp():
        # SQLite's -wal/-shm files come and go: a file may vanish between listing and stat.
        stamps = []
        for path in recovery.iterdir():
            try:
                stamps.append(path.stat().st_mtime_ns)
            except FileNotFoundError:
                pass
        return max(stamps, default=0)

    before, deadline = stamp(), time.monotonic() + timeout_s
    while stamp() == before:
        assert proc.poll() is None, "the flow exited before its first snapshot"
        assert time.monotonic() < deadline, "no snapshot within a minute"
        time.sleep(0.05)
