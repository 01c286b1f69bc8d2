"""Redis faults by signal: SIGKILL then a restart on the same port, SIGSTOP/SIGCONT (hung), FLUSHALL.

Real parts only: our own ``redis-server`` per test (so a fault hits no other test),
the API as its own uvicorn process under load, the flow as its own Bytewax process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from config.settings import settings_env
from dev.services import free_port
from engine.features.events import Event
from flows.features import flow_command, init_recovery
from tests.support import ADMIN, KEY, SERVE, now_ms, online_states, produce_events, uninterrupted_run

pytestmark = pytest.mark.integration


class RedisProcess:
    """A ``redis-server`` we can kill, restart on the same port, pause and resume.

    ``persistent``: an append-only file fsynced on every write, so a restart keeps the data.
    """

    def __init__(self, persistent: bool = False):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.persistent = persistent
        self.dir = tempfile.mkdtemp(prefix="tailor-redis-faults-")
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisProcess:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def flushall(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis():
    servers: list[RedisProcess] = []

    def start(persistent: bool = False) -> RedisProcess:
        servers.append(RedisProcess(persistent).start())
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _api_settings(make_settings, tmp_path, redis: RedisProcess, **overrides):
    # No copy model: default copy, so a request's time is the store's, not the generator's.
    return make_settings(
        redis_url=redis.url,
        pseudonym_key=KEY,
        api_keys="server=ingest+serve,boss=admin",
        model_dir=str(tmp_path / "no-model"),
        template_db=str(tmp_path / "templates.db"),
        experiment_db=str(tmp_path / "experiments.db"),
        **overrides,
    )


class ApiProcess:
    """``tailor api`` in its own process, on a free port."""

    def __init__(self, settings, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api", "--port", str(self.port)],
            env={**os.environ, **settings_env(settings)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log = log
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"the API exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start in 120 s"
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


class Probe(threading.Thread):
    """Calls one route in a loop and records (seconds since start, status or exception name, latency s)."""

    def __init__(self, base: str, method: str, path: str, **kwargs):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base, timeout=30)
        self.method, self.path, self.kwargs = method, path, kwargs
        self.samples: list[tuple[float, object, float]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                status: object = self.client.request(self.method, self.path, **self.kwargs).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            self.samples.append((started - self.t0, status, time.monotonic() - started))
            time.sleep(0.005)

    def between(self, start: float, end: float) -> list[tuple[float, object, float]]:
        return [s for s in self.samples if start <= s[0] < end]


def _personalize_body(user: str) -> dict:
    return {"user_id": user, "slot": "headline", "context": {"first_name": "Ann"}}


def _p(latencies: list[float], q: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _outage(api: ApiProcess, fault, heal, outage_s: float = 3.0) -> dict:
    """Probes /healthz and personalize (two callers) through ``fault()``, ``outage_s`` and ``heal()``."""
    health = Probe(api.base, "GET", "/healthz")
    callers = [
        Probe(api.base, "POST", "/v1/personalize", headers=SERVE, json=_personalize_body(f"user{i}")) for i in range(2)
    ]
    for probe in (health, *callers):
        probe.t0 = health.t0
        probe.start()
    time.sleep(1.0)
    fault_at = time.monotonic() - health.t0
    fault()
    time.sleep(outage_s)
    healed_at = time.monotonic() - health.t0
    heal()
    deadline = time.monotonic() + 20
    recovered_at = None
    while time.monotonic() < deadline:
        recent = [s for p in callers for s in p.samples[-3:]]
        if recent and all(s[1] == 200 and s[0] > healed_at for s in recent):
            recovered_at = min(s[0] for s in recent)
            break
        time.sleep(0.05)
    for probe in (health, *callers):
        probe.stop.set()
        probe.join(40)
    during = [s for p in callers for s in p.between(fault_at + 0.2, healed_at)]
    return {
        "health": health.samples,
        "health_statuses": sorted({str(s[1]) for s in health.samples}),
        "health_max_s": max(s[2] for s in health.samples),
        "during_statuses": sorted({str(s[1]) for s in during}),
        "during_n": len(during),
        "during_p50_ms": round(_p([s[2] for s in during], 0.5) * 1000, 1),
        "during_p95_ms": round(_p([s[2] for s in during], 0.95) * 1000, 1),
        "during_max_ms": round(max((s[2] for s in during), default=float("nan")) * 1000, 1),
        "recovered_after_s": None if recovered_at is None else round(recovered_at - healed_at, 2),
    }


def _check_outage(report: dict) -> None:
    printable = {k: v for k, v in report.items() if k != "health"}
    print(msgspec.json.encode(printable).decode())
    assert report["health_statuses"] == ["200"], printable
    assert report["health_max_s"] < 0.5, printable
    assert report["during_n"] >= 20, printable  # the callers kept getting answers, fast
    assert set(report["during_statuses"]) <= {"200", "503"}, printable
    assert report["during_p95_ms"] < 100, printable
    assert report["during_max_ms"] < 1000, printable
    assert report["recovered_after_s"] is not None and report["recovered_after_s"] < 10, printable


def test_redis_killed_under_load_api_answers_fast_and_recovers(make_settings, own_redis, tmp_path):
    redis = own_redis()
    api = ApiProcess(_api_settings(make_settings, tmp_path, redis), tmp_path / "api.log")
    try:
        assert (
            httpx.post(
                f"{api.base}/v1/personalize", headers=SERVE, json=_personalize_body("ann"), timeout=30
            ).status_code
            == 200
        )
        # The restarted Redis keeps nothing (no persistence): the templates come back from the local copy.
        report = _outage(api, redis.kill, redis.start)
        _check_outage(report)
        ready = httpx.get(f"{api.base}/readyz", timeout=10).json()
        assert ready["redis"].startswith("ok"), ready
    finally:
        api.close()


def test_hung_redis_api_answers_fast_and_recovers(make_settings, own_redis, tmp_path):
    redis = own_redis()
    api = ApiProcess(_api_settings(make_settings, tmp_path, redis), tmp_path / "api.log")
    try:
        assert (
            httpx.post(
                f"{api.base}/v1/personalize", headers=SERVE, json=_personalize_body("ann"), timeout=30
            ).status_code
            == 200
        )

        def pause():
            redis.pause()
            # While it hangs, /readyz says so (and answers within its own bound).
            started = time.monotonic()
            ready = httpx.get(f"{api.base}/readyz", timeout=10)
            assert ready.status_code == 503 and "unreachable" in ready.json()["redis"], ready.text
            assert time.monotonic() - started < 3

        _check_outage(_outage(api, pause, redis.resume))
    finally:
        redis.resume()
        api.close()


TEMPLATE = {
    "template_id": "hl-own",
    "slot": "headline",
    "body": "{{ ai.headline }}",
    "default_copy": {"headline": "Our own headline"},
}
EXPERIMENT = {
    "id": "hl-test",
    "slot": "headline",
    "arms": [{"name": "control"}, {"name": "own", "template_id": "hl-own"}],
}


def _own_templates_and_experiment(client) -> None:
    """Two templates of an admin's (one with two versions) and a running experiment."""
    assert client.post("/v1/templates", headers=ADMIN, json=TEMPLATE).status_code == 201
    assert client.post("/v1/templates", headers=ADMIN, json={**TEMPLATE, "template_id": "hl-two"}).status_code == 201
    assert (
        client.patch("/v1/templates/hl-two", headers=ADMIN, json={"default_copy": {"headline": "Second"}}).status_code
        == 200
    )
    created = client.post("/v1/experiments", headers=ADMIN, json=EXPERIMENT)
    assert created.status_code == 201, created.text
    assert client.post("/v1/experiments/hl-test/start", headers=ADMIN).status_code == 200


