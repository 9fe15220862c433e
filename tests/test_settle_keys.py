"""Status webhooks settle the idempotency keys they carry (resilience.md §1.10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnichannel import DeliveryStatus, ErrorInfo, ServiceConfig, StatusChanged
from omnichannel.idempotency import KeyState, open_key_store
from omnichannel.testing import RecordingChannel, make_service

KEY = "campaign-7:+15550001"


def webhook(status: DeliveryStatus, key: str | None = KEY, **fields: object) -> StatusChanged:
    return StatusChanged("recording", "wamid.1", status, message_id=key, **fields)  # type: ignore[arg-type]


async def uncertain_key(url: str, key: str = KEY) -> None:
    """A worker's send of ``key`` whose answer was lost."""
    keys = open_key_store(url)
    try:
        claim = await keys.claim(key, owner="worker-1", lease_s=60)
        assert claim.granted
        await keys.release(
            key, owner="worker-1", error="ServerDisconnectedError", final=False, uncertain=True
        )
    finally:
        await keys.close()


async def state(url: str, key: str = KEY) -> KeyState | None:
    keys = open_key_store(url)
    try:
        record = await keys.get(key)
    finally:
        await keys.close()
    return None if record is None else record.state


@pytest.mark.parametrize("status", [DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.READ])
async def test_an_accepted_status_settles_an_uncertain_key_as_sent(
    tmp_path: Path, status: DeliveryStatus
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    await uncertain_key(url)
    async with make_service(RecordingChannel(), config=ServiceConfig(key_store=url)) as service:
        await service.emit(webhook(status))
    keys = open_key_store(url)
    record = await keys.get(KEY)
    await keys.close()
    assert record is not None
    assert (record.state, record.provider_message_id, record.channel) == (
        KeyState.SENT,
        "wamid.1",
        "recording",
    )


async def test_a_failed_status_settles_the_key_as_failed_with_the_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    await uncertain_key(url)
    error = ErrorInfo("PermanentDeliveryError", "not on WhatsApp", code=131026)
    async with make_service(RecordingChannel(), config=ServiceConfig(key_store=url)) as service:
        await service.emit(webhook(DeliveryStatus.FAILED, error=error))
    keys = open_key_store(url)
    record = await keys.get(KEY)
    await keys.close()
    assert record is not None
    assert record.state is KeyState.FAILED
    assert record.error == "PermanentDeliveryError: not on WhatsApp (code 131026)"


async def test_a_webhook_never_creates_a_key_store_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    async with make_service(
        RecordingChannel(), config=ServiceConfig(key_store=f"sqlite:///{path}")
    ) as service:
        await service.emit(webhook(DeliveryStatus.DELIVERED))
    assert not path.exists()


async def test_keys_the_store_does_not_hold_and_webhooks_without_a_key_are_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    await uncertain_key(url)
    async with make_service(RecordingChannel(), config=ServiceConfig(key_store=url)) as service:
        await service.emit(webhook(DeliveryStatus.DELIVERED, key="another-key"))
        await service.emit(webhook(DeliveryStatus.DELIVERED, key=None))
        await service.emit(webhook(DeliveryStatus.ACCEPTED))  # not a webhook status: proves nothing
    assert await state(url) is KeyState.UNCERTAIN
    assert await state(url, "another-key") is None


async def test_a_file_created_after_the_service_started_is_used(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keys.sqlite3'}"
    async with make_service(RecordingChannel(), config=ServiceConfig(key_store=url)) as service:
        await service.emit(webhook(DeliveryStatus.DELIVERED))  # no file yet: nothing to settle
        await uncertain_key(url)
        await service.emit(webhook(DeliveryStatus.DELIVERED))
    assert await state(url) is KeyState.SENT


async def test_redis_keys_are_settled(redis_url: str, redis_prefix: str) -> None:
    key = f"{redis_prefix}:{KEY}"  # under the store's default prefix, unique to this test
    await uncertain_key(redis_url, key)
    try:
        async with make_service(RecordingChannel(), config=ServiceConfig(key_store=redis_url)) as service:
            await service.emit(webhook(DeliveryStatus.READ, key=key))
        assert await state(redis_url, key) is KeyState.SENT
    finally:
        import redis

        client = redis.Redis.from_url(redis_url)
        client.delete(f"omnichannel:idem:{key}")
        client.close()
