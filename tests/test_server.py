"""The web application of ``omnichannel serve``, served on a loopback port."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from omnichannel import (
    MessageValidationError,
    PermanentDeliveryError,
    PluginError,
    Route,
    UnknownChannelError,
    WebhookError,
    hookimpl,
)
from omnichannel.server import SERVICE_KEY, make_app
from omnichannel.testing import RecordingChannel, make_service


class RoutesPlugin:
    """A plugin that contributes the given routes."""

    def __init__(self, *routes):
        self._routes = list(routes)

    @hookimpl
    def register_routes(self):
        return self._routes


class WebhookPlugin:
    """A channel-style plugin whose routes close over the service they were made for."""

    def __init__(self):
        self.received = []

    @hookimpl
    def register_routes(self, service):
        async def status(request):
            body = await request.json()
            if request.headers.get("X-Signature") != "good":
                raise WebhookError("signature mismatch", status=401)
            if "status" not in body:
                raise WebhookError("payload has no 'status'")
            self.received.append(body)
            return web.json_response({"accepted": True, "service_started": service.started})

        async def crash(request):
            raise RuntimeError("database password is hunter2")

        return [
            Route("post", "/webhooks/recording", status, name="recording-webhook"),
            Route("GET", "/webhooks/recording/crash", crash),
        ]


def client_for(app):
    return TestClient(TestServer(app, host="127.0.0.1"))


@pytest.fixture
async def client(service):
    """A client of an app around the started ``service`` fixture (which the app does not manage)."""
    async with client_for(make_app(service, manage_service=False)) as client:
        yield client


# ---------------------------------------------------------------- health and readiness


async def test_health(client):
    response = await client.get("/health")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"status": "ok", "degraded": [], "plugins": {}}


async def test_health_does_not_need_a_started_service():
    async with client_for(make_app(make_service(RecordingChannel()), manage_service=False)) as client:
        response = await client.get("/health")
        assert (response.status, await response.json()) == (
            200,
            {"status": "ok", "degraded": [], "plugins": {}},
        )


async def test_ready_before_start():
    service = make_service(RecordingChannel())
    async with client_for(make_app(service, manage_service=False)) as client:
        response = await client.get("/ready")
        assert response.status == 503
        assert await response.json() == {"status": "not ready"}
    assert not service.started


async def test_ready_when_started(client):
    response = await client.get("/ready")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "channels": ["recording"]}


async def test_the_app_starts_and_stops_the_service():
    service = make_service(RecordingChannel("sms"), RecordingChannel("email"))
    app = make_app(service)
    assert app[SERVICE_KEY] is service
    assert not service.started
    async with client_for(app) as client:
        assert service.started
        response = await client.get("/ready")
        assert response.status == 200
        assert await response.json() == {"status": "ready", "channels": ["email", "sms"]}
    assert not service.started


async def test_an_unmanaged_service_is_left_alone(service):
    async with client_for(make_app(service, manage_service=False)):
        pass
    assert service.started


# ---------------------------------------------------------------- plugin routes


async def test_plugin_route_is_served():
    plugin = WebhookPlugin()
    async with client_for(make_app(make_service(RecordingChannel(), plugin))) as client:
        response = await client.post(
            "/webhooks/recording", json={"status": "delivered"}, headers={"X-Signature": "good"}
        )
        assert response.status == 200
        assert await response.json() == {"accepted": True, "service_started": True}
    assert plugin.received == [{"status": "delivered"}]


async def test_plugin_route_name_is_registered():
    app = make_app(make_service(WebhookPlugin()), manage_service=False)
    assert str(app.router["recording-webhook"].url_for()) == "/webhooks/recording"


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        ({"X-Signature": "bad"}, {"status": "read"}, 401, "signature mismatch"),
        ({"X-Signature": "good"}, {}, 400, "payload has no 'status'"),
    ],
)
async def test_webhook_error_becomes_its_status(headers, body, status, message):
    plugin = WebhookPlugin()
    async with client_for(make_app(make_service(plugin))) as client:
        response = await client.post("/webhooks/recording", json=body, headers=headers)
        assert response.status == status
        assert response.content_type == "application/json"
        assert await response.json() == {"error": {"type": "WebhookError", "message": message}}
    assert plugin.received == []


async def test_unexpected_exception_is_a_json_500_without_details(caplog):
    async with client_for(make_app(make_service(WebhookPlugin()))) as client:
        with caplog.at_level(logging.ERROR, logger="omnichannel.server"):
            response = await client.get("/webhooks/recording/crash")
        text = await response.text()
    assert response.status == 500
    assert response.content_type == "application/json"
    assert await response.json() == {"error": {"type": "InternalError", "message": "internal server error"}}
    assert "Traceback" not in text
    assert "hunter2" not in text
    assert "RuntimeError" not in text
    # The operator, not the caller, gets the details.
    [record] = [r for r in caplog.records if r.name == "omnichannel.server"]
    assert record.getMessage() == "GET /webhooks/recording/crash failed"
    assert record.exc_info is not None


@pytest.mark.parametrize(
    ("error", "status", "body"),
    [
        (
            MessageValidationError(["content.body: must not be empty"]),
            422,
            {
                "type": "MessageValidationError",
                "message": "message is invalid:\n  - content.body: must not be empty",
                "problems": ["content.body: must not be empty"],
            },
        ),
        (
            UnknownChannelError("sms", available=["console"]),
            404,
            {
                "type": "UnknownChannelError",
                "message": "no enabled plugin provides channel 'sms' (available: console)",
            },
        ),
        (
            PermanentDeliveryError("bad recipient", channel="sms"),
            502,
            {"type": "PermanentDeliveryError", "message": "bad recipient (channel=sms)"},
        ),
        (
            PluginError("sms", "not configured"),
            500,
            {"type": "PluginError", "message": "plugin 'sms': not configured"},
        ),
    ],
    ids=["validation", "unknown-channel", "delivery", "other"],
)
async def test_omnichannel_errors_become_json(error, status, body):
    async def handler(request):
        raise error

    app = make_app(make_service(RoutesPlugin(Route("GET", "/fail", handler))), manage_service=False)
    async with client_for(app) as client:
        response = await client.get("/fail")
        assert response.status == status
        assert await response.json() == {"error": body}


async def test_unknown_path_is_json_404(client):
    response = await client.get("/no/such/path")
    assert response.status == 404
    assert response.content_type == "application/json"
    assert await response.json() == {"error": {"type": "Not Found", "message": "404: Not Found"}}


async def test_wrong_method_is_json_405_with_allow(client):
    response = await client.delete("/health")
    assert response.status == 405
    assert response.content_type == "application/json"
    assert await response.json() == {
        "error": {"type": "Method Not Allowed", "message": "405: Method Not Allowed"}
    }
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}


async def test_redirects_pass_through():
    async def moved(request):
        raise web.HTTPFound("/health")

    app = make_app(make_service(RoutesPlugin(Route("GET", "/old", moved))), manage_service=False)
    async with client_for(app) as client:
        response = await client.get("/old", allow_redirects=False)
        assert response.status == 302
        assert response.headers["Location"] == "/health"


# ---------------------------------------------------------------- route conflicts


async def _ok(request):
    return web.json_response({})


def test_same_route_from_two_plugins_is_a_plugin_error():
    service = make_service(
        ("alpha", RoutesPlugin(Route("POST", "/webhooks/x", _ok))),
        ("beta", RoutesPlugin(Route("post", "/webhooks/x", _ok))),
    )
    with pytest.raises(PluginError) as info:
        make_app(service)
    assert str(info.value) == "plugin 'alpha': route POST /webhooks/x is already added by 'beta'"
    assert info.value.plugin_name == "alpha"


def test_same_path_with_other_methods_is_fine():
    service = make_service(
        ("alpha", RoutesPlugin(Route("GET", "/webhooks/x", _ok))),
        ("beta", RoutesPlugin(Route("POST", "/webhooks/x", _ok))),
    )
    app = make_app(service, manage_service=False)
    methods = {r.method for r in app.router.routes() if r.resource.canonical == "/webhooks/x"}
    assert methods == {"GET", "POST"}


def test_same_route_name_from_two_plugins_is_a_plugin_error():
    service = make_service(
        ("alpha", RoutesPlugin(Route("GET", "/webhooks/a", _ok, name="webhook"))),
        ("beta", RoutesPlugin(Route("GET", "/webhooks/b", _ok, name="webhook"))),
    )
    with pytest.raises(PluginError, match="webhook"):
        make_app(service)


def test_a_plugin_cannot_shadow_a_builtin_route():
    service = make_service(("alpha", RoutesPlugin(Route("GET", "/health", _ok))))
    with pytest.raises(PluginError) as info:
        make_app(service)
    assert info.value.plugin_name == "alpha"
    assert "/health" in str(info.value)


def test_register_routes_must_return_routes():
    service = make_service(("alpha", RoutesPlugin(("GET", "/x", _ok))))
    with pytest.raises(PluginError) as info:
        make_app(service)
    assert info.value.plugin_name == "alpha"
    assert str(info.value).startswith("plugin 'alpha': register_routes must return Route objects, got ")
