"""The sandbox's Graph API and templates: send errors, listing and paging, and the plugin's registry."""

from __future__ import annotations

import pytest
from sandbox_graph_support import (
    AUTH,
    INVALID,
    MESSAGES,
    NOT_VALID,
    TO,
    UNSUPPORTED,
    WABA,
    error,
    fixture_clock,  # noqa: F401  (the fixture)
    fixture_graph,  # noqa: F401  (the fixture)
    fixture_state,  # noqa: F401  (the fixture)
    without_trace,
)

from omnichannel import Template
from omnichannel_whatsapp.templates import MemoryTemplateCache, TemplateRegistry, check_template


def template_body(name, language="en_US", components=None):
    template = {"name": name, "language": {"code": language}}
    if components is not None:
        template["components"] = components
    return {"messaging_product": "whatsapp", "to": TO, "type": "template", "template": template}


def params(*values, kind="text"):
    return [{"type": "text", "text": v} if kind == "text" else v for v in values]


ORDER_UPDATE = [
    {"type": "header", "parameters": params("#8899")},
    {"type": "body", "parameters": params("Pablo", "8899", "today")},
    {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "8899"}]},
]


# ---------------------------------------------------------------- errors: templates

TEMPLATE_ERRORS = {
    "unknown name": (
        template_body("order_updates"),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (order_updates) does not exist in en_US",
        ),
    ),
    "unknown language": (
        template_body("order_update", "en"),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (order_update) does not exist in en",
        ),
    ),
    "rejected": (
        template_body("limited_offer", components=[{"type": "body", "parameters": params("Ann")}]),
        404,
        error(
            132001,
            "(#132001) Template name does not exist in the translation",
            details="template name (limited_offer) does not exist in en_US",
        ),
    ),
    "paused": (
        template_body("spring_sale", components=[{"type": "body", "parameters": params("20%", "Sunday")}]),
        400,
        error(
            132015,
            "(#132015) Template is Paused",
            details="Template is paused due to low quality so it cannot be sent in a template message.",
        ),
    ),
    "disabled": (
        template_body("winter_clearance"),
        400,
        error(
            132016,
            "(#132016) Template is Disabled",
            details="Template has been paused too many times due to low quality "
            "and is now permanently disabled.",
        ),
    ),
    "body count": (
        template_body(
            "order_update",
            components=[ORDER_UPDATE[0], {"type": "body", "parameters": params("Pablo")}, ORDER_UPDATE[2]],
        ),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: number of localizable_params (1) does not match the expected number of params (3)",
        ),
    ),
    "params for a template without any": (
        template_body("hello_world", components=[{"type": "body", "parameters": params("x")}]),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: number of localizable_params (1) does not match the expected number of params (0)",
        ),
    ),
    "missing media header": (
        template_body(
            "appointment_reminder", components=[{"type": "body", "parameters": params("A", "B", "C")}]
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="header: Format mismatch, expected IMAGE, received UNKNOWN",
        ),
    ),
    "wrong media header": (
        template_body(
            "appointment_reminder",
            components=[
                {
                    "type": "header",
                    "parameters": [{"type": "video", "video": {"link": "https://x.example/v.mp4"}}],
                },
                {"type": "body", "parameters": params("A", "B", "C")},
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="header: Format mismatch, expected IMAGE, received VIDEO",
        ),
    ),
    "named parameters to a positional template": (
        template_body(
            "order_update",
            components=[
                ORDER_UPDATE[0],
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "a", "text": "x"}] * 3},
                ORDER_UPDATE[2],
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="body: Format mismatch, expected POSITIONAL, received NAMED",
        ),
    ),
    "positional parameters to a named template": (
        template_body("welcome", components=[{"type": "body", "parameters": params("Ann")}]),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="body: Format mismatch, expected NAMED, received POSITIONAL",
        ),
    ),
    "wrong parameter name": (
        template_body(
            "welcome",
            components=[
                {"type": "body", "parameters": [{"type": "text", "parameter_name": "name", "text": "A"}]}
            ],
        ),
        400,
        error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
            details="body: parameter names (name) do not match the expected parameter names (first_name)",
        ),
    ),
    "url button parameter missing": (
        template_body("order_update", components=ORDER_UPDATE[:2]),
        400,
        error(
            131008,
            "(#131008) Required parameter is missing",
            details="buttons: Button at index 1 of type Url requires a parameter",
        ),
    ),
    "button of the wrong kind": (
        template_body(
            "order_update",
            components=[
                *ORDER_UPDATE,
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": "0",
                    "parameters": [{"type": "text", "text": "x"}],
                },
            ],
        ),
        400,
        error(
            132012,
            "(#132012) Parameter format does not match format in the created template",
            details="buttons: Button at index 0 of type QuickReply: "
            "Format mismatch, expected QUICK_REPLY, received URL",
        ),
    ),
    "button that does not exist": (
        template_body(
            "order_update",
            components=[
                *ORDER_UPDATE,
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": 5,
                    "parameters": [{"type": "payload", "payload": "x"}],
                },
            ],
        ),
        400,
        error(131009, NOT_VALID, details="buttons: Button at index 5 does not exist in the template"),
    ),
    "new line in a parameter": (
        template_body(
            "order_update",
            components=[
                ORDER_UPDATE[0],
                {"type": "body", "parameters": params("Pa\nblo", "1", "2")},
                ORDER_UPDATE[2],
            ],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="body: Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
        ),
    ),
    "five spaces in a parameter": (
        template_body(
            "order_update",
            components=[{"type": "header", "parameters": params("#1     2")}, *ORDER_UPDATE[1:]],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="header: Param text cannot have new-line/tab characters "
            "or more than 4 consecutive spaces",
        ),
    ),
    "authentication code too long": (
        template_body(
            "verification_code",
            components=[
                {"type": "body", "parameters": params("1234567890123456")},
                {
                    "type": "button",
                    "sub_type": "url",
                    "index": 0,
                    "parameters": [{"type": "text", "text": "1"}],
                },
            ],
        ),
        400,
        error(
            132018,
            "(#132018) There's an issue with the parameters in your template",
            details="body: Parameter at index 0 exceeds the parameter length limit 15",
        ),
    ),
    "text parameter without text": (
        template_body(
            "welcome",
            components=[{"type": "body", "parameters": [{"type": "text", "parameter_name": "first_name"}]}],
        ),
        400,
        error(100, INVALID, details="Parameter 'text' is mandatory for component parameter type 'text'"),
    ),
    "no template name": (
        {**template_body("x"), "template": {"language": {"code": "en_US"}}},
        400,
        error(100, "(#100) The parameter template['name'] is required."),
    ),
    "no language code": (
        {**template_body("x"), "template": {"name": "x", "language": {}}},
        400,
        error(100, "(#100) The parameter template['language']['code'] is required."),
    ),
}


