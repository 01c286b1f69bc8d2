"""`tailor bench freshness --live`: load produced while the flow runs, lag sampled from the flow's metrics."""

import json
from argparse import Namespace

import pytest

from config.settings import Settings

pytestmark = pytest.mark.integration


def test_bench_freshness_live_prints_lag_and_drains(capsys):
    from bench.freshness_live import run_live

    args = Namespace(live=True, cold=False, rate=300.0, users=100, seconds=6.0, drain_timeout=60.0, no_recovery=False)
    # No brokers: the benchmark starts its own embedded broker (and samples its CPU).
    assert run_live(Settings.of(brokers=""), args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "freshness_live" and result["broker"] == "embedded", result
    assert result["produced_events"] > 300, result  # the load ran (plus the probes)
    assert result["drain_ms"] is not None, result  # the flow read to the end of the topic once the load stopped
    assert result["max_lag_events"] >= result["final_lag_events"] >= 0, result
    assert result["probes"] > 0 and result["timeouts"] == 0, result
    assert result["broker_cpu_pct_max"] is not None, result
    assert {"p99_ms", "fetch_wait_ms", "producer_linger_ms", "lag_events_every_10s"} <= result.keys()
