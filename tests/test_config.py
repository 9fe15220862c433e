"""``omnichannel.config``: sources, precedence, and the exact error lines users see."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import tomllib

import attrs
import pytest

from omnichannel import ConfigError, Secret, make_converter
from omnichannel.config import (
    HttpConfig,
    PluginSettings,
    ServerConfig,
    ServiceConfig,
    load_config,
    setting,
    structure_plugin_config,
)

pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def write(tmp_path):
    def write(text, name="omnichannel-test.toml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def by_path(*cases):
    """``(toml, line)`` parameters, each named by the path its error line starts with."""
    return [pytest.param(text, line, id=line.partition(":")[0]) for text, line in cases]


def config_errors(*args, **kwargs):
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------- defaults and file


def test_defaults():
    config = load_config(environ={})
    assert config == ServiceConfig()
    assert config.default_route == ()
    assert dict(config.channels) == {}
    assert config.disabled_plugins == ()
    assert config.send_concurrency == 10
    assert config.strict_plugins is False
    assert config.trace_plugins is False
    assert config.http == HttpConfig(timeout_s=30.0, connect_timeout_s=10.0, max_connections=100)
    assert config.server == ServerConfig(host="127.0.0.1", port=8080, shutdown_timeout_s=10.0)
    assert dict(config.plugins) == {}


def test_toml_file(write):
    path = write(
        """
        default_route = ["whatsapp", "sms"]
        disabled_plugins = ["metrics"]
        send_concurrency = 4
        strict_plugins = true

        [channels]
        sms = "twilio"

        [http]
        timeout_s = 5
        max_connections = 20

        [server]
        host = "0.0.0.0"
        port = 9000

        [plugins.whatsapp]
        rollout = 25
        phone_number_id = "1234"
        """
    )
    config = load_config(path, environ={})
    assert config.default_route == ("whatsapp", "sms")
    assert config.disabled_plugins == ("metrics",)
    assert config.send_concurrency == 4
    assert config.strict_plugins is True
    assert dict(config.channels) == {"sms": "twilio"}
    assert config.http == HttpConfig(timeout_s=5.0, connect_timeout_s=10.0, max_connections=20)
    assert isinstance(config.http.timeout_s, float)
    assert config.server == ServerConfig(host="0.0.0.0", port=9000)
    assert config.plugins["whatsapp"] == PluginSettings(rollout=25.0, settings={"phone_number_id": "1234"})


def test_path_may_be_a_string(write):
    path = write("send_concurrency = 3\n")
    assert load_config(str(path), environ={}).send_concurrency == 3


def test_omnichannel_config_variable_picks_the_file(write):
    path = write("send_concurrency = 3\n", name="elsewhere.toml")
    write("send_concurrency = 99\n", name="omnichannel.toml")
    assert load_config(environ={"OMNICHANNEL_CONFIG": str(path)}).send_concurrency == 3


def test_path_argument_beats_omnichannel_config(write):
    chosen = write("send_concurrency = 3\n", name="chosen.toml")
    other = write("send_concurrency = 4\n", name="other.toml")
    assert load_config(chosen, environ={"OMNICHANNEL_CONFIG": str(other)}).send_concurrency == 3


def test_omnichannel_toml_in_the_working_directory_is_read(write):
    write("send_concurrency = 7\n", name="omnichannel.toml")
    assert load_config(environ={}).send_concurrency == 7


def test_omnichannel_toml_elsewhere_is_not_read(write, tmp_path, monkeypatch):
    write("send_concurrency = 7\n", name="omnichannel.toml")
    other = tmp_path / "sub"
    other.mkdir()
    monkeypatch.chdir(other)
    assert load_config(environ={}).send_concurrency == 10


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    error = config_errors(path)
    assert error.errors == [f"{path}: file not found"]
    assert str(error) == f"invalid configuration:\n  - {path}: file not found"


def test_missing_file_named_by_omnichannel_config(tmp_path):
    path = tmp_path / "nope.toml"
    error = config_errors(environ={"OMNICHANNEL_CONFIG": str(path)})
    assert error.errors == [f"{path}: file not found"]


def test_unreadable_file(tmp_path):
    error = config_errors(tmp_path)
    assert error.errors == [f"{tmp_path}: cannot read ({os.strerror(errno.EISDIR)})"]


def test_invalid_toml(write):
    text = "[http\ntimeout_s = 5\n"
    path = write(text)
    with pytest.raises(tomllib.TOMLDecodeError) as parse_error:
        tomllib.loads(text)
    error = config_errors(path)
    assert error.errors == [f"{path}: not valid TOML ({parse_error.value})"]
    assert "line 1, column 6" in error.errors[0]


# ---------------------------------------------------------------- environment


def test_environment_with_nested_keys_and_typed_parsing():
    config = load_config(
        environ={
            "OMNICHANNEL_HTTP__TIMEOUT_S": "2.5",
            "OMNICHANNEL_HTTP__MAX_CONNECTIONS": " 7 ",
            "OMNICHANNEL_SEND_CONCURRENCY": "3",
            "OMNICHANNEL_STRICT_PLUGINS": "true",
            "OMNICHANNEL_TRACE_PLUGINS": "off",
            "OMNICHANNEL_DEFAULT_ROUTE": "whatsapp, sms,,email ",
            "OMNICHANNEL_SERVER__HOST": "0.0.0.0",
            "OMNICHANNEL_CHANNELS__SMS": "twilio",
        }
    )
    assert config.http.timeout_s == 2.5
    assert config.http.max_connections == 7
    assert config.send_concurrency == 3
    assert config.strict_plugins is True
    assert config.trace_plugins is False
    assert config.default_route == ("whatsapp", "sms", "email")
    assert config.server.host == "0.0.0.0"
    assert dict(config.channels) == {"sms": "twilio"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("Yes", True),
        (" ON ", True),
        ("0", False),
        ("FALSE", False),
        ("no", False),
    ],
)
def test_environment_booleans(raw, expected):
    assert load_config(environ={"OMNICHANNEL_STRICT_PLUGINS": raw}).strict_plugins is expected


def test_environment_ignores_other_variables():
    config = load_config(environ={"OTHER_HTTP__TIMEOUT_S": "x", "OMNICHANNEL_": "x", "HOME": "/root"})
    assert config == ServiceConfig()


def test_omnichannel_config_is_not_a_setting(write):
    path = write("")
    assert load_config(environ={"OMNICHANNEL_CONFIG": str(path)}) == ServiceConfig()


def test_environment_plugin_sections():
    config = load_config(
        environ={
            "OMNICHANNEL_PLUGINS__WHATSAPP__ENABLED": "false",
            "OMNICHANNEL_PLUGINS__WHATSAPP__ROLLOUT": "12.5",
            "OMNICHANNEL_PLUGINS__WHATSAPP__ACCESS_TOKEN": "EAAG-secret",
        }
    )
    section = config.plugins["whatsapp"]
    assert section.enabled is False
    assert section.rollout == 12.5
    assert dict(section.settings) == {"access_token": "EAAG-secret"}


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"OMNICHANNEL_HTTP__TIMEOUT_S": "abc"},
            "http.timeout_s: expected a number, got 'abc' (from $OMNICHANNEL_HTTP__TIMEOUT_S)",
        ),
        (
            {"OMNICHANNEL_SEND_CONCURRENCY": "1.5"},
            "send_concurrency: expected an integer, got '1.5' (from $OMNICHANNEL_SEND_CONCURRENCY)",
        ),
        (
            {"OMNICHANNEL_STRICT_PLUGINS": "maybe"},
            "strict_plugins: expected true or false, got 'maybe' (from $OMNICHANNEL_STRICT_PLUGINS)",
        ),
        (
            {"OMNICHANNEL_HTTP__TIMEOT": "5"},
            "http.timeot: unknown key (did you mean 'timeout_s'?) (from $OMNICHANNEL_HTTP__TIMEOT)",
        ),
        (
            {"OMNICHANNEL_SERVER__PORT": "-1"},
            "server.port: must be between 0 and 65535, got -1 (from $OMNICHANNEL_SERVER__PORT)",
        ),
        (
            {"OMNICHANNEL_PLUGINS__WHATSAPP__ROLLOUT": "150"},
            "plugins.whatsapp.rollout: must be between 0 and 100, got 150.0 "
            "(from $OMNICHANNEL_PLUGINS__WHATSAPP__ROLLOUT)",
        ),
    ],
)
def test_environment_errors_name_the_variable(environ, line):
    error = config_errors(environ=environ)
    assert error.errors == [line]
    assert error.source is None


def test_conflicting_environment_variables():
    error = config_errors(environ={"OMNICHANNEL_HTTP": "1", "OMNICHANNEL_HTTP__TIMEOUT_S": "2"})
    assert error.errors == ["OMNICHANNEL_HTTP__TIMEOUT_S: conflicts with another OMNICHANNEL_ variable"]


def test_config_from_the_environment_is_plain_data():
    # A loaded config is copied and pickled (workers, tests): no EnvStr may survive in it.
    config = load_config(
        environ={
            "OMNICHANNEL_SERVER__HOST": "0.0.0.0",
            "OMNICHANNEL_CHANNELS__SMS": "twilio",
            "OMNICHANNEL_PLUGINS__SMS__SENDER_ID": "ACME",
        }
    )
    assert type(config.server.host) is str
    assert type(config.channels["sms"]) is str
    assert pickle.loads(pickle.dumps(config)) == config
    assert copy.deepcopy(config) == config


# ---------------------------------------------------------------- precedence


def test_precedence_key_by_key_with_table_merge(write):
    path = write(
        """
        send_concurrency = 2
        default_route = ["sms"]

        [http]
        timeout_s = 5
        max_connections = 50

        [server]
        port = 9000
        host = "10.0.0.1"

        [plugins.whatsapp]
        rollout = 10
        phone_number_id = "from-file"
        api_version = "v21.0"
        """
    )
    config = load_config(
        path,
        environ={
            "OMNICHANNEL_HTTP__TIMEOUT_S": "7",
            "OMNICHANNEL_SERVER__PORT": "9100",
            "OMNICHANNEL_PLUGINS__WHATSAPP__PHONE_NUMBER_ID": "from-env",
        },
        overrides={
            "server": {"port": 9200},
            "http": {"connect_timeout_s": 2},
            "plugins": {"whatsapp": {"enabled": False}},
        },
    )
    assert config.send_concurrency == 2  # file
    assert config.default_route == ("sms",)  # file
    assert config.http == HttpConfig(timeout_s=7.0, connect_timeout_s=2.0, max_connections=50)
    assert config.server == ServerConfig(host="10.0.0.1", port=9200)
    assert config.plugins["whatsapp"] == PluginSettings(
        enabled=False, rollout=10.0, settings={"phone_number_id": "from-env", "api_version": "v21.0"}
    )


def test_environment_beats_the_file(write):
    path = write("send_concurrency = 2\n")
    assert load_config(path, environ={"OMNICHANNEL_SEND_CONCURRENCY": "5"}).send_concurrency == 5


def test_overrides_beat_the_environment():
    config = load_config(environ={"OMNICHANNEL_SEND_CONCURRENCY": "5"}, overrides={"send_concurrency": 6})
    assert config.send_concurrency == 6


def test_lists_are_replaced_not_merged(write):
    path = write('default_route = ["whatsapp", "sms"]\n')
    config = load_config(path, environ={"OMNICHANNEL_DEFAULT_ROUTE": "email"})
    assert config.default_route == ("email",)


def test_disabled_plugins_is_the_union_of_every_source(write):
    path = write('disabled_plugins = ["metrics", "amqp"]\n')
    config = load_config(
        path,
        environ={"OMNICHANNEL_DISABLE_PLUGINS": "sms, metrics"},
        overrides={"disabled_plugins": ["email", "amqp"]},
    )
    assert config.disabled_plugins == ("metrics", "amqp", "sms", "email")


def test_disable_plugins_variable():
    config = load_config(environ={"OMNICHANNEL_DISABLE_PLUGINS": " metrics,,sms "})
    assert config.disabled_plugins == ("metrics", "sms")


def test_both_disable_variables_are_honoured():
    config = load_config(
        environ={"OMNICHANNEL_DISABLE_PLUGINS": "metrics", "OMNICHANNEL_DISABLED_PLUGINS": "sms"}
    )
    assert set(config.disabled_plugins) == {"metrics", "sms"}


# ---------------------------------------------------------------- errors from the file


def test_unknown_keys_with_did_you_mean(write):
    path = write(
        """
        send_concurency = 3
        colour = "blue"

        [http]
        timeot = 5
        """
    )
    error = config_errors(path)
    assert sorted(error.errors) == [
        "colour: unknown key",
        "http.timeot: unknown key (did you mean 'timeout_s'?)",
        "send_concurency: unknown key (did you mean 'send_concurrency'?)",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    by_path(
        ('[http]\ntimeout_s = "5"\n', "http.timeout_s: expected a number, got str '5'"),
        ("send_concurrency = 2.0\n", "send_concurrency: expected an integer, got float 2.0"),
        ("send_concurrency = true\n", "send_concurrency: expected an integer, got bool True"),
        ('strict_plugins = "yes"\n', "strict_plugins: expected true or false, got str 'yes'"),
        ("[server]\nhost = 5\n", "server.host: expected a string, got int 5"),
        ('default_route = "sms"\n', "default_route: expected a list of strings, got str 'sms'"),
        ("[channels]\nsms = 5\n", "channels.sms: expected a string, got int 5"),
        ('[plugins]\nwhatsapp = "on"\n', "plugins.whatsapp: expected a table, got str"),
        ("[plugins.whatsapp]\nenabled = 1\n", "plugins.whatsapp.enabled: expected true or false, got int 1"),
        ('[plugins.whatsapp]\nrollout = "5"\n', "plugins.whatsapp.rollout: expected a number, got str '5'"),
    ),
)
def test_wrong_types_are_errors_not_coerced(write, text, line):
    path = write(text)
    error = config_errors(path)
    assert error.errors == [line]
    assert error.source == str(path)


@pytest.mark.parametrize(
    ("text", "line"),
    by_path(
        ("http = 5\n", "http: expected a table, got int"),
        ('server = "localhost"\n', "server: expected a table, got str"),
        ("plugins = 5\n", "plugins: expected a table, got int"),
    ),
)
def test_a_value_where_a_table_belongs(write, text, line):
    assert config_errors(write(text)).errors == [line]


@pytest.mark.parametrize(
    ("text", "line"),
    by_path(
        ('disabled_plugins = "metrics"\n', "disabled_plugins: expected a list of strings, got str 'metrics'"),
        ("disabled_plugins = 5\n", "disabled_plugins: expected a list of strings, got int 5"),
    ),
)
def test_disabled_plugins_must_be_a_list(write, text, line):
    assert config_errors(write(text)).errors == [line]


def test_list_items_are_reported_with_their_index(write):
    path = write('default_route = ["whatsapp", 5, "sms", 6]\n')
    assert config_errors(path).errors == [
        "default_route[1]: expected a string, got int 5",
        "default_route[3]: expected a string, got int 6",
    ]


@pytest.mark.parametrize(
    ("text", "line"),
    by_path(
        ("[http]\ntimeout_s = 0\n", "http.timeout_s: must be > 0, got 0.0"),
        ("[http]\nconnect_timeout_s = -1.5\n", "http.connect_timeout_s: must be > 0, got -1.5"),
        ("[http]\nmax_connections = 0\n", "http.max_connections: must be > 0, got 0"),
        ("send_concurrency = -2\n", "send_concurrency: must be > 0, got -2"),
        ("[server]\nport = 70000\n", "server.port: must be between 0 and 65535, got 70000"),
        ("[server]\nshutdown_timeout_s = 0\n", "server.shutdown_timeout_s: must be > 0, got 0.0"),
        (
            "[plugins.whatsapp]\nrollout = 150\n",
            "plugins.whatsapp.rollout: must be between 0 and 100, got 150.0",
        ),
        (
            "[plugins.whatsapp]\nrollout = -1\n",
            "plugins.whatsapp.rollout: must be between 0 and 100, got -1.0",
        ),
    ),
)
def test_validators_name_the_field(write, text, line):
    assert config_errors(write(text)).errors == [line]


def test_rollout_bounds_are_inclusive(write):
    config = load_config(write("[plugins.a]\nrollout = 0\n[plugins.b]\nrollout = 100\n"), environ={})
    assert (config.plugins["a"].rollout, config.plugins["b"].rollout) == (0.0, 100.0)


def test_several_problems_are_reported_at_once(write):
    path = write(
        """
        send_concurrency = true

        [http]
        timeot = 5

        [server]
        port = 70000

        [plugins.whatsapp]
        rollout = 150
        """
    )
    error = config_errors(path, environ={"OMNICHANNEL_HTTP__TIMEOUT_S": "abc"})
    assert sorted(error.errors) == [
        "http.timeot: unknown key (did you mean 'timeout_s'?)",
        "http.timeout_s: expected a number, got 'abc' (from $OMNICHANNEL_HTTP__TIMEOUT_S)",
        "plugins.whatsapp.rollout: must be between 0 and 100, got 150.0",
        "send_concurrency: expected an integer, got bool True",
        "server.port: must be between 0 and 65535, got 70000",
    ]
    assert error.source == str(path)


def test_a_type_error_does_not_hide_a_bad_value_next_to_it(write):
    path = write("[server]\nhost = 5\nport = 70000\n")
    assert sorted(config_errors(path).errors) == [
        "server.host: expected a string, got int 5",
        "server.port: must be between 0 and 65535, got 70000",
    ]


def test_config_error_str(write):
    path = write("[http]\ntimeot = 5\n[server]\nport = 70000\n")
    assert str(config_errors(path)) == (
        f"invalid configuration in {path}:\n"
        "  - http.timeot: unknown key (did you mean 'timeout_s'?)\n"
        "  - server.port: must be between 0 and 65535, got 70000"
    )


def test_errors_from_overrides():
    error = config_errors(overrides={"http": {"timeout_s": "5"}, "nope": 1})
    assert sorted(error.errors) == ["http.timeout_s: expected a number, got str '5'", "nope: unknown key"]
    assert str(error).startswith("invalid configuration:\n")


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


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (
            "nonsense",
            "key_store: 'nonsense' is not a key store URL; expected sqlite:///relative/path.sqlite3",
        ),
        ("memory://x", "key_store: 'memory://x': memory:// takes no path or options"),
        ("sqlite://db/k.db", "key_store: 'sqlite://db/k.db': a sqlite URL has no host"),
    ],
)
def test_a_key_store_url_that_names_no_store_is_refused_at_load(value, problem):
    with pytest.raises(ConfigError) as info:
        load_config(environ={"OMNICHANNEL_KEY_STORE": value})
    assert problem in str(info.value)
    assert "(from $OMNICHANNEL_KEY_STORE)" in str(info.value)


@pytest.mark.parametrize(
    "value", ["sqlite:///keys.sqlite3", "keys.db", "redis://127.0.0.1:6379/0", "memory://"]
)
def test_key_store_urls_are_accepted_without_opening_anything(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(environ={"OMNICHANNEL_KEY_STORE": value}).key_store == value
    assert list(tmp_path.iterdir()) == []
