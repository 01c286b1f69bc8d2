"""The flow process's start-up and stop: readiness before the first event, clean exits on signals."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from bytewax.testing import run_main

from config.settings import settings_env
from engine.features.events import Event
from flows.features import build_flow, flow_command, init_recovery
from tests.support import consume_all, now_ms, online_features, produce_events, produce_raw

pytestmark = pytest.mark.integration

#: Generous: a fresh flow imports Feast (seconds), and the machine may be busy.
START_TIMEOUT_S = 120.0


class FlowProcess:
    """``python -m bytewax.run`` of the features flow with recovery, as ``tailor flow`` runs it."""

    def __init__(self, settings, recovery, log_path):
        init_recovery(recovery)
        self.ready_file = settings.flow.ready_file
        self.log_path = log_path
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                flow_command(settings, str(recovery)),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not os.path.exists(self.ready_file):
            assert self.proc.poll() is None, f"the flow exited ({self.proc.returncode}) before ready:\n{self.log()}"
            assert time.monotonic() < deadline, f"the flow was not ready in {START_TIMEOUT_S:.0f} s:\n{self.log()}"
            time.sleep(0.02)
        with open(self.ready_file) as f:
            return json.loads(f.read())

    def stop(self, sig: int) -> tuple[int, float]:
        """Send ``sig``; the exit status and the seconds the flow took to exit."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(30)
        return code, time.monotonic() - started

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def flow_process(tmp_path):
    started = []

    def start(settings, recovery=None, name="flow"):
        flow = FlowProcess(settings, recovery or tmp_path / "recovery", tmp_path / f"{name}.log")
        started.append(flow)
        return flow

    yield start
    for flow in started:
        flow.kill()


def lifetime_events(settings, user_id: str) -> int:
    return online_features(settings, [user_id])["lifetime_events"][0] or 0


def wait_lifetime_events(settings, user_id: str, expected: int, timeout_s: float = 15.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = lifetime_events(settings, user_id)
    while got != expected and time.monotonic() < deadline:
        time.sleep(0.02)
        got = lifetime_events(settings, user_id)
    return got


def clicks(user_id: str, n: int, first: int = 0) -> list[Event]:
    now = now_ms()
    return [Event(f"{user_id}-{i}", "click", user_id, now - 1000 + i) for i in range(first, first + n)]


def test_the_flow_reports_ready_and_then_serves_an_event_produced_after_it(make_settings, flow_process, tmp_path):
    settings = make_settings(ready_file=str(tmp_path / "flow.ready"))
    backlog = [e for u in range(20) for e in clicks(f"backlog-{u}", 10)]
    produce_events(settings, backlog)  # the topic already holds traffic
    flow = flow_process(settings)

    ready = flow.wait_ready()
    assert ready["pid"] == flow.proc.pid and ready["ready_s"] > 0
    assert "tailor flow: ready in" in flow.log()
    assert lifetime_events(settings, "after-ready") == 0
    produce_events(settings, clicks("after-ready", 1))
    # Readable through a plain Feast client seconds after readiness (a test, not a benchmark: generous).
    assert wait_lifetime_events(settings, "after-ready", 1, timeout_s=10.0) == 1
    assert wait_lifetime_events(settings, "backlog-19", 10) == 10
    code, _ = flow.stop(signal.SIGTERM)
    assert code == 0, flow.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_running_flow_cleanly_within_seconds(make_settings, flow_process, tmp_path, sig):
    # Epochs longer than the test: only the stop itself can snapshot and flush the offline buffer.
    settings = make_settings(ready_file=str(tmp_path / "flow.ready"), epoch_s=600)
    recovery = tmp_path / "recovery"
    flow = flow_process(settings, recovery)
    flow.wait_ready()
    produce_events(settings, clicks("stopper", 5))
    assert wait_lifetime_events(settings, "stopper", 5) == 5

    code, took_s = flow.stop(sig)
    log = flow.log()
    assert code == 0, log
    assert took_s < 3.0, f"stopping took {took_s:.1f} s"
    assert not os.path.exists(settings.flow.ready_file)
    assert f"tailor flow: {signal.Signals(sig).name}: stopping" in log
    assert "Traceback" not in log and "panicked" not in log, log
    # The offline (Parquet) buffer was flushed on the way out ...
    import pyarrow.parquet as pq

    from store.feast import offline_dir, open_store

    offline = pq.read_table(offline_dir(open_store(settings)))
    assert "stopper" in offline.column("user_id").to_pylist()
    # ... and the epoch was committed to the recovery store (Bytewax 0.21's own tables).
    with sqlite3.connect(next(recovery.glob("part-*.sqlite3"))) as db:
        assert db.execute("SELECT count(*) FROM commits").fetchone()[0] >= 1


def test_a_flow_restarted_after_sigterm_keeps_its_state(make_settings, flow_process, tmp_path):
    settings = make_settings(ready_file=str(tmp_path / "flow.ready"), epoch_s=600)
    recovery = tmp_path / "recovery"
    # One bad message among the first run's input: were it read again, a second dead letter would say so.
    produce_raw(settings, [(b"keeper", b"not json")])
    produce_events(settings, clicks("keeper", 5))
    first = flow_process(settings, recovery, name="first")
    first.wait_ready()
    assert wait_lifetime_events(settings, "keeper", 5) == 5
    code, _ = first.stop(signal.SIGTERM)
    assert code == 0, first.log()

    second = flow_process(settings, recovery, name="second")
    second.wait_ready()
    produce_events(settings, clicks("keeper", 3, first=5))
    assert wait_lifetime_events(settings, "keeper", 8) == 8  # the count goes on from the first run's 5
    assert (
        len(consume_all(settings.kafka.brokers, settings.kafka.dlq_topic, expected=2, timeout_s=3.0)) == 1
    )  # nothing replayed
    code, _ = second.stop(signal.SIGTERM)
    assert code == 0, second.log()


def test_an_in_process_flow_reports_ready_in_its_gauge_and_on_stderr(make_settings, capsys):
    from flows.metrics import FLOW_READY

    settings = make_settings()
    produce_events(settings, clicks("in-process", 2))
    flow = build_flow(settings, tail=False)
    assert FLOW_READY._value.get() == 0  # built (Feast loaded), not yet reading
    run_main(flow)
    assert FLOW_READY._value.get() == 1
    assert "tailor flow: ready in" in capsys.readouterr().err
    assert lifetime_events(settings, "in-process") == 2


def test_bench_freshness_cold_prints_one_json_object(broker, capsys):
    from argparse import Namespace

    from bench.freshness import run_cold
    from config.settings import Settings

    args = Namespace(cold=True, rate=200.0, users=100, backlog=500, first_probes=3, seconds=0.0, no_recovery=False)
    assert run_cold(Settings.of(brokers=broker.address), args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "freshness_cold" and result["exit_code"] == 0, result
    assert result["ready_ms"] > 0 and result["cold_servable_ms"] is not None, result
    assert result["probes"] == 3 and result["timeouts"] == 0, result