@pytest.mark.parametrize(("body", "status", "expected"), TEMPLATE_ERRORS.values(), ids=TEMPLATE_ERRORS.keys())
async def test_template_errors_are_metas(graph, body, status, expected):
    got_status, answer = await graph.send(body)

    assert without_trace(answer) == expected
    assert got_status == status
    assert graph.state.messages == []
    assert graph.state.counters[f"error.{expected['code']}"] == 1


async def test_template_changes_in_the_state_apply_at_once(graph):
    ok = template_body("order_update", components=ORDER_UPDATE)
    assert (await graph.send(ok))[0] == 200

    order_update = next(t for t in graph.state.templates if t["name"] == "order_update")
    order_update["status"] = "PAUSED"
    assert (await graph.send(ok))[1]["error"]["code"] == 132015

    graph.state.templates = [t for t in graph.state.templates if t is not order_update]
    assert (await graph.send(ok))[1]["error"]["code"] == 132001

    graph.state.templates.insert(0, {**order_update, "status": "APPROVED"})
    assert (await graph.send(ok))[0] == 200


# ---------------------------------------------------------------- template listing and paging


async def test_templates_page_by_page_follow_paging_next(graph):
    status, page = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "2"})
    names = []
    pages = 0
    while True:
        assert status == 200
        pages += 1
        names += [(t["name"], t["language"]) for t in page["data"]]
        assert len(page["data"]) <= 2
        next_url = page["paging"].get("next")
        if next_url is None:
            break
        assert next_url.startswith(str(graph.server.make_url(f"/v23.0/{WABA}/message_templates?")))
        assert "limit=2" in next_url
        async with graph.http.get(next_url, headers=AUTH) as response:
            status, page = response.status, await response.json()

    assert names == [(t["name"], t["language"]) for t in graph.state.templates]
    assert pages == 5


