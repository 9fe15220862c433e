"""The message-store plugin against an in-memory ``MessageStore``: events in, records out.

``FakeStore`` follows the protocol's rules closely enough for the plugin's tests: status only
moves forward (by a simple rank, ``failed`` final unless a delivery follows), and a status for an
unknown provider id waits until the send is recorded. The real backends are tested elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import click
import pytest
from click.testing import CliRunner

import omnichannel_store
import omnichannel_store.commands
from omnichannel import (
    ConfigError,
    DeliveryStatus,
    ErrorInfo,
    ListenerFailed,
    Message,
    PermanentDeliveryError,
    PluginError,
    PluginSettings,
    ServiceConfig,
    StatusChanged,
    Template,
    Text,
)
from omnichannel.config import load_config
from omnichannel.store import MessageRecord, StatusEntry
from omnichannel.store.migrations import LATEST_VERSION
from omnichannel.testing import EventRecorder, FakeClock, RecordingChannel, make_service
from omnichannel_store import StoreConfig, StorePlugin, StoreWriteError, display_url, message_store

ORDER = {
    DeliveryStatus.QUEUED: 0,
    DeliveryStatus.ACCEPTED: 1,
    DeliveryStatus.SENT: 2,
    DeliveryStatus.FAILED: 3,
    DeliveryStatus.DELIVERED: 4,
    DeliveryStatus.READ: 5,
}


class FakeStore:
    """An in-memory ``MessageStore``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.records: dict[str, MessageRecord] = {}
        self.entries: dict[str, list[StatusEntry]] = {}
        self.pending: dict[tuple[str, str], list[tuple[StatusEntry, str | None]]] = {}
        self.upgrades = 0
        self.forgotten_before: list[datetime] = []
        self.closed = False
        self.fail = fail

    async def upgrade(self) -> int:
        self.upgrades += 1
        return LATEST_VERSION

    async def schema_version(self) -> int:
        return LATEST_VERSION if self.upgrades else 0

    async def record_send(
        self, *, message_id: str, channel: str, status: DeliveryStatus, at: datetime, **fields: Any
    ) -> None:
        if self.fail:
            raise ConnectionError("database is down")
        self.records[message_id] = MessageRecord(message_id, channel, status, at, at, **fields)
        self.entries[message_id] = [
            StatusEntry(status, at, fields.get("error_code"), fields.get("error_detail"))
        ]
        provider_id = fields.get("provider_message_id")
        for entry, _ in self.pending.pop((channel, provider_id), []) if provider_id else []:
            self._apply(message_id, entry)

    async def record_status(
        self,
        *,
        channel: str,
        provider_message_id: str,
        status: DeliveryStatus,
        at: datetime,
        message_id: str | None = None,
        error_code: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        entry = StatusEntry(status, at, error_code, error_detail)
        found = (
            message_id
            if message_id in self.records
            else next(
                (
                    r.message_id
                    for r in self.records.values()
                    if (r.channel, r.provider_message_id) == (channel, provider_message_id)
                ),
                None,
            )
        )
        if found is None:
            self.pending.setdefault((channel, provider_message_id), []).append((entry, message_id))
        else:
            self._apply(found, entry)

    def _apply(self, message_id: str, entry: StatusEntry) -> None:
        record = self.records[message_id]
        self.entries[message_id].append(entry)
        if ORDER[entry.status] > ORDER[record.status]:
            changes: dict[str, Any] = {"status": entry.status, "updated_at": entry.occurred_at}
            if entry.status is DeliveryStatus.FAILED:
                changes |= {"error_code": entry.error_code, "error_detail": entry.error_detail}
            self.records[message_id] = attrs.evolve(record, **changes)

    async def get(self, message_id: str) -> MessageRecord | None:
        return self.records.get(message_id)

    async def history(self, message_id: str) -> list[StatusEntry]:
        return list(self.entries.get(message_id, []))

    async def forget_details(self, before: datetime) -> int:
        self.forgotten_before.append(before)
        return 0

    async def close(self) -> None:
        self.closed = True


class Factory:
    """A store factory that remembers what it opened."""

    def __init__(self, store: FakeStore | None = None) -> None:
        self.store = store or FakeStore()
        self.urls: list[str] = []

    def __call__(self, url: str, clock: object) -> FakeStore:
        self.urls.append(url)
        return self.store


def config(enabled: bool = True, **settings: Any) -> ServiceConfig:
    return ServiceConfig(plugins={"store": PluginSettings(enabled=enabled, settings=settings)})


@pytest.fixture
def factory() -> Factory:
    return Factory()


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


def status(provider_id: str, value: DeliveryStatus, clock: FakeClock, **fields: Any) -> StatusChanged:
    return StatusChanged("recording", provider_id, value, occurred_at=clock.now(), **fields)


# ---------------------------------------------------------------- events -> records


async def test_message_sent_is_recorded_as_accepted(factory: Factory, channel: RecordingChannel) -> None:
    clock = FakeClock()
    async with make_service(channel, ("store", StorePlugin(factory)), clock=clock) as service:
        message = Message(
            "+15550001", Template("order_ready", language="fr", body=["42"]), channel="recording"
        )
        await service.send(message)
    record = factory.store.records[message.id]
    assert record == MessageRecord(
        message.id,
        "recording",
        DeliveryStatus.ACCEPTED,
        clock.now(),
        clock.now(),
        recipient="+15550001",
        provider_message_id="rec-1",
        template="order_ready",
        language="fr",
    )


async def test_text_message_has_no_template(factory: Factory, channel: RecordingChannel) -> None:
    async with make_service(channel, ("store", StorePlugin(factory))) as service:
        receipt = await service.send(Message("+15550001", Text("hi"), channel="recording"))
    record = factory.store.records[receipt.message_id]
    assert (record.template, record.language, record.provider_message_id) == (None, None, "rec-1")


async def test_delivery_failed_is_recorded_with_its_error(
    factory: Factory, channel: RecordingChannel
) -> None:
    channel.fail_next(1, PermanentDeliveryError("bad recipient", code=131026))
    message = Message("+15550002", Text("hi"), channel="recording")
    async with make_service(channel, ("store", StorePlugin(factory))) as service:
        with pytest.raises(PermanentDeliveryError):
            await service.send(message)
    record = factory.store.records[message.id]
    assert record.status is DeliveryStatus.FAILED
    assert (record.error_kind, record.error_code, record.error_detail) == (
        "PermanentDeliveryError",
        "131026",
        "bad recipient",
    )
    assert record.recipient == "+15550002"


async def test_status_changes_are_recorded(factory: Factory, channel: RecordingChannel) -> None:
    clock = FakeClock()
    async with make_service(channel, ("store", StorePlugin(factory)), clock=clock) as service:
        receipt = await service.send(Message("+15550001", Text("hi"), channel="recording"))
        clock.advance(5)
        await service.emit(status("rec-1", DeliveryStatus.DELIVERED, clock))
        clock.advance(5)
        error = ErrorInfo("ProviderError", "expired", code=131047)
        await service.emit(
            status("rec-1", DeliveryStatus.FAILED, clock, message_id=receipt.message_id, error=error)
        )
    history = factory.store.entries[receipt.message_id]
    assert [e.status for e in history] == [
        DeliveryStatus.ACCEPTED,
        DeliveryStatus.DELIVERED,
        DeliveryStatus.FAILED,
    ]
    assert history[2] == StatusEntry(DeliveryStatus.FAILED, clock.now(), "131047", "expired")
    assert factory.store.records[receipt.message_id].status is DeliveryStatus.DELIVERED


async def test_status_before_the_send_is_kept_and_applied(
    factory: Factory, channel: RecordingChannel
) -> None:
    clock = FakeClock()
    async with make_service(channel, ("store", StorePlugin(factory)), clock=clock) as service:
        await service.emit(status("rec-1", DeliveryStatus.READ, clock))  # the webhook outran the send
        assert factory.store.pending
        receipt = await service.send(Message("+15550001", Text("hi"), channel="recording"))
    assert not factory.store.pending
    assert factory.store.records[receipt.message_id].status is DeliveryStatus.READ


async def test_other_events_are_ignored(factory: Factory, channel: RecordingChannel) -> None:
    async with make_service(channel, ("store", StorePlugin(factory))) as service:
        await service.emit(ListenerFailed("MessageSent", "x", ErrorInfo("E", "d")))
    assert factory.store.records == {}
    assert factory.store.pending == {}


async def test_disabled_plugin_records_nothing(factory: Factory, channel: RecordingChannel) -> None:
    service = make_service(channel, ("store", StorePlugin(factory)), config=config(enabled=False))
    async with service:
        await service.send(Message("+15550001", Text("hi"), channel="recording"))
        await service.emit(status("rec-1", DeliveryStatus.DELIVERED, FakeClock()))
    assert factory.urls == []
    assert factory.store.records == {}
    assert factory.store.pending == {}


# ---------------------------------------------------------------- life cycle


async def test_startup_opens_and_upgrades_and_shutdown_closes(factory: Factory) -> None:
    service = make_service(("store", StorePlugin(factory)), config=config(url="sqlite:///x.sqlite3"))
    async with service:
        assert message_store(service) is factory.store
        assert factory.store.upgrades == 1
        assert not factory.store.closed
    assert factory.urls == ["sqlite:///x.sqlite3"]
    assert factory.store.closed
    assert message_store(service) is None


class GatedClock(FakeClock):
    """A fake clock whose ``sleep`` returns only when the test lets it (one permit per sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.permits: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.permits.get()
        await super().sleep(seconds)


async def test_retention_forgets_old_details_at_startup(factory: Factory) -> None:
    clock = GatedClock()
    async with make_service(("store", StorePlugin(factory)), config=config(retention_days=30), clock=clock):
        assert factory.store.forgotten_before == [clock.now() - timedelta(days=30)]
    async with make_service(("store", StorePlugin(factory)), config=config()):
        pass
    assert len(factory.store.forgotten_before) == 1  # no retention configured: nothing forgotten


async def test_retention_runs_again_every_interval_while_the_service_runs(factory: Factory) -> None:
    clock = GatedClock()
    forgot = asyncio.Event()
    forget = factory.store.forget_details

    async def forget_and_tell(before: datetime) -> int:
        forgot.set()
        return await forget(before)

    factory.store.forget_details = forget_and_tell  # type: ignore[method-assign]
    settings = config(retention_days=30, retention_interval_s=3600)
    async with make_service(("store", StorePlugin(factory)), config=settings, clock=clock):
        start = clock.now()
        forgot.clear()
        clock.permits.put_nowait(None)  # an hour passes
        await forgot.wait()
        assert clock.sleeps == [3600]
    assert factory.store.forgotten_before == [
        start - timedelta(days=30),
        start + timedelta(hours=1) - timedelta(days=30),
    ]


def test_retention_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.store\.retention_days: must be > 0 days, got 0"):
        make_service(("store", StorePlugin()), config=config(retention_days=0))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"retention_interval_s": 0}, r"plugins\.store\.retention_interval_s: must be > 0, got 0"),
        ({"max_batch": 0}, r"plugins\.store\.max_batch: must be > 0, got 0"),
        ({"max_batch": -5}, r"plugins\.store\.max_batch: must be > 0, got -5"),
    ],
)
def test_intervals_and_batches_must_be_positive(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_service(("store", StorePlugin()), config=config(**settings))


async def test_startup_without_upgrade_needs_a_current_schema(factory: Factory) -> None:
    service = make_service(("store", StorePlugin(factory)), config=config(upgrade_on_start=False))
    with pytest.raises(
        PluginError, match=r"at schema version 0 and this release needs \d+: run 'omnichannel db up"
    ):
        await service.start()
    assert (factory.store.upgrades, factory.store.closed) == (0, True)
    factory.store.upgrades = 1  # `omnichannel db upgrade` ran
    async with make_service(("store", StorePlugin(factory)), config=config(upgrade_on_start=False)):
        assert factory.store.upgrades == 1  # not upgraded again


async def test_async_factory_is_awaited() -> None:
    store = FakeStore()

    async def open_store(url: str, clock: object) -> FakeStore:
        return store

    async with make_service(("store", StorePlugin(open_store))) as service:
        assert message_store(service) is store


async def test_failing_store_does_not_fail_the_send(
    channel: RecordingChannel, caplog: pytest.LogCaptureFixture
) -> None:
    factory = Factory(FakeStore(fail=True))
    events = EventRecorder()
    url = "postgresql://app:s3cret@db.example/messages"
    async with make_service(
        channel, events, ("store", StorePlugin(factory)), config=config(url=url)
    ) as service:
        with caplog.at_level(logging.ERROR):
            receipt = await service.send(Message("+15550001", Text("hi"), channel="recording"))
    assert receipt.ok
    [failure] = events.of_type(ListenerFailed)
    assert (failure.plugin_name, failure.event_type, failure.error.kind) == (
        "store",
        "MessageSent",
        StoreWriteError.__name__,
    )
    assert "could not record the send of message" in failure.error.detail
    assert "database is down" in failure.error.detail
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "s3cret" not in caplog.text
    assert "s3cret" not in failure.error.detail


# ---------------------------------------------------------------- config


def test_url_password_never_shows() -> None:
    config = StoreConfig(url="postgresql://app:s3cret@db.example:5432/messages")
    assert "s3cret" not in repr(config)
    assert display_url(config.url) == "postgresql://app:**********@db.example:5432/messages"
    assert display_url("sqlite:///omnichannel-messages.sqlite3") == "sqlite:///omnichannel-messages.sqlite3"
    assert StoreConfig().url == "sqlite:///omnichannel-messages.sqlite3"


def test_config_show_redacts_the_url() -> None:
    service = make_service(("store", StorePlugin(Factory())), config=config(url="postgresql://a:s3cret@h/db"))
    assert "s3cret" not in str(service.describe_config())
    assert service.describe_config()["plugins"]["store"]["upgrade_on_start"] is True


def test_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must be a database URL"):
        make_service(("store", StorePlugin(Factory())), config=config(url=" "))


# ---------------------------------------------------------------- CLI


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated_env: None) -> Any:
    """Run ``omnichannel db ...`` of a plugin, its CLI service built from a config file that names a
    PostgreSQL URL with a password (the service has the plugin registered, as the entry point will)."""
    path = tmp_path / "omnichannel.toml"
    path.write_text('[plugins.store]\nurl = "postgresql://app:s3cret@db.example/messages"\n')

    def run(plugin: StorePlugin, *args: str) -> Any:
        def service_from_context() -> Any:
            return make_service(("store", plugin), config=load_config(path))

        monkeypatch.setattr(omnichannel_store.commands, "service_from_context", service_from_context)
        group = click.Group()
        plugin.register_commands(group)
        return CliRunner().invoke(group, ["db", *args])

    return run


def test_cli_db_upgrade(factory: Factory, invoke: Any) -> None:
    result = invoke(StorePlugin(factory), "upgrade")
    assert result.exit_code == 0, result.output
    url = "postgresql://app:**********@db.example/messages"
    assert result.output == f"message store {url} is at schema version {LATEST_VERSION}\n"
    assert factory.store.upgrades == 1
    assert factory.store.closed
    assert factory.urls == ["postgresql://app:s3cret@db.example/messages"]


def test_cli_db_status_of_a_store_behind_fails_and_says_what_to_run(factory: Factory, invoke: Any) -> None:
    result = invoke(StorePlugin(factory), "status")
    assert result.exit_code == 1, result.output
    assert result.output == (
        "url: postgresql://app:**********@db.example/messages\n"
        f"schema version: 0 (this release: {LATEST_VERSION})\n"
        f"{LATEST_VERSION} migration(s) pending: run `omnichannel db upgrade`\n"
    )
    assert factory.store.upgrades == 0  # status never upgrades
    assert factory.store.closed


def test_cli_db_status_of_an_up_to_date_store(factory: Factory, invoke: Any) -> None:
    factory.store.upgrades = 1
    result = invoke(StorePlugin(factory), "status")
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"schema version: {LATEST_VERSION} (this release: {LATEST_VERSION})\n")


def test_cli_error_hides_the_password(invoke: Any) -> None:
    def broken(url: str, clock: object) -> FakeStore:
        raise OSError("connection refused")

    result = invoke(StorePlugin(broken), "upgrade")
    assert result.exit_code == 1
    assert "s3cret" not in result.output
    assert "message store postgresql://app:**********@db.example/messages: OSError: connection refused" in (
        result.output
    )


def test_cli_uses_the_default_factory(monkeypatch: pytest.MonkeyPatch, invoke: Any) -> None:
    factory = Factory()
    monkeypatch.setattr(omnichannel_store, "_open_configured_store", factory)
    result = invoke(StorePlugin(), "upgrade")
    assert result.exit_code == 0, result.output
    assert factory.store.upgrades == 1


async def test_real_sqlite_store(tmp_path: Path, channel: RecordingChannel) -> None:
    url = f"sqlite:///{tmp_path / 'messages.sqlite3'}"
    async with make_service(channel, ("store", StorePlugin()), config=config(url=url)) as service:
        receipt = await service.send(Message("+15550001", Text("hi"), channel="recording"))
        await service.emit(status("rec-1", DeliveryStatus.DELIVERED, FakeClock()))
        store = message_store(service)
        assert store is not None
        record = await store.get(receipt.message_id)
    assert record is not None
    assert record.status is DeliveryStatus.DELIVERED


# ---------------------------------------------------------------- health


async def test_health_reports_the_store_and_its_schema(factory: Factory, channel: RecordingChannel) -> None:
    from omnichannel.health import health_report

    plugin = ("store", StorePlugin(factory))
    async with make_service(channel, plugin, config=config(url="postgresql://app:pw@db/x")) as service:
        section = (await health_report(service))["plugins"]["store"]
    assert section == {
        "store": "postgresql://app:**********@db/x",
        "schema_version": LATEST_VERSION,
        "latest_version": LATEST_VERSION,
        "degraded": False,
    }
    async with make_service(channel, plugin) as service:
        factory.store.upgrades = 0  # the database was restored from an older backup meanwhile
        report = await health_report(service)
    assert report["plugins"]["store"]["schema_version"] == 0
    assert report["degraded"] == ["store"]
