"""``tailor retrain --watch`` without a broker: the rate series, an unapplied repo, the options that cannot work."""

from __future__ import annotations

import pytest

from engine.learning.retrain_policy import ArmSeries, ArmThreshold, arm_check
from jobs.retrain_watch import run_watch
from tests.support import retrain_args

# -- the rate series (pure) ----------------------------------------------------------------------------------------


def test_readings_wait_for_enough_new_users_and_restart_when_counters_go_back():
    rule = ArmThreshold(experiment="hero", variant="b", floor=0.02, min_users=100)
    series, reason = arm_check(rule, ArmSeries(), 1000, 50)
    assert (series, reason) == (ArmSeries(1000, 50), None)  # the starting point only
    for users in (1040, 1080):  # 80 new users, none converted: too few to read a rate
        series, reason = arm_check(rule, series, users, 50)
        assert reason is None and series == ArmSeries(1000, 50)
    series, reason = arm_check(rule, series, 1120, 50)  # 120 new users, none converted
    assert series.rates == (0.0,) and reason.startswith("threshold: hero/b conversion rate 0 is under the floor 0.02")
    assert reason.endswith("last reading 0 of 120 new users")
    series, reason = arm_check(rule, series, 10, 1)  # the store was rebuilt: a new starting point, rates kept
    assert (series, reason) == (ArmSeries(10, 1, (0.0,)), None)
    # Late conversions of earlier users never make a rate above 1.
    assert arm_check(rule, ArmSeries(0, 0), 100, 150)[0].rates == (1.0,)
    clicks = ArmThreshold(experiment="hero", variant="b", metric="click", floor=0.1, min_users=10)
    assert arm_check(clicks, ArmSeries(0, 0), 10, 0)[1].startswith("threshold: hero/b click rate 0 is under")
    with pytest.raises(ValueError, match="set a floor"):
        ArmThreshold(experiment="hero", variant="b")


def test_an_unapplied_feature_repo_is_a_clear_error(feature_repo, capsys):
    from config.settings import Settings

    settings = Settings.of(brokers="127.0.0.1:1", feature_repo=str(feature_repo))
    args = retrain_args("--no-drift", "--arm", "hero/b", "--floor", "0.02", "--feedback", "f.parquet")
    assert run_watch(settings, args, lambda *a: None) == 2
    err = capsys.readouterr().err
    assert "feature view 'experiment_arm' is not registered" in err and "tailor apply" in err


# -- the command's glue: options, fresh feedback ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, on_drift, says",
    [
        ([], False, "nothing to watch"),
        (["--no-drift"], True, "nothing to watch"),
        (["--arm", "hero"], True, "expects EXPERIMENT/VARIANT"),
        (["--arm", "hero/b"], True, "needs --floor RATE, --relative-drop X or both"),
        (["--floor", "0.02"], True, "add --arm"),
        (["--arm", "hero/b", "--floor", "2"], True, "floor must be in [0, 1]"),
        (
            ["--arm", "hero/b", "--floor", "0.02", "--no-drift"],
            True,
            "the fresh feedback come from (or pass --feedback",
        ),
        (["--feedback", "f.parquet"], True, "set TAILOR_BROKERS to the Kafka the drift alerts come from\n"),
    ],
)
def test_watch_options_that_cannot_work_are_code_2(argv, on_drift, says, capsys):
    from config.settings import Settings

    settings = Settings.of(brokers="", retrain_on_drift=on_drift)
    assert run_watch(settings, retrain_args(*argv), lambda *a: None) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_trigger_options_without_watch_are_refused(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from cli.main import main

    monkeypatch.setenv("TAILOR_MODEL_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("TAILOR_MODEL_REGISTRY", str(tmp_path / "registry"))
    for argv in (["--arm", "hero/b", "--floor", "0.02"], ["--no-drift"], ["--min-users", "100"]):
        assert main(["retrain", *argv]) == 2, argv
        assert "add --watch" in capsys.readouterr().err
    assert not (tmp_path / "registry").exists()  # no run was attempted
