"""The wired WhatsApp plugin: through the service, the server and the CLI, against the WhatsApp sandbox.

Every request goes over a real loopback socket to ``omnichannel_whatsapp.sandbox``.
The conformance suite has a sync test and the CLI runs its own event loop
(``asyncio.run`` inside click), so the shared sandbox is served by an event loop
of its own in a background thread (``SandboxThread``); its state is only ever
touched on that loop. Tests that need a sandbox with other settings (webhooks
back to the service, a tiny throughput) run one on their own loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

import omnichannel_whatsapp
from omnichannel import (
    Buttons,
    DeliveryStatus,
    ErrorScope,
    Media,
    Message,
    MessageValidationError,
    OmniChannelService,
    PermanentDeliveryError,
    PluginSettings,
    RateLimitedError,
    ReplyButton,
    SenderUnavailableError,
    ServiceConfig,
    StatusChanged,
    Template,
    TemplateButton,
    Text,
)
from omnichannel.cli import cli
from omnichannel.server import make_app
from omnichannel.testing import ChannelPluginConformance, EventRecorder, FakeClock, make_service
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings, SandboxThread

ACCESS_TOKEN = "EAAG-test-token"
APP_SECRET = "app-secret"
VERIFY_TOKEN = "verify-me"
RECIPIENT = "+16505551234"
WAIT_S = 10.0
"""The longest a test waits for the sandbox's thread; only a broken sandbox ever takes that long."""


def sandbox_settings(**changes: Any) -> SandboxSettings:
    """The sandbox's defaults, with the credentials these tests configure the plugin with."""
    return SandboxSettings(**{"access_token": ACCESS_TOKEN, "app_secret": APP_SECRET, **changes})


def order_update(language: str = "en_US", **changes: Any) -> Template:
    """A send of the seed template ``order_update``: header {{1}}, body {{1}} to {{3}}, a URL button."""
    fields: dict[str, Any] = {
        "header": ["#8899"],
        "body": ["Ann", "8899", "today"],
        "buttons": [TemplateButton("url", 1, "8899")],
        **changes,
    }
    return Template("order_update", language, **fields)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxThread]:
    served = SandboxThread(sandbox_settings())
    served.start()
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(autouse=True)
def _fresh(sandbox: SandboxThread) -> None:
    sandbox.reset()


def settings(sandbox: Sandbox | SandboxThread, **extra: Any) -> dict[str, Any]:
    """``[plugins.whatsapp]`` pointing at ``sandbox`` (without ``waba_id`` unless given)."""
    return {
        "phone_number_id": sandbox.settings.phone_number_id,
        "access_token": sandbox.settings.access_token,
        "base_url": sandbox.url,
        "app_secret": sandbox.settings.app_secret,
        "verify_token": VERIFY_TOKEN,
        **extra,
    }


def whatsapp_service(sandbox: Sandbox | SandboxThread, *plugins: object, **extra: Any) -> OmniChannelService:
    config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings=settings(sandbox, **extra))})
    return make_service(("whatsapp", omnichannel_whatsapp), *plugins, config=config)


