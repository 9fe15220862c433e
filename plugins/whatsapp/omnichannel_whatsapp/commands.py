"""``omnichannel whatsapp ...``: templates and a configuration check, for operators."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import click

from omnichannel import OmniChannelError, service_from_context

from .templates import TemplateInfo

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

    from . import Runtime

T = TypeVar("T")


def _run(work: Callable[[OmniChannelService, Runtime], Awaitable[T]]) -> T:
    """Start a service from the global options, give ``work`` the plugin's runtime, stop it."""
    from . import runtime

    service = service_from_context()

    async def main() -> T:
        async with service:
            return await work(service, runtime(service))

    return asyncio.run(main())


def _registry(state: Runtime) -> Any:
    if state.registry is None:
        raise click.ClickException("set plugins.whatsapp.waba_id to list the account's templates")
    return state.registry


def _row(info: TemplateInfo) -> dict[str, Any]:
    return attrs.asdict(info, recurse=True)


@click.group("whatsapp")
def whatsapp() -> None:
    """The WhatsApp Cloud API channel."""


from .sandbox.cli import sandbox_command  # noqa: E402 - registered under the group above

whatsapp.add_command(sandbox_command)


@whatsapp.group("templates")
def templates() -> None:
    """The account's message templates."""


@templates.command("list")
@click.option("--refresh", is_flag=True, help="Fetch from the API instead of the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_templates(refresh: bool, as_json: bool) -> None:
    """List every template: name, language, status, category."""

    async def work(service: OmniChannelService, state: Runtime) -> list[TemplateInfo]:
        found: list[TemplateInfo] = await _registry(state).templates(refresh=refresh)
        return found

    infos = sorted(_run(work), key=lambda i: (i.name, i.language))
    if as_json:
        click.echo(json.dumps([_row(i) for i in infos], indent=2))
        return
    rows = [("NAME", "LANGUAGE", "STATUS", "CATEGORY")]
    rows += [(i.name, i.language, i.status, i.category or "-") for i in infos]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


@templates.command("sync")
def sync_templates() -> None:
    """Fetch every template now and store it in the cache (shared through Redis when configured)."""

    async def work(service: OmniChannelService, state: Runtime) -> int:
        return len(await _registry(state).fetch_all())

    click.echo(f"{_run(work)} templates fetched")


@templates.command("show")
@click.argument("name")
@click.option("--language", help="Only this language.")
def show_template(name: str, language: str | None) -> None:
    """Print a template's details as JSON (every language unless --language)."""

    async def work(service: OmniChannelService, state: Runtime) -> list[TemplateInfo]:
        found: list[TemplateInfo] = await _registry(state).templates()
        return found

    matches = [i for i in _run(work) if i.name == name and language in (None, i.language)]
    if not matches:
        raise click.ClickException(f"no template {name!r}" + (f" in {language}" if language else ""))
    click.echo(json.dumps([_row(i) for i in matches], indent=2))


@whatsapp.command("check")
def check() -> None:
    """Check the configuration, and that the token reaches the API for the phone number."""

    async def work(service: OmniChannelService, state: Runtime) -> dict[str, Any]:
        missing = state.config.missing_for_sending()
        if missing:
            raise click.ClickException(f"whatsapp is not configured: set {', '.join(missing)}")
        assert state.client is not None
        number: dict[str, Any] = await state.client.get_json(
            f"{state.config.phone_number_id}",
            {"fields": "display_phone_number,verified_name,quality_rating"},
        )
        return number

    try:
        number = _run(work)
    except OmniChannelError as exc:
        raise click.ClickException(f"the API refused: {exc}") from None
    click.echo(
        f"ok: {number.get('verified_name', '?')} ({number.get('display_phone_number', '?')}), "
        f"quality {number.get('quality_rating', 'unknown')}"
    )
