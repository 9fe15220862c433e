"""Plugin configuration: ``[plugins.<name>]`` sections, and plugin config classes with ``setting()``."""

from __future__ import annotations

import attrs
import pytest
from config_support import write_fixture  # noqa: F401  (the write fixture)

from omnichannel import ConfigError, Secret, make_converter
from omnichannel.config import PluginSettings, load_config, setting, structure_plugin_config

pytestmark = pytest.mark.usefixtures("isolated_env")


# ---------------------------------------------------------------- plugin sections


def test_plugin_section_generic_keys_are_split_from_settings(write):
    path = write(
        """
        [plugins.whatsapp]
        enabled = false
        rollout = 25
        phone_number_id = "1234"
        retry = { attempts = 3 }
        """
    )
    section = load_config(path, environ={}).plugins["whatsapp"]
    assert section.enabled is False
    assert section.rollout == 25.0
    assert dict(section.settings) == {"phone_number_id": "1234", "retry": {"attempts": 3}}


def test_plugin_section_defaults(write):
    section = load_config(write("[plugins.sms]\nsender_id = 'ACME'\n"), environ={}).plugins["sms"]
    assert section == PluginSettings(enabled=True, rollout=100.0, settings={"sender_id": "ACME"})


def test_plugin_settings_lookup_accepts_dashes_and_underscores(write):
    config = load_config(write("[plugins.my_plugin]\nrollout = 5\n"), environ={})
    assert config.plugin_settings("my-plugin").rollout == 5.0
    assert config.plugin_settings("my_plugin").rollout == 5.0
    assert config.plugin_settings("other") == PluginSettings()


# ---------------------------------------------------------------- plugin configuration classes


@attrs.frozen
class BreakerConfig:
    failure_threshold: int = setting(default=5, env=("WHATSAPP_CIRCUIT_BREAKER_THRESHOLD", "WA_CB_THRESHOLD"))
    token: Secret | None = setting(default=None, env="WHATSAPP_ACCESS_TOKEN")
    enabled_checks: tuple[str, ...] = setting(default=(), env="WA_CHECKS")
    ratio: float = attrs.field(default=0.5)


def structure(raw, environ):
    return structure_plugin_config(
        make_converter(), BreakerConfig, raw, plugin_name="breaker", environ=environ
    )


def test_setting_records_its_variables():
    field = attrs.fields(BreakerConfig).failure_threshold
    assert field.metadata["env"] == ("WHATSAPP_CIRCUIT_BREAKER_THRESHOLD", "WA_CB_THRESHOLD")
    assert attrs.fields(BreakerConfig).token.metadata["env"] == ("WHATSAPP_ACCESS_TOKEN",)
    assert field.default == 5


def test_setting_keeps_other_metadata():
    @attrs.frozen
    class Cfg:
        x: int = setting(default=1, env="X", metadata={"doc": "the x"})

    assert dict(attrs.fields(Cfg).x.metadata) == {"doc": "the x", "env": ("X",), "env_scale": 1.0}


@attrs.frozen
class RetryConfig:
    initial_delay_s: float = setting(default=1.0, env="WHATSAPP_RETRY_INITIAL_DELAY", env_scale=0.001)


def test_setting_env_scale_converts_a_legacy_unit():
    converter = make_converter()
    config = structure_plugin_config(
        converter, RetryConfig, {}, plugin_name="retry", environ={"WHATSAPP_RETRY_INITIAL_DELAY": "1500"}
    )
    assert config.initial_delay_s == 1.5
    # The key itself is in seconds: no conversion.
    config = structure_plugin_config(
        converter, RetryConfig, {"initial_delay_s": 2}, plugin_name="retry", environ={}
    )
    assert config.initial_delay_s == 2.0


def test_setting_env_scale_keeps_the_variable_in_errors():
    with pytest.raises(ConfigError) as caught:
        structure_plugin_config(
            make_converter(),
            RetryConfig,
            {},
            plugin_name="retry",
            environ={"WHATSAPP_RETRY_INITIAL_DELAY": "soon"},
        )
    assert "from $WHATSAPP_RETRY_INITIAL_DELAY" in str(caught.value)


