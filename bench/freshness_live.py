"""``tailor bench freshness --live``: does the flow keep up with traffic produced while it runs?

The pre-filled topic of the other modes is one large batch per partition;
live traffic is many small ones (a producer lingers a few milliseconds), and
a broker's fetch cost can grow with them (measured on the embedded Tansu
broker: its CPU climbs with the number of batches in the log). So here the
topic starts empty, the flow (its own process, recovery on, the configured
fetch settings) becomes ready, and only then the load starts: ``tailor
simulate --rate`` in a child process for ``--seconds``, with the producer
settings every Tailor producer uses (`flows.kafka.make_producer`).

Every second the lag is sampled: the topic's end offsets (everything produced)
minus the events the flow has read (``tailor_events_total``, scraped from the
flow's Bytewax API server). Probes run beside it as in the warm mode
(producer ack -> first Feast read that sees it). When the load stops the lag
at that moment is ``final_lag_events`` (target: at most one second of
traffic), and ``drain_ms`` is how long the flow then takes to reach the end.
With the embedded broker its CPU share is sampled too (``broker_cpu_pct``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from confluent_kafka import Consumer

from bench.common import bench_settings, percentile
from config.settings import Settings, settings_env
from flows.kafka import end_offsets

#: Seconds between lag samples.
SAMPLE_S = 1.0


def run_live(settings: Settings, args) -> int:
    from bench.freshness import _probe_for, _reader, _tail, _wait_ready
    from dev.services import EmbeddedBroker, free_port
    from flows.features import flow_command, init_recovery
    from flows.kafka import PRODUCER_DEFAULTS, make_producer
    from store.feast import open_store

    with contextlib.ExitStack() as stack:
        broker = None
        if not settings.kafka.brokers:
            broker = stack.enter_context(EmbeddedBroker())
            settings = settings.replace(brokers=broker.address)
        bench = stack.enter_context(bench_settings(settings))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tailor-live-"))
        recovery, ready_file = os.path.join(tmp, "recovery"), os.path.join(tmp, "flow.ready")
        flow_log = os.path.join(tmp, "flow.log")
        init_recovery(recovery)
        bench = bench.replace(ready_file=ready_file)
        port = free_port()
        env = {
            **os.environ,
            **settings_env(bench),
            "BYTEWAX_DATAFLOW_API_ENABLED": "true",
            "BYTEWAX_DATAFLOW_API_PORT": str(port),
        }
        with open(flow_log, "wb") as log:
            flow = subprocess.Popen(
                flow_command(bench, None if args.no_recovery else recovery),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        stack.callback(_stop, flow)
        _wait_ready(flow, ready_file, flow_log, poll_s=0.05)
        store = open_store(bench)
        read = _reader(store)
        producer = make_producer(bench.kafka.brokers, **{"linger.ms": 0})
        lag = _LagSampler(bench, f"http://127.0.0.1:{port}/metrics", broker)
        if lag.consumed() is None:
            raise RuntimeError(f"the flow's metrics do not answer on port {port}: {_tail(flow_log)}")
        load = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "simulate", "--rate", str(args.rate), "--users", str(args.users)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(_stop, load)
        lag.start()

        def check_flow(bar) -> None:
            if flow.poll() is not None:
                raise RuntimeError(f"the flow exited ({flow.returncode}): {_tail(flow_log)}")
            bar.set_postfix(lag=lag.last, refresh=False)

        latencies, _, timeouts, _ = _probe_for(
            args.seconds, producer, bench, read, 0, pause_s=0.2, desc="live load", after=check_flow
        )
        producer.flush(5)
        del producer  # no reconnect attempts once the broker stops
        _stop(load)
        final = lag.sample()
        stopped = time.monotonic()
        drain_ms = None
        while time.monotonic() - stopped < args.drain_timeout:
            now = lag.sample()
            if now is not None and now[1] <= 0:
                drain_ms = (time.monotonic() - stopped) * 1000
                break
            time.sleep(0.05)
        lag.stop()
    samples = lag.samples
    lags = [n for _, n, _ in samples] + ([final[1]] if final else [])
    cpu = [c for _, _, c in samples if c is not None]
    result = {
        "bench": "freshness_live",
        "rate": args.rate,
        "seconds": args.seconds,
        "users": args.users,
        "produced_events": final[0] if final else None,
        "max_lag_events": max(lags) if lags else None,
        "final_lag_events": final[1] if final else None,
        "final_lag_s_of_traffic": round(final[1] / args.rate, 2) if final and args.rate > 0 else None,
        "drain_ms": None if drain_ms is None else round(drain_ms, 1),
        "lag_events_every_10s": [n for i, (_, n, _) in enumerate(samples) if i % 10 == 9],
        "probes": len(latencies),
        "timeouts": timeouts,
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2) if latencies else None,
        "broker": "embedded" if broker is not None else "external",
        "broker_cpu_pct_median": round(sorted(cpu)[len(cpu) // 2]) if cpu else None,
        "broker_cpu_pct_max": round(max(cpu)) if cpu else None,
        "fetch_wait_ms": bench.kafka.fetch_wait_ms,
        "producer_linger_ms": PRODUCER_DEFAULTS["linger.ms"],
        "online_store": "redis" if settings.redis.url else "sqlite",
        "recovery": not args.no_recovery,
    }
    print(json.dumps(result))
    return 0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _LagSampler(threading.Thread):
    """Every `SAMPLE_S`: (events in the topic, of them not yet read by the flow, broker CPU %)."""

    def __init__(self, settings: Settings, metrics_url: str, broker=None):
        super().__init__(daemon=True)
        self.samples: list[tuple[int, int, float | None]] = []
        self.last: int | None = None
        self._url = metrics_url
        self._topic = settings.kafka.topic
        self._consumer = Consumer({"bootstrap.servers": settings.kafka.brokers, "group.id": "tailor-bench-lag"})
        meta = self._consumer.list_topics(self._topic, timeout=10).topics[self._topic]
        self._parts = list(meta.partitions)
        self._broker = None
        if broker is not None and broker.pid is not None:
            import psutil

            self._broker = psutil.Process(broker.pid)
            self._broker.cpu_percent()
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def consumed(self) -> int | None:
        """Events the flow has read (valid and dead-lettered), from its Prometheus counter."""
        try:
            with urllib.request.urlopen(self._url, timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith("tailor_events_total{"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return int(total) if seen else 0

    def sample(self) -> tuple[int, int] | None:
        # Read first, then the end offsets: the lag can only be over-stated by what arrived in between.
        consumed = self.consumed()
        if consumed is None:
            return None
        with self._lock:
            produced = sum(end_offsets(self._consumer, self._topic, self._parts, timeout_s=5).values())
        # On Tansu the end offsets can trail what a fetch already returned by a few dozen records
        # (seen: -61 at 1,000 events/s): a lag below zero reads as none.
        self.last = max(0, produced - consumed)
        return produced, self.last

    def run(self) -> None:
        while not self._stopping.wait(SAMPLE_S):
            now = self.sample()
            if now is not None:
                cpu = self._broker.cpu_percent() if self._broker is not None else None
                self.samples.append((now[0], now[1], cpu))

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)
        self._consumer.close()
