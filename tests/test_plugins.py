"""The plugin manager: entry points, blocking, load errors, registration errors, order, rollout, infos."""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import logging
import sys
import types
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import omnichannel
import omnichannel_console
from omnichannel import (
    Channel,
    Message,
    OmniChannelService,
    PluginError,
    PluginSettings,
    ServiceConfig,
    Text,
    UnknownChannelError,
    hookimpl,
    load_config,
)
from omnichannel import plugins as _plugins
from omnichannel.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    PluginInfo,
    get_plugin_manager,
    in_rollout,
    register_plugin,
    rollout_bucket,
)
from omnichannel.testing import RecordingChannel, make_service

EntryPoint = importlib.metadata.EntryPoint


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


def channel_module(module_name: str, channel: str) -> types.ModuleType:
    """A plugin module (as an entry point would name) that declares ``channel``."""
    module = types.ModuleType(module_name)

    @hookimpl
    def register_channels():
        return [Channel(channel, {"text"})]

    module.register_channels = register_channels
    return module


@pytest.fixture
def fake_modules(monkeypatch) -> Callable[[types.ModuleType], types.ModuleType]:
    """Make a module importable by name for the duration of the test."""

    def add(module: types.ModuleType) -> types.ModuleType:
        monkeypatch.setitem(sys.modules, module.__name__, module)
        return module

    return add


@pytest.fixture
def broken_module(tmp_path, monkeypatch) -> Iterator[str]:
    """The name of a module that raises when imported (a plugin whose extra is missing)."""
    name = "omnichannel_test_broken_plugin"
    (tmp_path / f"{name}.py").write_text(
        "raise ImportError(\"the 'amqp' extra is not installed: pip install 'omnichannel[amqp]'\")\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


@pytest.fixture
def entry_points(monkeypatch) -> Callable[..., None]:
    """Replace the installed entry points with the given ones (in the given order)."""

    def install(*eps: importlib.metadata.EntryPoint) -> None:
        monkeypatch.setattr(_plugins, "_entry_points", lambda: iter(eps))

    return install


def text(channel: str) -> Message:
    return Message("+15551234567", Text("hi"), channel=channel)


# ---------------------------------------------------------------- entry points


def test_installed_entry_point_plugins_are_loaded():
    pm = get_plugin_manager()
    assert pm.get_plugin("console") is omnichannel_console
    assert pm.distributions["console"] == ("omnichannel", omnichannel.__version__)
    assert pm.load_errors == []
    assert pm.has_plugin("omnichannel._builtins")


def test_a_service_loads_installed_plugins_by_default():
    service = OmniChannelService(environ={})
    assert service.channel_owner("console") == "console"
    assert service.channel_info("console").capabilities == {"text", "template", "media", "buttons", "list"}


def test_load_entrypoints_false_loads_only_the_given_plugins():
    channel = RecordingChannel()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[("rec", channel)])
    assert not pm.has_plugin("console")
    assert [name for name, _ in pm.list_name_plugin()] == ["rec", *DEFAULT_PLUGINS]


def test_blocked_plugins_are_not_loaded():
    pm = get_plugin_manager(blocked=["console"])
    assert not pm.has_plugin("console")
    assert pm.is_blocked("console")
    assert pm.load_errors == []


def test_disable_plugins_environment_variable_blocks_a_plugin():
    config = load_config(environ={"OMNICHANNEL_DISABLE_PLUGINS": "console, metrics"})
    assert config.disabled_plugins == ("console", "metrics")
    service = OmniChannelService(config, environ={})
    assert "console" not in service.channels
    assert service.plugin_manager.is_blocked("console")
    assert "console" not in {info.name for info in service.plugins()}


async def test_a_disabled_channel_plugin_cannot_be_sent_to(isolated_env):
    config = load_config(environ={"OMNICHANNEL_DISABLE_PLUGINS": "console"})
    async with OmniChannelService(config, plugins=[("rec", RecordingChannel())], environ={}) as service:
        with pytest.raises(UnknownChannelError) as info:
            await service.send(text("console"))
    assert "console" not in info.value.available
    assert "recording" in info.value.available
    assert str(info.value).startswith("no enabled plugin provides channel 'console' (available: ")


