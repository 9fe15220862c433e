"""SqliteKeyStore beyond the contract (file, persistence, locks), and open_key_store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path

import pytest

from omnichannel import ConfigError, OmniChannelError
from omnichannel.idempotency import (
    KeyState,
    KeyStoreError,
    MemoryKeyStore,
    RedisKeyStore,
    SqliteKeyStore,
    open_key_store,
)
from omnichannel.testing import FakeClock


def journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return str(db.execute("PRAGMA journal_mode").fetchone()[0])


async def test_the_file_is_created_on_first_use_in_wal_mode(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "deep" / "folder" / "keys.sqlite3"
    store = SqliteKeyStore(path, clock=fake_clock)
    assert not path.exists()  # nothing happens before the first call
    try:
        assert await store.get("k") is None
        assert path.exists()
        assert journal_mode(path) == "wal"
    finally:
        await store.close()


async def test_open_creates_the_table(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = SqliteKeyStore(str(path))
    await store.open()
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(idempotency_keys)")]
    assert columns == [
        "key",
        "state",
        "owner",
        "attempts",
        "updated_at",
        "lease_until",
        "channel",
        "provider_message_id",
        "error",
    ]


async def test_keys_survive_close_and_reopen(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "keys.sqlite3"
    first = SqliteKeyStore(path, clock=fake_clock)
    await first.claim("sent", owner="w1", lease_s=30)
    await first.complete("sent", owner="w1", channel="whatsapp", provider_message_id="wamid.1")
    await first.claim("crashed", owner="w1", lease_s=30)
    sent = await first.get("sent")
    crashed = await first.get("crashed")
    await first.close()

    second = SqliteKeyStore(path, clock=fake_clock)
    try:
        assert await second.get("sent") == sent
        assert await second.get("crashed") == crashed
        assert not (await second.claim("sent", owner="w2", lease_s=30, resend_uncertain=True)).granted
        # The process that held "crashed" is gone: once its lease runs out the key is uncertain.
        assert not (await second.claim("crashed", owner="w2", lease_s=30)).granted
        fake_clock.advance(30)
        refused = await second.claim("crashed", owner="w2", lease_s=30)
        assert refused.record is not None
        assert refused.record.state is KeyState.UNCERTAIN
    finally:
        await second.close()


async def test_a_closed_store_refuses_to_work(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path / "keys.sqlite3")
    await store.get("k")
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(KeyStoreError, match="is closed"):
        await store.claim("k", owner="w1", lease_s=30)


async def test_a_file_that_cannot_be_opened_raises_keystoreerror(tmp_path: Path) -> None:
    store = SqliteKeyStore(tmp_path)  # a folder
    with pytest.raises(KeyStoreError, match="cannot be"):
        await store.claim("k", owner="w1", lease_s=30)
    await store.close()


async def test_a_locked_file_raises_instead_of_granting(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = SqliteKeyStore(path, busy_timeout_s=0.05)
    await store.open()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # another process is writing
        with pytest.raises(KeyStoreError, match=r"claim of key 'k' failed .*locked") as caught:
            await store.claim("k", owner="w1", lease_s=30)
        assert isinstance(caught.value, OmniChannelError)
        other.execute("ROLLBACK")
    try:
        assert (await store.claim("k", owner="w1", lease_s=30)).granted
    finally:
        await store.close()


async def test_a_cancelled_claim_leaves_no_transaction_open(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    store = SqliteKeyStore(path, busy_timeout_s=5)
    await store.open()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0.05)) as other:
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.claim("k", owner="w1", lease_s=30))
        await asyncio.sleep(0.05)  # the claim waits for the write lock
        task.cancel()
        other.execute("ROLLBACK")
        with pytest.raises(asyncio.CancelledError):
            await task
        try:
            assert (await store.claim("k2", owner="w1", lease_s=30)).granted
            # Our connection holds no lock: another process can write.
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            await store.close()


# -- open_key_store -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///keys.sqlite3", "keys.sqlite3"),
        ("sqlite:///data/keys.sqlite3", "data/keys.sqlite3"),
        ("sqlite:///with%20space.db", "with space.db"),
        ("keys.sqlite3", "keys.sqlite3"),
        ("data/keys.db", "data/keys.db"),
        ("  keys.sqlite  ", "keys.sqlite"),
    ],
)
async def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_key_store(url)
    assert isinstance(store, SqliteKeyStore)
    assert store.path == expected
    try:
        await store.claim("k", owner="w1", lease_s=30)
    finally:
        await store.close()
    assert (tmp_path / expected).is_file()


async def test_an_absolute_sqlite_url(tmp_path: Path, fake_clock: FakeClock) -> None:
    store = open_key_store(f"sqlite:///{tmp_path}/keys.sqlite3", clock=fake_clock)  # four slashes
    assert isinstance(store, SqliteKeyStore)
    assert store.path == f"{tmp_path}/keys.sqlite3"
    claim = await store.claim("k", owner="w1", lease_s=30)
    assert claim.record is not None
    assert claim.record.updated_at == fake_clock.now()
    await store.close()


def test_a_home_relative_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = open_key_store("~/keys.db")
    assert isinstance(store, SqliteKeyStore)
    assert store.path == f"{tmp_path}/keys.db"


async def test_memory_url(fake_clock: FakeClock) -> None:
    store = open_key_store("memory://", clock=fake_clock)
    assert isinstance(store, MemoryKeyStore)
    claim = await store.claim("k", owner="w1", lease_s=30)
    assert claim.record is not None
    assert claim.record.updated_at == fake_clock.now()


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://:secret@cache.example:6380/2"])
async def test_redis_urls(url: str) -> None:
    store = open_key_store(url)  # connects on first use only
    assert isinstance(store, RedisKeyStore)
    assert "secret" not in repr(store)
    await store.close()


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("", "is not a key store URL"),
        ("keys.txt", "is not a key store URL"),
        ("postgresql://admin:hunter2@db/keys", "is not a key store URL"),
        ("http://example.com/keys.db", "is not a key store URL"),
        ("sqlite://host/keys.db", "has no host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///folder/", "names no file"),
        ("sqlite:///keys.db?mode=ro", "takes no options"),
        ("memory://somewhere", "takes no path"),
    ],
)
def test_bad_urls_say_what_is_accepted(url: str, detail: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_key_store(url)
    [line] = caught.value.errors
    assert line.startswith("key_store: ")
    assert detail in line
    assert "hunter2" not in str(caught.value)
    if "not a key store URL" in detail:
        for accepted in (
            "sqlite:///relative/path.sqlite3",
            "sqlite:////",
            ".sqlite3",
            "redis://",
            "memory://",
        ):
            assert accepted in line


def test_redis_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigError, match=r"needs the 'redis' package.*pip install") as caught:
        open_key_store("redis://:pw@localhost:6379/0")
    assert "pw" not in str(caught.value)
    with pytest.raises(KeyStoreError, match="needs the 'redis' package"):
        RedisKeyStore("redis://localhost:6379/0")
