"""The legacy service's feature flags: not read, but each one set is a warning naming its replacement."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from omnichannel import ConfigError
from omnichannel.cli import cli
from omnichannel.config import PluginSettings, ServiceConfig, load_config

FLAGS = {
    "WHATSAPP_ENHANCED_ENABLED": "false",
    "WHATSAPP_ENHANCED_ROLLOUT": "10",
    "WHATSAPP_COMMANDS_ENABLED": "true",
    "WHATSAPP_EVENT_LISTENERS": "message_sent,message_failed,template_used",
}

WARNINGS = [
    "WHATSAPP_ENHANCED_ENABLED is not read: there is no older implementation to fall back to; "
    "to turn a plugin off, set [plugins.<name>] enabled = false (OMNICHANNEL_PLUGINS__<NAME>__ENABLED)",
    "WHATSAPP_ENHANCED_ROLLOUT is not read: set [plugins.<name>] rollout = N (percent of recipients, "
    "OMNICHANNEL_PLUGINS__<NAME>__ROLLOUT) for the plugins to roll out",
    "WHATSAPP_COMMANDS_ENABLED is not read: the command bus is part of the core and always available",
    "WHATSAPP_EVENT_LISTENERS is not read: every enabled listener plugin runs; "
    "to turn one off, set [plugins.<name>] enabled = false",
]


def warnings_logged(caplog):
    return [
        r.getMessage() for r in caplog.records if r.name == "omnichannel" and r.levelno == logging.WARNING
    ]


def test_each_legacy_flag_set_is_a_warning_naming_its_replacement(caplog):
    with caplog.at_level(logging.WARNING, logger="omnichannel"):
        config = load_config(environ=FLAGS)
    assert warnings_logged(caplog) == WARNINGS
    # Not mapped: a 10 % rollout or enabled = false would take WhatsApp away from recipients.
    assert config == ServiceConfig()
    assert config.plugin_settings("whatsapp") == PluginSettings()


@pytest.mark.parametrize(("name", "expected"), list(zip(FLAGS, WARNINGS, strict=True)))
def test_one_flag_one_warning_whatever_its_value(caplog, name, expected):
    for value in ("true", "", "100"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="omnichannel"):
            load_config(environ={name: value})
        assert warnings_logged(caplog) == [expected]


def test_no_flag_no_warning(caplog):
    environ = {
        "WHATSAPP_CIRCUIT_BREAKER_ENABLED": "true",
        "WHATSAPP_ENHANCED": "1",
        "OMNICHANNEL_HTTP__TIMEOUT_S": "5",
    }
    with caplog.at_level(logging.WARNING, logger="omnichannel"):
        load_config(environ=environ)
    assert warnings_logged(caplog) == []


def test_the_new_keys_are_read_and_the_flags_still_warned_about(caplog):
    environ = {**FLAGS, "OMNICHANNEL_PLUGINS__WHATSAPP__ROLLOUT": "25"}
    with caplog.at_level(logging.WARNING, logger="omnichannel"):
        config = load_config(environ=environ)
    assert config.plugin_settings("whatsapp").rollout == 25.0
    assert warnings_logged(caplog) == WARNINGS


def test_an_invalid_configuration_still_warns_and_fails(caplog):
    environ = {"WHATSAPP_ENHANCED_ROLLOUT": "10", "OMNICHANNEL_HTTP__TIMEOUT_S": "abc"}
    with (
        caplog.at_level(logging.WARNING, logger="omnichannel"),
        pytest.raises(ConfigError, match="timeout_s"),
    ):
        load_config(environ=environ)
    assert warnings_logged(caplog) == [WARNINGS[1]]


@pytest.mark.usefixtures("isolated_env")
def test_config_check_shows_the_warnings_and_exits_0(caplog, monkeypatch, tmp_path):
    for name, value in FLAGS.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "omnichannel-legacy.toml"
    config.write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="omnichannel"):
        result = CliRunner().invoke(
            cli, ["--config", str(config), "config", "check"], prog_name="omnichannel"
        )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("configuration is valid: ")
    assert warnings_logged(caplog) == WARNINGS