def test_a_plugin_section_with_enabled_false_blocks_the_plugin():
    service = OmniChannelService(
        ServiceConfig(plugins={"console": PluginSettings(enabled=False)}), environ={}
    )
    assert "console" not in service.channels


def test_disabling_accepts_underscores_for_kebab_case_names(entry_points, fake_modules):
    fake_modules(channel_module("omnichannel_test_sms_twilio", "sms"))
    entry_points(entry_point("sms-twilio", "omnichannel_test_sms_twilio"))
    config = load_config(environ={"OMNICHANNEL_DISABLE_PLUGINS": "sms_twilio"})
    service = OmniChannelService(config, environ={})
    assert "sms" not in service.channels
    enabled = OmniChannelService(environ={})
    assert enabled.channel_owner("sms") == "sms-twilio"


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_load(
    entry_points, fake_modules, broken_module
):
    fake_modules(channel_module("omnichannel_test_good", "good"))
    entry_points(
        entry_point("amqp", broken_module),
        entry_point("console", "omnichannel_console"),
        entry_point("good", "omnichannel_test_good"),
    )
    pm = get_plugin_manager()

    [error] = pm.load_errors
    assert isinstance(error, PluginError)
    assert error.plugin_name == "amqp"
    assert str(error) == (
        "plugin 'amqp': failed to import 'omnichannel_test_broken_plugin': "
        "ImportError(\"the 'amqp' extra is not installed: pip install 'omnichannel[amqp]'\")"
    )
    assert isinstance(error.__cause__, ImportError)
    assert not pm.has_plugin("amqp")
    assert pm.has_plugin("console")
    assert pm.has_plugin("good")


def test_strict_mode_raises_the_load_error(entry_points, broken_module):
    entry_points(entry_point("amqp", broken_module), entry_point("console", "omnichannel_console"))
    with pytest.raises(PluginError) as info:
        get_plugin_manager(strict=True)
    assert info.value.plugin_name == "amqp"
    with pytest.raises(PluginError, match=r"^plugin 'amqp': failed to import"):
        OmniChannelService(ServiceConfig(strict_plugins=True), environ={})


def test_a_service_logs_and_lists_plugins_that_failed_to_load(entry_points, broken_module, caplog):
    entry_points(entry_point("amqp", broken_module), entry_point("console", "omnichannel_console"))
    with caplog.at_level(logging.ERROR, logger="omnichannel"):
        service = OmniChannelService(environ={})
    assert service.channel_owner("console") == "console"
    [record] = [r for r in caplog.records if r.name == "omnichannel"]
    assert record.getMessage().startswith("plugin 'amqp': failed to import 'omnichannel_test_broken_plugin'")
    assert record.getMessage().endswith("(the other plugins are loaded)")
    [failed] = [info for info in service.plugins() if info.error]
    assert failed.name == "amqp"
    assert failed.hooks == ()
    assert failed.error.startswith("failed to import 'omnichannel_test_broken_plugin'")


def test_a_blocked_plugin_is_not_even_imported(entry_points, broken_module):
    entry_points(entry_point("amqp", broken_module))
    pm = get_plugin_manager(blocked=["amqp"])
    assert pm.load_errors == []
    assert broken_module not in sys.modules


def test_entry_points_load_in_alphabetical_order(monkeypatch, fake_modules):
    for name in ("zeta", "alpha", "mid", "alpha_shadow"):
        fake_modules(channel_module(f"omnichannel_test_{name}", name.replace("_", "-")))
    eps = [
        entry_point("zeta", "omnichannel_test_zeta"),
        entry_point("alpha", "omnichannel_test_alpha"),
        entry_point("mid", "omnichannel_test_mid"),
        # The same name seen twice (editable install and a build dir): the first one wins.
        entry_point("alpha", "omnichannel_test_alpha_shadow"),
    ]

    def fake_entry_points(*, group):
        assert group == "omnichannel"
        return eps

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    pm = get_plugin_manager()

    assert [name for name, _ in pm.list_name_plugin()] == ["alpha", "mid", "zeta", *DEFAULT_PLUGINS]
    assert pm.get_plugin("alpha") is sys.modules["omnichannel_test_alpha"]
    # pluggy calls the last registered first: the call order is reverse-alphabetical, every time.
    order = [impl.plugin_name for impl in _plugins.hook_impls(pm, "register_channels")]
    assert order == ["zeta", "mid", "alpha"]
    eps.reverse()
    again = get_plugin_manager()
    assert [name for name, _ in again.list_name_plugin()] == ["alpha", "mid", "zeta", *DEFAULT_PLUGINS]


