"""``load_config`` sources: defaults, the file and how it is found, the environment, and their precedence."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import tomllib

import pytest
from config_support import config_errors, write_fixture  # noqa: F401  (the write fixture)

from omnichannel.config import HttpConfig, PluginSettings, ServerConfig, ServiceConfig, load_config

pytestmark = pytest.mark.usefixtures("isolated_env")


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
