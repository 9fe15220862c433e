"""The ``[amqp]`` section of the health report: queued, dead-lettered and parked counts.

Registered in every service (a core module); it reports only when ``[amqp]`` is configured,
through the service's own broker connection (the command bus's transport). The counts are
the broker's ready messages: ``queued`` in the main queue, ``dead_letters`` in the DLQ, and
``parked_senders``, the entries of the parked-sender index (one per sender a worker parked;
``omnichannel sender list`` tells them apart). A broker that cannot be reached is reported,
with ``"degraded": true``; it never fails the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CommandError
from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .service import OmniChannelService


@hookimpl
async def health(service: OmniChannelService) -> dict[str, Any] | None:
    if service.config.amqp is None:
        return None
    from .amqp import AmqpTransport
    from .amqp.parking import parked_index_name

    transport = service.bus.transport
    if not isinstance(transport, AmqpTransport):
        return None
    config = transport.config
    section: dict[str, Any] = {"broker": transport.where, "queue": config.queue}
    try:
        section["queued"] = await transport.depth(config.queue)
        section["dead_letters"] = await transport.depth(config.dead_letter_queue)
        section["parked_senders"] = await transport.depth(parked_index_name(config.queue))
    except CommandError as exc:
        return {**section, "degraded": True, "error": str(exc)}
    return section
