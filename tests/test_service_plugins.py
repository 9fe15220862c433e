"""Plugins in the service: channel ownership, per-plugin configuration and its redaction, introspection."""

from __future__ import annotations

import json

import attrs
import pytest
from service_support import text

from omnichannel import (
    Channel,
    ConfigError,
    Message,
    MessageValidationError,
    PluginError,
    PluginSettings,
    Secret,
    ServiceConfig,
    Text,
    hookimpl,
    setting,
)
from omnichannel.testing import FakeClock, HookRecorder, RecordingChannel, make_service

# ---------------------------------------------------------------- channel ownership


def test_hook_register_channels_declares_channels_and_owners(recording_channel):
    service = make_service(
        ("rec", recording_channel), ("sms", RecordingChannel("sms", capabilities=["text"]))
    )
    assert sorted(service.channels) == ["recording", "sms"]
    assert service.channel_info("sms") == Channel("sms", {"text"}, "records messages in memory (tests)")
    assert service.channel_owner("recording") == "rec"
    assert service.channel_owner("sms") == "sms"
    assert service.channel_info("nope") is None
    assert service.channel_owner("nope") is None


def test_hook_register_channels_must_return_channel_objects():
    class Sloppy:
        @hookimpl
        def register_channels(self):
            return ["sms"]

    with pytest.raises(PluginError) as info:
        make_service(("sloppy", Sloppy()))
    assert str(info.value) == "plugin 'sloppy': register_channels must return Channel objects, got 'sms'"
    assert info.value.plugin_name == "sloppy"


def test_hook_register_channels_that_raises_names_the_plugin():
    class Broken:
        @hookimpl
        def register_channels(self):
            raise RuntimeError("no config")

    with pytest.raises(PluginError) as info:
        make_service(("broken", Broken()))
    assert str(info.value) == "plugin 'broken': register_channels failed: RuntimeError('no config')"


def test_two_plugins_claiming_one_channel_is_a_plugin_error():
    with pytest.raises(PluginError) as info:
        make_service(("twilio", RecordingChannel("sms")), ("vonage", RecordingChannel("sms")))
    assert str(info.value) == (
        "plugin 'vonage, twilio': channel 'sms' is provided by several plugins; "
        'pick one in the configuration: [channels] sms = "vonage"'
    )


async def test_configuration_picks_the_owner_of_a_contested_channel():
    twilio, vonage = RecordingChannel("sms"), RecordingChannel("sms")
    config = ServiceConfig(channels={"sms": "twilio"})
    async with make_service(("twilio", twilio), ("vonage", vonage), config=config) as service:
        assert service.channel_owner("sms") == "twilio"
        with HookRecorder(service.plugin_manager) as hooks:
            receipt = await service.send(text(channel="sms"))

    assert receipt.ok
    assert len(twilio.payloads) == 1
    # The plugin that was not picked is never asked about the channel.
    assert vonage.attempts == 0
    assert vonage.payloads == []
    for name in ("validate", "build", "send"):
        [call] = hooks.calls_of(name)
        assert "vonage" not in call.plugins, name


def test_configuration_picking_a_plugin_that_does_not_provide_the_channel():
    config = ServiceConfig(channels={"sms": "nexmo"})
    with pytest.raises(ConfigError) as info:
        make_service(("twilio", RecordingChannel("sms")), config=config)
    assert info.value.errors == [
        "channels.sms: plugin 'nexmo' does not provide channel 'sms' (provided by: twilio)"
    ]


# ---------------------------------------------------------------- plugin configuration


@attrs.frozen
class AcmeConfig:
    endpoint: str
    retries: int = 3
    api_key: Secret | None = None
    webhook_token: str | None = None
    legacy_region: str = setting(default="eu", env="ACME_REGION")


class Acme:
    @hookimpl
    def register_config(self):
        return AcmeConfig


def test_hook_register_config_structures_the_plugin_section():
    config = ServiceConfig(
        plugins={"acme": PluginSettings(settings={"endpoint": "https://acme.test", "api_key": "k-123"})}
    )
    service = make_service(("acme", Acme()), config=config, environ={"ACME_REGION": "us"})
    assert service.plugin_config(AcmeConfig) == AcmeConfig(
        endpoint="https://acme.test", retries=3, api_key=Secret("k-123"), legacy_region="us"
    )


def test_hook_register_config_errors_are_rooted_at_the_plugin_section():
    config = ServiceConfig(plugins={"acme": PluginSettings(settings={"retries": "three", "endpont": "x"})})
    with pytest.raises(ConfigError) as info:
        make_service(("acme", Acme()), config=config)
    assert info.value.errors == [
        "plugins.acme.endpoint: required field missing",
        "plugins.acme.retries: expected an integer, got str 'three'",
        "plugins.acme.endpont: unknown key (did you mean 'endpoint'?)",
    ]
    assert str(info.value).startswith(
        "invalid configuration:\n  - plugins.acme.endpoint: required field missing"
    )


def test_hook_register_config_must_return_an_attrs_class():
    class Wrong:
        @hookimpl
        def register_config(self):
            return dict

    with pytest.raises(PluginError) as info:
        make_service(("wrong", Wrong()))
    assert str(info.value) == "plugin 'wrong': register_config must return an attrs class, got <class 'dict'>"


def test_plugin_config_of_an_undeclared_class(recording_channel):
    service = make_service(recording_channel)
    with pytest.raises(PluginError) as info:
        service.plugin_config(AcmeConfig)
    assert str(info.value) == "plugin 'AcmeConfig': this class was not declared by register_config"


