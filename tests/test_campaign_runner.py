"""run_campaign: outcomes, idempotency across runs and runners, concurrency and memory bounds."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from omnichannel import (
    Certainty,
    DeliveryStatus,
    PermanentDeliveryError,
    Receipt,
    ServiceConfig,
    TransientDeliveryError,
    hookimpl,
)
from omnichannel.campaigns import (
    REPORT_COLUMNS,
    Campaign,
    Outcome,
    ReportWriter,
    Row,
    TemplateSpec,
    TextSpec,
    campaign_key,
    default_campaign_id,
    run_campaign,
)
from omnichannel.extensions import Channel
from omnichannel.idempotency import KeyState, MemoryKeyStore
from omnichannel.testing import FakeClock, make_service


class CampaignChannel:
    """Channel ``camp``: refuses recipients not starting with ``+``, counts concurrent sends,
    fails recipients as scripted in ``errors`` and yields to the loop while sending."""

    def __init__(self, yields=2):
        self.sent = []
        self.errors = {}
        self.current = 0
        self.peak = 0
        self.yields = yields
        self.on_send = None
        self.bad_receipt = False

    @hookimpl
    def register_channels(self):
        return [Channel("camp", {"text", "template"}, "campaign tests")]

    @hookimpl
    def validate(self, message, channel):
        if channel == "camp" and not message.recipient.startswith("+"):
            return ["recipient: must be an E.164 number"]
        return None

    @hookimpl
    def build(self, message):
        return message

    @hookimpl
    def send(self, payload):
        async def deliver():
            self.current += 1
            self.peak = max(self.peak, self.current)
            try:
                if self.on_send is not None:
                    self.on_send(payload)
                for _ in range(self.yields):
                    await asyncio.sleep(0)
                error = self.errors.get(payload.recipient)
                if error is not None:
                    raise error
                if self.bad_receipt:
                    return "not a receipt"
                self.sent.append((payload.recipient, payload.idempotency_key, payload.content))
                return Receipt(
                    payload.id, "camp", DeliveryStatus.ACCEPTED, provider_message_id=f"p-{len(self.sent)}"
                )
            finally:
                self.current -= 1

        return deliver


@pytest.fixture
def channel():
    return CampaignChannel()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
async def service(channel, clock):
    async with make_service(channel, clock=clock, config=ServiceConfig(send_concurrency=4)) as service:
        yield service


@pytest.fixture
def keys(clock):
    return MemoryKeyStore(clock)


def rows_for(recipients, start=2):
    return [
        Row(start + i, r, {"recipient": r, "name": f"N{i}"}, recipient_column="recipient")
        for i, r in enumerate(recipients)
    ]


def numbers(n):
    return [f"+1555{i:07d}" for i in range(n)]


TEXT = TextSpec("Hi {name}")


def campaign(**kwargs):
    kwargs.setdefault("channel", "camp")
    return Campaign("c1", kwargs.pop("content", TEXT), **kwargs)


def read_report(buffer):
    return list(csv.DictReader(io.StringIO(buffer.getvalue())))


# ---------------------------------------------------------------- outcomes


async def test_every_row_is_sent_with_its_key_and_content(service, channel, keys):
    summary = await run_campaign(service, campaign(), rows_for(numbers(10)), keys)
    assert summary.count(Outcome.SENT) == 10
    assert (summary.total, summary.problems, summary.campaign_id) == (10, 0, "c1")
    assert sorted(r for r, _, _ in channel.sent) == numbers(10)
    recipient, key, content = channel.sent[0]
    assert key == f"c1:{recipient}"
    assert content.body.startswith("Hi N")
    record = await keys.get(campaign_key("c1", numbers(10)[3]))
    assert record.state is KeyState.SENT
    assert record.channel == "camp"
    assert record.provider_message_id.startswith("p-")


async def test_bad_rows_are_reported_with_their_line_and_the_rest_goes_on(service, channel, keys):
    rows = [
        Row(2, "+1", {"recipient": "+1", "name": "Ann"}, recipient_column="recipient"),
        Row(3, None, error="expected 2 columns, found 1"),
        Row(4, None, {"recipient": "", "name": "Bob"}, recipient_column="recipient"),
        Row(5, "+4", {"recipient": "+4"}, recipient_column="recipient"),
        Row(6, "15550005", {"recipient": "15550005", "name": "Eve"}, recipient_column="recipient"),
        Row(7, "+6", {"recipient": "+6", "name": "Fay"}, recipient_column="recipient"),
    ]
    report = io.StringIO()
    summary = await run_campaign(service, campaign(), rows, keys, report=ReportWriter(report))
    assert summary.count(Outcome.SENT) == 2
    assert summary.count(Outcome.INVALID) == 4
    assert [r for r, _, _ in channel.sent] == ["+1", "+6"]
    lines = read_report(report)
    assert list(lines[0]) == list(REPORT_COLUMNS)
    by_line = {int(line["line"]): line for line in lines}
    assert sorted(by_line) == [3, 4, 5, 6]
    assert by_line[3]["detail"] == "expected 2 columns, found 1"
    assert by_line[4]["detail"] == "recipient: column 'recipient' is missing or empty"
    assert by_line[5]["detail"] == "column 'name' of the text is missing"
    assert by_line[6] == {
        "line": "6",
        "recipient": "15550005",
        "outcome": "invalid",
        "error": "MessageValidationError",
        "code": "",
        "detail": "recipient: must be an E.164 number",
    }
    assert all(line["outcome"] == "invalid" for line in lines)
    assert await keys.get("c1:15550005") is None  # invalid rows keep no key


async def test_delivery_failures_release_the_key_by_kind(service, channel, keys):
    channel.errors = {
        "+1": PermanentDeliveryError("bad recipient", code=131026),
        "+2": TransientDeliveryError("provider down", code=2),
        "+3": TransientDeliveryError("read timeout", certainty=Certainty.UNKNOWN),
    }
    report = io.StringIO()
    summary = await run_campaign(
        service, campaign(), rows_for(["+1", "+2", "+3", "+4"]), keys, report=ReportWriter(report)
    )
    assert (summary.count(Outcome.SENT), summary.count(Outcome.FAILED)) == (1, 3)
    assert (await keys.get("c1:+1")).state is KeyState.FAILED
    assert await keys.get("c1:+2") is None  # retryable: forgotten, a re-run tries again
    assert (await keys.get("c1:+3")).state is KeyState.UNCERTAIN
    lines = {line["recipient"]: line for line in read_report(report)}
    assert lines["+1"]["error"] == "PermanentDeliveryError"
    assert lines["+1"]["code"] == "131026"
    assert lines["+1"]["detail"].startswith("bad recipient")
    assert lines["+3"]["error"] == "TransientDeliveryError"

    channel.errors = {}
    report = io.StringIO()
    again = await run_campaign(
        service, campaign(), rows_for(["+1", "+2", "+3", "+4"]), keys, report=ReportWriter(report)
    )
    assert dict(again.counts) == {
        Outcome.FAILED_BEFORE: 1,
        Outcome.SENT: 1,
        Outcome.UNCERTAIN: 1,
        Outcome.ALREADY_SENT: 1,
    }
    lines = {line["recipient"]: line for line in read_report(report)}
    assert set(lines) == {"+1", "+3"}
    assert lines["+1"]["outcome"] == "failed_before"
    assert lines["+1"]["detail"].startswith("PermanentDeliveryError: bad recipient")
    assert lines["+3"]["outcome"] == "uncertain"

    last = await run_campaign(
        service, campaign(resend_uncertain=True), rows_for(["+1", "+2", "+3", "+4"]), keys
    )
    assert last.count(Outcome.SENT) == 1
    assert [r for r, _, _ in channel.sent] == ["+4", "+2", "+3"]


async def test_an_untranslated_channel_error_is_uncertain(service, channel, keys):
    def explode(payload):
        raise RuntimeError("plugin bug")

    channel.on_send = explode
    summary = await run_campaign(service, campaign(), rows_for(["+1"]), keys)
    assert summary.count(Outcome.FAILED) == 1
    # service.send made it a DeliveryError of unknown certainty: it may have left.
    assert (await keys.get("c1:+1")).state is KeyState.UNCERTAIN


async def test_an_error_after_the_send_that_is_not_a_delivery_error_forgets_the_key(service, channel, keys):
    channel.bad_receipt = True
    report = io.StringIO()
    summary = await run_campaign(service, campaign(), rows_for(["+1"]), keys, report=ReportWriter(report))
    assert summary.count(Outcome.FAILED) == 1
    assert await keys.get("c1:+1") is None
    (line,) = read_report(report)
    assert line["error"] == "PluginError"
    assert "\n" not in line["detail"]


async def test_a_broken_validate_hook_fails_the_row_and_the_campaign_goes_on(service, channel, keys):
    class Broken:
        @hookimpl
        def validate(self, message):
            if message.recipient == "+1":
                raise RuntimeError("validator bug")

    service.plugin_manager.register(Broken())
    summary = await run_campaign(service, campaign(), rows_for(["+1", "+2"]), keys)
    assert dict(summary.counts) == {Outcome.FAILED: 1, Outcome.SENT: 1}
    assert await keys.get("c1:+1") is None


async def test_dry_run_sends_nothing_and_claims_nothing(service, channel, keys):
    rows = [
        *rows_for(["+1", "+2"]),
        Row(4, "555", {"recipient": "555", "name": "x"}, recipient_column="recipient"),
    ]
    report = io.StringIO()
    summary = await run_campaign(service, campaign(dry_run=True), rows, keys, report=ReportWriter(report))
    assert dict(summary.counts) == {Outcome.VALID: 2, Outcome.INVALID: 1}
    assert summary.dry_run
    assert channel.sent == []
    assert channel.peak == 0
    assert await keys.get("c1:+1") is None
    assert [line["line"] for line in read_report(report)] == ["4"]


async def test_a_rerun_of_a_finished_campaign_sends_nothing(service, channel, keys):
    await run_campaign(service, campaign(), rows_for(numbers(20)), keys)
    channel.sent.clear()
    summary = await run_campaign(service, campaign(), rows_for(numbers(20)), keys)
    assert dict(summary.counts) == {Outcome.ALREADY_SENT: 20}
    assert channel.sent == []


async def test_a_duplicate_row_is_sent_once(service, channel, keys):
    summary = await run_campaign(service, campaign(concurrency=1), rows_for(["+1", "+2", " +1 "]), keys)
    assert dict(summary.counts) == {Outcome.SENT: 2, Outcome.ALREADY_SENT: 1}


async def test_another_campaign_id_sends_again(service, channel, keys):
    await run_campaign(service, campaign(), rows_for(["+1"]), keys)
    await run_campaign(service, Campaign("c2", TEXT, channel="camp"), rows_for(["+1"]), keys)
    assert [key for _, key, _ in channel.sent] == ["c1:+1", "c2:+1"]


async def test_a_key_held_by_a_crashed_runner_is_in_flight_then_uncertain(service, channel, keys, clock):
    await keys.claim("c1:+1", owner="crashed", lease_s=600)
    summary = await run_campaign(service, campaign(), rows_for(["+1", "+2"]), keys)
    assert dict(summary.counts) == {Outcome.IN_FLIGHT: 1, Outcome.SENT: 1}
    clock.advance(601)
    summary = await run_campaign(service, campaign(), rows_for(["+1", "+2"]), keys)
    assert dict(summary.counts) == {Outcome.UNCERTAIN: 1, Outcome.ALREADY_SENT: 1}
    summary = await run_campaign(service, campaign(resend_uncertain=True), rows_for(["+1", "+2"]), keys)
    assert dict(summary.counts) == {Outcome.SENT: 1, Outcome.ALREADY_SENT: 1}
    assert [r for r, _, _ in channel.sent] == ["+2", "+1"]


async def test_template_rows(service, channel, keys):
    rows = [
        Row(2, "+1", {"recipient": "+1", "1": "Ann", "2": "42"}, recipient_column="recipient"),
        Row(3, "+2", {"recipient": "+2", "1": "Bob"}, recipient_column="recipient"),
        Row(4, "+3", {"recipient": "+3", "1": "Cy", "2": ""}, recipient_column="recipient"),
    ]
    report = io.StringIO()
    content = TemplateSpec("order", named=False, columns=["1", "2"])
    summary = await run_campaign(service, campaign(content=content), rows, keys, report=ReportWriter(report))
    assert (summary.count(Outcome.SENT), summary.count(Outcome.INVALID)) == (1, 2)
    assert [(line["line"], line["detail"]) for line in read_report(report)] == [
        ("3", "parameter column '2' is missing"),
        ("4", "parameter column '2' is empty"),
    ]


# ---------------------------------------------------------------- crashes and races


async def test_a_run_cancelled_halfway_then_rerun_sends_each_recipient_at_most_once(service, channel, keys):
    recipients = numbers(100)
    channel.errors = {
        recipients[10]: TransientDeliveryError("provider down"),
        recipients[11]: TransientDeliveryError("read timeout", certainty=Certainty.UNKNOWN),
        recipients[12]: PermanentDeliveryError("bad recipient"),
    }
    run = asyncio.current_task()
    first = asyncio.create_task(run_campaign(service, campaign(), rows_for(recipients), keys))
    assert run is not None

    def crash(payload):
        if payload.recipient == recipients[50]:
            first.cancel()

    channel.on_send = crash
    with pytest.raises(asyncio.CancelledError):
        await first
    channel.on_send = None
    records = {r: await keys.get(f"c1:{r}") for r in recipients}
    in_flight = {r for r, rec in records.items() if rec and rec.error and "stopped" in rec.error}
    assert recipients[50] in in_flight
    assert len(in_flight) <= 4  # at most one per worker
    sent_first = [r for r, _, _ in channel.sent]
    assert recipients[99] not in sent_first

    channel.errors = {}
    second = await run_campaign(service, campaign(), rows_for(recipients), keys)
    sent = [r for r, _, _ in channel.sent]
    assert len(sent) == len(set(sent))  # never twice
    assert recipients[10] in sent  # retryable: retried
    assert recipients[11] not in sent  # uncertain: not resent
    assert recipients[12] not in sent  # failed for good
    assert not in_flight & set(sent)  # stopped mid-send: uncertain
    assert second.count(Outcome.UNCERTAIN) == 1 + len(in_flight)
    assert second.count(Outcome.FAILED_BEFORE) == 1

    third = await run_campaign(service, campaign(resend_uncertain=True), rows_for(recipients), keys)
    assert third.count(Outcome.SENT) == 1 + len(in_flight)
    sent = [r for r, _, _ in channel.sent]
    assert sorted(sent) == sorted(set(recipients) - {recipients[12]})


async def test_two_runners_racing_send_each_recipient_once(service, channel, keys):
    recipients = numbers(200)
    one = campaign(owner="runner-1", concurrency=3)
    two = campaign(owner="runner-2", concurrency=5)
    first, second = await asyncio.gather(
        run_campaign(service, one, rows_for(recipients), keys),
        run_campaign(service, two, rows_for(recipients), keys),
    )
    sent = [r for r, _, _ in channel.sent]
    assert sorted(sent) == recipients
    assert first.count(Outcome.SENT) + second.count(Outcome.SENT) == 200
    assert first.count(Outcome.SENT) > 0
    assert second.count(Outcome.SENT) > 0
    for summary in (first, second):
        assert set(summary.counts) <= {Outcome.SENT, Outcome.ALREADY_SENT, Outcome.IN_FLIGHT}


async def test_a_key_store_error_stops_the_campaign(service, channel, keys):
    class BrokenStore(MemoryKeyStore):
        async def claim(self, key, **kwargs):
            if key.endswith("+3"):
                raise ConnectionError("store down")
            return await super().claim(key, **kwargs)

    with pytest.raises(ConnectionError, match="store down"):
        await run_campaign(
            service, campaign(concurrency=1), rows_for(["+1", "+2", "+3", "+4"]), BrokenStore()
        )
    assert [r for r, _, _ in channel.sent] == ["+1", "+2"]


# ---------------------------------------------------------------- bounds


async def test_concurrency_bound(service, channel, keys):
    summary = await run_campaign(service, campaign(concurrency=7), rows_for(numbers(300)), keys)
    assert summary.count(Outcome.SENT) == 300
    assert channel.peak == 7


async def test_default_concurrency_is_send_concurrency(service, channel, keys):
    await run_campaign(service, campaign(), rows_for(numbers(50)), keys)
    assert channel.peak == 4


async def test_memory_is_bounded_by_the_concurrency(service, channel, keys):
    channel.yields = 1
    produced = 0
    finished = 0
    worst = 0

    def rows():
        nonlocal produced
        for i in range(100_000):
            produced += 1
            yield Row(
                i + 2, f"+1{i:09d}", {"recipient": f"+1{i:09d}", "name": "x"}, recipient_column="recipient"
            )

    def progress(p):
        nonlocal finished
        finished = p.done

    def watch(payload):
        nonlocal worst
        worst = max(worst, produced - finished)

    channel.on_send = watch
    summary = await run_campaign(service, campaign(concurrency=8), rows(), keys, progress=progress)
    assert summary.count(Outcome.SENT) == 100_000
    assert worst <= 8
    assert channel.peak == 8


async def test_async_rows(service, channel, keys):
    async def rows():
        for row in rows_for(numbers(30)):
            await asyncio.sleep(0)
            yield row

    summary = await run_campaign(service, campaign(concurrency=5), rows(), keys)
    assert summary.count(Outcome.SENT) == 30


async def test_progress_is_reported_after_every_row(service, channel, keys):
    seen = []
    await run_campaign(service, campaign(), rows_for(numbers(5)), keys, progress=seen.append)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5]
    assert dict(seen[-1].counts) == {Outcome.SENT: 5}


# ---------------------------------------------------------------- ids


def test_default_campaign_id_is_stable_and_depends_on_the_content():
    a = default_campaign_id("/data/spring sale.csv", TemplateSpec("promo"))
    assert a == default_campaign_id("spring sale.csv", TemplateSpec("promo"))
    assert a.startswith("spring-sale-")
    assert a != default_campaign_id("spring sale.csv", TemplateSpec("promo", language="it"))
    assert a != default_campaign_id("spring sale.csv", TextSpec("Hi"))
    assert a != default_campaign_id("other.csv", TemplateSpec("promo"))


def test_campaign_settings_are_checked():
    with pytest.raises(ValueError, match="concurrency must be > 0"):
        Campaign("c", TEXT, concurrency=0)
    with pytest.raises(ValueError, match="campaign_id"):
        Campaign("", TEXT)
    assert Campaign("c", TEXT).owner != Campaign("c", TEXT).owner
