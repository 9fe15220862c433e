"""The ``omnichannel`` command line.

Global options come before the command: ``omnichannel --config prod.toml
--disable-plugin metrics -v send ...``. Plugins add commands through the
``register_commands`` hook. Every ``OmniChannelError`` becomes one clear
message on stderr and exit status 1; a usage error exits with 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import click

from . import plugins as _plugins
from .amqp.cli import dlq as dlq_group
from .amqp.cli import sender as sender_group
from .amqp.cli import worker as worker_command
from .campaigns.cli import campaign as campaign_group
from .config import ServiceConfig, load_config
from .errors import ConfigError, OmniChannelError
from .message import Content, Message, Template, Text, TextParam
from .service import OmniChannelService

__all__ = ["cli", "main", "service_from_context"]

log = logging.getLogger("omnichannel.cli")


@attrs.define
class CliState:
    """What the global options say; commands build config and service from it."""

    config_path: str | None
    disabled: tuple[str, ...]

    def config(self) -> ServiceConfig:
        overrides = {"disabled_plugins": list(self.disabled)} if self.disabled else None
        return load_config(self.config_path, overrides=overrides)

    def service(self) -> OmniChannelService:
        return OmniChannelService(self.config())


@contextlib.contextmanager
def _silenced(logger: logging.Logger) -> Iterator[None]:
    disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = disabled


class PluginGroup(click.Group):
    """A click group that adds the plugins' commands and turns our errors into messages."""

    def _plugin_commands(self, ctx: click.Context) -> dict[str, click.Command]:
        """The plugins' commands, found once per invocation (kept in the context, not on the group)."""
        meta = ctx.find_root().meta
        if "omnichannel.plugin_commands" in meta:
            commands: dict[str, click.Command] = meta["omnichannel.plugin_commands"]
            return commands
        state = CliState(ctx.params.get("config_path"), tuple(ctx.params.get("disable_plugin") or ()))
        try:
            with _silenced(logging.getLogger("omnichannel")):  # the command loads it again, and warns
                blocked = state.config().blocked_plugins()
        except ConfigError:
            # The command itself reports the broken configuration; block what the flag names.
            blocked = ServiceConfig(disabled_plugins=state.disabled).blocked_plugins()
        staging = click.Group()
        _plugins.call_each(_plugins.get_plugin_manager(blocked=blocked), "register_commands", cli=staging)
        commands = {}
        for name, command in staging.commands.items():
            if name in self.commands:
                log.warning("a plugin command %r is ignored: the name is taken", name)
            else:
                commands[name] = command
        meta["omnichannel.plugin_commands"] = commands
        return commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugin_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugin_commands(ctx).get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OmniChannelError as exc:
            raise click.ClickException(str(exc)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            log.debug("unexpected error", exc_info=True)
            raise click.ClickException(f"unexpected error: {exc!r} (run with -vv for details)") from None


@click.group(cls=PluginGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML configuration file (default: $OMNICHANNEL_CONFIG or ./omnichannel.toml).",
)
@click.option(
    "--disable-plugin",
    multiple=True,
    metavar="NAME",
    help="Do not load this plugin (repeatable).",
)
@click.option("-v", "--verbose", count=True, help="More logging: -v info, -vv debug.")
@click.version_option(package_name="omnichannel")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, disable_plugin: tuple[str, ...], verbose: int) -> None:
    """Send messages over many channels and know what happened to them."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = CliState(config_path, disable_plugin)


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--all", "show_all", is_flag=True, help="Include the core's built-in hooks.")
@click.option("--hook", "hook_filter", metavar="NAME", help="Only plugins implementing this hook.")
@click.pass_obj
def plugins_command(state: CliState, as_json: bool, show_all: bool, hook_filter: str | None) -> None:
    """List the installed plugins, their versions, channels and hooks."""
    infos = state.service().plugins()
    infos = [i for i in infos if show_all or not i.builtin]
    if hook_filter:
        infos = [i for i in infos if hook_filter in i.hooks]
    if as_json:
        click.echo(json.dumps([attrs.asdict(i) for i in infos], indent=2))
        return
    rows = [("NAME", "VERSION", "CHANNELS", "HOOKS")]
    for info in infos:
        hooks = f"failed to load: {info.error}" if info.error else ", ".join(info.hooks)
        rows.append((info.name, info.version or "-", ", ".join(info.channels) or "-", hooks))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3])


@cli.group("config")
def config_group() -> None:
    """Check or show the effective configuration."""


@config_group.command("check")
@click.pass_obj
def config_check(state: CliState) -> None:
    """Validate the configuration and every plugin's section; exit 1 on problems."""
    service = state.service()
    click.echo(
        f"configuration is valid: {sum(not p.builtin for p in service.plugins())} plugins, "
        f"channels: {', '.join(sorted(service.channels)) or 'none'}"
    )


