"""``tailor bench api``: the serving API under load, beside ``feast serve`` and a bare Litestar app.

Self-contained, like the other benchmarks: an embedded broker, a temp Feast
repo, and features for ``--users`` simulated users (a day of simulated events
folded into tiles with `engine.features.tiles.UserActivity`, segments from one
`engine.audience.audience.Audience` pass) written straight with `FeatureWriter` under
the users' pseudonyms. Then ``tailor api``, ``feast serve`` (one worker each, on
the same repo) and the ceiling (`bench.ceiling`: a bare Litestar + msgspec POST
route of personalize's shape, under the same uvicorn settings) start as child
processes, and this process drives them:

* open loop at fixed offered rates (`bench.openloop`): latency counted from
  each request's scheduled send time, so queueing behind a slow server counts;
  the features route and ``feast serve``'s ``/get-online-features`` at
  ``--feature-rates``, ``/v1/personalize`` at ``--rate`` with about 90 % of
  requests on warmed copy keys and 10 % each on a fresh item, a key never
  generated (``miss_share``);
* personalize's copy comes from the background generator (``tailor copy generate``,
  its own child process, started for the personalize runs): the API answers a
  miss at once with default copy and queues the key. Warming asks for every warm
  key once and then again until each answers ``cached: true``; during the open
  loop a sample of the misses is followed (`MissWatch`) until the API serves
  generated copy for each (``miss_to_generated_s``, from the miss's send);
* peak throughput closed loop with ``wrk`` (one thread, ``--connections``),
  personalize on warmed keys only, and the ceiling with the same wrk script and
  bodies (``personalize_peak_vs_ceiling``); then the personalize peak with an A/B
  experiment running on every slot, and once more without (A/B/A), for the cost
  of assignment and impression logging.

With two or more CPUs and ``taskset``, the servers run on the last CPU and the
load generators (this process, wrk) and the copy generator on the others, so
neither steals the server's core; the JSON says what was pinned where.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec

from bench.common import bench_settings, percentile
from bench.openloop import OpenLoopClient, build_request, closed_loop, is_cached, read_response
from config.settings import Settings, settings_env
from engine.privacy import Pseudonymizer

API_KEY = "bench"
HOST = "127.0.0.1"
#: A day of simulated events before now: most users have history, a few are idle.
HISTORY_MS = 24 * 3600 * 1000
SEED = 7
#: Personalize: cache keys warmed before the measured runs (items x slots x segments seen).
WARM_ITEMS = 100
SLOTS = ("headline", "cta")
#: Share of measured personalize requests on warmed keys (the rest: items never seen).
HIT_SHARE = 0.9
#: Longest wait for the copy generator to write every warm key (it loads its model first).
WARM_TIMEOUT_S = 180.0
#: Between warm-up passes: the generator writes a batch in a fraction of a second.
WARM_PASS_S = 1.0
#: Missed keys of the open loop followed until served generated copy, spread over the run.
MISS_SAMPLE = 100
#: A followed miss not served generated copy this long after its send counts as never generated.
MISS_CAP_S = 30.0
#: How often the followed keys are looked up in the copy store (one read; no load on the API).
MISS_POLL_S = 0.05
#: Longest wait for the generator to work off the queued misses before the peak runs.
QUEUE_DRAIN_S = 60.0
FIRST_NAMES = ("Ann", "Bo", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana")
WARMUP_S = 2.0
#: The API re-reads experiments every 0.5 s; wait this long after a change before measuring.
EXPERIMENT_REFRESH_S = 1.5
#: Most connections the open-loop client opens to one server.
MAX_CONNECTIONS = 256
#: A response slower than this is an error; so is one still out this long after the last send.
TIMEOUT_S = 5.0
#: One worker, like the API; --max-requests 0: Feast's default (1,000) restarts the
#: worker every thousand requests, which would measure restarts, not serving.
FEAST_SERVE_FLAGS = ("feast", "serve", "-w", "1", "--max-requests", "0", "--no-access-log")
WRK_LUA = Path(__file__).with_name("wrk_cycle.lua")
ROOT = Path(__file__).resolve().parents[1]
WRK_INSTALL = "install wrk: apt-get install -y wrk (Debian/Ubuntu) or brew install wrk"
TARGETS = {
    "personalize_p99": "/v1/personalize p99 <= 10 ms and no errors at 1,000 rps offered, about 10 % of "
    "requests on keys never generated",
    "personalize_peak": "/v1/personalize >= 4,000 rps peak (wrk, all cache hits)",
    "personalize_vs_ceiling": "/v1/personalize all-hit peak >= 40 % of a bare Litestar + msgspec POST route's "
    "(bench/ceiling.py, same pinning, wrk script and bodies)",
    "miss_to_generated": "keys never generated served generated copy within 5 s of the miss (p99 of a sample), "
    "none left ungenerated",
    "features_vs_feast": "features route >= 5x feast serve's peak throughput, at an equal or lower p99",
}
#: Personalize's all-hit peak as a share of the ceiling's, and the longest p99 from a miss to generated copy.
CEILING_SHARE_TARGET = 0.40
MISS_TO_GENERATED_TARGET_S = 5.0


class Population(msgspec.Struct):
    """The users the bench wrote features for (raw ids, as clients send them)."""

    users: list[str]
    segment_of: dict[str, int]
    with_segment: int
    events: int


def run_api_bench(settings: Settings, args) -> int:
    personalize = not args.no_personalize
    model = Path(args.model).resolve()
    if personalize and not (model / "manifest.json").is_file():
        print(
            f"tailor bench api: no exported model in {model} (no manifest.json); build one with "
            "`tailor train && tailor export --quantize`, pass --model, or skip personalize with --no-personalize",
            file=sys.stderr,
        )
        return 2
    if personalize:
        from api.personalize import read_served_model
        from models.serve.manifest import ModelDirError

        try:
            read_served_model(model)  # the generator refuses an old-prompt model: warming would only time out
        except ModelDirError as exc:
            print(f"tailor bench api: {exc} (or skip personalize with --no-personalize)", file=sys.stderr)
            return 2
    wrk = None if args.no_wrk else shutil.which("wrk")
    notes = []
    if not args.no_wrk and wrk is None:
        notes.append(f"wrk not found, peak runs skipped: {WRK_INSTALL}")
        print(f"tailor bench api: {notes[-1]}", file=sys.stderr)
    machine = _pin_cpus()
    overrides = {
        "pseudonym_key": secrets.token_hex(32),
        "api_keys": f"{API_KEY}=ingest+serve+admin",
        "model_dir": str(model),
    }
    with bench_settings(settings, **overrides) as bench, contextlib.ExitStack() as servers:
        population = write_population(bench, args.users)
        feature_refs = _feature_refs(bench)
        logs = servers.enter_context(tempfile.TemporaryDirectory(prefix="tailor-bench-api-logs-"))
        api = servers.enter_context(_server("api", _api_command(bench, machine), bench, logs))
        feast = (
            None
            if args.no_feast
            else servers.enter_context(_server("feast", _feast_command(bench, machine), bench, logs))
        )
        # The ceiling is measured against personalize's wrk peak only: without either, it is not started.
        ceiling = (
            servers.enter_context(_server("ceiling", _ceiling_command(machine), bench, logs))
            if personalize and wrk is not None
            else None
        )
        # Without personalize the copy model may be missing: the broker and the store must answer.
        _wait_ready(api, "/readyz", needs=() if personalize else ("broker", "store"))
        if feast is not None:
            _wait_ready(feast, "/health")
        if ceiling is not None:
            _wait_ready(ceiling, "/healthz")
        _check_written(api, feast, population.users[0], feature_refs, bench.api.pseudonym_key)
        gc.collect()
        gc.freeze()  # Feast's import graph: keep full collections out of the client's timings
        legs = Legs(args, population, feature_refs, wrk, machine, bench.api.pseudonym_key)
        result = {
            "bench": "api",
            "machine": machine,
            "users": args.users,
            "users_with_features": len(population.users),
            "users_with_segment": population.with_segment,
            "simulated_events": population.events,
            "seconds": args.seconds,
            "warmup_s": WARMUP_S,
        }
        result["features"] = legs.features(api)
        if feast is not None:
            result["feast_serve"] = legs.feast(feast)
            result["feast_serve"]["command"] = " ".join(FEAST_SERVE_FLAGS)
            result["features_vs_feast"] = compare(result["features"], result["feast_serve"])
        generator = None
        if personalize:
            # Started for the personalize runs only (the features runs measure without it), on
            # the load generators' CPUs: it must not take the API's core.
            generator = servers.enter_context(_server("generator", _generator_command(machine), bench, logs))
            machine["generator_cpus"] = machine.get("client_cpus")
            from store.copies import open_copies

            with contextlib.closing(open_copies(bench)) as copies:
                result["personalize"] = legs.personalize(api, generator, copies)
        if ceiling is not None and legs.hit_lines:  # personalize ran (an API without the route skips it)
            result["ceiling"] = legs.ceiling(ceiling)
            result["personalize_peak_vs_ceiling"] = peak_vs_ceiling(result)
        _check_alive(api)
    # The servers are stopped: the generator by SIGTERM (a clean stop exits 0), SIGKILL 15 s later.
    if generator is not None and "generator" in result.get("personalize", {}):
        result["personalize"]["generator"]["exit_code"] = generator.proc.returncode
    result["targets"] = targets(result)
    result["notes"] = notes + legs.notes
    print(json.dumps(result))
    return 0


# -- set-up ----------------------------------------------------------------------


def write_population(settings: Settings, n_users: int) -> Population:
    """A day of simulated events for ``n_users`` folded into features, written under pseudonyms."""
    from engine.audience.audience import Audience, UserUpdate
    from engine.audience.segments import Behaviour
    from engine.features.tiles import UserActivity
    from engine.privacy import Pseudonymizer
    from jobs.simulator import Simulator
    from store.feast import FeatureWriter

    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    states: dict[str, UserActivity] = {}
    behaviours: dict[str, Behaviour] = {}
    events = 0
    for event in Simulator(users=n_users, seed=SEED, start_ms=now_ms - HISTORY_MS):
        if event.ts > now_ms:
            break
        state = states.get(event.user_id)
        if state is None:
            state = states[event.user_id] = UserActivity(settings.flow.lateness_ms, settings.flow.affinity_half_life_s)
            behaviours[event.user_id] = settings.audience.new_behaviour()
        if state.update(event):
            behaviours[event.user_id].update(event)
        events += 1
    pseudonym = Pseudonymizer(settings.api.pseudonym_key).pseudonym
    writer = FeatureWriter(settings, offline=False)
    writer.write({pseudonym(u): s for u, s in states.items()})
    segment_of: dict[str, int] = {}
    if settings.audience.segments:
        audience = Audience(settings.audience.segments, warmup=settings.audience.warmup)
        updates = [
            UserUpdate(
                u,
                states[u].newest_ms,
                1,
                0,
                0,
                b.evidence() if b.visits_total >= settings.audience.min_sessions else None,
            )
            for u, b in behaviours.items()
        ]
        assignments = audience.observe(updates).assignments
        writer.write_segments({pseudonym(u): a for u, a in assignments})
        if audience.model.fitted:
            writer.write_profiles(audience.profiles())
        segment_of = {u: a.segment for u, a in assignments}
    print(
        f"bench api: features for {len(states)} of {n_users} users ({events} simulated events, "
        f"{len(segment_of)} segmented) in {time.monotonic() - started:.1f}s",
        file=sys.stderr,
    )
    return Population(sorted(states), segment_of, len(segment_of), events)


def _feature_refs(settings: Settings) -> list[str]:
    """What the API's features route reads: the user_activity_v1 service and the segment."""
    from store.feast import ACTIVITY_SERVICE, SEGMENT_VIEW, open_store

    service = open_store(settings).get_feature_service(ACTIVITY_SERVICE)
    refs = [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]
    return [*refs, f"{SEGMENT_VIEW}:segment", f"{SEGMENT_VIEW}:model_version"]


