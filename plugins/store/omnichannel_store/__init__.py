"""The message store plugin: every send and every status webhook, kept in a database.

It listens to the events of the send pipeline and of the channels' webhooks and writes them to a
:class:`omnichannel.store.MessageStore` (SQLite by default, PostgreSQL in production):

* ``MessageSent`` → ``record_send`` with status ``accepted`` (``queued`` when the channel only
  queued it), the provider's id, the recipient, and the template's name and language;
* ``DeliveryFailed`` → ``record_send`` with status ``failed`` and the error's kind, code and detail;
* ``StatusChanged`` → ``record_status``; the store keeps a status that outran the send's record
  and applies it when the send is recorded.

Events are written with group commit (``writer.GroupWriter``): each listener call returns once
its event is in the store, and the events that arrive meanwhile share the next write (statuses
in one ``record_statuses`` transaction). ``register_routes`` adds ``GET /stats`` and
``GET /messages/{message_id}`` to ``omnichannel serve`` (``routes``).

``startup`` opens the store (and applies the schema migrations when ``upgrade_on_start``);
``shutdown`` closes it. ``health`` reports the store and its schema version (degraded when
migrations are pending; an error when the store cannot answer). A store that fails never fails a
send: the error is raised from the listener as a :class:`StoreWriteError` naming the message and
the store (password masked), and the service logs it once and emits ``ListenerFailed``.

The store is opened by a factory, ``omnichannel.store.factory.open_message_store`` unless one is
given: ``StorePlugin(store_factory=lambda url, clock: FakeStore())`` in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeAlias

from omnichannel import Clock, DeliveryFailed, Event, MessageSent, Route, StatusChanged, StoreError, hookimpl

from .config import DEFAULT_URL, StoreConfig, display_url
from .writer import GroupWriter, Recorded, record

if TYPE_CHECKING:
    import click

    from omnichannel import OmniChannelService
    from omnichannel.store import MessageStore

__all__ = [
    "DEFAULT_URL",
    "StoreConfig",
    "StoreFactory",
    "StorePlugin",
    "StoreWriteError",
    "display_url",
    "message_store",
    "plugin",
    "record",
]

log = logging.getLogger(__name__)

PLUGIN_NAME = "store"
WRITER_STATE = "store.writer"
RETENTION_STATE = "store.retention"

StoreFactory: TypeAlias = Callable[[str, Clock], "MessageStore | Awaitable[MessageStore]"]
"""Opens the store at a URL: ``(url, clock) -> MessageStore`` (or an awaitable of one)."""


class StoreWriteError(RuntimeError):
    """The store could not record an event; the send it describes is not affected."""


def _open_configured_store(url: str, clock: Clock) -> MessageStore | Awaitable[MessageStore]:
    # Imported here: the backends (and their drivers) load only when a store is opened.
    from omnichannel.store.factory import open_message_store  # type: ignore[import-not-found, unused-ignore]

    store: MessageStore | Awaitable[MessageStore] = open_message_store(url, clock=clock)
    return store


async def _require_current_schema(store: MessageStore, config: StoreConfig) -> None:
    """Without ``upgrade_on_start`` the schema must be current already (``omnichannel db upgrade``
    ran in the deployment); otherwise the store is closed and the start refused."""
    from omnichannel.store.migrations import LATEST_VERSION  # type: ignore[import-not-found, unused-ignore]

    try:
        version = await store.schema_version()
    except BaseException:
        await store.close()
        raise
    if version < LATEST_VERSION:
        await store.close()
        raise StoreError(
            f"the message store {display_url(config.url)} is at schema version {version} and this "
            f"release needs {LATEST_VERSION}: run 'omnichannel db upgrade' first "
            "(or set [plugins.store] upgrade_on_start = true)"
        )


def message_store(service: OmniChannelService) -> MessageStore | None:
    """The service's open store, or ``None`` before ``startup`` (or when the plugin is off)."""
    store: MessageStore | None = service.state.get(PLUGIN_NAME)
    return store


