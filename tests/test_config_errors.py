"""``load_config`` errors: the exact lines users see for a bad file or override, and bad key_store URLs."""

from __future__ import annotations

import pytest
from config_support import config_errors, write_fixture  # noqa: F401  (the write fixture)

from omnichannel import ConfigError
from omnichannel.config import load_config

pytestmark = pytest.mark.usefixtures("isolated_env")


def by_path(*cases):
    """``(toml, line)`` parameters, each named by the path its error line starts with."""
    return [pytest.param(text, line, id=line.partition(":")[0]) for text, line in cases]


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


# ---------------------------------------------------------------- key_store URLs


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