def _pin_cpus() -> dict:
    """Servers on the last CPU, this process (and so wrk) on the others, when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    # Load from other processes at the start: on a shared machine it says how far to trust the figures.
    machine = {
        "cpus": len(cpus),
        "cpu_count": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "pinned": False,
    }
    taskset = shutil.which("taskset")
    if len(cpus) >= 2 and taskset:
        server, clients = cpus[-1:], cpus[:-1]
        os.sched_setaffinity(0, clients)
        machine.update(pinned=True, server_cpus=server, client_cpus=clients)
    else:
        machine["why_not_pinned"] = "one CPU" if len(cpus) < 2 else "no taskset"
    return machine


def _on_server_cpus(command: list[str], machine: dict) -> list[str]:
    if not machine["pinned"]:
        return command
    return ["taskset", "-c", ",".join(map(str, machine["server_cpus"])), *command]


def _on_client_cpus(command: list[str], machine: dict) -> list[str]:
    if not machine["pinned"]:
        return command
    return ["taskset", "-c", ",".join(map(str, machine["client_cpus"])), *command]


def _tailor() -> list[str]:
    script = Path(sys.executable).with_name("tailor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def _api_command(settings: Settings, machine: dict) -> tuple[list[str], int]:
    from dev.services import free_port

    port = free_port()
    return _on_server_cpus([*_tailor(), "api", "--host", HOST, "--port", str(port)], machine), port


def _ceiling_command(machine: dict) -> tuple[list[str], int]:
    """The bare Litestar app, run as `tailor api` is: uvicorn, one worker, on the servers' CPUs."""
    from dev.services import free_port

    port = free_port()
    return _on_server_cpus([sys.executable, "-m", "bench.ceiling", "--host", HOST, "--port", str(port)], machine), port


