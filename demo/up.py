"""``tailor up``: the whole pipeline on one machine, with a live view of users' features.

What runs, and who owns it::

    this process ── Tansu broker (child, unless TAILOR_BROKERS is set)
                 ├─ the copy model: built first if there is none (tailor train + export)
                 ├─ the features flow (child: python -m bytewax.run, own process group;
                 │  the traffic waits for its ready file)
                 ├─ the API (child: tailor api, own process group)
                 ├─ simulated traffic (thread: paced, stamped with the wall clock,
                 │  user ids pseudonymized as the API's edge does)
                 └─ live view: Feast get_online_features(user_activity_v1) twice a second

Everything it starts is stopped on the way out (Ctrl-C, SIGTERM, ``--seconds``, or an
error): the traffic first, then the API, then the flow (SIGINT, then SIGTERM, then
SIGKILL to its whole process group), then the broker. When stdout is not a terminal (CI, tests, a pipe) the
live view becomes one plain snapshot every few seconds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec

from config.settings import Settings, settings_env
from demo.storefront import Storefront
from engine.features.events import encode_event
from flows.kafka import EmbeddedBroker, ensure_topics, make_producer
from jobs.produce import live, now_ms, paced
from jobs.simulator import Simulator

#: The simulator's seed: the same seed gives the same users and profiles.
SEED = 7
#: Simulated events that start a session: the demo storefront serves the user a headline then.
SESSION_STARTS = frozenset({"app_open", "email_click"})
#: Seconds between two refreshes of the live view ...
REFRESH_S = 0.5
#: ... and between two plain snapshots when stdout is not a terminal.
SNAPSHOT_EVERY_S = 3.0
#: A watched user this long without an event gives its row to a more active one.
WATCH_IDLE_S = 60.0
#: How long a child has to stop after SIGINT, then after SIGTERM, before SIGKILL.
STOP_GRACE_S = 10.0
#: Lines of a dead child's log shown with the error.
LOG_TAIL_LINES = 20
#: Longest the demo waits for the flow to be ready (a busy 2-core machine imports Feast slowly).
FLOW_READY_TIMEOUT_S = 180.0
#: The features shown per watched user, in column order.
COLUMNS = (
    "clicks_5m",
    "page_views_1h",
    "add_to_carts_1h",
    "purchases_24h",
    "spend_24h",
    "ctr_24h",
    "top_category",
    "seconds_since_last_event",
    "lifetime_events",
)


class ChildDied(RuntimeError):
    """A process the demo depends on exited while the demo was running."""


def run_up(settings: Settings, args) -> int:
    repo = Path(settings.store.feature_repo)
    if not (repo / "feature_store.yaml").is_file():
        print(
            f"tailor up: no feature_store.yaml in {repo}; set TAILOR_FEATURE_REPO to a Feast repository "
            "(the project's own is feature_repo/)",
            file=sys.stderr,
        )
        return 1
    if args.rate <= 0:
        print(f"tailor up: --rate must be a positive number of events per second, got {args.rate:g}", file=sys.stderr)
        return 2
    data = repo / "data"
    (data / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    code = 0
    with _StopSignals() as signals, contextlib.ExitStack() as stack:
        try:
            _run(settings, args, repo, data, stack)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop
            pass
        except (ChildDied, RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            print(f"tailor up: {exc}", file=sys.stderr)
            code = 1
        finally:
            signals.stopping = True  # a second Ctrl-C must not cut the clean-up short
            print("tailor up: stopping the traffic, the API, the flow and the broker ...", file=sys.stderr, flush=True)
    print(f"tailor up: stopped after {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return code


def _run(settings: Settings, args, repo: Path, data: Path, stack: contextlib.ExitStack) -> None:
    say = _say
    embedded = not settings.kafka.brokers
    broker: EmbeddedBroker | None = None
    if embedded:
        broker = EmbeddedBroker(log_path=str(data / "logs" / "broker.log"))
        stack.callback(broker.stop)  # before start: an interrupted start still stops it
        say("starting the embedded Kafka broker (Tansu) ...")
        broker.start()
        settings = settings.replace(brokers=broker.address)
    # The flow must keep reading: a demo flow that stops at the end of the topic is a dead demo.
    # The segment model fits once it has seen half the demo's users (or the configured
    # warm-up, if smaller), so a small demo gets segments within its first minute or two.
    settings = settings.replace(
        tail=True, segment_warmup=max(settings.audience.segments, min(settings.audience.warmup, args.users // 2))
    )

    from store.feast import apply_definitions, open_store, reset_feature_data  # Feast imports slowly

    # After Feast's import, which puts its own "once" filter for RuntimeWarning first.
    warnings.filterwarnings("ignore", message=".*experimental feature.*", category=RuntimeWarning)

    say(f"applying the Feast repository {repo} ...")
    store = open_store(settings)
    if embedded:
        # A fresh in-memory broker starts from no events: features an earlier demo
        # wrote describe events that no longer exist, so they go as well.
        reset_feature_data(store)
    apply_definitions(store)
    ensure_topics(
        settings.kafka.brokers,
        [settings.kafka.topic, settings.kafka.dlq_topic, settings.kafka.drift_topic],
        settings.kafka.partitions,
    )

    recovery = data / "recovery"
    if embedded:
        # The embedded broker keeps its log in memory: offsets recovered from a
        # previous run point into a log that no longer exists.
        shutil.rmtree(recovery, ignore_errors=True)
    if embedded and not settings.redis.url:
        # Their counters went with the features: an earlier demo's experiments start afresh too.
        Path(settings.store.experiment_db or data / "experiments.db").unlink(missing_ok=True)
    if not args.no_model:
        _ensure_model(settings, data / "logs" / "model-build.log")
    settings = _demo_keys(settings, data)
    flow = _start_flow(settings, recovery, data / "logs" / "flow.log", stack)
    api = _start_api(settings, args.api_port, data / "logs" / "api.log", stack)
    # Traffic starts once the flow can write, so that the first features shown measure
    # the pipeline, not Feast's import (the API goes on starting meanwhile).
    _wait_ready(flow)
    from engine.privacy import Pseudonymizer

    base = f"http://127.0.0.1:{args.api_port}"
    api_key, setup_key = demo_api_keys(settings.api.api_keys)
    storefront = None
    if not getattr(args, "no_experiment", False):
        storefront = Storefront(base, api_key, setup_key=setup_key)
        stack.callback(storefront.stop)
        storefront.start()
    traffic = Traffic(
        settings,
        users=args.users,
        rate=args.rate,
        seed=SEED,
        pseudonym=Pseudonymizer(settings.api.pseudonym_key).pseudonym,
        storefront=storefront,
    )
    stack.callback(traffic.stop)
    traffic.start()

    online = f"Redis {settings.redis.url}" if settings.redis.url else f"SQLite {repo / 'data' / 'online.db'}"
    say("")
    say(f"  broker        {settings.kafka.brokers}" + (" (embedded Tansu, in memory)" if embedded else ""))
    say(f"  topics        {settings.kafka.topic} (events), {settings.kafka.dlq_topic} (dead letters)")
    say(f"  flow          pid {flow.pid}, log {flow.log_path}, recovery {recovery}")
    say(f"  api           {base} (pid {api.pid}, log {api.log_path}); reference {base}/docs")
    say(f"  api key       {api_key}  (to serve; every key: TAILOR_API_KEYS, or {data / 'demo-api-keys'})")
    say(
        f"  try           curl -s {base}/v1/personalize -H 'X-API-Key: {api_key}' "
        '-H \'Content-Type: application/json\' -d \'{"user_id": "u000003", "slot": "headline"}\''
    )
    if storefront is not None:
        say(
            f"  experiment    {storefront.experiment}: generated vs default headline copy, served to simulated "
            f"users as their sessions start; results: curl -s {base}/v1/experiments/{storefront.experiment}/results "
            f"-H 'X-API-Key: {api_key}'"
        )
    say(f"  feast         repo {repo}, online store {online}")
    say(f"  traffic       {args.users} simulated users (u000000 ...), {args.rate:g} events/s, seed {SEED}")
    say(f"  more traffic  TAILOR_BROKERS={settings.kafka.brokers} tailor simulate --rate 1000")
    if not settings.redis.url:  # the plain Feast CLI reads feature_store.yaml, which says SQLite
        say(f"  feast http    feast -c {repo} serve  ->  POST http://localhost:6566/get-online-features")
    say("  stop          Ctrl-C" + (f" (or wait {args.seconds:g} s)" if args.seconds > 0 else ""))
    say("")

    view = FeatureView(
        store,
        settings,
        traffic,
        broker_note=" (embedded)" if embedded else "",
        watch=args.watch,
        api_probe=_Probe(f"{base}/healthz"),
        storefront=storefront,
    )
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    if sys.stdout.isatty():
        _live_view(view, deadline, lambda: _check(flow, broker, traffic, api))
    else:
        _plain_view(view, deadline, lambda: _check(flow, broker, traffic, api))


# -- children ---------------------------------------------------------------


class _Child:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self.ready_file: Path | None = None  # the flow's TAILOR_READY_FILE
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid = self.proc.pid

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ChildDied(
                f"the {self.name} (pid {self.pid}) exited with code {code}; "
                f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGINT (Bytewax stops cleanly on it), then SIGTERM, then SIGKILL; the whole group."""
        for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if self.proc.poll() is not None:
                break
            _signal_group(self.pid, sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        # Anything the child left behind in its group goes with it.
        _signal_group(self.pid, signal.SIGKILL)


def _start_flow(settings: Settings, recovery: Path, log_path: Path, stack: contextlib.ExitStack) -> _Child:
    from flows.features import flow_command, init_recovery

    init_recovery(recovery)
    ready_file = recovery.parent / "flow.ready"
    ready_file.unlink(missing_ok=True)  # a killed run's: not this flow's readiness
    settings = settings.replace(ready_file=str(ready_file))
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    flow = _Child("flow", flow_command(settings, str(recovery)), env, log_path)
    flow.ready_file = ready_file
    stack.callback(flow.stop)
    return flow


def _wait_ready(flow: _Child, timeout_s: float = FLOW_READY_TIMEOUT_S) -> None:
    """Wait for the flow's ready file (Feast loaded, online store open, consumers fetching)."""
    _say("waiting for the flow to load Feast and start reading ...")
    started = time.monotonic()
    while not flow.ready_file.is_file():
        flow.check()
        if time.monotonic() - started > timeout_s:
            raise ChildDied(
                f"the flow (pid {flow.pid}) was not ready after {timeout_s:.0f} s; "
                f"last lines of {flow.log_path}:\n{_tail(flow.log_path)}"
            )
        time.sleep(0.05)
    _say(f"flow ready after {time.monotonic() - started:.1f} s")


def _start_api(settings: Settings, port: int, log_path: Path, stack: contextlib.ExitStack) -> _Child:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    api = _Child("API", [sys.executable, "-m", "cli.main", "api", "--port", str(port)], env, log_path)
    stack.callback(api.stop)
    return api


class _Probe:
    """Whether the API answers yet; asked at most every few seconds, never blocking the view for long."""

    def __init__(self, url: str, every_s: float = 2.0):
        self.url = url
        self.every_s = every_s
        self.ready_after_s: float | None = None
        self._started = time.monotonic()
        self._asked = float("-inf")

    def state(self) -> str:
        import urllib.request

        now = time.monotonic()
        if self.ready_after_s is None and now - self._asked >= self.every_s:
            self._asked = now
            try:
                with urllib.request.urlopen(self.url, timeout=0.2) as response:
                    if response.status == 200:
                        self.ready_after_s = now - self._started
            except OSError:
                pass
        if self.ready_after_s is None:
            return "API starting"
        return f"API ready after {self.ready_after_s:.0f} s"


def _ensure_model(settings: Settings, log_path: Path) -> None:
    """Build the copy model into ``settings.generation.model_dir`` if it holds none (first run: minutes)."""
    from models.serve.manifest import ModelDirError, read_manifest

    try:
        read_manifest(settings.generation.model_dir)
        return
    except ModelDirError:
        pass
    try:
        import torch  # noqa: F401 - only to know whether the build can run here
    except ImportError:
        _say(
            "no copy model, and the build needs the train extra (pip install -e '.[train]'): "
            "serving the templates' default copy"
        )
        return
    model_dir = Path(settings.generation.model_dir)
    trained = model_dir.parent / "trained"
    _say(f"no copy model in {model_dir}: building one (first run only; about 7 minutes on 2 cores; log {log_path}) ...")
    cli = [sys.executable, "-m", "cli.main"]
    for step in (["train", "--out", str(trained)], ["export", str(trained), "--out", str(model_dir), "--quantize"]):
        with open(log_path, "ab") as log:
            # Progress bars go to the terminal; everything else to the log.
            result = subprocess.run(cli + step, stdout=log, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ChildDied(
                f"`tailor {step[0]}` failed (code {result.returncode}); last lines of {log_path}:\n{_tail(log_path)}"
            )


def _demo_keys(settings: Settings, data: Path) -> Settings:
    """The pseudonym key and API keys: from the settings, else made once and kept in ``data``.

    The demo's API keys are one with the ``serve`` scope (the storefront's and the
    printed curl's) and one ``admin`` key (to set the demo experiment up); a file
    from an older demo with only an admin key gets a serve key added.
    """
    import secrets

    def serve_key() -> str:
        return f"demo-serve-{secrets.token_hex(8)}=serve"

    values = {}
    for field, name, make in (
        ("pseudonym_key", "pseudonym-key", lambda: secrets.token_hex(32)),
        ("api_keys", "demo-api-keys", lambda: f"{serve_key()},demo-admin-{secrets.token_hex(8)}=admin"),
    ):
        if getattr(settings.api, field):
            continue
        path = data / name
        if not path.is_file():
            path.write_text(make())
            path.chmod(0o600)
        values[field] = path.read_text().strip()
        if field == "api_keys" and len(set(demo_api_keys(values[field]))) == 1:
            values[field] += f",{serve_key()}"
            path.write_text(values[field])
    return settings.replace(**values)


def demo_api_keys(api_keys: str) -> tuple[str, str]:
    """(the key to serve with, the key to set the experiment up with) of ``TAILOR_API_KEYS``: the least scope each.

    A key with the scope and fewest others wins; an ``admin`` key (every scope) only when
    no other has it.

    >>> demo_api_keys("boss=admin,front=serve,both=ingest+serve")
    ('front', 'boss')
    >>> demo_api_keys("boss=admin")
    ('boss', 'boss')
    """
    scopes = {
        key.strip(): {s.strip() for s in names.split("+")}
        for key, _, names in (entry.partition("=") for entry in api_keys.split(",") if entry.strip())
    }

    def least(scope: str) -> str:
        holding = [k for k, names in scopes.items() if scope in names or "admin" in names]
        # An admin key holds every scope: rank it last for any other scope.
        return min(holding or scopes, key=lambda k: ("admin" in scopes[k] and scope != "admin", len(scopes[k])))

    return least("serve"), least("admin")


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _check(flow: _Child, broker: EmbeddedBroker | None, traffic: Traffic, api: _Child) -> None:
    flow.check()
    api.check()
    if broker is not None and not broker.alive:
        raise ChildDied("the embedded broker exited; see its log under data/logs/")
    if traffic.error:
        raise ChildDied(f"the simulated traffic stopped: {traffic.error}")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"  (could not read it: {exc})"
    return "\n".join("  " + line for line in text.rstrip().splitlines()[-lines:]) or "  (empty)"


# -- traffic ----------------------------------------------------------------


class Traffic:
    """Simulated users' events at a steady rate, stamped with the wall clock, into Kafka.

    A thread rather than a child process: the view reads the counts and each
    user's last event time straight from it, and `profile_of` from its simulator.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        users: int,
        rate: float,
        seed: int,
        pseudonym: Callable[[str], str] = str,
        storefront: Storefront | None = None,
    ):
        self.settings = settings
        self.storefront = storefront
        #: Raw user id -> the id Kafka and the stores see (the API's edge does the same).
        self.pseudonym = functools.lru_cache(maxsize=None)(pseudonym)
        self.rate = rate
        self.simulator = Simulator(users=users, seed=seed, start_ms=now_ms())
        self.produced = 0
        self.delivered = 0
        self.failed = 0
        self.error: str | None = None
        self._last_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tailor-up-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def last_seen(self) -> dict[str, float]:
        """Each user's latest event, as ``time.monotonic()``; in first-seen order."""
        with self._lock:
            return dict(self._last_seen)

    def _on_delivery(self, err, _msg) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def _run(self) -> None:
        producer = make_producer(
            self.settings.kafka.brokers, on_delivery=self._on_delivery, **{"client.id": "tailor-up-traffic"}
        )
        # paced() sleeps on the stop event, so stopping never waits out a slow rate.
        events = live(paced(self.simulator, self.rate, sleep=self._stop.wait))
        try:
            for event in events:
                if self._stop.is_set():
                    break
                raw = event.user_id
                if self.storefront is not None:
                    if event.type in SESSION_STARTS:
                        self.storefront.session_started(raw)
                    elif event.type == "click" and event.experiment is None:
                        # A click after a served headline: the storefront reports it for the experiment.
                        experiment = self.storefront.experiment_of(raw, event.ts)
                        if experiment is not None:
                            event = msgspec.structs.replace(event, experiment=experiment)
                key = self.pseudonym(raw).encode()
                value = encode_event(msgspec.structs.replace(event, user_id=key.decode()))
                while not self._stop.is_set():
                    try:
                        producer.produce(self.settings.kafka.topic, value, key)
                        break
                    except BufferError:  # the broker is slow: let the local queue drain
                        producer.poll(0.05)
                else:
                    break  # stopped while the queue was full
                producer.poll(0)
                self.produced += 1
                with self._lock:
                    self._last_seen[raw] = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - reported by the view, which stops the demo
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            producer.flush(5)


def pick_watched(
    current: list[str], last_seen: dict[str, float], size: int, now: float, idle_s: float = WATCH_IDLE_S
) -> list[str]:
    """The users to show: keep the current rows, give an idle user's row to the most recent other.

    >>> pick_watched([], {"u1": 5.0, "u2": 9.0, "u3": 7.0}, 2, now=10.0)
    ['u2', 'u3']
    >>> pick_watched(["u1", "u2"], {"u1": 0.0, "u2": 9.0, "u3": 7.0}, 2, now=100.0, idle_s=60)
    ['u3', 'u2']
    """
    candidates = sorted((u for u in last_seen if u not in current), key=last_seen.__getitem__, reverse=True)
    watched = list(current)
    for i, user in enumerate(watched):
        if now - last_seen.get(user, now) > idle_s and candidates:
            watched[i] = candidates.pop(0)
    while len(watched) < size and candidates:
        watched.append(candidates.pop(0))
    return watched[:size]


# -- the view ---------------------------------------------------------------


class FeatureView:
    """Reads the watched users' features through Feast and formats them."""

    def __init__(
        self,
        store,
        settings: Settings,
        traffic: Traffic,
        *,
        broker_note: str,
        watch: int,
        api_probe: _Probe | None = None,
        storefront: Storefront | None = None,
    ):
        self.store = store
        self.api_probe = api_probe
        self.storefront = storefront
        self.service = store.get_feature_service("user_activity_v1")
        self.settings = settings
        self.traffic = traffic
        self.broker_note = broker_note
        self.size = watch
        self.watched: list[str] = []
        self.started = time.monotonic()
        #: Seconds from the start to the first features read back (the flow is ready by then).
        self.first_features_s: float | None = None
        self._dlq = _DeadLetterCount(settings)

    def rows(self) -> tuple[list[dict], str | None]:
        """One dict per watched user (``user``, ``profile`` and `COLUMNS`), and a read error if any."""
        self.watched = pick_watched(self.watched, self.traffic.last_seen(), self.size, time.monotonic())
        if not self.watched:
            return [], None
        try:
            got = self.store.get_online_features(
                features=self.service, entity_rows=[{"user_id": self.traffic.pseudonym(u)} for u in self.watched]
            ).to_dict()
        except Exception as exc:  # noqa: BLE001 - shown in the view; the demo goes on
            return [], f"reading features failed: {type(exc).__name__}: {exc}"
        segments = self._segments()
        rows = []
        for i, user in enumerate(self.watched):
            row = {"user": user, "profile": self.traffic.simulator.profile_of(user)}
            row.update((name, got[name][i]) for name in COLUMNS)
            row["segment"] = segments.get(user)
            rows.append(row)
        elapsed = time.monotonic() - self.started
        # Only an event sent since the start proves the pipeline live: the online store
        # keeps the rows of earlier runs.
        if self.first_features_s is None and any(
            row["lifetime_events"] and (row["seconds_since_last_event"] or float("inf")) < elapsed for row in rows
        ):
            self.first_features_s = elapsed
        return rows, None

    def _segments(self) -> dict[str, str]:
        """Watched users' segment labels (none while the segment model warms up)."""
        if not self.settings.audience.segments:
            return {}
        from store.feast import read_profiles

        try:
            labels = {p.segment: p.label for p in read_profiles(self.store, self.settings.audience.segments)}
            got = self.store.get_online_features(
                features=["user_segment:segment"],
                entity_rows=[{"user_id": self.traffic.pseudonym(u)} for u in self.watched],
            ).to_dict()
        except Exception:  # noqa: BLE001 - the activity columns still show
            return {}
        return {u: labels.get(s, str(s)) for u, s in zip(self.watched, got["segment"]) if s is not None}

    def header(self) -> str:
        t = self.traffic
        elapsed = time.monotonic() - self.started
        dlq = self._dlq.count()
        parts = [
            f"up {elapsed:.0f} s",
            f"broker {self.settings.kafka.brokers}{self.broker_note}",
            f"{t.delivered:,} events produced ({t.produced / elapsed if elapsed else 0:,.0f}/s)",
            f"DLQ {self.settings.kafka.dlq_topic}: {'?' if dlq is None else f'{dlq:,}'} dead letters",
            "waiting for the flow's first write"
            if self.first_features_s is None
            else f"first features after {self.first_features_s:.1f} s",
        ]
        if self.api_probe is not None:
            parts.append(self.api_probe.state())
        if self.storefront is not None:
            parts.append(self._experiment())
        if t.failed:
            parts.append(f"{t.failed:,} deliveries failed")
        return " | ".join(parts)

    def _experiment(self) -> str:
        """The demo experiment's arms as the flow counted them: users, and how many converted."""
        front = self.storefront
        if front.state != "running":
            return f"experiment {front.experiment} {front.state}"
        from demo.storefront import EXPERIMENT
        from engine.experiments.designs import HOLDOUT
        from store.online import read_arm_counters

        variants = [arm["name"] for arm in EXPERIMENT["arms"]] + [HOLDOUT]
        try:
            counters = read_arm_counters(self.store, front.experiment, variants)
        except Exception as exc:  # noqa: BLE001 - shown in the view; the demo goes on
            return f"experiment {front.experiment}: reading counters failed ({type(exc).__name__})"
        arms = ", ".join(f"{v} {counters[v].users} users/{counters[v].converters} converted" for v in variants)
        return f"experiment {front.experiment} ({front.served:,} headlines served): {arms}"

    def close(self) -> None:
        self._dlq.close()


def format_value(name: str, value) -> str:
    """A feature as the view shows it.

    >>> format_value("spend_24h", 12.5), format_value("ctr_24h", 0.125), format_value("top_category", None)
    ('12.50', '0.12', '-')
    """
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if name == "spend_24h":
        return f"{value:.2f}"
    if name == "ctr_24h":
        return f"{value:.2f}"
    if name == "seconds_since_last_event":
        return f"{value:.1f}"
    return str(value)


class _DeadLetterCount:
    """Messages in the dead-letter topic, from its watermarks, at most every two seconds."""

    EVERY_S = 2.0

    def __init__(self, settings: Settings):
        from confluent_kafka import Consumer

        self.topic = settings.kafka.dlq_topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka.brokers,
                "group.id": f"tailor-up-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "client.id": "tailor-up-dlq-count",
            }
        )
        self._at = 0.0
        self._count: int | None = None

    def count(self) -> int | None:
        if time.monotonic() - self._at >= self.EVERY_S:
            self._at = time.monotonic()
            self._count = self._read()
        return self._count

    def _read(self) -> int | None:
        from confluent_kafka import TopicPartition

        try:
            partitions = self._consumer.list_topics(self.topic, timeout=2).topics[self.topic].partitions
            total = 0
            for p in partitions:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=2)
                total += max(0, high - low)
            return total
        except Exception:  # noqa: BLE001 - a count we cannot get shows as "?"
            return None

    def close(self) -> None:
        self._consumer.close()


