"""The ``omnichannel`` command line, run through click's ``CliRunner``.

The console plugin is installed (entry point ``console``), so these tests use
the real discovery path a user's shell would.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

import omnichannel
from omnichannel.cli import cli

HEX32 = "[0-9a-f]{32}"
SECRET = "EAAG-secret"


pytestmark = pytest.mark.usefixtures("isolated_env")


@pytest.fixture
def config_file(tmp_path):
    """Write a TOML file (empty by default) and return its path as a string."""

    def write(text=""):
        path = tmp_path / "omnichannel-cli.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def run(config_file):
    """Invoke ``omnichannel --config <file> ARGS``; ``config=None`` leaves the option out.

    The other installed plugins are disabled, so that outputs show the console plugin alone.
    """

    def run(*args, config="", env=None):
        prefix = [] if config is None else ["--config", config_file(config)]
        prefix += [arg for name in OTHER_PLUGINS for arg in ("--disable-plugin", name)]
        return CliRunner().invoke(cli, [*prefix, *args], prog_name="omnichannel", env=env)

    return run


OTHER_PLUGINS = sorted(
    ep.name for ep in importlib.metadata.entry_points(group="omnichannel") if ep.name != "console"
)
"""The first-party plugins other than console, installed with the distribution."""


def assert_clean_failure(result, code=1):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- send


def test_send_text(run):
    result = run("send", "--channel", "console", "--to", "+15551234567", "--text", "Hello Ann")
    assert result.exit_code == 0, result.output
    console_line, summary = result.stdout.splitlines()
    assert console_line == "[console] to +15551234567: Hello Ann"
    assert re.fullmatch(
        rf"accepted on console: message {HEX32}, provider id console-{HEX32}, 1 attempt", summary
    )
    assert result.stderr == ""


def test_send_json_receipt(run):
    result = run("send", "--channel", "console", "--to", "+15551234567", "--text", "hi", "--json")
    assert result.exit_code == 0, result.output
    console_line, _, body = result.stdout.partition("\n")
    assert console_line == "[console] to +15551234567: hi"
    receipt = json.loads(body)
    assert set(receipt) == {
        "message_id",
        "channel",
        "status",
        "provider_message_id",
        "provider_status",
        "attempts",
        "started_at",
        "finished_at",
        "error",
    }
    assert re.fullmatch(HEX32, receipt["message_id"])
    assert re.fullmatch(f"console-{HEX32}", receipt["provider_message_id"])
    assert receipt["channel"] == "console"
    assert receipt["status"] == "accepted"
    assert receipt["attempts"] == 1
    assert receipt["error"] is None
    assert receipt["provider_status"] is None
    started = datetime.fromisoformat(receipt["started_at"])
    assert datetime.fromisoformat(receipt["finished_at"]) >= started
    assert started.utcoffset() is not None


def test_send_template_with_positional_params(run):
    result = run(
        "send", "--channel", "console", "--to", "+1555", "--template", "order_update",
        "--param", "Ann", "--param", "42",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "[console] to +1555: template order_update (en_US) [Ann, 42]"


def test_send_template_with_named_params_and_language(run):
    result = run(
        "send", "--channel", "console", "--to", "+1555", "--template", "welcome", "--language", "pt_BR",
        "--named-param", "first_name=Ann", "--named-param", "code=4=2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "[console] to +1555: template welcome (pt_BR) [first_name=Ann, code=4=2]"
    )


def test_send_uses_the_configured_default_route(run):
    result = run("send", "--to", "+1555", "--text", "hi", config='default_route = ["console"]\n')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("[console] to +1555: hi\naccepted on console: ")


def test_send_to_stderr_when_configured(run):
    result = run(
        "send", "--channel", "console", "--to", "+1555", "--text", "hi",
        config='[plugins.console]\nstream = "stderr"\n',
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr == "[console] to +1555: hi\n"
    assert result.stdout.startswith("accepted on console: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "a", "--template", "b"], "give exactly one of --text or --template"),
        ([], "give exactly one of --text or --template"),
        (
            ["--template", "t", "--named-param", "first_name"],
            "--named-param must be NAME=VALUE, got 'first_name'",
        ),
        (["--template", "t", "--named-param", "=Ann"], "--named-param must be NAME=VALUE, got '=Ann'"),
        (
            ["--template", "t", "--param", "a", "--named-param", "b=c"],
            "use --param (positional) or --named-param (NAME=VALUE), not both",
        ),
        (["--text", "hi", "--param", "a"], "--param and --named-param go with --template"),
    ],
    ids=["both", "neither", "no-equals", "no-name", "param-and-named", "param-with-text"],
)
def test_send_usage_errors(run, args, message):
    result = run("send", "--channel", "console", "--to", "+1555", *args)
    assert_clean_failure(result, code=2)
    assert result.stderr.splitlines()[-1] == f"Error: {message}"
    assert "Usage: omnichannel send [OPTIONS]" in result.stderr
    assert "[console]" not in result.stdout


def test_send_requires_a_recipient(run):
    result = run("send", "--channel", "console", "--text", "hi")
    assert_clean_failure(result, code=2)
    assert "Error: Missing option '--to'." in result.stderr


def test_send_to_an_unknown_channel(run):
    result = run("send", "--channel", "sms", "--to", "+1555", "--text", "hi")
    assert_clean_failure(result)
    assert result.stderr == "Error: no enabled plugin provides channel 'sms' (available: console)\n"
    assert result.stdout == ""


def test_send_an_invalid_message(run):
    result = run("send", "--channel", "console", "--to", "+1555", "--text", "   ")
    assert_clean_failure(result)
    assert result.stderr == "Error: message is invalid:\n  - content.body: must not be empty\n"
    assert result.stdout == ""


def test_send_without_channel_or_default_route(run):
    result = run("send", "--to", "+1555", "--text", "hi")
    assert_clean_failure(result)
    assert result.stderr == (
        "Error: message is invalid:\n"
        "  - channel: the message names no channel or route and no default_route is configured\n"
    )


def test_send_with_a_missing_config_file(run, tmp_path):
    missing = tmp_path / "missing.toml"
    result = run(
        "--config", str(missing), "send", "--channel", "console", "--to", "1", "--text", "hi", config=None
    )
    assert_clean_failure(result)
    assert result.stderr == f"Error: invalid configuration:\n  - {missing}: file not found\n"


# ---------------------------------------------------------------- plugins


def test_plugins_table(run):
    result = run("plugins")
    assert result.exit_code == 0, result.output
    version = omnichannel.__version__
    width = max(len("VERSION"), len(version))
    assert result.stdout.splitlines() == [
        f"NAME     {'VERSION':<{width}}  CHANNELS  HOOKS",
        f"console  {version:<{width}}  console   build, register_channels, register_config, send",
    ]


def test_plugins_json(run):
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {
            "name": "console",
            "hooks": ["build", "register_channels", "register_config", "send"],
            "version": omnichannel.__version__,
            "distribution": "omnichannel",
            "channels": ["console"],
            "builtin": False,
            "error": None,
        }
    ]


def test_plugins_all_includes_the_builtins(run):
    result = run("plugins", "--json", "--all")
    assert result.exit_code == 0, result.output
    by_name = {info["name"]: info for info in json.loads(result.stdout)}
    assert set(by_name) == {
        "console",
        "omnichannel._amqp_health",
        "omnichannel._builtins",
        "omnichannel._settle_keys",
    }
    assert by_name["omnichannel._builtins"]["builtin"] is True
    assert by_name["omnichannel._builtins"]["hooks"] == ["send", "validate"]
    table = run("plugins", "--all").stdout.splitlines()
    assert table[-3].split() == ["omnichannel._amqp_health", "-", "-", "health"]
    assert table[-2].split() == ["omnichannel._builtins", "-", "-", "send,", "validate"]
    assert table[-1].split() == ["omnichannel._settle_keys", "-", "-", "on_event,", "shutdown"]


@pytest.mark.parametrize(
    ("hook", "names"),
    [("build", ["console"]), ("register_config", ["console"]), ("startup", []), ("validate", [])],
)
def test_plugins_hook_filter(run, hook, names):
    result = run("plugins", "--json", "--hook", hook)
    assert result.exit_code == 0, result.output
    assert [info["name"] for info in json.loads(result.stdout)] == names


def test_plugins_hook_filter_with_all(run):
    result = run("plugins", "--json", "--all", "--hook", "validate")
    assert [info["name"] for info in json.loads(result.stdout)] == ["omnichannel._builtins"]


def test_disable_plugin_option(run):
    assert json.loads(run("--disable-plugin", "console", "plugins", "--json").stdout) == []
    result = run("--disable-plugin", "console", "send", "--channel", "console", "--to", "1", "--text", "hi")
    assert_clean_failure(result)
    assert result.stderr == "Error: no enabled plugin provides channel 'console'\n"


def test_disable_plugins_variable(run):
    result = run("plugins", "--json", env={"OMNICHANNEL_DISABLE_PLUGINS": "console"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_plugin_disabled_in_the_file(run):
    result = run("plugins", "--json", config="[plugins.console]\nenabled = false\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


# ---------------------------------------------------------------- config check / show


def test_config_check_ok(run):
    result = run("config", "check")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"configuration is valid: \d+ plugins, channels: console\n", result.stdout)


def test_config_check_reports_every_problem(run, config_file):
    text = "[http]\ntimeot = 5\n[server]\nport = 70000\n[plugins.whatsapp]\nrollout = 150\n"
    result = run("config", "check", config=text)
    assert_clean_failure(result)
    assert result.stderr == (
        f"Error: invalid configuration in {config_file(text)}:\n"
        "  - http.timeot: unknown key (did you mean 'timeout_s'?)\n"
        "  - server.port: must be between 0 and 65535, got 70000\n"
        "  - plugins.whatsapp.rollout: must be between 0 and 100, got 150.0\n"
    )
    assert result.stdout == ""


def test_config_check_reports_plugin_sections(run):
    result = run("config", "check", config='[plugins.console]\nstream = "stdin"\n[plugins.nope]\nx = 1\n')
    assert_clean_failure(result)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Error: invalid configuration")
    assert sorted(lines[1:]) == [
        "  - plugins.console.stream: must be 'stdout' or 'stderr', got 'stdin'",
        "  - plugins.nope: no plugin named 'nope' is installed",
    ]


def test_config_check_names_the_variable(run):
    result = run("config", "check", env={"OMNICHANNEL_HTTP__TIMEOUT_S": "abc"})
    assert_clean_failure(result)
    assert result.stderr.splitlines()[1:] == [
        "  - http.timeout_s: expected a number, got 'abc' (from $OMNICHANNEL_HTTP__TIMEOUT_S)"
    ]


def test_config_show(run):
    result = run("config", "show", config="[http]\ntimeout_s = 5\n", env={"OMNICHANNEL_SERVER__PORT": "9000"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "channels": {},
        "default_route": [],
        "disabled_plugins": OTHER_PLUGINS,
        "http": {"connect_timeout_s": 10.0, "max_connections": 100, "timeout_s": 5.0},
        "plugins": {"console": {"enabled": True, "rollout": 100.0, "stream": "stdout"}},
        "send_concurrency": 10,
        "server": {"host": "127.0.0.1", "port": 9000, "shutdown_timeout_s": 10.0, "health_timeout_s": 1.0},
        "strict_plugins": False,
        "trace_plugins": False,
        "key_store": "sqlite:///omnichannel-keys.sqlite3",
        "amqp": None,
    }


def test_config_show_with_plugin_sections_redacts_secrets(run):
    text = (
        "[plugins.console]\n"
        'stream = "stderr"\n'
        "[plugins.whatsapp]\n"
        "enabled = false\n"
        f'access_token = "{SECRET}"\n'
        'app_secret = "hush"\n'
        'phone_number_id = "1234"\n'
    )
    result = run("config", "show", config=text)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output
    assert "hush" not in result.output
    plugins = json.loads(result.stdout)["plugins"]
    assert plugins["console"] == {"enabled": True, "rollout": 100.0, "stream": "stderr"}
    assert plugins["whatsapp"] == {
        "enabled": False,
        "rollout": 100.0,
        "access_token": "**********",
        "app_secret": "**********",
        "phone_number_id": "1234",
    }


def test_config_show_rejects_unknown_plugin_keys_without_echoing_them(run):
    result = run("config", "show", config=f'[plugins.console]\napi_key = "{SECRET}"\n')
    assert_clean_failure(result)
    assert result.stderr.splitlines()[1:] == ["  - plugins.console.api_key: unknown key"]
    assert SECRET not in result.output


# ---------------------------------------------------------------- global options


def test_version(run):
    result = run("--version", config=None)
    assert result.exit_code == 0
    assert result.stdout == f"omnichannel, version {omnichannel.__version__}\n"


def test_help_lists_the_commands(run):
    result = run("--help", config=None)
    assert result.exit_code == 0
    commands = re.findall(r"^  (\w+)  ", result.stdout.split("Commands:")[1], flags=re.MULTILINE)
    assert {"config", "plugins", "send", "serve"} <= set(commands)


@pytest.mark.parametrize(
    ("flags", "level"), [([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG)]
)
def test_verbosity_sets_the_log_level(run, monkeypatch, flags, level):
    calls = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: calls.append(kwargs))
    result = run(*flags, "plugins", "--json")
    assert result.exit_code == 0, result.output
    assert [call["level"] for call in calls] == [level]


def test_unknown_command(run):
    result = run("fax")
    assert_clean_failure(result, code=2)
    assert "Error: No such command 'fax'." in result.stderr


def test_console_script():
    script = Path(sys.executable).with_name("omnichannel")
    if not script.exists():
        pytest.skip("the omnichannel console script is not installed next to this interpreter")
    completed = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"omnichannel, version {omnichannel.__version__}\n"


# ---------------------------------------------------------------- health


def test_health_with_no_section(run):
    result = run("health")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no plugin reports its health"


def test_health_of_an_unreachable_broker_is_degraded_and_exits_1(run):
    result = run("health", "--json", config='[amqp]\nurl = "amqp://guest:s3cret@127.0.0.1:1/"\n')
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["degraded"] == ["omnichannel._amqp_health"]
    assert "cannot connect to the AMQP broker" in report["plugins"]["omnichannel._amqp_health"]["error"]
    assert "s3cret" not in result.output
    text = run("health", config='[amqp]\nurl = "amqp://guest:s3cret@127.0.0.1:1/"\n')
    assert text.exit_code == 1
    assert text.stdout.splitlines()[0] == "omnichannel._amqp_health: degraded"