def _generator_command(machine: dict) -> tuple[list[str], int]:
    """``tailor copy generate`` on the load generators' CPUs (it listens on no port: 0)."""
    return _on_client_cpus([*_tailor(), "copy", "generate"], machine), 0


def _feast_command(settings: Settings, machine: dict) -> tuple[list[str], int]:
    from dev.services import free_port

    port = free_port()
    feast = Path(sys.executable).with_name("feast")
    command = [
        str(feast),
        "-c",
        settings.store.feature_repo,
        "serve",
        "-h",
        HOST,
        "-p",
        str(port),
        *FEAST_SERVE_FLAGS[2:],
    ]
    return _on_server_cpus(command, machine), port


class _Server(msgspec.Struct):
    name: str
    proc: subprocess.Popen
    #: 0 for a child that listens on none (the copy generator).
    port: int
    log: str


@contextlib.contextmanager
def _server(name: str, command: tuple[list[str], int], settings: Settings, logs: str) -> Iterator[_Server]:
    argv, port = command
    log_path = os.path.join(logs, f"{name}.log")
    env = {**os.environ, **settings_env(settings)}
    with open(log_path, "wb") as log:
        # From the repository root: `python -m bench.ceiling` finds the package however the bench was started.
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    server = _Server(name, proc, port, log_path)
    try:
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: gunicorn's worker goes too
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _log_tail(server: _Server, chars: int = 3000) -> str:
    with open(server.log, "rb") as f:
        return f.read().decode("utf-8", "replace")[-chars:]


