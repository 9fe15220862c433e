"""WhatsApp webhooks: the ``Deduplicator`` that lets each redelivered event through once."""

from __future__ import annotations

import pytest
from webhook_support import WAMID

from omnichannel import DeliveryStatus, InboundMessage, StatusChanged, Text
from omnichannel_whatsapp.webhook import Deduplicator


def status_event(id_="wamid.A", status_=DeliveryStatus.SENT):
    return StatusChanged(channel="whatsapp", provider_message_id=id_, status=status_)


def inbound_event(id_=WAMID, body="hi"):
    return InboundMessage(channel="whatsapp", sender="1", content=Text(body), provider_message_id=id_)


def test_dedup_statuses_by_id_and_status():
    dedup = Deduplicator()
    assert dedup.first_time(status_event())
    assert not dedup.first_time(status_event())
    assert dedup.first_time(status_event(status_=DeliveryStatus.DELIVERED))
    assert dedup.first_time(status_event(id_="wamid.B"))
    assert len(dedup) == 3


def test_dedup_inbound_by_id():
    dedup = Deduplicator()
    assert dedup.first_time(inbound_event())
    assert not dedup.first_time(inbound_event(body="the same id, redelivered"))
    assert dedup.first_time(inbound_event(id_="wamid.other"))


def test_dedup_is_a_bounded_lru():
    dedup = Deduplicator(max_entries=2)
    assert dedup.first_time(inbound_event("a"))
    assert dedup.first_time(inbound_event("b"))
    assert not dedup.first_time(inbound_event("a"))  # "a" is now the most recent
    assert dedup.first_time(inbound_event("c"))  # evicts "b"
    assert len(dedup) == 2
    assert not dedup.first_time(inbound_event("a"))
    assert dedup.first_time(inbound_event("b"))


def test_dedup_forget():
    dedup = Deduplicator()
    assert dedup.first_time(inbound_event())
    dedup.forget(inbound_event())
    assert dedup.first_time(inbound_event())


@pytest.mark.parametrize("size", [0, -1])
def test_dedup_needs_a_positive_size(size):
    with pytest.raises(ValueError, match="max_entries must be > 0"):
        Deduplicator(max_entries=size)
