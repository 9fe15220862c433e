"""The health report of a running service: what ``GET /health`` and ``omnichannel health`` show.

Every plugin may add a section through the ``health`` hook (the resilience plugin: its
breakers and rate limits; the core, with ``[amqp]`` configured: the queue, dead-letter and
parked counts). Each implementation runs on its own, all at once, each within
``[server] health_timeout_s``; one that raises or is late shows ``{"error": ...}`` and the
others are unaffected. A section that says ``"degraded": true``, or has an ``error``, is listed
in ``degraded``::

    {"status": "ok", "degraded": ["resilience"],
     "plugins": {"resilience": {"degraded": true, "breakers": [...]}}}

The report is liveness: ``status`` is always ``ok`` (a process that answers is alive; an open
breaker is the system working, ``../shared/resilience.md`` §1.12), so the HTTP status never
depends on it. Values under keys that name secrets, and passwords in URLs, are redacted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from . import plugins as _plugins
from ._contributions import redact_by_name

if TYPE_CHECKING:
    from .service import OmniChannelService

__all__ = ["health_report"]

log = logging.getLogger("omnichannel")


async def health_report(service: OmniChannelService) -> dict[str, Any]:
    """Every plugin's ``health`` section of the running ``service`` (none while it is stopped)."""
    sections: dict[str, Any] = {}
    if service.started:
        impls = _plugins.hook_impls(service.plugin_manager, "health")
        timeout_s = service.config.server.health_timeout_s
        answers = await asyncio.gather(*(_section(impl, service, timeout_s) for impl in impls))
        sections = {impl.plugin_name: answer for impl, answer in zip(impls, answers, strict=True) if answer}
    degraded = sorted(
        name for name, section in sections.items() if section.get("degraded") is True or "error" in section
    )
    return {"status": "ok", "degraded": degraded, "plugins": sections}


async def _section(
    impl: pluggy.HookImpl, service: OmniChannelService, timeout_s: float
) -> dict[str, Any] | None:
    section: dict[str, Any]
    try:
        async with asyncio.timeout(timeout_s):
            answer = _plugins.call_impl(impl, {"service": service})
            if inspect.isawaitable(answer):
                answer = await answer
    except TimeoutError:
        section = {"error": f"no answer within {timeout_s:g} s"}
    except Exception as exc:
        log.warning("the health hook of plugin %r raised %s", impl.plugin_name, type(exc).__name__)
        section = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        if answer is None:
            return None
        if isinstance(answer, Mapping):
            section = {str(key): _plain(value) for key, value in answer.items()}
        else:
            section = {"error": f"the health hook returned {type(answer).__name__}, not a mapping"}
    redact_by_name(section)  # an error's text too: a URL in it loses its password
    return section


def _plain(value: Any) -> Any:
    """``value`` as plain dicts and lists (so redaction reaches sections inside lists)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