def _check_alive(server: _Server) -> None:
    if server.proc.poll() is not None:
        raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n{_log_tail(server)}")


def _wait_ready(server: _Server, path: str, needs: tuple[str, ...] = (), timeout_s: float = 120.0) -> None:
    """Until ``path`` answers 200, or (with ``needs``) a JSON body whose fields ``needs`` all say "ok"."""
    deadline = time.monotonic() + timeout_s
    request = build_request("GET", path, f"{HOST}:{server.port}")
    response = None
    while time.monotonic() < deadline:
        _check_alive(server)
        with contextlib.suppress(OSError):
            response = asyncio.run(_one(server.port, request))
            if response.status == 200:
                return
            if needs and response.status == 503:
                body = msgspec.json.decode(response.body)
                if all(body.get(name) == "ok" for name in needs):
                    return
        time.sleep(0.2)
    last = f"{response.status} {response.body[:300]!r}" if response else "no answer"
    raise RuntimeError(f"{server.name} was not ready in {timeout_s:.0f}s (last: {last}):\n{_log_tail(server)}")


async def _one(port: int, request: bytes, timeout_s: float = 10.0):
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        return await asyncio.wait_for(read_response(reader), timeout_s)
    finally:
        writer.close()


def _check_written(api: _Server, feast: _Server | None, user: str, feature_refs: list[str], key: str) -> None:
    """Both servers read the bench's user with history: the features sit under the right pseudonym."""
    request = build_request("GET", f"/v1/users/{user}/features", f"{HOST}:{api.port}", {"X-API-Key": API_KEY})
    response = asyncio.run(_one(api.port, request))
    got = msgspec.json.decode(response.body) if response.status == 200 else {}
    if not got.get("lifetime_events"):
        raise RuntimeError(f"the API reads no history for {user} ({response.status} {response.body[:300]!r})")
    if feast is None:
        return
    body = msgspec.json.encode(
        {"features": feature_refs, "entities": {"user_id": [Pseudonymizer(key).pseudonym(user)]}}
    )
    request = build_request(
        "POST", "/get-online-features", f"{HOST}:{feast.port}", {"Content-Type": "application/json"}, body
    )
    response = asyncio.run(_one(feast.port, request))
    got = msgspec.json.decode(response.body) if response.status == 200 else {}
    names = got.get("metadata", {}).get("feature_names", [])
    values = dict(zip(names, (r["values"][0] for r in got.get("results", []))))
    if not values.get("lifetime_events"):
        raise RuntimeError(f"feast serve reads no history for {user} ({response.status} {response.body[:300]!r})")


