"""Resilience middleware: circuit breaker, retry with backoff, rate limits, timeouts, in-flight caps.

The legacy service's phase 3 as a ``send`` wrapper (docs/plugins/resilience.md). It reads only
the class and attributes of ``DeliveryError``s and the sender the channel names
(``service.sender_of``), so it works for every channel. Configure it under
``[plugins.resilience]``; disable it like any plugin (``enabled = false``) or roll it out to a
share of recipients (``rollout``).

The wrapper is a plain one: metrics (``tryfirst``) stay outside it and see one logical send;
the core's attempt counter stays inside it and counts each attempt.
"""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import click

from omnichannel import Message, Sender, hookimpl

from .config import ResilienceConfig
from .middleware import Resilience

if TYPE_CHECKING:
    from omnichannel import OmniChannelService

__all__ = ["PLUGIN_NAME", "Resilience", "ResilienceConfig", "ResiliencePlugin", "plugin", "runtime"]

PLUGIN_NAME = "resilience"


def runtime(service: OmniChannelService, *, rng: random.Random | None = None) -> Resilience:
    """The service's resilience layer (created on first use, kept in ``service.state``)."""
    layer = service.state.get(PLUGIN_NAME)
    if not isinstance(layer, Resilience):
        settings = service.plugin_config(ResilienceConfig).resolve()
        layer = service.state[PLUGIN_NAME] = Resilience(settings, service, rng=rng)
    return layer


class ResiliencePlugin:
    """The plugin object; ``omnichannel_resilience:plugin`` is the installed instance.

    :param rng: the source of retry jitter for the services it serves (seed it in tests).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng

    @hookimpl
    def register_config(self) -> type:
        return ResilienceConfig

    @hookimpl(wrapper=True)
    def send(
        self, message: Message, channel: str, service: OmniChannelService
    ) -> Generator[None, Sender | None, Sender | None]:
        inner = yield
        if inner is None:
            return None
        return runtime(service, rng=self._rng).wrap(inner, message, channel)

    @hookimpl
    def startup(self, service: OmniChannelService) -> None:
        runtime(service, rng=self._rng).start_watching()

    @hookimpl
    async def shutdown(self, service: OmniChannelService) -> None:
        layer = service.state.pop(PLUGIN_NAME, None)
        if isinstance(layer, Resilience):
            await layer.close()

    @hookimpl
    async def health(self, service: OmniChannelService) -> dict[str, Any]:
        from .health import health_section

        return await health_section(runtime(service, rng=self._rng))

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from .commands import breaker

        cli.add_command(breaker)


plugin = ResiliencePlugin()
