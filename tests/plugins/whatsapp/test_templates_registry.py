"""WhatsApp templates: the ``TemplateRegistry`` over a fake ``fetch_page`` and over real HTTP."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web
from templates_support import KNOWN, ORDER_UPDATE, ORDER_UPDATE_PT, OTP_CODE, PLAIN, RAW, WABA, FakeGraph

from omnichannel import PermanentDeliveryError
from omnichannel.testing import FakeClock, fake_provider
from omnichannel_whatsapp.templates import FIELDS, MemoryTemplateCache, TemplateRegistry, parse_template

# ---------------------------------------------------------------- registry with a fake fetch_page


FIRST_PARAMS = {"fields": FIELDS, "limit": "100"}


@pytest.fixture
def memory_cache(fake_clock):
    return MemoryTemplateCache(300, fake_clock)


async def test_fetch_all_follows_every_page_and_fills_the_cache(memory_cache):
    graph = FakeGraph(RAW, page_size=4)
    registry = TemplateRegistry(graph, WABA, memory_cache)

    assert await registry.fetch_all() == KNOWN

    path = f"{WABA}/message_templates"
    assert FIELDS == "name,language,status,category,parameter_format,components,id"
    assert graph.calls == [
        (path, FIRST_PARAMS),
        (path, {**FIRST_PARAMS, "after": "c1"}),
        (path, {**FIRST_PARAMS, "after": "c2"}),
    ]
    assert list(await memory_cache.get(WABA)) == RAW


async def test_fetch_all_follows_next_when_a_page_has_no_cursor(memory_cache):
    next_url = f"https://graph.example/v23.0/{WABA}/message_templates?limit=100&after=abc"
    calls = []

    async def fetch_page(target, params):
        calls.append((target, params))
        if len(calls) == 1:
            return {"data": [ORDER_UPDATE], "paging": {"next": next_url}}
        return {"data": [PLAIN], "paging": {"cursors": {"before": "x", "after": "y"}}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    assert [t.name for t in await registry.fetch_all()] == ["order_update", "plain"]
    assert calls == [(f"{WABA}/message_templates", FIRST_PARAMS), (next_url, None)]


async def test_fetch_all_of_an_account_without_templates(memory_cache):
    registry = TemplateRegistry(FakeGraph([]), WABA, memory_cache)
    assert await registry.fetch_all() == []
    assert list(await memory_cache.get(WABA)) == []


async def test_fetch_all_skips_entries_it_cannot_read(memory_cache, caplog):
    async def fetch_page(target, params):
        return {"data": [{"language": "en_US"}, "junk", PLAIN]}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    assert [t.name for t in await registry.fetch_all()] == ["plain"]
    assert "ignoring a template the Graph API listed: template entry without a name" in caplog.text


async def test_fetch_all_rejects_an_answer_that_is_not_a_template_list(memory_cache):
    async def fetch_page(target, params):
        return {"error": {"message": "nope"}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError) as info:
        await registry.fetch_all()
    assert str(info.value) == (
        f"the template list of WhatsApp Business Account {WABA} "
        "came back without a 'data' list (channel=whatsapp)"
    )
    assert await memory_cache.get(WABA) is None


async def test_fetch_all_stops_when_the_paging_cursor_repeats(memory_cache):
    async def fetch_page(target, params):
        return {"data": [PLAIN], "paging": {"next": "https://graph.example/n", "cursors": {"after": "same"}}}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError, match="repeats the paging cursor 'same'"):
        await registry.fetch_all()


async def test_templates_reads_the_cache_first(memory_cache, fake_clock):
    graph = FakeGraph(RAW)
    registry = TemplateRegistry(graph, WABA, memory_cache)

    assert await registry.templates() == KNOWN
    fetches = len(graph.calls)
    assert await registry.templates() == KNOWN
    assert len(graph.calls) == fetches

    await registry.templates(refresh=True)
    assert len(graph.calls) == 2 * fetches

    fake_clock.advance(300)
    await registry.templates()
    assert len(graph.calls) == 3 * fetches


async def test_concurrent_misses_share_one_fetch(memory_cache):
    graph = FakeGraph([PLAIN], page_size=1)
    graph.gate = asyncio.Event()
    registry = TemplateRegistry(graph, WABA, memory_cache)

    waiting = [asyncio.create_task(registry.templates()) for _ in range(5)]
    await asyncio.sleep(0)
    graph.gate.set()
    results = await asyncio.gather(*waiting)

    assert len(graph.calls) == 1
    assert all(r == [parse_template(PLAIN)] for r in results)


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(memory_cache):
    graph = FakeGraph([PLAIN], page_size=1)
    graph.gate = asyncio.Event()
    registry = TemplateRegistry(graph, WABA, memory_cache)

    first = asyncio.create_task(registry.templates())
    second = asyncio.create_task(registry.templates())
    await asyncio.sleep(0)
    first.cancel()
    graph.gate.set()

    assert await second == [parse_template(PLAIN)]
    assert first.cancelled()
    assert len(graph.calls) == 1


async def test_a_failed_fetch_is_not_remembered(memory_cache):
    attempts = []

    async def fetch_page(target, params):
        attempts.append(target)
        if len(attempts) == 1:
            raise PermanentDeliveryError("boom", channel="whatsapp")
        return {"data": [PLAIN]}

    registry = TemplateRegistry(fetch_page, WABA, memory_cache)
    with pytest.raises(PermanentDeliveryError, match="boom"):
        await registry.templates()
    assert await registry.templates() == [parse_template(PLAIN)]


async def test_find_matches_name_and_language_exactly(memory_cache):
    registry = TemplateRegistry(FakeGraph(RAW), WABA, memory_cache)
    assert await registry.find("order_update", "pt_BR") == parse_template(ORDER_UPDATE_PT)
    assert await registry.find("order_update", "pt") is None
    assert await registry.find("missing", "en_US") is None


# ---------------------------------------------------------------- registry over real HTTP


async def test_registry_pages_through_a_real_http_server():
    seen: list[dict[str, str]] = []

    async def list_templates(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        after = request.query.get("after")
        if after is None:
            return web.json_response(
                {
                    "data": RAW[:4],
                    "paging": {
                        "cursors": {"before": "MAZDZD", "after": "MjQZD"},
                        "next": str(request.url.update_query(after="MjQZD")),
                    },
                }
            )
        if after == "MjQZD":
            # No cursor on this page: the registry has to follow "next" as given.
            return web.json_response(
                {"data": RAW[4:8], "paging": {"next": str(request.url.update_query(after="end"))}}
            )
        return web.json_response({"data": RAW[8:], "paging": {"cursors": {"before": "x", "after": "y"}}})

    async with (
        fake_provider({("GET", f"/v23.0/{WABA}/message_templates"): list_templates}) as server,
        aiohttp.ClientSession() as session,
    ):

        async def get_json(path_or_url, params):
            url = path_or_url if "://" in path_or_url else server.make_url(f"/v23.0/{path_or_url}")
            async with session.get(url, params=params) as response:
                response.raise_for_status()
                return await response.json()

        cache = MemoryTemplateCache(300, FakeClock())
        registry = TemplateRegistry(get_json, WABA, cache)
        assert await registry.templates() == KNOWN
        assert await registry.find("otp_code", "en_US") == parse_template(OTP_CODE)

    assert seen == [FIRST_PARAMS, {**FIRST_PARAMS, "after": "MjQZD"}, {**FIRST_PARAMS, "after": "end"}]