def _settle(server: _Server, path: str, timeout_s: float = 10.0) -> None:
    """After an overload, wait (a while at most) until the server answers promptly again: its backlog drained."""
    request = build_request("GET", path, f"{HOST}:{server.port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = time.perf_counter()
        with contextlib.suppress(OSError, TimeoutError):
            asyncio.run(_one(server.port, request, timeout_s=5.0))
            if time.perf_counter() - started < 0.1:
                return
        time.sleep(0.2)


# -- the runs --------------------------------------------------------------------


class MissWatch:
    """Follows a sample of the open loop's misses until the API serves generated copy for each.

    A followed request that answered ``cached: false`` is sent again (its own connection, every
    `MISS_POLL_S`) until it answers ``cached: true``; the time from the miss's scheduled send to
    that answer is its miss-to-generated time. `MISS_CAP_S` after the send it counts as never
    generated. The follow-ups are a few requests a second beside the offered rate.
    """

    def __init__(self, port: int, requests: list[bytes], sample: set[int]):
        self.port = port
        self.requests = requests
        self.sample = sample
        self.times: list[float] = []
        self.never = 0
        self.hit_at_once = 0
        self.errors = 0
        self._tasks: set[asyncio.Task] = set()

    def on_response(self, index: int, scheduled: float, done: float, response) -> None:
        if index not in self.sample:
            return
        self.sample.discard(index)  # each sampled request is followed once
        if is_cached(response.body):
            self.hit_at_once += 1
            return
        task = asyncio.get_running_loop().create_task(self._follow(index, scheduled))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, index: int, scheduled: float) -> None:
        clock = time.perf_counter
        while clock() - scheduled < MISS_CAP_S:
            await asyncio.sleep(MISS_POLL_S)
            try:
                answer = await _one(self.port, self.requests[index], timeout_s=TIMEOUT_S)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                self.errors += 1
                continue
            if 200 <= answer.status < 300 and is_cached(answer.body):
                self.times.append(clock() - scheduled)
                return
        self.never += 1

    async def finish(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def summary(self) -> dict:
        times = sorted(self.times)
        followed = len(times) + self.never
        return {
            "miss_to_generated_s": round(percentile(times, 99), 3) if times and not self.never else None,
            "miss_to_generated": {
                "followed": followed,
                "generated": len(times),
                "never_generated_in_s": {"count": self.never, "cap_s": MISS_CAP_S},
                "p50_s": round(percentile(times, 50), 3) if times else None,
                "p99_s": round(percentile(times, 99), 3) if times else None,
                "max_s": round(times[-1], 3) if times else None,
                "poll_s": MISS_POLL_S,
                "follow_errors": self.errors,
                "served_at_once": self.hit_at_once,
            },
        }


class Legs:
    """The measured runs, one method per server/route."""

    def __init__(
        self, args, population: Population, feature_refs: list[str], wrk: str | None, machine: dict, pseudonym_key: str
    ):
        self.args = args
        self.pseudonym_key = pseudonym_key
        self.population = population
        self.feature_refs = feature_refs
        self.wrk = wrk
        self.machine = machine
        self.rng = random.Random(SEED)
        self.notes: list[str] = []
        self.headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
        #: Personalize's all-hit wrk lines, which the ceiling is driven with too.
        self.hit_lines: list[str] = []

    def _users(self, n: int) -> list[str]:
        return [self.rng.choice(self.population.users) for _ in range(n)]

    def features(self, api: _Server) -> dict:
        host = f"{HOST}:{api.port}"
        users = self._users(20_000)
        key = {"X-API-Key": API_KEY}

        def request(i: int) -> bytes:
            return build_request("GET", f"/v1/users/{users[i % len(users)]}/features", host, key)

        out = {"route": "GET /v1/users/{id}/features"}
        out["open_loop"] = self._open_loop(api, request, self.args.feature_rates, "/healthz")
        lines = [f"GET\t/v1/users/{u}/features" for u in users[:4000]]
        out["peak_wrk"] = self._wrk(api, "/healthz", lines)
        return out

    def feast(self, feast: _Server) -> dict:
        host = f"{HOST}:{feast.port}"
        users = self._users(20_000)
        pseudonym = Pseudonymizer(self.pseudonym_key).pseudonym
        bodies = [
            msgspec.json.encode({"features": self.feature_refs, "entities": {"user_id": [pseudonym(u)]}}) for u in users
        ]
        headers = {"Content-Type": "application/json"}

        def request(i: int) -> bytes:
            return build_request("POST", "/get-online-features", host, headers, bodies[i % len(bodies)])

        out = {"route": "POST /get-online-features"}
        out["open_loop"] = self._open_loop(feast, request, self.args.feature_rates, "/health")
        lines = [f"POST\t/get-online-features\t{b.decode()}" for b in bodies[:4000]]
        out["peak_wrk"] = self._wrk(feast, "/health", lines)
        return out

    def personalize(self, api: _Server, generator: _Server, copies) -> dict:
        from engine.content.catalog import CATALOG_SEED, build_catalog

        host = f"{HOST}:{api.port}"
        catalog = build_catalog(CATALOG_SEED)
        fields = ("item_id", "title", "brand", "category", "price", "discount_pct")
        items = [
            {f: getattr(item, f) for f in fields if getattr(item, f) is not None} for item in catalog.items[:WARM_ITEMS]
        ]
        probe = build_request(
            "POST", "/v1/personalize", host, self.headers, self._body(self.population.users[0], SLOTS[0], items[0])
        )
        status = asyncio.run(_one(api.port, probe)).status
        if status in (404, 405):
            self.notes.append(f"the API has no POST /v1/personalize yet ({status}): personalize not measured")
            return {"skipped": f"POST /v1/personalize answered {status}"}
        out = {"route": "POST /v1/personalize", "slots": list(SLOTS), "warm_items": len(items)}
        out["cache_warm_up"] = self._warm_cache(api, generator, items)
        users = self._users(40_000)
        bodies, misses = [], []
        for i, user in enumerate(users):
            item = self.rng.choice(items)
            if self.rng.random() >= HIT_SHARE:  # an item nobody asked about: a key never generated
                item = {**item, "item_id": f"bench-miss-{secrets.token_hex(6)}-{i}"}
                misses.append(i)
            bodies.append(self._body(user, self.rng.choice(SLOTS), item))
        requests = [build_request("POST", "/v1/personalize", host, self.headers, b) for b in bodies]
        total = max(1, int(self.args.rate * self.args.seconds))
        warm_up = max(1, int(self.args.rate * WARMUP_S))
        if total + warm_up > len(bodies):
            raise ValueError(
                f"--rate x --seconds asks for {total} personalize requests after a {warm_up}-request warm-up; "
                f"the bench builds {len(bodies)}"
            )
        # The warm-up sends the requests after the measured run's, so every miss of the measured
        # run is on a key nobody asked for before it (miss_share counts only those).
        planned = [i for i in misses if i < total]
        step = max(1, len(planned) // MISS_SAMPLE)
        watch = MissWatch(api.port, requests, set(planned[::step][:MISS_SAMPLE]))
        run = self._open_loop(
            api,
            requests.__getitem__,
            [self.args.rate],
            "/healthz",
            count_cached=True,
            watch=watch,
            warm_up_request=lambda i: requests[total + i],
        )[0]
        run["planned_hit_share"] = HIT_SHARE
        run["miss_share"] = round(len(planned) / total, 4)
        run.update(watch.summary())
        out["open_loop"] = run
        self._drain(copies)
        hits = [self._body(u, self.rng.choice(SLOTS), self.rng.choice(items)) for u in users[:4000]]
        self.hit_lines = [f"POST\t/v1/personalize\t{b.decode()}" for b in hits]
        out["peak_wrk"] = self._wrk(api, "/healthz", self.hit_lines, cached=True)
        if self.wrk is not None:
            out["in_experiment"] = self._in_experiment(api, hits, out["peak_wrk"])
        out["generator"] = {"command": "tailor copy generate", "cpus": self.machine.get("client_cpus")}
        _check_alive(generator)
        return out

    def ceiling(self, ceiling: _Server) -> dict:
        """The bare Litestar + msgspec route, driven by the same wrk script and bodies as personalize's peak."""
        return {
            "route": "POST /v1/personalize (bench/ceiling.py)",
            "peak_wrk": self._wrk(ceiling, "/healthz", self.hit_lines, cached=True),
        }

    def _drain(self, copies, timeout_s: float = QUEUE_DRAIN_S) -> None:
        """Wait for the generator to work off the open loop's queued misses: the peak measures serving only."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if copies.queued() == 0:
                return
            time.sleep(0.5)
        self.notes.append(f"the copy generator still had queued misses {timeout_s:.0f}s after the open loop")

    def _in_experiment(self, api: _Server, hits: list[bytes], before: dict) -> dict:
        """The all-hit peak again with an A/B experiment running on every slot (an assignment and an
        impression produced to Kafka per request), then once more without (A/B/A: drift shows)."""
        host = f"{HOST}:{api.port}"
        lines = [f"POST\t/v1/personalize\t{b.decode()}" for b in hits]
        ids = [f"bench-{slot}" for slot in SLOTS]

        def call(method: str, path: str, body: dict | None = None) -> None:
            request = build_request(
                method, path, host, self.headers, msgspec.json.encode(body) if body is not None else b""
            )
            answer = asyncio.run(_one(api.port, request))
            if answer.status not in (200, 201):
                raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:300]!r}")

        for slot, experiment in zip(SLOTS, ids):
            call("POST", "/v1/experiments", {"id": experiment, "slot": slot, "arms": [{"name": "a"}, {"name": "b"}]})
            call("POST", f"/v1/experiments/{experiment}/start")
        time.sleep(EXPERIMENT_REFRESH_S)
        running = self._wrk(api, "/healthz", lines, cached=True)
        for experiment in ids:
            call("POST", f"/v1/experiments/{experiment}/stop")
        time.sleep(EXPERIMENT_REFRESH_S)
        after = self._wrk(api, "/healthz", lines, cached=True)
        out = {"experiments": ids, "peak_wrk": running, "plain_peak_wrk_after": after}
        plain = [r.get("rps") for r in (before, after) if r.get("rps")]
        if running.get("rps") and plain:
            out["rps_ratio_vs_plain"] = round(running["rps"] / (sum(plain) / len(plain)), 3)
        return out

    def _body(self, user: str, slot: str, item: dict) -> bytes:
        name = FIRST_NAMES[zlib.crc32(user.encode()) % len(FIRST_NAMES)]
        return msgspec.json.encode({"user_id": user, "slot": slot, "context": {"first_name": name}, "items": [item]})

    def _warm_cache(self, api: _Server, generator: _Server, items: list[dict]) -> dict:
        """Every warm key (one user per segment seen, each slot, each item) asked once, which queues
        it for the generator, then the keys still missing asked again every `WARM_PASS_S` until
        each answers ``cached: true`` or `WARM_TIMEOUT_S` (the generator loads its model first)."""
        by_segment: dict[int | None, str] = {}
        for user in self.population.users:
            by_segment.setdefault(self.population.segment_of.get(user), user)
        host = f"{HOST}:{api.port}"
        missing = [
            build_request("POST", "/v1/personalize", host, self.headers, self._body(user, slot, item))
            for user in by_segment.values()
            for slot in SLOTS
            for item in items
        ]
        keys = len(missing)
        started = time.monotonic()
        passes = 0
        while missing and time.monotonic() - started < WARM_TIMEOUT_S:
            _check_alive(generator)
            responses = asyncio.run(closed_loop(HOST, api.port, missing, concurrency=self.args.connections))
            passes += 1
            bad = [r for r in responses if not 200 <= r.status < 300]
            if bad:
                raise RuntimeError(
                    f"personalize warm-up: {len(bad)} errors, first {bad[0].status}: {bad[0].body[:300]!r}"
                )
            missing = [request for request, r in zip(missing, responses) if not is_cached(r.body)]
            if passes == 1 or not missing or passes % 10 == 0:
                print(
                    f"bench api: copy warm-up pass {passes}: {1 - len(missing) / keys:.1%} of {keys} keys generated",
                    file=sys.stderr,
                )
            if missing:
                time.sleep(WARM_PASS_S)
        if missing:
            self.notes.append(
                f"personalize copy: {len(missing)} of {keys} warm keys still not generated after "
                f"{WARM_TIMEOUT_S:.0f}s (see the generator's log)"
            )
        return {
            "keys": keys,
            "segments": len(by_segment),
            "passes": passes,
            "still_missing": len(missing),
            "seconds": round(time.monotonic() - started, 1),
        }

    def _open_loop(
        self,
        server: _Server,
        request,
        rates: list[float],
        health: str,
        count_cached: bool = False,
        watch: MissWatch | None = None,
        warm_up_request=None,
    ) -> list[dict]:
        """One open-loop run per rate, each after a `WARMUP_S` warm-up of ``warm_up_request(i)``
        (default: the measured requests); ``watch`` sees each measured answer."""

        async def go(rate: float) -> dict:
            client = OpenLoopClient(HOST, server.port, max_connections=MAX_CONNECTIONS, timeout_s=TIMEOUT_S)
            try:
                await client.run(warm_up_request or request, rate, WARMUP_S, count_cached=count_cached, drain_s=1.0)
                print(f"bench api: {server.name} {rate:g} rps for {self.args.seconds:g}s", file=sys.stderr)
                result = await client.run(
                    request,
                    rate,
                    self.args.seconds,
                    count_cached=count_cached,
                    on_response=watch.on_response if watch is not None else None,
                )
                if watch is not None:
                    await watch.finish()
                return result
            finally:
                await client.close()

        runs = []
        for rate in rates:
            # Each rate on fresh connections, after a warm-up at that rate, once an
            # overloaded server has worked off what the previous run left queued.
            runs.append(asyncio.run(go(rate)))
            _check_alive(server)
            _settle(server, health)
        return runs

    def _wrk(self, server: _Server, health: str, lines: list[str], cached: bool = False) -> dict:
        if self.wrk is None:
            return {"skipped": "wrk not run" if self.args.no_wrk else f"wrk not found: {WRK_INSTALL}"}
        print(f"bench api: {server.name} wrk {self.args.wrk_seconds:g}s", file=sys.stderr)
        headers = self.headers if server.name == "api" else {"Content-Type": "application/json"}
        result = run_wrk(
            self.wrk,
            f"http://{HOST}:{server.port}",
            lines,
            seconds=self.args.wrk_seconds,
            connections=self.args.connections,
            headers=headers,
            cached=cached,
            cpus=self.machine.get("client_cpus"),
        )
        _check_alive(server)
        _settle(server, health)
        return result


# -- wrk ---------------------------------------------------------------------------


def run_wrk(
    wrk: str,
    url: str,
    lines: list[str],
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    cached: bool = False,
    cpus: list[int] | None = None,
) -> dict:
    """Closed-loop peak run: wrk cycling through ``lines`` (METHOD<TAB>PATH[<TAB>BODY])."""
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", prefix="tailor-wrk-") as requests:
        requests.write("\n".join(lines) + "\n")
        requests.flush()
        command = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "--timeout",
            "5s",
            "-s",
            str(WRK_LUA),
        ]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        command += [url, "--", requests.name, *(["cached"] if cached else [])]
        if cpus and shutil.which("taskset"):
            command = ["taskset", "-c", ",".join(map(str, cpus)), *command]
        out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr[-2000:]}")
    result = parse_wrk(out.stdout)
    result.update(threads=threads, connections=connections, pinned_cpus=cpus if cpus else None)
    return result


_DURATION_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _to_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()
    return round(float(number) * _DURATION_MS[unit], 3)


def parse_wrk(text: str) -> dict:
    """requests/sec, latency percentiles (``--latency``), errors and hits from wrk's report."""
    result: dict = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+),", text):
        result["requests"] = int(m.group(1))
        result["duration_s"] = round(_to_ms(m.group(2)) / 1000, 2)
    if m := re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", text):
        result["avg_ms"], result["max_ms"] = _to_ms(m.group(1)), _to_ms(m.group(3))
    for q, value in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", text, re.MULTILINE):
        result[f"p{q}_ms"] = _to_ms(value)
    result["non_2xx"] = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        result["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    else:
        result["socket_errors"] = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if m := re.search(r"^tailor-cached (\d+) (\d+)$", text, re.MULTILINE):
        hits, seen = int(m.group(1)), int(m.group(2))
        result["cached_ratio"] = round(hits / seen, 4) if seen else None
    if "rps" not in result:
        raise ValueError(f"no Requests/sec in wrk's output:\n{text[-1000:]}")
    return result


# -- comparison and targets -------------------------------------------------------


def compare(features: dict, feast: dict) -> dict:
    """Features route against feast serve: peak throughput ratio, p99 ratios at equal offered rates."""
    out: dict = {}
    fw, sw = features.get("peak_wrk", {}), feast.get("peak_wrk", {})
    if fw.get("rps") and sw.get("rps"):
        out["throughput_ratio"] = round(fw["rps"] / sw["rps"], 2)
        out["wrk_p99_ratio"] = _ratio(fw.get("p99_ms"), sw.get("p99_ms"))
    out["open_loop_p99_ratio"] = {
        f"{a['offered_rps']:g}": _ratio(a["p99_ms"], b["p99_ms"])
        for a, b in zip(features["open_loop"], feast["open_loop"])
    }
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def peak_vs_ceiling(result: dict) -> float | None:
    """Personalize's all-hit wrk peak over the bare Litestar route's, both from this run."""
    mine = result.get("personalize", {}).get("peak_wrk", {}).get("rps")
    bare = result.get("ceiling", {}).get("peak_wrk", {}).get("rps")
    return round(mine / bare, 3) if mine and bare else None


def targets(result: dict) -> dict:
    """Each target with the figure it is judged on and whether it was met (None: not measured)."""
    out = {name: {"target": text, "met": None} for name, text in TARGETS.items()}
    personalize = result.get("personalize", {})
    if run := personalize.get("open_loop"):
        ok = (
            run["offered_rps"] >= 1000
            and run["errors"] == 0
            and run["p99_ms"] is not None
            and run["p99_ms"] <= 10.0
            and run["achieved_rps"] >= 0.95 * run["offered_rps"]
        )
        out["personalize_p99"].update(
            offered_rps=run["offered_rps"],
            p99_ms=run["p99_ms"],
            errors=run["errors"],
            miss_share=run.get("miss_share"),
            cached_ratio=run.get("cached_ratio"),
            met=ok and (run.get("miss_share") or 0) >= 0.05,
        )
    if (peak := personalize.get("peak_wrk", {})).get("rps") is not None:
        ok = peak["rps"] >= 4000 and peak["non_2xx"] == 0 and (peak.get("cached_ratio") or 0) >= 0.99
        out["personalize_peak"].update(rps=peak["rps"], cached_ratio=peak.get("cached_ratio"), met=ok)
    if (share := result.get("personalize_peak_vs_ceiling")) is not None:
        out["personalize_vs_ceiling"].update(
            personalize_peak_vs_ceiling=share,
            ceiling_rps=result["ceiling"]["peak_wrk"]["rps"],
            met=share >= CEILING_SHARE_TARGET and peak.get("non_2xx") == 0,
        )
    if run and "miss_to_generated" in run:
        follow = run["miss_to_generated"]
        measured = run["miss_to_generated_s"]
        out["miss_to_generated"].update(
            miss_to_generated_s=measured,
            followed=follow["followed"],
            never_generated=follow["never_generated_in_s"]["count"],
            met=measured is not None and measured <= MISS_TO_GENERATED_TARGET_S and follow["followed"] > 0,
        )
    versus = result.get("features_vs_feast", {})
    if versus.get("throughput_ratio") is not None:
        p99s = [r for r in versus["open_loop_p99_ratio"].values() if r is not None]
        ok = versus["throughput_ratio"] >= 5 and bool(p99s) and all(r <= 1.0 for r in p99s)
        out["features_vs_feast"].update(
            throughput_ratio=versus["throughput_ratio"], open_loop_p99_ratio=versus["open_loop_p99_ratio"], met=ok
        )
    return out
