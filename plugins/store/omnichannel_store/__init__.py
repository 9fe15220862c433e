"""The message store plugin: every send and every status webhook, kept in a database.

It listens to the events of the send pipeline and of the channels' webhooks and writes them to a
:class:`omnichannel.store.MessageStore` (SQLite by default, PostgreSQL in production):

* ``MessageSent`` → ``record_send`` with status ``accepted`` (``queued`` when the channel only
  queued it), the provider's id, the recipient, and the template's name and language;
* ``DeliveryFailed`` → ``record_send`` with status ``failed`` and the error's kind, code and detail;
* ``StatusChanged`` → ``record_status``; the store keeps a status that outran the send's record
  and applies it when the send is recorded.

``startup`` opens the store (and applies the schema migrations when ``upgrade_on_start``);
``shutdown`` closes it. A store that fails never fails a send: the error is raised from the
listener as a :class:`StoreWriteError` naming the message and the store (password masked), and the
service logs it once and emits ``ListenerFailed``.

The store is opened by a factory, ``omnichannel.store.factory.open_message_store`` unless one is
given: ``StorePlugin(store_factory=lambda url, clock: FakeStore())`` in tests.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeAlias

from omnichannel import (
    Clock,
    DeliveryFailed,
    DeliveryStatus,
    Event,
    MessageSent,
    StatusChanged,
    Template,
    hookimpl,
)

from .config import DEFAULT_URL, StoreConfig, display_url

if TYPE_CHECKING:
    import click

    from omnichannel import ErrorInfo, Message, OmniChannelService
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
]

log = logging.getLogger(__name__)

PLUGIN_NAME = "store"

StoreFactory: TypeAlias = Callable[[str, Clock], "MessageStore | Awaitable[MessageStore]"]
"""Opens the store at a URL: ``(url, clock) -> MessageStore`` (or an awaitable of one)."""


class StoreWriteError(RuntimeError):
    """The store could not record an event; the send it describes is not affected."""


def _open_configured_store(url: str, clock: Clock) -> MessageStore | Awaitable[MessageStore]:
    # Imported here: the backends (and their drivers) load only when a store is opened.
    from omnichannel.store.factory import open_message_store  # type: ignore[import-not-found, unused-ignore]

    store: MessageStore | Awaitable[MessageStore] = open_message_store(url, clock=clock)
    return store


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
        if config.retention_days is not None:
            before = service.clock.now() - timedelta(days=config.retention_days)
            forgotten = await store.forget_details(before)
            log.info(
                "message store: dropped the details of %d messages older than %g days",
                forgotten,
                config.retention_days,
            )
        service.state[PLUGIN_NAME] = store

    @hookimpl
    async def shutdown(self, service: OmniChannelService) -> None:
        store: MessageStore | None = service.state.pop(PLUGIN_NAME, None)
        if store is not None:
            await store.close()

    @hookimpl
    async def on_event(self, event: Event, service: OmniChannelService) -> None:
        if not isinstance(event, MessageSent | DeliveryFailed | StatusChanged):
            return
        store = message_store(service)
        if store is None:  # not started: nothing to write to
            return
        try:
            await record(store, event)
        except Exception as exc:
            url = display_url(service.plugin_config(StoreConfig).url)
            raise StoreWriteError(
                f"could not record {_describe(event)} in the message store {url}: {exc}"
            ) from exc

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from .commands import db_group, stats_command

        cli.add_command(db_group(self))
        cli.add_command(stats_command(self))


async def record(store: MessageStore, event: MessageSent | DeliveryFailed | StatusChanged) -> None:
    """Write what ``event`` says to ``store``."""
    if isinstance(event, StatusChanged):
        await store.record_status(
            channel=event.channel,
            provider_message_id=event.provider_message_id,
            status=event.status,
            at=event.occurred_at,
            message_id=event.message_id,
            error_code=_code(event.error),
            error_detail=event.error.detail if event.error else None,
        )
        return
    receipt = event.receipt
    template, language = _template(event.message)
    if isinstance(event, MessageSent):
        queued = receipt.status is DeliveryStatus.QUEUED
        await store.record_send(
            message_id=receipt.message_id,
            channel=receipt.channel,
            status=DeliveryStatus.QUEUED if queued else DeliveryStatus.ACCEPTED,
            at=event.occurred_at,
            recipient=event.message.recipient,
            provider_message_id=receipt.provider_message_id,
            template=template,
            language=language,
        )
        return
    if not receipt.channel:  # failed before any channel was chosen: there is nothing to track
        return
    await store.record_send(
        message_id=receipt.message_id,
        channel=receipt.channel,
        status=DeliveryStatus.FAILED,
        at=event.occurred_at,
        recipient=event.message.recipient,
        provider_message_id=receipt.provider_message_id,
        template=template,
        language=language,
        error_kind=receipt.error.kind if receipt.error else None,
        error_code=_code(receipt.error),
        error_detail=receipt.error.detail if receipt.error else None,
    )


def _template(message: Message) -> tuple[str | None, str | None]:
    content = message.content
    return (content.name, content.language) if isinstance(content, Template) else (None, None)


def _code(error: ErrorInfo | None) -> str | None:
    return None if error is None or error.code is None else str(error.code)


def _describe(event: MessageSent | DeliveryFailed | StatusChanged) -> str:
    if isinstance(event, StatusChanged):
        return f"status {event.status.value} of {event.channel} message {event.provider_message_id}"
    kind = "send" if isinstance(event, MessageSent) else "failure"
    return f"the {kind} of message {event.receipt.message_id} ({event.receipt.channel or 'no channel'})"


plugin = StorePlugin()