def test_legacy_variables_fill_absent_keys():
    config = structure(
        {},
        {"WA_CB_THRESHOLD": "7", "WHATSAPP_ACCESS_TOKEN": "EAAG-secret", "WA_CHECKS": "a, b"},
    )
    assert config.failure_threshold == 7
    assert config.token == Secret("EAAG-secret")
    assert config.enabled_checks == ("a", "b")
    assert config.ratio == 0.5


def test_first_legacy_variable_wins():
    config = structure({}, {"WA_CB_THRESHOLD": "7", "WHATSAPP_CIRCUIT_BREAKER_THRESHOLD": "8"})
    assert config.failure_threshold == 8


def test_legacy_variables_are_ignored_when_the_key_is_given():
    assert structure({"failure_threshold": 3}, {"WA_CB_THRESHOLD": "7"}).failure_threshold == 3


def test_defaults_without_any_source():
    assert structure({}, {}) == BreakerConfig()


def test_omnichannel_variables_beat_legacy_variables():
    environ = {"OMNICHANNEL_PLUGINS__BREAKER__FAILURE_THRESHOLD": "9", "WA_CB_THRESHOLD": "7"}
    raw = load_config(environ=environ).plugin_settings("breaker").settings
    assert structure(raw, environ).failure_threshold == 9


def test_file_beats_legacy_variables(write):
    path = write("[plugins.breaker]\nfailure_threshold = 4\n")
    environ = {"WA_CB_THRESHOLD": "7"}
    raw = load_config(path, environ=environ).plugin_settings("breaker").settings
    assert structure(raw, environ).failure_threshold == 4


def test_plugin_config_errors_are_rooted_at_the_section():
    with pytest.raises(ConfigError) as info:
        structure(
            {"ratio": "1", "tokn": "EAAG-secret", "token": 5},
            {"WA_CB_THRESHOLD": "many"},
        )
    assert sorted(info.value.errors) == [
        "plugins.breaker.failure_threshold: expected an integer, got 'many' (from $WA_CB_THRESHOLD)",
        "plugins.breaker.ratio: expected a number, got str '1'",
        "plugins.breaker.token: expected a non-empty secret string, got int",
        "plugins.breaker.tokn: unknown key (did you mean 'token'?)",
    ]
    assert "EAAG-secret" not in str(info.value)


def test_structure_plugin_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("WA_CB_THRESHOLD", "11")
    config = structure_plugin_config(make_converter(), BreakerConfig, {}, plugin_name="breaker")
    assert config.failure_threshold == 11


def test_load_config_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("OMNICHANNEL_SEND_CONCURRENCY", "12")
    assert load_config().send_concurrency == 12


@attrs.frozen
class LegacyBreaker:
    failure_threshold: int = setting(default=5, env="WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD")


@attrs.frozen
class LegacyConfig:
    # This module postpones annotations, so these are strings until resolved.
    breaker: LegacyBreaker = attrs.field(factory=LegacyBreaker)
    optional: LegacyBreaker | None = None


def test_legacy_names_reach_nested_tables_with_string_annotations():
    assert isinstance(attrs.fields(LegacyConfig).breaker.type, str)
    config = structure_plugin_config(
        make_converter(),
        LegacyConfig,
        {},
        plugin_name="legacy",
        environ={"WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD": "7"},
    )
    assert config.breaker.failure_threshold == 7
    assert config.optional is None


def test_raw_plugin_settings_never_show_in_a_repr():
    config = load_config(
        environ={"OMNICHANNEL_PLUGINS__WHATSAPP__ACCESS_TOKEN": "EAAG-very-secret"},
    )
    assert config.plugins["whatsapp"].settings["access_token"] == "EAAG-very-secret"
    assert "EAAG-very-secret" not in repr(config)
    assert "EAAG-very-secret" not in str(config)