class TestWhatsAppConformance(ChannelPluginConformance):
    channel = "whatsapp"

    @pytest.fixture(autouse=True)
    def _sandbox(self, sandbox: SandboxThread) -> None:
        self.sandbox = sandbox

    def make_plugin(self) -> object:
        return omnichannel_whatsapp

    def service_config(self) -> ServiceConfig:
        return ServiceConfig(plugins={"plugin-under-test": PluginSettings(settings=settings(self.sandbox))})

    def valid_messages(self) -> list[Message]:
        return [
            Message(RECIPIENT, Text("hello"), channel="whatsapp", id="m-text"),
            Message(RECIPIENT, order_update(), channel="whatsapp", id="m-tpl"),
            Message(
                RECIPIENT, Media("image", url="https://example.com/a.jpg"), channel="whatsapp", id="m-img"
            ),
            Message(
                RECIPIENT,
                Buttons("Confirm?", [ReplyButton("yes", "Yes")]),
                channel="whatsapp",
                id="m-buttons",
            ),
        ]

    def invalid_messages(self) -> list[Message]:
        return [
            Message("not a number", Text("hello"), channel="whatsapp"),
            Message(RECIPIENT, Text("x" * 4097), channel="whatsapp"),
        ]

    def failure_cases(self) -> list[tuple[Message, type[Exception]]]:
        # The suite sends these in order, one Graph request each, right after asking for them:
        # each fault answers exactly one request (the sandbox's not_on_whatsapp numbers are
        # accepted and fail later, by webhook, so the synchronous failures are injected).
        self.sandbox.add_fault(Fault("error", http_status=400, code=131026, remaining=1))
        self.sandbox.add_fault(Fault("error", http_status=400, code=130429, remaining=1))
        return [
            (Message(RECIPIENT, Text("hi"), channel="whatsapp"), PermanentDeliveryError),
            (Message(RECIPIENT, Text("hi"), channel="whatsapp"), RateLimitedError),
        ]


async def test_a_send_returns_the_wamid_and_carries_our_id_for_the_webhooks(sandbox):
    async with whatsapp_service(sandbox) as service:
        receipt = await service.send(Message(RECIPIENT, Text("hello"), channel="whatsapp", id="m-1"))
    [sent] = sandbox.messages()
    assert receipt.provider_message_id == sent.wamid
    assert sent.wamid.startswith("wamid.")
    assert receipt.provider_status is None  # Meta gives a message_status for template sends only
    assert sent.body["biz_opaque_callback_data"] == "m-1"
    assert sent.body["to"] == "16505551234"
    assert sent.body["text"] == {"body": "hello", "preview_url": False}
    # The sandbox accepts only its Bearer token (any other: 401, code 190): the one request passed.
    assert sandbox.counters() == {"requests": 1, "accepted": 1}


async def test_a_template_send_carries_metas_message_status(sandbox):
    async with whatsapp_service(sandbox) as service:
        receipt = await service.send(Message(RECIPIENT, order_update("pt_BR"), channel="whatsapp", id="m-2"))
    [sent] = sandbox.messages()
    assert (receipt.provider_message_id, receipt.provider_status) == (sent.wamid, "accepted")
    assert sent.body["template"]["name"] == "order_update"
    assert sent.body["template"]["language"] == {"code": "pt_BR"}


async def test_without_credentials_the_channel_says_what_to_set(sandbox):
    config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings={"base_url": sandbox.url})})
    async with make_service(("whatsapp", omnichannel_whatsapp), config=config) as service:
        with pytest.raises(SenderUnavailableError) as info:
            await service.send(Message(RECIPIENT, Text("hello"), channel="whatsapp"))
    assert "plugins.whatsapp.phone_number_id" in str(info.value)
    assert "plugins.whatsapp.access_token" in str(info.value)
    assert sandbox.messages() == []
    assert sandbox.counters() == {}  # not even a request


async def test_a_template_that_does_not_match_is_refused_before_sending(sandbox):
    async with whatsapp_service(sandbox, waba_id=sandbox.settings.waba_id) as service:
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message(RECIPIENT, order_update(body=["Ann", "8899"]), channel="whatsapp"))
        assert info.value.problems == [
            "content.body: template 'order_update' (en_US) expects 3 positional parameters, got 2"
        ]
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message(RECIPIENT, order_update("de"), channel="whatsapp"))
        assert info.value.problems == [
            "content.language: template 'order_update' exists in en_US, pt_BR, not in de"
        ]
        # The plugin refused both itself: the sandbox only listed the templates, once.
        assert sandbox.messages() == []
        assert sandbox.counters() == {"requests": 1}
        receipt = await service.send(Message(RECIPIENT, order_update(), channel="whatsapp"))
    assert receipt.ok
    [sent] = sandbox.messages()
    assert sent.body["template"]["language"] == {"code": "en_US"}
    assert sandbox.counters() == {"requests": 2, "accepted": 1}