def _ticks(deadline: float | None, check) -> Iterator[None]:
    """Yields every `REFRESH_S` until the deadline (forever without one), checking children first."""
    while deadline is None or time.monotonic() < deadline:
        check()
        yield
        time.sleep(REFRESH_S)


def _live_view(view: FeatureView, deadline: float | None, check) -> None:
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    def render():
        rows, error = view.rows()
        table = Table(expand=False, header_style="bold")
        for name in ("user", "profile", *COLUMNS, "segment"):
            table.add_column(
                "last event s" if name == "seconds_since_last_event" else name,
                justify="left" if name in ("user", "profile", "top_category", "segment") else "right",
            )
        for row in rows:
            table.add_row(*(format_value(k, v) for k, v in row.items()))
        lines = [Text(view.header(), style="dim")]
        if error:
            lines.append(Text(error, style="red"))
        if not rows and not error:
            lines.append(Text("waiting for the first events ..."))
        return Group(*lines, table, Text("Ctrl-C to stop", style="dim"))

    try:
        with Live(render(), console=Console(), auto_refresh=False) as live_view:
            for _ in _ticks(deadline, check):
                live_view.update(render(), refresh=True)
    finally:
        view.close()


def _plain_view(view: FeatureView, deadline: float | None, check) -> None:
    def snapshot() -> None:
        rows, error = view.rows()
        lines = [f"snapshot | {view.header()}"]
        if error:
            lines.append(f"  {error}")
        for row in rows:
            cells = " ".join(f"{k}={format_value(k, v)}" for k, v in row.items() if k not in ("user", "profile"))
            lines.append(f"  {row['user']} {row['profile']:<18} {cells}")
        print("\n".join(lines), flush=True)

    last = time.monotonic()
    try:
        for _ in _ticks(deadline, check):
            if time.monotonic() - last >= SNAPSHOT_EVERY_S:
                last = time.monotonic()
                snapshot()
        snapshot()  # the state at the end of a timed run
    finally:
        view.close()


def _say(line: str) -> None:
    print(f"tailor up: {line}" if line and not line.startswith(" ") else line, flush=True)


# -- signals ----------------------------------------------------------------


class _StopSignals:
    """SIGINT and SIGTERM raise KeyboardInterrupt, once: clean-up is not interrupted."""

    def __init__(self):
        self.stopping = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
