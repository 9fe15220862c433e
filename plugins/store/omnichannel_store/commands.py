"""``omnichannel db ...``: the message store's schema migrations and status.

Both commands open the store of ``[plugins.store] url`` with the plugin's factory, outside any
running service; the URL is printed with its password masked, in output and in errors alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from omnichannel import service_from_context

from .config import StoreConfig, display_url

if TYPE_CHECKING:
    from omnichannel.store import MessageStore

    from . import StorePlugin

__all__ = ["db_group", "stats_command"]

T = TypeVar("T")


def _run(plugin: StorePlugin, work: Callable[[MessageStore], Awaitable[T]]) -> tuple[str, T]:
    service = service_from_context()
    config = service.plugin_config(StoreConfig)
    url = display_url(config.url)

    async def main() -> T:
        store = await plugin.open_store(config.url, service.clock)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return url, asyncio.run(main())
    except click.ClickException:
        raise
    except Exception as exc:
        raise click.ClickException(f"message store {url}: {type(exc).__name__}: {exc}") from exc


def db_group(plugin: StorePlugin) -> click.Group:
    """The ``db`` command group, opening stores with ``plugin``'s factory."""

    @click.group("db")
    def db() -> None:
        """The message store: schema migrations and status."""

    @db.command("upgrade")
    def upgrade() -> None:
        """Apply the schema migrations not applied yet and print the schema version."""

        async def work(store: MessageStore) -> int:
            return await store.upgrade()

        url, version = _run(plugin, work)
        click.echo(f"message store {url} is at schema version {version}")

    @db.command("status")
    def status() -> None:
        """Print the message store's URL (password masked) and its schema version, without
        upgrading; exit status 1 when migrations are pending."""
        from omnichannel.store.migrations import LATEST_VERSION

        async def work(store: MessageStore) -> int:
            return await store.schema_version()

        url, version = _run(plugin, work)
        click.echo(f"url: {url}")
        click.echo(f"schema version: {version} (this release: {LATEST_VERSION})")
        if version < LATEST_VERSION:
            pending = LATEST_VERSION - version
            click.echo(f"{pending} migration(s) pending: run `omnichannel db upgrade`")
            raise SystemExit(1)
        if version > LATEST_VERSION:
            click.echo("the database is newer than this release: upgrade omnichannel")

    return db


def stats_command(plugin: StorePlugin) -> click.Command:
    """The ``stats`` command (``omnichannel stats``), registered next to the ``db`` group."""
    from .stats_cli import stats_command as build

    return build(plugin)