@config_group.command("show")
@click.pass_obj
def config_show(state: CliState) -> None:
    """Print the effective configuration as JSON, secrets redacted."""
    click.echo(json.dumps(state.service().describe_config(), indent=2, sort_keys=True))


def _content(
    text: str | None,
    template: str | None,
    language: str,
    params: tuple[str, ...],
    named: tuple[str, ...],
) -> Content:
    if (text is None) == (template is None):
        raise click.UsageError("give exactly one of --text or --template")
    if text is not None:
        if params or named:
            raise click.UsageError("--param and --named-param go with --template")
        return Text(text)
    if params and named:
        raise click.UsageError("use --param (positional) or --named-param (NAME=VALUE), not both")
    body: list[TextParam] = [TextParam(p) for p in params]
    for item in named:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--named-param must be NAME=VALUE, got {item!r}")
        body.append(TextParam(value, name=key))
    assert template is not None
    return Template(template, language=language, body=body)


@cli.command("send")
@click.option("--to", "recipient", required=True, help="The recipient's address (e.g. +15551234567).")
@click.option("--channel", help="Channel to send on (default: the configured default_route).")
@click.option("--text", help="Send this text.")
@click.option("--template", help="Send this template.")
@click.option("--language", default="en_US", show_default=True, help="The template's language.")
@click.option("--param", "params", multiple=True, help="A positional template parameter (repeatable).")
@click.option(
    "--named-param",
    "named",
    multiple=True,
    metavar="NAME=VALUE",
    help="A named template parameter.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
@click.pass_obj
def send_command(
    state: CliState,
    recipient: str,
    channel: str | None,
    text: str | None,
    template: str | None,
    language: str,
    params: tuple[str, ...],
    named: tuple[str, ...],
    as_json: bool,
) -> None:
    """Send one message and print its receipt."""
    content = _content(text, template, language, params, named)
    service = state.service()
    message = Message(recipient, content, channel=channel)

    async def run() -> Any:
        async with service:
            return await service.send(message)

    receipt = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(service.converter.unstructure(receipt), indent=2))
    else:
        click.echo(
            f"{receipt.status} on {receipt.channel}: message {receipt.message_id}, "
            f"provider id {receipt.provider_message_id or '-'}, "
            f"{receipt.attempts} attempt{'s' if receipt.attempts != 1 else ''}"
        )


@cli.command("serve")
@click.option("--host", help="Interface to listen on (default: server.host).")
@click.option("--port", type=int, help="Port to listen on (default: server.port).")
@click.pass_obj
def serve_command(state: CliState, host: str | None, port: int | None) -> None:
    """Run the web service: health checks and the plugins' webhook routes."""
    from .server import run

    run(state.service(), host=host, port=port)


@cli.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (what GET /health answers).")
@click.pass_obj
def health_command(state: CliState, as_json: bool) -> None:
    """Start the service, print every plugin's health section, stop; exit 1 when one is degraded.

    What this process sees: shared state (Redis breakers, the broker's queues) is everyone's;
    in-memory breakers are only this process's (ask ``GET /health`` of a running server).
    """
    from .health import health_report

    service = state.service()

    async def run() -> dict[str, Any]:
        async with service:
            return await health_report(service)

    report = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for name, section in report["plugins"].items():
            mark = "degraded" if name in report["degraded"] else "ok"
            click.echo(f"{name}: {mark}")
            for key, value in section.items():
                click.echo(f"  {key}: {json.dumps(value)}")
        if not report["plugins"]:
            click.echo("no plugin reports its health")
    if report["degraded"]:
        raise SystemExit(1)


cli.add_command(campaign_group)
cli.add_command(worker_command)
cli.add_command(dlq_group)
cli.add_command(sender_group)


def service_from_context(ctx: click.Context | None = None) -> OmniChannelService:
    """A new (not started) service built from the global options (``--config``,
    ``--disable-plugin``); for the commands that plugins add.

    :raises OmniChannelError: for a bad configuration; the CLI shows it and exits 1.
    """
    ctx = ctx or click.get_current_context()
    state = ctx.find_object(CliState)
    if state is None:
        state = CliState(None, ())
    return state.service()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="omnichannel")
