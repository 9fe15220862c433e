"""Meta-tests that keep every hook tested and documented, and tests of the contribution hooks.

Every hook must have a test named ``test_hook_<hook name>...`` somewhere under tests/,
a reference entry in docs/plugins/hooks.md and a docstring that says how it is called.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import types
from pathlib import Path

import attrs
import click
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from omnichannel import (
    DeliveryStatus,
    Message,
    PluginError,
    Route,
    SendMessage,
    StatusChanged,
    Text,
    WebhookError,
    hookimpl,
)
from omnichannel import plugins as _plugins
from omnichannel.cli import cli, service_from_context
from omnichannel.plugins import get_plugin_manager
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, RecordingChannel, make_service

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
HOOKS_DOC = ROOT / "docs" / "plugins" / "hooks.md"

HOOKS = get_plugin_manager(load_entrypoints=False).hook
HOOK_NAMES = sorted(name for name in dir(HOOKS) if not name.startswith("_"))


def test_the_hooks_are_the_documented_set():
    expected = sorted(
        [
            "validate",
            "build",
            "send",
            "sender_id",
            "on_event",
            "register_channels",
            "register_config",
            "register_commands",
            "register_routes",
            "register_command_handlers",
            "startup",
            "shutdown",
            "health",
        ]
    )
    assert expected == HOOK_NAMES


# ---------------------------------------------------------------- every hook has a test


def _test_function_names() -> set[str]:
    names = set()
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names |= {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        }
    return names


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_has_a_test(hook):
    prefix = f"test_hook_{hook}"
    tests = sorted(name for name in _test_function_names() if name == prefix or name.startswith(prefix + "_"))
    assert tests, f"no test named {prefix}_<behaviour> in tests/"


# ---------------------------------------------------------------- every hook is documented


def _hooks_doc_lines() -> list[str]:
    if not HOOKS_DOC.is_file():
        pytest.fail(f"{HOOKS_DOC.relative_to(ROOT)} is missing: it is the reference of every hook")
    return HOOKS_DOC.read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_is_documented_with_its_arguments(hook):
    lines = _hooks_doc_lines()
    argnames = getattr(HOOKS, hook).spec.argnames
    heading = f"## {hook}({', '.join(argnames)})"
    assert heading in lines, f"docs/plugins/hooks.md has no line {heading!r}"
    index = lines.index(heading)
    previous = next((line for line in reversed(lines[:index]) if line.strip()), None)
    assert previous == f"(plugin-hook-{hook})=", (
        f"the heading {heading!r} must be preceded by the label line '(plugin-hook-{hook})='"
    )


def test_hooks_doc_documents_no_hook_that_does_not_exist():
    labels = [
        m.group(1) for line in _hooks_doc_lines() if (m := re.fullmatch(r"\(plugin-hook-(.+)\)=", line))
    ]
    assert sorted(labels) == HOOK_NAMES


# ---------------------------------------------------------------- every hookspec is explained


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hookspec_docstring_says_how_it_is_called(hook):
    spec = getattr(HOOKS, hook).spec
    doc = spec.function.__doc__ or ""
    assert "firstresult" in doc or "broadcast" in doc
    assert ".. versionadded::" in doc
    # and what it says is true
    if spec.opts.get("firstresult"):
        assert "firstresult: stops at the first non-None result" in doc
    else:
        assert "broadcast: all implementations are called" in doc


# ---------------------------------------------------------------- register_commands


@pytest.fixture
def fresh_cli(monkeypatch):
    """The ``cli`` group, with its built-in commands guarded against changes by the test."""
    monkeypatch.setattr(cli, "commands", dict(cli.commands))
    monkeypatch.delenv("OMNICHANNEL_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("OMNICHANNEL_CONFIG", raising=False)
    return cli


@pytest.fixture
def greeter_entry_point(monkeypatch):
    """An installed plugin (entry point ``greeter``) adding ``omnichannel hello`` and ``plugins``."""
    module = types.ModuleType("omnichannel_test_greeter")

    @hookimpl
    def register_commands(cli):
        @cli.command("hello")
        @click.option("--name", default="world")
        def hello(name):
            """Say hello."""
            click.echo(f"hello {name}")

        @cli.command("channels")
        def channels():
            """List the channels, honouring the global options."""
            service = service_from_context()
            click.echo(", ".join(sorted(service.channels)) or "none")

        @cli.command("plugins")
        def plugins():
            """Tries to shadow a built-in command."""
            click.echo("shadowed!")

    module.register_commands = register_commands
    monkeypatch.setitem(sys.modules, module.__name__, module)
    eps = (
        importlib.metadata.EntryPoint("console", "omnichannel_console", "omnichannel"),
        importlib.metadata.EntryPoint("greeter", module.__name__, "omnichannel"),
    )
    monkeypatch.setattr(_plugins, "_entry_points", lambda: iter(eps))
    return module


def test_hook_register_commands_adds_a_cli_command(fresh_cli, greeter_entry_point):
    result = CliRunner().invoke(fresh_cli, ["hello", "--name", "Ann"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello Ann\n"


def test_hook_register_commands_a_plugin_command_gets_a_service_from_the_global_options(
    fresh_cli, greeter_entry_point
):
    runner = CliRunner()
    result = runner.invoke(fresh_cli, ["channels"])
    assert (result.exit_code, result.output) == (0, "console\n")
    result = runner.invoke(fresh_cli, ["--disable-plugin", "console", "channels"])
    assert (result.exit_code, result.output) == (0, "none\n")


def test_hook_register_commands_are_listed_in_help(fresh_cli, greeter_entry_point):
    result = CliRunner().invoke(fresh_cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s+hello\s+Say hello\.$", result.output, re.MULTILINE)


def test_hook_register_commands_cannot_replace_a_built_in_command(fresh_cli, greeter_entry_point):
    result = CliRunner().invoke(fresh_cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert "shadowed!" not in result.output
    assert '"name": "greeter"' in result.output


def test_hook_register_commands_of_a_disabled_plugin_are_not_added(fresh_cli, greeter_entry_point):
    result = CliRunner().invoke(fresh_cli, ["--disable-plugin", "greeter", "hello"])
    assert result.exit_code == 2
    assert "No such command 'hello'" in result.output


# ---------------------------------------------------------------- register_routes


class Webhook:
    """A channel webhook: checks a signature and reports a status change."""

    @hookimpl
    def register_routes(self, service):
        async def receive(request):
            if request.headers.get("X-Signature") != "valid":
                raise WebhookError("signature mismatch", status=401)
            body = await request.json()
            await service.emit(
                StatusChanged(
                    channel="recording",
                    provider_message_id=body["id"],
                    status=DeliveryStatus(body["status"]),
                    occurred_at=service.clock.now(),
                )
            )
            return web.json_response({"received": body["id"]})

        return [Route("post", "/webhooks/recording", receive, name="recording-webhook")]


async def test_hook_register_routes_serves_plugin_routes():
    events = EventRecorder()
    service = make_service(RecordingChannel(), ("webhook", Webhook()), events)
    app = make_app(service)
    assert str(app.router["recording-webhook"].url_for()) == "/webhooks/recording"
    async with TestClient(TestServer(app)) as client:
        assert service.started
        response = await client.post(
            "/webhooks/recording",
            json={"id": "wamid.1", "status": "delivered"},
            headers={"X-Signature": "valid"},
        )
        assert response.status == 200
        assert await response.json() == {"received": "wamid.1"}

        rejected = await client.post("/webhooks/recording", json={"id": "wamid.2", "status": "read"})
        assert rejected.status == 401
        assert await rejected.json() == {"error": {"type": "WebhookError", "message": "signature mismatch"}}

        ready = await client.get("/ready")
        assert await ready.json() == {"status": "ready", "channels": ["recording"]}
    assert not service.started
    [changed] = events.of_type(StatusChanged)
    assert (changed.provider_message_id, changed.status) == ("wamid.1", DeliveryStatus.DELIVERED)


def test_hook_register_routes_two_plugins_adding_one_route_is_an_error():
    async def handler(request):
        return web.Response()

    class First:
        @hookimpl
        def register_routes(self):
            return [Route("POST", "/webhooks/sms", handler)]

    class Second:
        @hookimpl
        def register_routes(self):
            return [Route("POST", "/webhooks/sms", handler), Route("GET", "/webhooks/sms", handler)]

    service = make_service(("first", First()), ("second", Second()))
    with pytest.raises(PluginError) as info:
        make_app(service)
    assert str(info.value) == "plugin 'first': route POST /webhooks/sms is already added by 'second'"


def test_hook_register_routes_must_return_route_objects():
    class Sloppy:
        @hookimpl
        def register_routes(self):
            return [("GET", "/x")]

    with pytest.raises(PluginError) as info:
        make_service(("sloppy", Sloppy())).routes()
    assert str(info.value) == "plugin 'sloppy': register_routes must return Route objects, got ('GET', '/x')"


# ---------------------------------------------------------------- register_command_handlers


@attrs.frozen
class Ping:
    text: str


async def handle_ping(command, service):
    return f"pong: {command.text} ({len(service.channels)} channels)"


class PingPlugin:
    @hookimpl
    def register_command_handlers(self, service):
        return {Ping: handle_ping}


async def test_hook_register_command_handlers_adds_a_command_to_the_bus():
    async with make_service(RecordingChannel(), ("ping", PingPlugin())) as service:
        assert await service.bus.dispatch(Ping("hi")) == "pong: hi (1 channels)"
        assert service.bus.command_types["ping"] is Ping
        # the built-in commands are still there
        receipt = await service.bus.dispatch(SendMessage(Message("+1555", Text("hi"), channel="recording")))
    assert receipt.ok


def test_hook_register_command_handlers_two_handlers_for_one_command_is_an_error():
    with pytest.raises(PluginError) as info:
        make_service(("first", PingPlugin()), ("second", PingPlugin())).command_handlers()
    assert str(info.value) == "plugin 'first': a handler for Ping is already registered"