# ---------------------------------------------------------------- registration errors


def test_a_hookimpl_with_an_unknown_argument_is_a_plugin_error():
    class Bad:
        @hookimpl
        def validate(self, message, colour):
            return None

    with pytest.raises(PluginError) as info:
        get_plugin_manager(load_entrypoints=False, plugins=[("bad", Bad())])
    assert info.value.plugin_name == "bad"
    assert "validate(message, colour)" in info.value.reason
    assert "Argument(s) {'colour'} are declared in the hookimpl but can not be found in the hookspec" in str(
        info.value
    )


def test_a_wrapper_that_is_not_a_generator_is_a_plugin_error():
    class NotAGenerator:
        @hookimpl(wrapper=True)
        def send(self, payload):
            return None

    with pytest.raises(PluginError) as info:
        make_service(("lazy-wrapper", NotAGenerator()))
    assert info.value.plugin_name == "lazy-wrapper"
    assert "Declared as wrapper=True or hookwrapper=True but function is not a generator function" in str(
        info.value
    )


def test_a_rejected_entry_point_plugin_is_a_load_error(entry_points, fake_modules):
    module = types.ModuleType("omnichannel_test_bad_args")

    @hookimpl
    def build(message, colour):
        return None

    module.build = build
    fake_modules(module)
    fake_modules(channel_module("omnichannel_test_fine", "fine"))
    entry_points(entry_point("bad-args", module.__name__), entry_point("fine", "omnichannel_test_fine"))
    pm = get_plugin_manager()
    [error] = pm.load_errors
    assert error.plugin_name == "bad-args"
    assert "can not be found in the hookspec" in error.reason
    assert pm.has_plugin("fine")
    assert not pm.has_plugin("bad-args")


def test_an_implementation_of_an_unknown_hook_is_a_load_error_and_unregistered(recording_channel):
    class Typo:
        @hookimpl
        def on_message_sent(self, event):
            return None

    typo = Typo()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[("typo", typo), ("rec", recording_channel)])
    [error] = pm.load_errors
    assert error.plugin_name == "typo"
    assert "unknown hook 'on_message_sent'" in error.reason
    assert not pm.has_plugin("typo")
    assert not pm.is_registered(typo)
    assert pm.has_plugin("rec")
    with pytest.raises(PluginError, match=r"^plugin 'typo': unknown hook 'on_message_sent'"):
        get_plugin_manager(load_entrypoints=False, plugins=[("typo", Typo())], strict=True)


def test_a_plugin_name_can_only_be_registered_once():
    with pytest.raises(PluginError) as info:
        get_plugin_manager(
            load_entrypoints=False, plugins=[("rec", RecordingChannel()), ("rec", RecordingChannel())]
        )
    assert info.value.plugin_name == "rec"
    assert "already registered" in info.value.reason


def test_register_plugin_returns_the_name_used():
    pm = get_plugin_manager(load_entrypoints=False)
    assert register_plugin(pm, RecordingChannel(), "named") == "named"
    module = channel_module("omnichannel_test_unnamed", "unnamed")
    assert register_plugin(pm, module) == "omnichannel_test_unnamed"
    pm.set_blocked("blocked")
    assert register_plugin(pm, RecordingChannel(), "blocked") == "blocked"
    assert not pm.has_plugin("blocked")


