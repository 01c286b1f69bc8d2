"""``tailor bench experiment --quick`` through the CLI: every figure present and sane (no timing asserted)."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from bench.experiment import simulate
from cli.main import main
from engine.experiments.statistics import plan_sample_size


@pytest.fixture(scope="module")
def report() -> dict:
    """The quick bench, run once for the module (its JSON is the last line on stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["bench", "experiment", "--quick", "--experiments", "1000", "--looks", "10", "--seed", "3"]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def _positive_summary(summary: dict) -> None:
    assert 0 < summary["median"] <= summary["p99"]


def test_assignment_costs_are_reported_per_call(report):
    a = report["assignment_us"]
    assert report["bench"] == "experiment" and report["quick"] is True
    assert a["calls"] > 0 and a["holdout"] == 0.1
    for key in ("assign_2_arms_holdout", "assign_10_arms_holdout", "assign_factorial_2_factors"):
        _positive_summary(a[key])
    batch = a["assign_many_per_user"]
    assert batch["batch"] == 10_000 and batch["repeats"] >= 1
    _positive_summary(batch["2_arms_holdout"])
    _positive_summary(batch["10_arms_holdout"])


def test_analysis_cost_names_what_dominates(report):
    r = report["analyze_ms"]
    assert r["arms"] == 100 and r["comparisons"] == 198 and r["srm_alarm"] is False
    for key in ("draws_1", "draws_10000", "draws_100000_default"):
        _positive_summary(r[key])
        assert r[key]["repeats"] >= 1
    assert 0 <= r["monte_carlo_share_at_default"] < 1 and r["dominated_by"]


def test_peeking_inflates_false_positives_and_the_msprt_does_not(report):
    fp = report["false_positives"]
    assert fp["alpha"] == 0.05 and fp["looks"] == 10 and fp["experiments"] == 1000 and fp["seed"] == 3
    assert fp["users_per_arm"] == plan_sample_size(0.05, 0.2)
    for key in ("naive_peeking", "msprt", "fixed_horizon"):
        rate = fp[key]
        assert rate["ci_low"] <= rate["rate"] <= rate["ci_high"]
        assert rate["rate"] == rate["significant"] / fp["experiments"]
    assert fp["naive_peeking"]["rate"] > 2 * fp["alpha"]  # ten looks: far above alpha
    assert fp["naive_peeking"]["rate"] > fp["fixed_horizon"]["rate"] > fp["msprt"]["rate"]
    assert fp["msprt"]["rate"] <= fp["alpha"] + 0.01
    assert fp["fixed_horizon"]["ci_low"] <= fp["alpha"] + 0.01 and fp["fixed_horizon"]["ci_high"] >= fp["alpha"] - 0.01


def test_power_at_the_planned_size(report):
    p = report["power"]
    assert p["lift_relative"] == 0.2 and p["planned_power"] == 0.8
    assert p["fixed_horizon"]["ci_low"] - 0.03 <= 0.8 <= p["fixed_horizon"]["ci_high"] + 0.03
    assert 0 < p["msprt"]["rate"] < p["fixed_horizon"]["rate"] < p["msprt_twice_the_users"]["rate"] + 0.1
    assert 0 < p["msprt"]["median_share_of_users_at_stop"] <= 1
    assert p["msprt_twice_the_users"]["users_per_arm"] == 2 * p["users_per_arm"]


def test_the_last_look_is_the_fixed_test_and_one_of_the_naive_looks():
    got = simulate(np.random.default_rng(0), 500, 7, 1000, 0.05, 0.05)  # 7 looks do not divide 1000 users
    assert got["naive"].shape == got["msprt"].shape == got["fixed"].shape == (500,)
    assert np.all(got["naive"] >= got["fixed"])
