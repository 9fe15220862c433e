"""The WhatsApp sandbox's control API (control.py): faults added, removed and cleared, resets, bad input."""

from __future__ import annotations

import json

from sandbox_runtime_support import (
    fixture_http,  # noqa: F401  (the fixture)
    send,
    settings,
    stand_in_graph,
    text_body,
)

from omnichannel_whatsapp.sandbox import Fault, Sandbox

# ---------------------------------------------------------------- control API


async def test_the_control_api_adds_removes_and_clears_faults_and_resets(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        control = f"{sandbox.url}/_sandbox"
        async with http.get(f"{control}/health") as answer:
            assert await answer.json() == {"status": "ok"}

        async with http.post(f"{control}/faults", json={"kind": "error", "code": 133004}) as answer:
            assert answer.status == 201
            first = (await answer.json())["id"]
        async with http.post(f"{control}/faults", json={"kind": "drop", "probability": 0.0}) as answer:
            second = (await answer.json())["id"]
        async with http.get(f"{control}/faults") as answer:
            listed = (await answer.json())["faults"]
        assert list(listed) == [first, second]
        assert listed[first]["code"] == 133004

        failed = await send(http, sandbox)
        assert (failed.status, (await failed.json())["error"]["code"]) == (503, 133004)

        async with http.delete(f"{control}/faults/{first}") as answer:
            assert answer.status == 200
        async with http.delete(f"{control}/faults/{first}") as answer:
            assert answer.status == 404
            assert (await answer.json())["error"]["field"] == "id"
        assert (await send(http, sandbox)).status == 200
        assert (await send(http, sandbox, text_body(callback="m-2"))).status == 200

        async with http.get(f"{control}/messages", params={"since": "1"}) as answer:
            page = await answer.json()
        assert page["next"] == 2
        assert [(m["index"], m["body"]["biz_opaque_callback_data"]) for m in page["messages"]] == [(1, "m-2")]
        assert page["messages"][0]["wamid"].startswith("wamid.")
        async with http.get(f"{control}/stats") as answer:
            stats = await answer.json()
        assert stats["counters"]["fault.error"] == 1
        assert stats["messages"] == 2
        assert stats["faults"] == 1

        async with http.delete(f"{control}/faults") as answer:
            assert await answer.json() == {"removed": 1}
        sandbox.faults.add(Fault("error"))
        async with http.post(f"{control}/reset") as answer:
            assert answer.status == 200
        assert sandbox.state.messages == []
        assert sandbox.state.webhooks == []
        assert not sandbox.state.counters
        assert len(sandbox.faults) == 0
        assert (await send(http, sandbox)).status == 200


async def test_the_control_api_answers_bad_input_with_400_naming_the_field(http):
    async with Sandbox(settings(), graph=stand_in_graph) as sandbox:
        control = f"{sandbox.url}/_sandbox"
        cases = [
            ({"kind": "boom"}, "kind"),
            ({"kind": "error", "probability": "often"}, "probability"),
            ({"kind": "error", "until": 3}, "until"),
            ("not json", "body"),
        ]
        for data, field in cases:
            raw = data.encode() if isinstance(data, str) else json.dumps(data).encode()
            async with http.post(f"{control}/faults", data=raw) as answer:
                assert answer.status == 400
                error = (await answer.json())["error"]
                assert error["field"] == field
                assert field in error["message"]
        async with http.get(f"{control}/messages", params={"since": "x"}) as answer:
            assert answer.status == 400
            assert (await answer.json())["error"]["field"] == "since"
        async with http.post(f"{control}/drain", json={"timeout_s": -1}) as answer:
            assert (await answer.json())["error"]["field"] == "timeout_s"
        async with http.post(f"{control}/handshake", json={}) as answer:
            assert (await answer.json())["error"]["field"] == "verify_token"
        assert len(sandbox.faults) == 0