def test_settings_for_a_plugin_that_is_not_installed():
    config = ServiceConfig(plugins={"foo": PluginSettings(settings={"token": "x"})})
    with pytest.raises(ConfigError) as info:
        make_service(RecordingChannel(), config=config)
    assert info.value.errors == ["plugins.foo: no plugin named 'foo' is installed"]
    assert str(info.value) == "invalid configuration:\n  - plugins.foo: no plugin named 'foo' is installed"


def test_settings_for_a_plugin_without_a_config_class():
    config = ServiceConfig(plugins={"rec": PluginSettings(settings={"colour": "red", "size": 3})})
    with pytest.raises(ConfigError) as info:
        make_service(("rec", RecordingChannel()), config=config)
    assert info.value.errors == [
        "plugins.rec.colour: unknown key (plugin 'rec' takes no settings)",
        "plugins.rec.size: unknown key (plugin 'rec' takes no settings)",
    ]


def test_every_plugin_config_problem_is_reported_at_once():
    config = ServiceConfig(
        plugins={
            "foo": PluginSettings(settings={"x": 1}),
            "rec": PluginSettings(settings={"colour": "red"}),
            "acme": PluginSettings(settings={}),
        }
    )
    with pytest.raises(ConfigError) as info:
        make_service(("rec", RecordingChannel()), ("acme", Acme()), config=config)
    assert sorted(info.value.errors) == [
        "plugins.acme.endpoint: required field missing",
        "plugins.foo: no plugin named 'foo' is installed",
        "plugins.rec.colour: unknown key (plugin 'rec' takes no settings)",
    ]


def test_settings_of_a_disabled_plugin_are_not_checked():
    config = ServiceConfig(plugins={"acme": PluginSettings(enabled=False, settings={"bogus": 1})})
    service = make_service(("rec", RecordingChannel()), config=config)
    assert "acme" not in {info.name for info in service.plugins()}


def test_describe_config_redacts_secrets():
    config = ServiceConfig(
        plugins={
            "acme": PluginSettings(
                rollout=50,
                settings={"endpoint": "https://acme.test", "api_key": "k-123", "webhook_token": "wh-456"},
            ),
            "legacy": PluginSettings(enabled=False, settings={"password": "hunter2", "host": "db.local"}),
        }
    )
    service = make_service(("acme", Acme()), config=config)
    described = service.describe_config()

    assert described["plugins"]["acme"] == {
        "enabled": True,
        "rollout": 50.0,
        "endpoint": "https://acme.test",
        "retries": 3,
        "api_key": "**********",
        "webhook_token": "**********",
        "legacy_region": "eu",
    }
    assert described["plugins"]["legacy"] == {
        "enabled": False,
        "rollout": 100.0,
        "password": "**********",
        "host": "db.local",
    }
    assert described["send_concurrency"] == 10
    dumped = json.dumps(described)
    for secret in ("k-123", "wh-456", "hunter2"):
        assert secret not in dumped


def test_describe_config_redacts_secrets_in_nested_tables():
    config = ServiceConfig(
        plugins={
            "legacy": PluginSettings(enabled=False, settings={"auth": {"token": "t-789", "user": "ann"}})
        }
    )
    service = make_service(config=config)
    dumped = json.dumps(service.describe_config())
    assert "t-789" not in dumped
    assert "ann" in dumped


@attrs.frozen
class QuietConfig:
    level: str = "info"


class Quiet:
    @hookimpl
    def register_config(self):
        return QuietConfig


def test_describe_config_shows_the_defaults_of_a_plugin_without_a_section():
    described = make_service(("quiet", Quiet())).describe_config()
    assert described["plugins"] == {"quiet": {"enabled": True, "rollout": 100.0, "level": "info"}}
    assert described["default_route"] == []


# ---------------------------------------------------------------- introspection


def test_plugin_manager_is_exposed_for_introspection(recording_channel):
    service = make_service(("rec", recording_channel))
    assert service.plugin_manager.get_plugin("rec") is recording_channel
    assert service.plugin_manager.has_plugin("omnichannel._builtins")


def test_make_service_uses_a_fake_clock():
    assert isinstance(make_service().clock, FakeClock)


class _Veto:
    """A validator registered after the service was created."""

    @hookimpl
    def validate(self, message):
        return [f"recipient: {message.recipient} is on the deny list"]


async def test_hook_validate_of_a_plugin_registered_later_takes_part(recording_channel):
    async with make_service(recording_channel) as service:
        await service.send(Message("+15550001", Text("hi"), channel="recording"))
        service.plugin_manager.register(_Veto(), name="veto")
        with pytest.raises(MessageValidationError) as info:
            await service.send(Message("+15550002", Text("hi"), channel="recording"))
        assert info.value.problems == ["recipient: +15550002 is on the deny list"]
        service.plugin_manager.unregister(name="veto")
        assert (await service.send(Message("+15550003", Text("hi"), channel="recording"))).ok


async def test_hook_validate_problems_are_the_same_with_and_without_monitoring(recording_channel):
    class Second:
        @hookimpl
        def validate(self):
            return ["second: problem"]

    bad = Message("", Text(" "), channel="recording")
    async with make_service(recording_channel, ("first", _Veto()), ("second", Second())) as service:
        with pytest.raises(MessageValidationError) as direct:
            await service.send(bad)
        with HookRecorder(service.plugin_manager), pytest.raises(MessageValidationError) as monitored:
            await service.send(bad)
    assert direct.value.problems == monitored.value.problems
    # pluggy's order: the last registered first (the core's built-ins are registered last).
    assert direct.value.problems == [
        "recipient: must not be empty",
        "content.body: must not be empty",
        "second: problem",
        "recipient:  is on the deny list",
    ]