async def test_template_cursors_are_graphs_and_previous_goes_back(graph):
    _, first = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "3"})
    assert first["paging"]["cursors"] == {"before": "MAZDZD", "after": "Mg" + "ZDZD"}
    assert "previous" not in first["paging"]

    async with graph.http.get(first["paging"]["next"], headers=AUTH) as response:
        second = await response.json()
    async with graph.http.get(second["paging"]["previous"], headers=AUTH) as response:
        back = await response.json()

    assert [t["id"] for t in second["data"]] == [t["id"] for t in graph.state.templates[3:6]]
    assert back["data"] == first["data"]


async def test_templates_default_to_25_and_full_definitions(graph):
    status, page = await graph.request("GET", f"{WABA}/message_templates")

    assert status == 200
    assert page["data"] == graph.state.templates
    assert "next" not in page["paging"]


async def test_templates_filters_fields_and_summary(graph):
    query = {"status": "APPROVED", "language": "en_US", "fields": "name,status", "summary": "total_count"}
    _, page = await graph.request("GET", f"{WABA}/message_templates", params=query)

    approved = [t for t in graph.state.templates if t["status"] == "APPROVED" and t["language"] == "en_US"]
    assert page["data"] == [{"name": t["name"], "status": "APPROVED", "id": t["id"]} for t in approved]
    assert page["summary"] == {"total_count": len(approved)}

    _, by_name = await graph.request("GET", f"{WABA}/message_templates", params={"name": "order_update"})
    assert [(t["name"], t["language"]) for t in by_name["data"]] == [
        ("order_update", "en_US"),
        ("order_update", "pt_BR"),
    ]

    _, paused = await graph.request("GET", f"{WABA}/message_templates", params={"status": "paused,disabled"})
    assert [t["name"] for t in paused["data"]] == ["spring_sale", "winter_clearance"]

    _, found = await graph.request(
        "GET", f"{WABA}/message_templates", params={"content": "VERIFICATION code"}
    )
    assert [t["name"] for t in found["data"]] == ["verification_code"]


async def test_templates_of_an_unknown_account_and_bad_paging(graph):
    status, answer = await graph.request("GET", "999/message_templates")
    assert status == 400
    assert without_trace(answer) == error(
        100, UNSUPPORTED.format(method="get", id="999"), subcode=33, error_type="GraphMethodException"
    )

    status, answer = await graph.request("GET", f"{WABA}/message_templates", params={"limit": "0"})
    assert (status, answer["error"]["code"]) == (400, 100)

    status, answer = await graph.request("GET", f"{WABA}/message_templates", params={"after": "not-a-cursor"})
    assert (status, answer["error"]["code"]) == (400, 100)


async def test_a_template_by_id(graph):
    template = graph.state.templates[1]

    status, answer = await graph.request("GET", template["id"], params={"fields": "name,language"})

    assert (status, answer) == (
        200,
        {"name": template["name"], "language": template["language"], "id": template["id"]},
    )


async def test_the_plugins_registry_reads_every_template_and_agrees_with_the_sandbox(graph, clock):
    registry = TemplateRegistry(graph.client().get_json, WABA, MemoryTemplateCache(60, clock))
    known = await registry.templates()

    assert len(known) == len(graph.state.templates)
    assert {(t.name, t.language) for t in known} == {
        (t["name"], t["language"]) for t in graph.state.templates
    }
    for name, content in MESSAGES.items():
        if isinstance(content, Template):
            assert check_template(content, known) == [], name
    assert check_template(Template("spring_sale", body=["1", "2"]), known) != []