class StorePlugin:
    """The plugin object; ``omnichannel_store:plugin`` is the installed instance.

    :param store_factory: opens the store; defaults to ``open_message_store``.
    """

    def __init__(self, store_factory: StoreFactory | None = None) -> None:
        self.store_factory: StoreFactory = store_factory or _open_configured_store

    async def open_store(self, url: str, clock: Clock) -> MessageStore:
        """Open the store at ``url`` with this plugin's factory (not upgraded)."""
        opened = self.store_factory(url, clock)
        if inspect.isawaitable(opened):
            return await opened
        return opened

    @hookimpl
    def register_config(self) -> type:
        return StoreConfig

    @hookimpl
    async def startup(self, service: OmniChannelService) -> None:
        config = service.plugin_config(StoreConfig)
        store = await self.open_store(config.url, service.clock)
        if config.upgrade_on_start:
            try:
                version = await store.upgrade()
            except BaseException:
                await store.close()
                raise
            log.info("message store %s at schema version %d", display_url(config.url), version)
        else:
            await _require_current_schema(store, config)
        if config.retention_days is not None:
            try:
                await _apply_retention(store, service, config.retention_days)
            except BaseException:
                await store.close()
                raise
            service.state[RETENTION_STATE] = asyncio.create_task(
                _retention_loop(store, service, config), name="omnichannel-store-retention"
            )
        service.state[PLUGIN_NAME] = store
        service.state[WRITER_STATE] = GroupWriter(store, max_batch=config.max_batch)

    @hookimpl
    async def shutdown(self, service: OmniChannelService) -> None:
        retention: asyncio.Task[None] | None = service.state.pop(RETENTION_STATE, None)
        if retention is not None:
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
        writer: GroupWriter | None = service.state.pop(WRITER_STATE, None)
        if writer is not None:
            await writer.drain()
        store: MessageStore | None = service.state.pop(PLUGIN_NAME, None)
        if store is not None:
            await store.close()

    @hookimpl
    async def on_event(self, event: Event, service: OmniChannelService) -> None:
        if not isinstance(event, MessageSent | DeliveryFailed | StatusChanged):
            return
        writer: GroupWriter | None = service.state.get(WRITER_STATE)
        if writer is None:  # not started: nothing to write to
            return
        try:
            await writer.write(event)
        except Exception as exc:
            url = display_url(service.plugin_config(StoreConfig).url)
            raise StoreWriteError(
                f"could not record {_describe(event)} in the message store {url}: {exc}"
            ) from exc

    @hookimpl
    async def health(self, service: OmniChannelService) -> dict[str, object] | None:
        store = message_store(service)
        if store is None:
            return None
        from omnichannel.store.migrations import LATEST_VERSION  # type: ignore[import-not-found, unused-ignore]

        version = await store.schema_version()  # a query: a store that cannot answer is an error
        return {
            "store": display_url(service.plugin_config(StoreConfig).url),
            "schema_version": version,
            "latest_version": LATEST_VERSION,
            "degraded": version < LATEST_VERSION,
        }

    @hookimpl
    def register_routes(self, service: OmniChannelService) -> list[Route]:
        from .routes import store_routes

        return store_routes(service, lambda: message_store(service))

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from .commands import db_group, stats_command

        cli.add_command(db_group(self))
        cli.add_command(stats_command(self))


async def _apply_retention(store: MessageStore, service: OmniChannelService, days: float) -> None:
    before = service.clock.now() - timedelta(days=days)
    forgotten = await store.forget_details(before)
    log.info("message store: dropped the details of %d messages older than %g days", forgotten, days)


async def _retention_loop(store: MessageStore, service: OmniChannelService, config: StoreConfig) -> None:
    """Apply the retention every ``retention_interval_s`` while the service runs."""
    assert config.retention_days is not None
    while True:
        await service.clock.sleep(config.retention_interval_s)
        try:
            await _apply_retention(store, service, config.retention_days)
        except Exception:  # the next round tries again; sends are not affected
            log.exception("message store %s: retention failed", display_url(config.url))


def _describe(event: Recorded) -> str:
    if isinstance(event, StatusChanged):
        return f"status {event.status.value} of {event.channel} message {event.provider_message_id}"
    kind = "send" if isinstance(event, MessageSent) else "failure"
    return f"the {kind} of message {event.receipt.message_id} ({event.receipt.channel or 'no channel'})"


plugin = StorePlugin()
