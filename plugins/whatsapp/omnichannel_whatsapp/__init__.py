"""The WhatsApp Cloud API channel: ``whatsapp``.

It validates messages against WhatsApp's rules before anything leaves the
process, builds the exact Graph API JSON, checks template messages against the
account's approved templates, sends through the service's shared HTTP session,
translates every Graph error into the core's delivery errors, and turns
webhook deliveries (statuses, inbound messages) into events.

Configuration is ``[plugins.whatsapp]`` (see ``WhatsAppConfig`` and
docs/channels/whatsapp.md). Modules:

* ``validation``: the rules (``validate_message``);
* ``payload``: the builders (``build_payload``);
* ``client`` and ``errors``: the Graph API client and error translation;
* ``templates``: the template registry, its cache and ``check_template``;
* ``webhook``: verification, signatures, parsing and the routes;
* ``commands``: ``omnichannel whatsapp ...``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs
import click

from omnichannel import (
    Channel,
    DeliveryStatus,
    Message,
    MessageValidationError,
    OmniChannelError,
    Receipt,
    Route,
    Template,
    hookimpl,
)

from .client import GraphClient
from .config import WhatsAppConfig
from .payload import WhatsAppPayload, build_payload
from .templates import (
    MemoryTemplateCache,
    RedisTemplateCache,
    TemplateCache,
    TemplateInfo,
    TemplateRegistry,
    check_template,
)
from .validation import validate_message
from .webhook import Deduplicator, make_routes

if TYPE_CHECKING:
    from omnichannel import OmniChannelService, Sender

__all__ = ["CHANNEL", "WhatsAppConfig", "WhatsAppPayload", "runtime"]

log = logging.getLogger("omnichannel.whatsapp")

CHANNEL = "whatsapp"
CAPABILITIES = frozenset({"text", "template", "media", "buttons", "list"})


@attrs.define
class Runtime:
    """What the plugin keeps per service (in ``service.state["whatsapp"]``)."""

    config: WhatsAppConfig
    dedup: Deduplicator = attrs.field(factory=Deduplicator)
    client: GraphClient | None = None
    cache: TemplateCache | None = None
    registry: TemplateRegistry | None = None
    last_check: tuple[Template, object, list[str]] | None = None
    """The last template checked, the template list it was checked against, and the problems."""


def runtime(service: OmniChannelService) -> Runtime:
    """The plugin's per-service objects; the HTTP client and registry once the service runs."""
    state = service.state.get(CHANNEL)
    if not isinstance(state, Runtime):
        state = service.state[CHANNEL] = Runtime(service.plugin_config(WhatsAppConfig))
    if state.client is None and service.started:
        config = state.config
        state.client = GraphClient(service.http, config)
        if config.waba_id:
            state.cache = (
                RedisTemplateCache(config.redis_url, config.template_cache_ttl_s, clock=service.clock)
                if config.redis_url
                else MemoryTemplateCache(config.template_cache_ttl_s, service.clock)
            )
            state.registry = TemplateRegistry(
                state.client.get_json, config.waba_id, state.cache, clock=service.clock
            )
    return state


RECHECK_AFTER_S = 30.0
"""A template refused against a list older than this is checked again against a fresh list."""


async def _check_template(state: Runtime, message: Message) -> None:
    """Reject a template message that does not match an approved template (else Meta's 132000s)."""
    content = message.content
    if not (isinstance(content, Template) and state.config.check_templates and state.registry):
        return
    try:
        known = await state.registry.templates()
    except OmniChannelError as exc:
        # Not knowing the templates must not stop sending: Meta still checks.
        log.warning("whatsapp: cannot fetch the templates to check %r: %s", content.name, exc)
        return
    problems = _problems(state, content, known)
    if problems and state.registry.fetched_before(RECHECK_AFTER_S):
        # The list may predate the template's creation or approval (it is cached for
        # template_cache_ttl_s): look again, at most once per RECHECK_AFTER_S, before refusing.
        try:
            known = await state.registry.templates(refresh=True)
        except OmniChannelError as exc:
            log.warning("whatsapp: cannot fetch the templates to check %r again: %s", content.name, exc)
        else:
            problems = _problems(state, content, known)
    if problems:
        raise MessageValidationError(problems, message_id=message.id)


def _problems(state: Runtime, content: Template, known: list[TemplateInfo]) -> list[str]:
    """``check_template``, once per template list: a campaign sends one Template to many."""
    last = state.last_check
    if last is not None and last[0] is content and last[1] is known:
        return last[2]
    problems = check_template(content, known)
    state.last_check = (content, known, problems)
    return problems


@hookimpl
def register_channels() -> list[Channel]:
    return [Channel(CHANNEL, CAPABILITIES, "WhatsApp Business Cloud API")]


@hookimpl
def register_config() -> type:
    return WhatsAppConfig


@hookimpl
def validate(message: Message) -> list[str]:
    return validate_message(message)


@hookimpl
def build(message: Message) -> WhatsAppPayload:
    return build_payload(message)


@hookimpl
def send(payload: WhatsAppPayload, message: Message, service: OmniChannelService) -> Sender:
    async def deliver() -> Receipt:
        state = runtime(service)
        assert state.client is not None, "the service is started before anything is sent"
        await _check_template(state, message)
        result = await state.client.send_message(payload.body)
        return Receipt(
            message_id=message.id,
            channel=CHANNEL,
            status=DeliveryStatus.ACCEPTED,
            provider_message_id=result.wamid,
            provider_status=result.message_status,
        )

    return deliver


@hookimpl
def sender_id(service: OmniChannelService) -> str | None:
    # The business phone number: throughput, pair limits and account failures are per number.
    return runtime(service).config.phone_number_id


@hookimpl
def register_routes(service: OmniChannelService) -> list[Route]:
    return make_routes(service, lambda: runtime(service).config, runtime(service).dedup)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .commands import whatsapp
    from .demo import demo_command

    cli.add_command(whatsapp)
    cli.add_command(demo_command)


@hookimpl
async def shutdown(service: OmniChannelService) -> None:
    state = service.state.get(CHANNEL)
    if isinstance(state, Runtime) and state.cache is not None:
        await state.cache.close()