async def test_a_template_refused_against_an_old_list_is_checked_again_once():
    async with Sandbox(sandbox_settings()) as sandbox:
        hello = next(t for t in sandbox.state.templates if t["name"] == "hello_world")
        new = Template("hello_again", language="en_US")
        async with whatsapp_service(sandbox, waba_id=sandbox.settings.waba_id) as service:
            with pytest.raises(MessageValidationError):  # not in the list fetched just now
                await service.send(Message(RECIPIENT, new, channel="whatsapp"))
            # Created and approved meanwhile; the list the plugin has is 0 s old: not fetched again.
            sandbox.state.templates.append({**hello, "id": "1059231765379999", "name": "hello_again"})
            with pytest.raises(MessageValidationError):
                await service.send(Message(RECIPIENT, new, channel="whatsapp"))
            service.clock.advance(omnichannel_whatsapp.RECHECK_AFTER_S)
            receipt = await service.send(Message(RECIPIENT, new, channel="whatsapp"))
        assert receipt.ok
        assert sandbox.state.counters["requests"] == 3  # two template listings and the send


async def test_a_campaign_shares_one_template_check_and_still_refuses_every_message(sandbox, monkeypatch):
    checks = []
    real_check = omnichannel_whatsapp.check_template

    def counting_check(template, known):
        checks.append(template.name)
        return real_check(template, known)

    monkeypatch.setattr(omnichannel_whatsapp, "check_template", counting_check)
    bad = order_update(body=["Ann", "8899"])  # one object for the whole campaign
    async with whatsapp_service(sandbox, waba_id=sandbox.settings.waba_id) as service:
        receipts = await service.send_many(
            [Message(f"+1650555{i:04d}", bad, channel="whatsapp") for i in range(5)]
        )
    assert [r.error.kind for r in receipts if r.error] == ["MessageValidationError"] * 5
    assert checks == ["order_update"]
    assert sandbox.messages() == []


async def test_beyond_the_numbers_throughput_a_send_is_rate_limited():
    # One message per 1,000 s, on a clock that does not move: the second send is over budget.
    throttled = sandbox_settings(throughput_mps=0.001)
    async with Sandbox(throttled, clock=FakeClock()) as sandbox, whatsapp_service(sandbox) as service:
        assert (await service.send(Message(RECIPIENT, Text("one"), channel="whatsapp"))).ok
        with pytest.raises(RateLimitedError) as info:
            await service.send(Message(RECIPIENT, Text("two"), channel="whatsapp", id="m-2"))
        assert info.value.scope is ErrorScope.SENDER
        assert info.value.message_id == "m-2"
        assert len(sandbox.state.messages) == 1
        assert sandbox.state.counters["error.130429"] == 1


