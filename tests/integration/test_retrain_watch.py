"""``tailor retrain --watch`` on a real broker: experiment-arm thresholds read from Feast, drift alerts, fresh feedback per run."""

from __future__ import annotations

import functools
import json
import threading
import uuid
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

from engine.audience.drift import DriftAlert
from engine.experiments.exposures import ArmCounters
from engine.features.events import Event
from engine.learning.retrain_policy import ArmThreshold
from jobs.retrain_watch import RetrainWatch, run_watch, watch
from store.feast import FeatureWriter, open_store
from tests.support import now_ms, produce_events, retrain_args

pytestmark = pytest.mark.integration

MIN = 60_000


def arm(variant: str, users: int, converters: int, experiment: str = "hero") -> ArmCounters:
    return ArmCounters(
        experiment=experiment,
        variant=variant,
        users=users,
        impressions=users,
        converters=converters,
        conversions=converters,
        updated_ms=now_ms(),
    )


def write(writer: FeatureWriter, *arms: ArmCounters) -> None:
    writer.write_arms({f"{a.experiment}/{a.variant}": a for a in arms})


def wait_for(condition, what: str, timeout_s: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- thresholds read from the online store -------------------------------------------------------------------------


@pytest.mark.integration
def test_a_falling_arm_triggers_one_retrain_a_healthy_one_none_and_few_users_wait(make_settings):
    settings = make_settings()
    writer = FeatureWriter(settings, offline=False)
    now = [1000.0]
    runs: list[tuple[str, str]] = []
    rules = dict(relative_drop=0.3, min_users=100)
    watcher = RetrainWatch(
        lambda trigger, reason: runs.append((trigger, reason)),
        min_interval_s=3600,
        store=open_store(settings),
        clock=lambda: now[0],
        arms=[ArmThreshold(experiment="hero", variant=v, **rules) for v in ("a", "b", "c")],
    )
    # a: a steady 5 %; b: 5 % and then 1 %; c: nobody converts, but 15 new users a check never make a reading.
    steps = [
        (1000, 50, 50, 100, 5),
        (1200, 60, 60, 115, 5),
        (1400, 70, 70, 130, 5),
        (1600, 80, 72, 145, 5),
        (1800, 90, 74, 160, 5),
        (2000, 100, 76, 175, 5),
    ]
    reasons = []
    for users, a_conv, b_conv, c_users, c_conv in steps:
        write(writer, arm("a", users, a_conv), arm("b", users, b_conv), arm("c", c_users, c_conv))
        reasons.append(watcher.check_arms())
        now[0] += 60
    assert reasons[:3] == [[], [], []]
    assert all(len(r) == 1 and r[0].startswith("threshold: hero/b conversion rate 0.01 is ") for r in reasons[3:])
    assert "80% under its earlier mean 0.05 (limit 30%)" in reasons[3][0]
    assert watcher.series["hero/a"].rates == (0.05,) * 5
    assert watcher.series["hero/c"].rates == () and watcher.series["hero/c"].users == 100  # still its starting point
    # Three reasons, one retrain: the others came within the interval and wait as one.
    assert runs == [("threshold", reasons[3][0])]
    assert watcher.state.coalesced == 2 and watcher.state.pending == reasons[5][0]
    now[0] += 3600
    watcher.offer(None)  # the interval is over: the waiting reason runs
    assert len(runs) == 2 and runs[1][1].endswith("(and 1 earlier trigger while waiting)")


@pytest.mark.integration
def test_one_watch_process_serves_drift_and_threshold_triggers_through_one_debounce(make_settings):
    import time

    from confluent_kafka import Producer

    settings = make_settings()
    writer = FeatureWriter(settings, offline=False)
    write(writer, arm("a", 1000, 50), arm("b", 1000, 50))
    runs: list[tuple[str, str, float]] = []
    stop, ready = threading.Event(), threading.Event()
    rules = [ArmThreshold(experiment="hero", variant=v, floor=0.02, min_users=100) for v in ("a", "b")]
    watcher = threading.Thread(
        daemon=True,
        target=watch,
        args=(settings, lambda trigger, reason: runs.append((trigger, reason, time.monotonic()))),
        kwargs={
            "min_interval_s": 1.5,
            "arms": rules,
            "check_every_s": 0.05,
            "stop": stop,
            "ready": ready,
            "poll_s": 0.05,
            "group": f"test-{uuid.uuid4().hex[:8]}",
        },
    )
    watcher.start()
    try:
        assert ready.wait(30), "the watch never started"
        write(writer, arm("a", 1400, 70), arm("b", 1400, 51))  # b: 1 of 400 new users converted
        wait_for(lambda: runs, "the threshold run")
        producer = Producer({"bootstrap.servers": settings.kafka.brokers})
        producer.produce(
            settings.kafka.drift_topic,
            msgspec.json.encode(
                DriftAlert(
                    feature="clicks_5m",
                    method="kl",
                    score=0.7,
                    threshold=0.4,
                    window=10,
                    time_ms=0,
                    time="2026-01-01T00:00:00Z",
                    checks=1,
                )
            ),
        )
        producer.flush(10)
        wait_for(lambda: len(runs) == 2, "the drift run")
        threading.Event().wait(0.3)
    finally:
        stop.set()
        watcher.join(10)
    assert [r[:2] for r in runs] == [
        (
            "threshold",
            "threshold: hero/b conversion rate 0.0025 is under the floor 0.02; last reading 1 of 400 new users",
        ),
        ("drift", "drift: clicks_5m kl 0.7 > 0.4 at 2026-01-01T00:00:00Z"),
    ]
    assert runs[1][2] - runs[0][2] >= 1.4  # the drift alert came too soon and waited for the interval


# -- the command's glue: fresh feedback ------------------------------------------------------------------------------


def served(event_id: str, user: str, ts: int, text: str) -> Event:
    props = {
        "slot": "headline",
        "template": "hero_default@3",
        "style": "bargain_hunter",
        "tone": "urgent",
        "segment": 2,
        "model_version": "v1",
        "generated": True,
        "copy.headline": text,
    }
    return Event(event_id, "impression", user, ts, experiment="hero", variant="b", props=props)


@pytest.mark.integration
def test_a_triggered_run_without_feedback_exports_fresh_feedback_first(make_settings, tmp_path, monkeypatch):
    """Through `tailor retrain --watch` itself, only the fine-tuning replaced: the run record names a fresh file."""
    pytest.importorskip("torch")
    import jobs.retrain_watch
    import models.train.retrain
    from cli.main import main
    from models.serve.registry import RunData, RunRecord, record_run, runs

    settings = make_settings()
    t = now_ms() - 30 * MIN
    produce_events(
        settings,
        [
            served("x1", "u1", t, "Half price today"),
            served("x2", "u2", t + 1, "Half price today"),
            served("x3", "u3", t + 2, "Deals end soon"),
            Event("c1", "conversion", "u1", t + MIN, experiment="hero"),
            Event("k1", "click", "u3", t + MIN, experiment="hero"),
            served("x4", "u4", now_ms() + 10 * MIN, "Served after the cut-off"),
            served("x0", "u5", now_ms() - 15 * 24 * 60 * MIN, "Served before TAILOR_RETRAIN_FEEDBACK_DAYS (14)"),
        ],
    )
    writer = FeatureWriter(settings, offline=False)
    write(writer, arm("b", 1000, 50))
    registry = tmp_path / "registry"
    for name, value in {
        "BROKERS": settings.kafka.brokers,
        "TOPIC": settings.kafka.topic,
        "DRIFT_TOPIC": settings.kafka.drift_topic,
        "FEATURE_REPO": settings.store.feature_repo,
        "MODEL_DIR": str(tmp_path / "onnx"),
        "MODEL_REGISTRY": str(registry),
        "RETRAIN_MIN_INTERVAL_S": "3600",
    }.items():
        monkeypatch.setenv(f"TAILOR_{name}", value)
    calls = []

    def fake_retrain(model_dir, registry, *, feedback, trigger, reason, **_kw):
        """What `retrain` records before fine-tuning, reading the file as it does; no model is trained."""
        feedback_rows = models.train.retrain.read_feedback(feedback)
        record = RunRecord(
            run_id=f"r{len(calls)}",
            started="now",
            trigger=trigger,
            reason=reason,
            data=RunData(
                feedback=str(Path(feedback).resolve()),
                rows=len(feedback_rows.records),
                cutoff_ms=feedback_rows.cutoff_ms,
            ),
            decision="refused: fake",
        )
        record_run(registry, record)
        calls.append(record)
        return record

    stop, ready = threading.Event(), threading.Event()
    monkeypatch.setattr(models.train.retrain, "retrain", fake_retrain)  # the command imports it from there as it runs
    monkeypatch.setattr(
        jobs.retrain_watch,
        "run_watch",
        functools.partial(jobs.retrain_watch.run_watch, stop=stop, ready=ready, poll_s=0.05),
    )
    code = {}
    command = threading.Thread(
        daemon=True,
        target=lambda: code.update(
            rc=main(
                [
                    "retrain",
                    "--watch",
                    "--no-drift",
                    "--arm",
                    "hero/b",
                    "--floor",
                    "0.02",
                    "--min-users",
                    "100",
                    "--check-every-s",
                    "0.05",
                ]
            )
        ),
    )
    command.start()
    try:
        assert ready.wait(60), "the watch never started"
        write(writer, arm("b", 1200, 50))  # nobody of the 200 new users converted
        wait_for(lambda: calls, "the triggered run")
        threading.Event().wait(0.3)
    finally:
        stop.set()
        command.join(30)
    assert code == {"rc": 0}
    (record,) = runs(registry)
    assert record.trigger == "threshold" and record.reason.startswith("threshold: hero/b conversion rate 0 is under")
    path = Path(record.data.feedback)
    assert path.is_file() and path.parent == Path(settings.store.feature_repo).resolve() / "data" / "feedback"
    rows = sorted(pq.read_table(path).to_pylist(), key=lambda r: r["text"])
    assert [(r["text"], r["impressions"], r["clickers"], r["converters"]) for r in rows] == [
        ("Deals end soon", 1, 1, 0),
        ("Half price today", 2, 0, 1),
    ]
    assert record.data.rows == 2 and now_ms() - 60_000 < record.data.cutoff_ms <= now_ms()
    summary = json.loads(pq.read_schema(path).metadata[b"tailor.feedback"])
    assert summary["events_before_since"] == 1 and summary["since"] is not None


@pytest.mark.integration
@pytest.mark.model
def test_end_to_end_a_falling_arm_fine_tunes_on_fresh_feedback(make_settings, weak, tmp_path):
    """The real thing, small: counters fall, feedback is exported from the topic, a tiny model is fine-tuned on it."""
    import shutil

    from models.serve.registry import runs
    from models.train.retrain import retrain
    from tests.support import retrain_config

    settings = make_settings()
    model_dir, registry = tmp_path / "models" / "onnx", tmp_path / "registry"
    shutil.copytree(weak.onnx, model_dir)
    t = now_ms() - 30 * MIN
    produce_events(
        settings,
        [
            served(f"x{i}", f"u{i}", t + i, text)
            for i, text in enumerate(["Half price today", "Half price today", "Deals end soon"])
        ]
        + [Event("c1", "conversion", "u0", t + MIN, experiment="hero")],
    )
    writer = FeatureWriter(settings, offline=False)
    write(writer, arm("b", 1000, 50))
    stop, ready = threading.Event(), threading.Event()
    codes = []

    def run(trigger: str, reason: str, feedback: str | None) -> None:
        try:
            record = retrain(
                model_dir,
                registry,
                feedback=feedback,
                trigger=trigger,
                reason=reason,
                config=retrain_config(max_records=40, epochs=1, eval_samples=1, eval_records=100),
                records=weak.records,
                progress=False,
            )
            codes.append(record.error)
        finally:
            stop.set()

    args = retrain_args(
        "--no-drift", "--arm", "hero/b", "--relative-drop", "0.5", "--min-users", "100", "--check-every-s", "0.05"
    )
    command = threading.Thread(
        daemon=True, target=lambda: codes.append(run_watch(settings, args, run, stop=stop, ready=ready, poll_s=0.05))
    )
    command.start()
    assert ready.wait(60), "the watch never started"
    write(writer, arm("b", 1200, 60))  # 5 %
    threading.Event().wait(0.5)
    write(writer, arm("b", 1400, 61))  # 0.5 %: 90 % under
    command.join(120)
    assert not command.is_alive() and codes == ["", 0]  # the run recorded no error; the watch ended
    (record,) = runs(registry)
    assert record.trigger == "threshold" and "90% under its earlier mean 0.05" in record.reason
    assert Path(record.data.feedback).is_file() and record.data.rows == 2
    assert record.data.feedback_draws >= 1 and set(record.metrics) == {"current", "candidate"}
    assert record.decision.startswith(("promoted: ", "refused: "))
