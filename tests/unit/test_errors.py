"""What a user gets when the broker is missing or down, or a setting is malformed: a clear error, not a hang."""

import pytest

from cli.main import build_parser
from config.settings import Settings
from dev.services import free_port
from flows.features import build_flow, run_flow
from flows.kafka import ensure_topics


def test_a_broker_that_is_down_is_named_in_the_error():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError, match=f"no Kafka broker answers at {address}"):
        ensure_topics(address, ["t"], 1, timeout_s=1)


def test_flow_without_a_broker_says_what_to_set(capsys):
    assert run_flow(Settings.of(brokers=""), build_parser().parse_args(["flow"])) == 2
    assert "TAILOR_BROKERS" in capsys.readouterr().err
    with pytest.raises(ValueError, match="TAILOR_BROKERS"):
        build_flow(Settings.of(brokers=""))


def test_malformed_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="TAILOR_LATENESS_S='soon' is not a valid float"):
        Settings.from_env({"TAILOR_LATENESS_S": "soon"})
    with pytest.raises(ValueError, match="TAILOR_TAIL='maybe' is not a valid bool"):
        Settings.from_env({"TAILOR_TAIL": "maybe"})


def test_segmentation_settings_are_checked():
    with pytest.raises(ValueError, match="TAILOR_DRIFT_ACTION must be 'alert' or 'refit'"):
        Settings.from_env({"TAILOR_DRIFT_ACTION": "panic"})
    with pytest.raises(ValueError, match="TAILOR_SEGMENTS must be 0"):
        Settings.from_env({"TAILOR_SEGMENTS": "1"})
    assert Settings.from_env({"TAILOR_SEGMENTS": "0"}).audience.segments == 0
