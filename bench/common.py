"""What the benchmarks share: a broker, a throwaway Feast repo, a child flow."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator

from config.settings import Settings, settings_env


@contextlib.contextmanager
def bench_settings(settings: Settings, **overrides) -> Iterator[Settings]:
    """Settings on the configured broker (or an embedded one), fresh topics, a temp Feast repo."""
    from dev.services import EmbeddedBroker
    from flows.kafka import ensure_topics
    from store.feast import new_repo

    with contextlib.ExitStack() as stack:
        brokers = settings.kafka.brokers or stack.enter_context(EmbeddedBroker()).address
        repo = stack.enter_context(tempfile.TemporaryDirectory(prefix="tailor-bench-"))
        tag = uuid.uuid4().hex[:8]
        values = {"brokers": brokers, "topic": f"bench-{tag}", "dlq_topic": f"bench-{tag}.dlq"}
        values.update(overrides)
        bench = new_repo(settings.replace(**values), repo)
        ensure_topics(bench.kafka.brokers, [bench.kafka.topic, bench.kafka.dlq_topic], bench.kafka.partitions)
        yield bench


def run_child(module_fn: str, settings: Settings, timeout_s: float = 1800) -> dict:
    """Run ``module:function`` in a fresh interpreter; it prints one JSON object last."""
    module, fn = module_fn.split(":")
    code = f"import {module} as m; m.{fn}()"
    env = {**os.environ, **settings_env(settings)}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if out.returncode != 0:
        raise RuntimeError(f"{module_fn} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
