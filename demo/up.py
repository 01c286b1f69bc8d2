"""``tailor up``: the whole pipeline on one machine, with a live view of users' features.

What runs, and who owns it (the children in demo/supervisor.py, the traffic in
demo/traffic.py, the view in demo/live.py; this module wires them)::

    this process ── Tansu broker (child, unless TAILOR_BROKERS is set)
                 ├─ the copy model: built in the background if there is none (child:
                 │  tailor train + export; default copy is served until it lands)
                 ├─ the features flow (child: python -m bytewax.run, own process group;
                 │  the traffic waits for its ready file)
                 ├─ the API (child: tailor api, own process group)
                 ├─ the background copy generator (child: tailor copy generate): copy for
                 │  the demo catalog, every live template, style and tone, and for misses
                 ├─ simulated traffic (thread: paced, stamped with the wall clock,
                 │  user ids pseudonymized as the API's edge does)
                 └─ live view: Feast get_online_features(user_activity_v1) twice a second

Everything it starts is stopped on the way out (Ctrl-C, SIGTERM, ``--seconds``, or an
error): the traffic first, then the generator and the API, then the flow (SIGINT, then SIGTERM, then
SIGKILL to its whole process group), then the broker. When stdout is not a terminal (CI, tests, a pipe) the
live view becomes one plain snapshot every few seconds.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from config.settings import Settings
from demo.live import FeatureView, live_view, plain_view
from demo.storefront import Storefront
from demo.supervisor import (
    Child,
    ChildDied,
    Probe,
    StopSignals,
    say,
    start_api,
    start_flow,
    start_generator,
    start_model_build,
    wait_ready,
)
from demo.traffic import Traffic
from dev.services import EmbeddedBroker
from flows.kafka import ensure_topics

#: The simulator's seed: the same seed gives the same users and profiles.
SEED = 7


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
    with StopSignals() as signals, contextlib.ExitStack() as stack:
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


def load_demo_catalog(settings: Settings) -> None:
    """The simulator's items into the catalog store, so /v1/personalize picks from what the events talk about.

    The same items every run (`engine.content.catalog.build_catalog` with the simulator's seed), so a
    second run changes nothing; as ``tailor catalog load`` does.
    """
    from engine.content.catalog import CATALOG_SEED, build_catalog
    from store.catalog import load_items, open_catalog

    items = build_catalog(CATALOG_SEED).items
    store = open_catalog(settings)
    try:
        created = load_items(store, items)["created"]
        total = store.count()
    finally:
        store.close()
    say(f"demo catalog: {len(items)} simulated items ({created} new), {total} in the catalog")


def _run(settings: Settings, args, repo: Path, data: Path, stack: contextlib.ExitStack) -> None:
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
    build = None if args.no_model else start_model_build(settings, data / "logs" / "model-build.log", stack)
    settings = _demo_keys(settings, data)
    load_demo_catalog(settings)
    flow = start_flow(settings, recovery, data / "logs" / "flow.log", stack)
    api = start_api(settings, args.api_port, data / "logs" / "api.log", stack)
    generator = start_generator(settings, data / "logs" / "generator.log", stack)
    # Traffic starts once the flow can write, so that the first features shown measure
    # the pipeline, not Feast's import (the API goes on starting meanwhile).
    wait_ready(flow)
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
    say(f"  generator     pid {generator.pid}, log {generator.log_path} (tailor copy status: what it has written)")
    if build is not None:
        say(f"  model build   pid {build.pid}, log {build.log_path}: default copy until the model lands")
    say(f"  api key       {api_key}  (to serve; every key: TAILOR_API_KEYS, or {data / 'demo-api-keys'})")
    say(
        f"  try           curl -s {base}/v1/personalize -H 'X-API-Key: {api_key}' "
        '-H \'Content-Type: application/json\' -d \'{"user_id": "u000003", "slot": "headline", "template_id": "headline-ai"}\''
    )
    say(
        "                (an item from the user's top category, with its copy; naming the template leaves the demo experiment out)"
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
        api_probe=Probe(f"{base}/healthz"),
        storefront=storefront,
    )
    deadline = time.monotonic() + args.seconds if args.seconds > 0 else None
    builds = [build] if build is not None else []

    def check() -> None:
        _check(flow, broker, traffic, api)
        generator.check()
        for child in list(builds):  # a build that ends is no reason to stop the demo
            code = child.proc.poll()
            if code is not None:
                builds.remove(child)
                say(
                    "copy model built: the API and the generator switch to it"
                    if code == 0
                    else f"the copy model build failed (code {code}); default copy goes on; see {child.log_path}"
                )

    if sys.stdout.isatty():
        live_view(view, deadline, check)
    else:
        plain_view(view, deadline, check)


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


def _check(flow: Child, broker: EmbeddedBroker | None, traffic: Traffic, api: Child) -> None:
    flow.check()
    api.check()
    if broker is not None and not broker.alive:
        raise ChildDied("the embedded broker exited; see its log under data/logs/")
    if traffic.error:
        raise ChildDied(f"the simulated traffic stopped: {traffic.error}")
