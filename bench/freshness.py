"""``tailor bench freshness``: producer ack -> first Feast read with the new value.

The flow runs as its own process (with recovery on, as in production) while a
second process produces simulated background load at ``--rate``. A probe
event for a dedicated user is sent; once the broker acknowledged it, the probe
reads ``user_activity:lifetime_events`` through the Feast SDK in a tight loop
until it moves. Probes are spaced out so that each one waits on the flow, not
on the previous probe.

Side by side, a plain Kafka consumer in a thread of the probe process records
when each probe becomes readable from the broker at all (``kafka_*``): the
part of the latency that no stream processor can remove.

``--cold`` measures a fresh start instead of a warm flow: the topic already
holds ``--backlog`` simulated events and the load runs, then a new flow
process starts (recovery on, a fresh recovery folder, as a new deployment)
with ``TAILOR_READY_FILE``. ``ready_ms``: process start to the ready file.
At that moment a probe is produced; ``cold_servable_ms``: its broker ack to
the first Feast read that sees it. It queues behind the backlog and what the
load produced while the flow started (``--rate`` times ``ready_ms``), so it
is mostly that catch-up; ``kafka_cold_ms`` is the plain consumer's view. ``first_probes_*``: the first
``--first-probes`` probes (that one included), spaced as usual. Then the warm
probes for ``--seconds`` on the same flow (``p50_ms``, ``p99_ms``), and
``stop_ms``: SIGTERM to the flow's exit (``exit_code``).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from confluent_kafka import OFFSET_END, Consumer, TopicPartition
from tqdm import tqdm

from bench.common import bench_settings, percentile
from config.settings import Settings, settings_env
from engine.features.events import Event, encode_event

PROBE_USER = "probe-freshness"


def run_freshness(settings: Settings, args) -> int:
    if getattr(args, "cold", False) and getattr(args, "live", False):
        print("tailor bench freshness: --cold and --live are separate measurements; pick one", file=sys.stderr)
        return 2
    if getattr(args, "cold", False):
        return run_cold(settings, args)
    if getattr(args, "live", False):
        from bench.freshness_live import run_live

        return run_live(settings, args)
    from flows.features import flow_command, init_recovery
    from flows.kafka import make_producer
    from store.feast import open_store

    with bench_settings(settings) as bench, tempfile.TemporaryDirectory(prefix="tailor-recovery-") as recovery:
        env = {**os.environ, **settings_env(bench)}
        init_recovery(recovery)
        flow = subprocess.Popen(
            flow_command(bench, None if args.no_recovery else recovery), env=env, stderr=subprocess.PIPE
        )
        load = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "simulate", "--rate", str(args.rate), "--users", str(args.users)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            store = open_store(bench)
            producer = make_producer(bench.kafka.brokers, **{"linger.ms": 0})
            read = _reader(store)
            _warm_up(producer, bench, read, flow)
            # The probe is a Feast client too: keep its own collector pauses (Feast's
            # import graph, ~70 ms a full pass) out of what is measured, as the flow does.
            gc.freeze()
            observer = _KafkaObserver(bench)
            observer.start()
            latencies, kafka_latencies, timeouts, _ = _probe_for(args.seconds, producer, bench, read, 1, observer)
            observer.stop()
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited ({flow.returncode}): {flow.stderr.read()[-2000:]!r}")
        finally:
            load.terminate()
            flow.terminate()
            load.wait(10)
            flow.wait(10)
    result = {
        "bench": "freshness",
        "rate": args.rate,
        "seconds": args.seconds,
        "probes": len(latencies),
        "timeouts": timeouts,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p90_ms": round(percentile(latencies, 90), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "kafka_p50_ms": round(percentile(kafka_latencies, 50), 2),
        "kafka_p99_ms": round(percentile(kafka_latencies, 99), 2),
        "online_store": "redis" if settings.redis.url else "sqlite",
        "recovery": not args.no_recovery,
        "epoch_s": bench.flow.epoch_s,
    }
    print(json.dumps(result))
    return 0


def run_cold(settings: Settings, args) -> int:
    from flows.features import flow_command, init_recovery
    from flows.kafka import make_producer, produce_all
    from jobs.produce import simulated_records
    from store.feast import open_store

    with bench_settings(settings) as bench, tempfile.TemporaryDirectory(prefix="tailor-recovery-") as tmp:
        recovery, ready_file = os.path.join(tmp, "recovery"), os.path.join(tmp, "flow.ready")
        flow_log = os.path.join(tmp, "flow.log")
        init_recovery(recovery)
        producer = make_producer(bench.kafka.brokers, **{"linger.ms": 0})
        start_ms = int(time.time() * 1000) - 3_600_000  # the hour before now
        produce_all(
            producer, bench.kafka.topic, simulated_records(args.users, seed=3, n=args.backlog, start_ms=start_ms)
        )
        producer.flush()
        bench = bench.replace(ready_file=ready_file)
        env = {**os.environ, **settings_env(bench)}
        load = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "simulate", "--rate", str(args.rate), "--users", str(args.users)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        flow = None
        try:
            store = open_store(bench)
            read = _reader(store)
            read()  # the probe's own Feast client is warm before the clock starts
            gc.freeze()
            observer = _KafkaObserver(bench)
            observer.start()
            time.sleep(2.0)  # the load's own start-up, so that it runs at its rate when the flow starts
            started = time.perf_counter()
            with open(flow_log, "wb") as log:
                flow = subprocess.Popen(
                    flow_command(bench, None if args.no_recovery else recovery),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            _wait_ready(flow, ready_file, flow_log)
            ready_ms = (time.perf_counter() - started) * 1000
            firsts, kafka_cold, timeouts = [], None, 0
            for seq in range(1, args.first_probes + 1):
                # The first probe may wait behind the backlog: give it longer than a warm one.
                acked, latency = _probe(producer, bench, read, seq, timeout_s=60.0 if seq == 1 else 5.0)
                if seq == 1:
                    cold_servable = latency
                    seen = observer.seen.get("probe-1")
                    # The observer may see it a hair before flush() returns here: that reads as 0.
                    kafka_cold = None if seen is None else max(0.0, (seen - acked) * 1000)
                if latency is None:
                    timeouts += 1
                else:
                    firsts.append(latency)
                time.sleep(0.05)
            latencies, _, warm_timeouts, _ = _probe_for(args.seconds, producer, bench, read, args.first_probes)
            timeouts += warm_timeouts
            observer.stop()
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited ({flow.returncode}): {_tail(flow_log)}")
            stopping = time.perf_counter()
            flow.terminate()  # SIGTERM, as a supervisor stops it
            exit_code = flow.wait(30)
            stop_ms = (time.perf_counter() - stopping) * 1000
        finally:
            load.terminate()
            load.wait(10)
            if flow is not None and flow.poll() is None:
                flow.kill()
                flow.wait()
    result = {
        "bench": "freshness_cold",
        "rate": args.rate,
        "backlog": args.backlog,
        "ready_ms": round(ready_ms, 1),
        "cold_servable_ms": None if cold_servable is None else round(cold_servable, 2),
        "kafka_cold_ms": None if kafka_cold is None else round(kafka_cold, 2),
        "first_probes": args.first_probes,
        "first_probes_p50_ms": round(percentile(firsts, 50), 2),
        "first_probes_p99_ms": round(percentile(firsts, 99), 2),
        "probes": len(firsts) + len(latencies),
        "timeouts": timeouts,
        "seconds": args.seconds,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "stop_ms": round(stop_ms, 1),
        "exit_code": exit_code,
        "online_store": "redis" if settings.redis.url else "sqlite",
        "recovery": not args.no_recovery,
        "epoch_s": bench.flow.epoch_s,
    }
    print(json.dumps(result))
    return 0


def _wait_ready(
    flow: subprocess.Popen, ready_file: str, flow_log: str, poll_s: float = 0.001, timeout_s: float = 300.0
) -> None:
    """Until the flow's ready file appears; a flow that exits or takes over ``timeout_s`` is an error."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(ready_file):
        if flow.poll() is not None:
            raise RuntimeError(f"the flow exited ({flow.returncode}): {_tail(flow_log)}")
        if time.monotonic() > deadline:
            raise RuntimeError("the flow was not ready within five minutes")
        time.sleep(poll_s)