def test_flushed_redis_templates_and_experiments_come_back(make_settings, own_redis, tmp_path):
    from litestar.testing import TestClient

    from api.app import create_app

    redis = own_redis()
    settings = _api_settings(make_settings, tmp_path, redis)
    with TestClient(app=create_app(settings)) as client:
        _own_templates_and_experiment(client)
        before = client.get("/v1/templates", headers=SERVE).json()

        redis.flushall()
        ready = client.get("/readyz").json()
        assert "lost" in ready["redis"], ready  # it noticed, and says what it did

        assert client.get("/v1/templates", headers=SERVE).json() == before
        versions = client.get("/v1/templates/hl-two/versions", headers=SERVE).json()
        assert [v["version"] for v in versions] == [1, 2]
        spec = client.get("/v1/experiments/hl-test", headers=SERVE)
        assert spec.status_code == 200 and spec.json()["status"] == "running", spec.text
        deadline = time.monotonic() + 10
        while True:
            answer = client.post("/v1/personalize", headers=SERVE, json=_personalize_body("ann"))
            if answer.status_code == 200 and answer.json()["experiment"] == "hl-test":
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        # A write after the restore lands on top of it: versions keep counting.
        assert (
            client.patch("/v1/templates/hl-two", headers=ADMIN, json={"default_copy": {"headline": "Third"}}).json()[
                "version"
            ]
            == 3
        )


