"""``omnichannel whatsapp sandbox``: run the WhatsApp Cloud API sandbox until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import attrs
import click

from .app import Sandbox
from .faults import Fault
from .state import SandboxSettings

__all__ = ["sandbox_command"]

_DEFAULTS = SandboxSettings()


def _toml(value: str) -> str:
    return json.dumps(value)  # a TOML basic string, for the ASCII values printed here


def plugin_snippet(sandbox: Sandbox) -> str:
    """The ``[plugins.whatsapp]`` TOML that points the plugin at ``sandbox``."""
    lines = ["[plugins.whatsapp]"]
    for key, value in sandbox.plugin_settings().items():
        lines.append(f"{key} = {_toml(str(value))}")
    return "\n".join(lines)


async def _serve(sandbox: Sandbox) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with sandbox:
            settings = sandbox.settings
            click.echo(f"WhatsApp Cloud API sandbox on {sandbox.url}")
            click.echo(f"  status webhooks: {settings.webhook_url or 'none (set --webhook-url)'}")
            click.echo(f"  control API:     {sandbox.url}/_sandbox/stats (messages, webhooks, faults, reset)")
            click.echo("")
            click.echo("Point the WhatsApp plugin at it:")
            click.echo("")
            click.echo(plugin_snippet(sandbox))
            click.echo("")
            click.echo("Stop with Ctrl-C.")
            await stop.wait()
            click.echo("stopping the sandbox")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", default=8081, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@click.option("--seed-file", type=click.Path(exists=True, dir_okay=False), help="Templates (JSON or TOML).")
@click.option("--webhook-url", help="Where status webhooks go, e.g. http://127.0.0.1:8080/webhooks/whatsapp.")
@click.option("--app-secret", default=_DEFAULTS.app_secret, show_default=True, help="Signs webhooks.")
@click.option("--access-token", default=_DEFAULTS.access_token, show_default=True, help="Bearer token.")
@click.option(
    "--throughput",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.throughput_mps,
    show_default=True,
    help="Messages per second per phone number (beyond: 130429).",
)
@click.option("--latency-ms", type=click.FloatRange(min=0), default=0.0, help="Added to every Graph request.")
@click.option(
    "--error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Share of Graph requests answered 503 / code 2 (those get no added latency).",
)
@click.option("--seed", type=int, default=_DEFAULTS.seed, show_default=True, help="Seeds every choice.")
def sandbox_command(
    host: str,
    port: int,
    seed_file: str | None,
    webhook_url: str | None,
    app_secret: str,
    access_token: str,
    throughput: float,
    latency_ms: float,
    error_rate: float,
    seed: int,
) -> None:
    """Run a local WhatsApp Cloud API sandbox until interrupted (SIGINT/SIGTERM).

    It answers the Graph API like Meta (sends, templates, errors, rate limits)
    and sends signed status webhooks to --webhook-url.
    """
    settings = attrs.evolve(
        SandboxSettings(),
        host=host,
        port=port,
        templates_file=seed_file,
        webhook_url=webhook_url,
        app_secret=app_secret,
        access_token=access_token,
        throughput_mps=throughput,
        seed=seed,
    )
    try:
        sandbox = Sandbox(settings, access_log=True)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if error_rate > 0:
        sandbox.faults.add(Fault("error", http_status=503, code=2, probability=error_rate))
    if latency_ms > 0:
        sandbox.faults.add(Fault("latency", latency_s=latency_ms / 1000))
    try:
        asyncio.run(_serve(sandbox))
    except OSError as exc:  # the port is taken, the host is unknown ...
        raise click.ClickException(f"the sandbox cannot listen on {host}:{port}: {exc}") from None
    except KeyboardInterrupt:  # where signal handlers cannot be installed
        pass
