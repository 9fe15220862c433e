"""The WhatsApp sandbox's server and command: start and stop, end to end with the plugin, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sandbox_runtime_support import (
    RECIPIENT,
    fixture_http,  # noqa: F401  (the fixture)
    stand_in_graph,
)

import omnichannel_whatsapp
from omnichannel import (
    DeliveryStatus,
    Message,
    PluginSettings,
    ServiceConfig,
    StatusChanged,
    Text,
    TransientDeliveryError,
)
from omnichannel.server import make_app
from omnichannel.testing import EventRecorder, FakeClock, make_service
from omnichannel_whatsapp.sandbox import Fault, Sandbox, SandboxSettings, sandbox_command

# ---------------------------------------------------------------- the server


async def test_the_sandbox_starts_quickly_on_a_free_port_and_stops_cleanly(http):
    sandbox = Sandbox(graph=stand_in_graph)
    with pytest.raises(RuntimeError):
        _ = sandbox.url
    started = time.monotonic()
    await sandbox.start()
    assert time.monotonic() - started < 0.5
    url = sandbox.url
    assert url.startswith("http://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    assert port > 0
    assert sandbox.settings.port == port
    assert sandbox.plugin_settings()["base_url"] == url
    assert sandbox.dispatcher.running
    async with http.get(f"{url}/_sandbox/health") as answer:
        assert answer.status == 200
    await sandbox.stop()
    assert not sandbox.dispatcher.running
    assert sandbox.dispatcher.http is None or sandbox.dispatcher.http.closed
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.get(f"{url}/_sandbox/health")
    await sandbox.stop()  # twice is harmless
    with pytest.raises(RuntimeError):
        await sandbox.start()


async def test_a_taken_port_fails_to_start_cleanly():
    async with Sandbox(graph=stand_in_graph) as first:
        port = first.settings.port
        second = Sandbox(SandboxSettings(port=port), graph=stand_in_graph)
        with pytest.raises(OSError, match="address already in use"):
            await second.start()
        assert not second.started


# ---------------------------------------------------------------- end to end, with the real Graph routes


async def test_end_to_end_the_plugin_sends_and_gets_its_statuses_back():
    events = EventRecorder()
    async with Sandbox(SandboxSettings(read_probability=1.0), clock=FakeClock()) as sandbox:
        plugin = sandbox.plugin_settings(verify_token="verify-me")
        config = ServiceConfig(plugins={"whatsapp": PluginSettings(settings=plugin)})
        service = make_service(("whatsapp", omnichannel_whatsapp), events, config=config)
        server = TestServer(make_app(service), host="127.0.0.1")
        await server.start_server()
        try:
            sandbox.set_webhook_url(str(server.make_url("/webhooks/whatsapp")))
            assert await sandbox.dispatcher.handshake("verify-me")
            receipt = await service.send(
                Message(f"+{RECIPIENT}", Text("hello"), channel="whatsapp", id="m-1")
            )
            [accepted] = sandbox.state.messages
            assert receipt.provider_message_id == accepted.wamid
            assert accepted.body["biz_opaque_callback_data"] == "m-1"
            await sandbox.dispatcher.drain(timeout_s=5)
            assert all(r.answer_status == 200 for r in sandbox.state.webhooks)
            changes = events.of_type(StatusChanged)
            assert [(e.message_id, e.provider_message_id, e.status) for e in changes] == [
                ("m-1", accepted.wamid, DeliveryStatus.SENT),
                ("m-1", accepted.wamid, DeliveryStatus.DELIVERED),
                ("m-1", accepted.wamid, DeliveryStatus.READ),
            ]
            assert changes[0].details["pricing"]["pricing_model"] == "PMP"

            # an outage: the plugin sees a transient error, then the API is back
            sandbox.faults.add(Fault("error", http_status=503, code=2, remaining=1))
            with pytest.raises(TransientDeliveryError):
                await service.send(Message(f"+{RECIPIENT}", Text("again"), channel="whatsapp", id="m-2"))
            assert (
                await service.send(Message(f"+{RECIPIENT}", Text("again"), channel="whatsapp", id="m-3"))
            ).ok
            await sandbox.dispatcher.drain(timeout_s=5)
            assert {e.message_id for e in events.of_type(StatusChanged)} == {"m-1", "m-3"}

            # a recipient that is not on WhatsApp: accepted, then failed by webhook
            gone = sandbox.settings.not_on_whatsapp[0]
            await service.send(Message(f"+{gone}", Text("hi"), channel="whatsapp", id="m-404"))
            await sandbox.dispatcher.drain(timeout_s=5)
            [failed] = [e for e in events.of_type(StatusChanged) if e.message_id == "m-404"]
            assert failed.status is DeliveryStatus.FAILED
            assert failed.error is not None
            assert "131026" in failed.error.detail
        finally:
            await server.close()


def test_the_command_prints_the_settings_and_stops_on_sigint(tmp_path):
    code = "from omnichannel_whatsapp.sandbox import sandbox_command; sandbox_command()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--access-token", "tok-1", "--error-rate", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or lines[-1].strip() != "Stop with Ctrl-C.":
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else "no output"
            lines.append(line)
        text = "".join(lines)
        url = lines[0].split(" on ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        assert "[plugins.whatsapp]" in text
        assert f'base_url = "{url}"' in text
        assert 'access_token = "tok-1"' in text
        assert f'phone_number_id = "{SandboxSettings().phone_number_id}"' in text
        assert f'waba_id = "{SandboxSettings().waba_id}"' in text
        faults = get_json(f"{url}/_sandbox/faults")["faults"]
        assert [f["probability"] for f in faults.values()] == [0.5]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def test_the_command_is_a_click_command():
    assert sandbox_command.name == "sandbox"
    names = {p.name for p in sandbox_command.params}
    assert {
        "host",
        "port",
        "seed_file",
        "webhook_url",
        "app_secret",
        "access_token",
        "throughput",
        "latency_ms",
        "error_rate",
        "seed",
    } <= names