def test_trace_plugins_logs_every_hook_call_until_stopped(recording_channel, caplog):
    async def run(service):
        async with service:
            await service.send(text("recording"))

    service = make_service(("rec", recording_channel), config=ServiceConfig(trace_plugins=True))
    with caplog.at_level(logging.DEBUG, logger="omnichannel"):
        asyncio.run(run(service))
        before = len(caplog.records)
        service.plugin_manager.hook.validate(message=text("recording"), channel="recording", service=service)
    messages = [r.getMessage() for r in caplog.records[:before]]
    assert "hook build -> rec" in messages
    assert "hook build <- ok" in messages
    assert any(m.startswith("hook send -> ") for m in messages)
    assert len(caplog.records) == before  # tracing stopped with the service


# ---------------------------------------------------------------- rollout


recipients = st.text(min_size=0, max_size=40)
plugin_names = st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True)


@settings(database=None, max_examples=200)
@given(plugin_names, recipients)
def test_rollout_bucket_is_stable_and_in_range(plugin, recipient):
    bucket = rollout_bucket(plugin, recipient)
    assert 0 <= bucket < 100
    assert rollout_bucket(plugin, recipient) == bucket
    assert round(bucket, 2) == bucket  # hundredths of a percent


@settings(database=None, max_examples=200)
@given(plugin_names, recipients)
def test_in_rollout_edges(plugin, recipient):
    assert in_rollout(0, plugin, recipient) is False
    assert in_rollout(-5, plugin, recipient) is False
    assert in_rollout(100, plugin, recipient) is True
    assert in_rollout(150, plugin, recipient) is True


@settings(database=None, max_examples=200)
@given(plugin_names, recipients, st.floats(0, 100), st.floats(0, 100))
def test_in_rollout_grows_with_the_percentage(plugin, recipient, low, high):
    low, high = sorted((low, high))
    if in_rollout(low, plugin, recipient):
        assert in_rollout(high, plugin, recipient)
    assert in_rollout(low, plugin, recipient) == (
        low >= 100 or (low > 0 and rollout_bucket(plugin, recipient) < low)
    )


def test_in_rollout_takes_about_the_given_share():
    population = [f"+1555{i:07d}" for i in range(2000)]
    for percent in (1, 10, 25, 50, 90):
        share = sum(in_rollout(percent, "metrics", r) for r in population) / len(population) * 100
        assert abs(share - percent) < 4, (percent, share)


def test_each_plugin_draws_its_own_sample():
    population = [f"+1555{i:07d}" for i in range(2000)]
    a = {r for r in population if in_rollout(50, "resilience", r)}
    b = {r for r in population if in_rollout(50, "metrics", r)}
    # Independent samples of half the population overlap on about a quarter of it.
    assert 400 <= len(a & b) <= 600


# ---------------------------------------------------------------- plugin infos


class Wrapper:
    @hookimpl(wrapper=True)
    def send(self):
        return (yield)

    @hookimpl
    def on_event(self, event):
        return None


def test_plugin_infos_describe_every_plugin():
    service = make_service(("rec", RecordingChannel()), ("mw", Wrapper()), ("sms", RecordingChannel("sms")))
    assert service.plugins() == [
        PluginInfo(name="mw", hooks=("on_event", "send")),
        PluginInfo(name="omnichannel._amqp_health", hooks=("health",), builtin=True),
        PluginInfo(name="omnichannel._builtins", hooks=("send", "validate"), builtin=True),
        PluginInfo(name="omnichannel._settle_keys", hooks=("on_event", "shutdown"), builtin=True),
        PluginInfo(name="rec", hooks=("build", "register_channels", "send"), channels=("recording",)),
        PluginInfo(name="sms", hooks=("build", "register_channels", "send"), channels=("sms",)),
    ]


def test_plugin_infos_of_entry_point_plugins_have_a_version():
    service = OmniChannelService(environ={})
    infos = {info.name: info for info in service.plugins()}
    assert infos["console"] == PluginInfo(
        name="console",
        hooks=("build", "register_channels", "register_config", "send"),
        version=omnichannel.__version__,
        distribution="omnichannel",
        channels=("console",),
    )


def test_plugin_infos_leave_out_blocked_plugins():
    pm = get_plugin_manager(blocked=["console"])
    assert "console" not in {info.name for info in _plugins.plugin_infos(pm)}