def _tail(path: str, chars: int = 2000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def _reader(store):
    from store.feast import ACTIVITY_VIEW, USER_ID

    def read() -> int:
        got = store.get_online_features(
            features=[f"{ACTIVITY_VIEW}:lifetime_events"], entity_rows=[{USER_ID: PROBE_USER}]
        ).to_dict()
        return got["lifetime_events"][0] or 0

    return read


def _send(producer, settings: Settings, seq: int) -> None:
    event = Event(f"probe-{seq}", "click", PROBE_USER, int(time.time() * 1000))
    producer.produce(settings.kafka.topic, encode_event(event), PROBE_USER.encode())
    if producer.flush(10) != 0:  # returns once the broker acknowledged it
        raise RuntimeError("the broker did not acknowledge a probe within 10 s")


def _probe(producer, settings: Settings, read, seq: int, timeout_s: float = 5.0) -> tuple[float, float | None]:
    _send(producer, settings, seq)
    acked = time.perf_counter()
    while time.perf_counter() - acked < timeout_s:
        if read() >= seq:
            return acked, (time.perf_counter() - acked) * 1000
        # A short pause between reads: a busy loop would steal the CPU the flow needs.
        time.sleep(0.003)
    return acked, None


def _probe_for(
    seconds: float,
    producer,
    settings: Settings,
    read,
    last_seq: int,
    observer=None,
    *,
    pause_s: float = 0.05,
    desc: str = "probing",
    after=None,
) -> tuple[list[float], list[float], int, int]:
    """Probes one after another for ``seconds``: latencies, the observer's Kafka latencies, timeouts, last seq.

    ``after(bar)``, if given, runs after each probe (to check on the flow, or show more on the bar).
    """
    latencies, kafka_latencies, timeouts, seq = [], [], 0, last_seq
    bar = tqdm(total=int(seconds), desc=desc, unit="s", file=sys.stderr, mininterval=1.0)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        seq += 1
        acked, latency = _probe(producer, settings, read, seq)
        if latency is None:
            timeouts += 1
        else:
            latencies.append(latency)
        seen = observer.seen.get(f"probe-{seq}") if observer is not None else None
        if seen is not None:
            kafka_latencies.append((seen - acked) * 1000)
        if after is not None:
            after(bar)
        bar.update(min(int(seconds), int(time.monotonic() - started)) - bar.n)
        time.sleep(pause_s)
    bar.close()
    return latencies, kafka_latencies, timeouts, seq


class _KafkaObserver(threading.Thread):
    """A plain consumer that notes when each probe is first readable from Kafka."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self._stopping = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.brokers,
                "group.id": "tailor-bench-observer",
                "fetch.wait.max.ms": str(settings.kafka.fetch_wait_ms),
            }
        )
        topic = settings.kafka.topic
        partitions = self._consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])

    def run(self) -> None:
        probe = PROBE_USER.encode()
        while not self._stopping.is_set():
            # consume() waits for its whole count or its timeout: keep the timeout short.
            for msg in self._consumer.consume(500, 0.002):
                if msg.key() == probe:
                    now = time.perf_counter()
                    event_id = json.loads(msg.value())["event_id"]
                    self.seen.setdefault(event_id, now)
        self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)


def _warm_up(producer, settings: Settings, read, flow, timeout_s: float = 120.0) -> None:
    """Wait for the flow to start and see the first probe (not measured)."""
    _send(producer, settings, 1)
    deadline = time.monotonic() + timeout_s
    while read() < 1:
        if flow.poll() is not None:
            raise RuntimeError(f"the flow exited ({flow.returncode}): {flow.stderr.read()[-2000:]!r}")
        if time.monotonic() > deadline:
            raise RuntimeError("the flow did not write the first probe within two minutes")
        time.sleep(0.05)
    time.sleep(2.0)  # let the background load reach its rate
