"""``tailor experiment plan``: the planner behind one command, with its JSON and its errors."""

from __future__ import annotations

import json

from cli.main import main
from engine.experiments.statistics import plan_sample_size


def test_plan_prints_users_per_arm_and_days(capsys):
    assert (
        main(["experiment", "plan", "--baseline", "0.1", "--mde", "0.1", "--daily-users", "10000", "--share", "0.5"])
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["per_arm"] == plan_sample_size(0.1, 0.1) == 14_751
    assert plan["total"] == 29_502 and plan["days"] == 6 and plan["treated_rate"] == 0.11


def test_more_arms_need_more_users_each_and_say_why(capsys):
    assert main(["experiment", "plan", "--baseline", "0.05", "--mde", "0.2", "--arms", "3"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["per_arm"] == plan_sample_size(0.05, 0.2, arms=3) > plan_sample_size(0.05, 0.2)
    assert plan["days"] is None and "Bonferroni" in plan["test"]


def test_impossible_plans_are_a_clear_error(capsys):
    assert main(["experiment", "plan", "--baseline", "0.1", "--mde", "9"]) == 2
    assert "mde_relative" in capsys.readouterr().err
    assert main(["experiment", "plan", "--baseline", "1.5", "--mde", "0.1"]) == 2
    assert "baseline" in capsys.readouterr().err