async def test_signed_status_webhooks_become_status_changed_events():
    events = EventRecorder()
    # Every notification is delivered twice (Meta retries); nothing is read; the clock does not wait.
    noisy = sandbox_settings(duplicate_probability=1.0, read_probability=0.0)
    async with Sandbox(noisy, clock=FakeClock()) as sandbox:
        service = whatsapp_service(sandbox, events)
        async with TestClient(TestServer(make_app(service), host="127.0.0.1")) as client:
            forged = json.dumps({"object": "whatsapp_business_account", "entry": []}).encode()
            refused = await client.post(
                "/webhooks/whatsapp", data=forged, headers={"X-Hub-Signature-256": "sha256=00"}
            )
            assert refused.status == 403

            sandbox.set_webhook_url(str(client.make_url("/webhooks/whatsapp")))
            assert await sandbox.dispatcher.handshake(VERIFY_TOKEN, challenge="42")
            assert not await sandbox.dispatcher.handshake("not-the-token")

            # One message at a time: the statuses of two messages would interleave.
            receipt = await service.send(Message(RECIPIENT, Text("hello"), channel="whatsapp", id="m-1"))
            await sandbox.dispatcher.drain(WAIT_S)
            gone = sandbox.settings.not_on_whatsapp[0]
            accepted = await service.send(Message(f"+{gone}", Text("hi"), channel="whatsapp", id="m-404"))
            assert accepted.ok  # a number that is not on WhatsApp fails later, by webhook
            await sandbox.dispatcher.drain(WAIT_S)

        wamid, failed_wamid = receipt.provider_message_id, accepted.provider_message_id
        webhooks = sandbox.state.webhooks
        assert [w.statuses for w in webhooks] == [
            *[[(wamid, "sent")]] * 2,
            *[[(wamid, "delivered")]] * 2,
            *[[(failed_wamid, "failed")]] * 2,
        ]
        assert all(w.body == twin.body for w, twin in zip(webhooks[::2], webhooks[1::2], strict=True))
        # Signed with the app secret, each one passed the route's check (a bad signature: 403).
        assert [w.answer_status for w in webhooks] == [200] * 6

    # The duplicates were dropped: one event per status.
    changes = [(e.message_id, e.provider_message_id, e.status) for e in events.of_type(StatusChanged)]
    assert changes == [
        ("m-1", wamid, DeliveryStatus.SENT),
        ("m-1", wamid, DeliveryStatus.DELIVERED),
        ("m-404", failed_wamid, DeliveryStatus.FAILED),
    ]
    [failed] = [e for e in events.of_type(StatusChanged) if e.status is DeliveryStatus.FAILED]
    assert failed.error is not None
    assert "131026" in failed.error.detail


def test_cli_lists_templates_and_checks_the_configuration(sandbox, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("OMNICHANNEL_CONFIG", "OMNICHANNEL_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "omnichannel.toml"
    values = settings(sandbox, waba_id=sandbox.settings.waba_id)
    config.write_text(
        "[plugins.whatsapp]\n" + "".join(f'{key} = "{value}"\n' for key, value in values.items())
    )
    runner = CliRunner()
    listed = runner.invoke(cli, ["--config", str(config), "whatsapp", "templates", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == [
        "NAME                  LANGUAGE  STATUS    CATEGORY",
        "appointment_reminder  en_US     APPROVED  UTILITY",
        "hello_world           en_US     APPROVED  UTILITY",
        "limited_offer         en_US     REJECTED  MARKETING",
        "order_update          en_US     APPROVED  UTILITY",
        "order_update          pt_BR     APPROVED  UTILITY",
        "spring_sale           en_US     PAUSED    MARKETING",
        "verification_code     en_US     APPROVED  AUTHENTICATION",
        "welcome               en_US     APPROVED  MARKETING",
        "winter_clearance      en_US     DISABLED  MARKETING",
    ]
    checked = runner.invoke(cli, ["--config", str(config), "whatsapp", "check"])
    assert checked.exit_code == 0, checked.output
    display = sandbox.settings.display_phone_number
    assert checked.output == f"ok: Sandbox Business ({display}), quality GREEN\n"
    assert sandbox.messages() == []
    sent = runner.invoke(
        cli,
        ["--config", str(config), "send", "--channel", "whatsapp", "--to", RECIPIENT, "--text", "hi"],
    )
    assert sent.exit_code == 0, sent.output
    assert sent.output.startswith("accepted on whatsapp: message ")
    [message] = sandbox.messages()
    assert (message.recipient, message.body["text"]) == ("16505551234", {"body": "hi", "preview_url": False})
    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert ACCESS_TOKEN not in shown.output
    assert APP_SECRET not in shown.output


def test_hook_sender_id_whatsapp_names_the_business_phone_number(sandbox):
    service = whatsapp_service(sandbox)
    message = Message(RECIPIENT, Text("hello"), channel="whatsapp")
    assert service.sender_of(message, "whatsapp") == sandbox.settings.phone_number_id
    # Without a phone number id configured, the channel's name is the sender.
    bare = make_service(("whatsapp", omnichannel_whatsapp))
    assert bare.sender_of(message, "whatsapp") == "whatsapp"