def test_api_started_while_redis_is_down_answers_and_recovers_from_its_local_copy(make_settings, own_redis, tmp_path):
    from litestar.testing import TestClient

    from api.app import create_app

    redis = own_redis()
    settings = _api_settings(make_settings, tmp_path, redis)
    with TestClient(app=create_app(settings)) as client:  # an earlier run left the local copy
        _own_templates_and_experiment(client)
    redis.kill()
    api = ApiProcess(settings, tmp_path / "api.log")  # a restart during the outage
    try:
        ready = httpx.get(f"{api.base}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["redis"].startswith("unreachable"), ready.text
        answer = httpx.post(f"{api.base}/v1/personalize", headers=SERVE, json=_personalize_body("ann"), timeout=10)
        assert answer.status_code == 503 and "retry in a few seconds" in answer.json()["detail"], answer.text
        redis.start()  # back, empty: the templates and the experiment come from the copy
        deadline = time.monotonic() + 15
        while True:
            answer = httpx.post(f"{api.base}/v1/personalize", headers=SERVE, json=_personalize_body("ann"), timeout=10)
            if answer.status_code == 200 and answer.json()["experiment"] == "hl-test":
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        versions = httpx.get(f"{api.base}/v1/templates/hl-two/versions", headers=SERVE, timeout=10).json()
        assert [v["version"] for v in versions] == [1, 2]
    finally:
        api.close()


def test_a_read_against_a_refused_redis_fails_at_once_and_then_without_trying(make_settings, feature_repo):
    """redis-py's default retries held such a read 6.7-9.2 s; now one try, then the breaker answers."""
    from store.feast import open_store
    from store.online import OnlineReader
    from store.redis_guard import StoreUnavailable

    settings = make_settings()  # definitions applied (the registry is a file)
    refused = settings.replace(redis_url=f"127.0.0.1:{free_port()}")
    reader = OnlineReader(open_store(refused), refused.audience.segments)
    times = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable.*retry in a few seconds"):
            reader.features("ann")
        times.append(time.monotonic() - started)
    assert max(times) < 0.5, times


def test_feature_writer_waits_for_redis_at_start_and_retries_a_write_until_it_lands(make_settings, own_redis):
    from store import metrics
    from store.feast import FeatureWriter
    from tests.support import online_states

    redis = own_redis()
    settings = make_settings(redis_url=redis.url)
    redis.kill()
    opened: list = []

    def start() -> None:  # what build_flow does before Bytewax reads an event
        writer = FeatureWriter(settings)
        writer.warm_up()
        opened.append(writer)

    starting = threading.Thread(target=start)
    starting.start()
    time.sleep(8)  # longer than redis-py's own retries (about 7 s)
    assert not opened and starting.is_alive()  # waiting for Redis, not failed
    redis.start()
    starting.join(30)
    writer = opened[0]

    from engine.features.tiles import UserActivity

    state = UserActivity()
    state.update(Event("w1", "click", "wendy", now_ms(), category="a"))
    redis.kill()
    retries = metrics.ONLINE_WRITE_RETRIES._value.get()
    writing = threading.Thread(target=writer.write, args=({"wendy": state},))
    writing.start()
    time.sleep(8)
    assert writing.is_alive() and metrics.ONLINE_WRITE_RETRIES._value.get() > retries
    redis.start()  # empty (no persistence): the retried write is what lands
    writing.join(30)
    assert not writing.is_alive()
    assert online_states(settings, ["wendy"])["wendy"] == state.packed()


def _events(n: int, users: int, start_ms: int, offset: int = 0) -> list[Event]:
    kinds = ["page_view", "click", "add_to_cart", "purchase"]
    return [
        Event(
            f"e{offset + i}",
            kinds[i % 4],
            f"u{i % users}",
            start_ms + i * 50,
            category="abcd"[i % 4],
            value=10.0 if i % 4 == 3 else None,
        )
        for i in range(n)
    ]


def test_flow_survives_a_redis_outage_and_its_features_are_complete(make_settings, own_redis, tmp_path):
    redis = own_redis(persistent=True)  # a restart keeps what was written before the kill
    settings = make_settings(
        redis_url=redis.url,
        lateness_s=600,
        epoch_s=1,
        batch_size=200,
        ready_file=str(tmp_path / "flow.ready"),
        segments=0,
    )
    start = now_ms() - 600_000
    first, second = _events(2000, 50, start), _events(2000, 80, start + 100_000, offset=2000)
    users = sorted({e.user_id for e in first + second})
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    log = open(tmp_path / "flow.log", "wb")
    proc = subprocess.Popen(
        flow_command(settings, str(recovery)),
        env={**os.environ, **settings_env(settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        produce_events(settings, first)
        first_users = sorted({e.user_id for e in first})
        _wait(lambda: all(online_states(settings, first_users).values()), 120, proc, tmp_path / "flow.log")
        redis.kill()
        produce_events(settings, second)
        # Longer than redis-py's own retries (three, with backoff: about 7 s), which the flow outlived before.
        time.sleep(12)  # the flow meets the outage: it must retry, not exit
        assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
        redis.start()
        reference = uninterrupted_run(settings.replace(redis_url="", ready_file=""), tmp_path / "reference")
        expected = online_states(reference, users)
        assert all(expected.values())
        _wait(lambda: online_states(settings, users) == expected, 60, proc, tmp_path / "flow.log")
        metrics_text = (tmp_path / "flow.log").read_text()
        assert "retrying" in metrics_text, metrics_text[-3000:]  # the retries are logged
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait(check, timeout_s: float, proc, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert proc.poll() is None, f"the flow exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out: {log.read_text()[-3000:]}"
        time.sleep(0.5)
