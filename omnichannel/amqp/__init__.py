"""RabbitMQ for commands: ``AmqpTransport`` publishes them, ``Worker`` runs them (``docs/queue.md``).

``aio_pika`` is imported only when a connection is opened, so importing this package
needs no broker client.
"""

from __future__ import annotations

from .dlq import DeadLetter, list_dead_letters, purge_dead_letters, retry_dead_letters
from .fates import Decision, Fate, Settled, defer_delay
from .parking import ParkedSender, list_parked, parked_queue_name, resume_parked
from .transport import AmqpTransport, Published, delay_queue_name
from .worker import Worker

__all__ = [
    "AmqpTransport",
    "DeadLetter",
    "Decision",
    "Fate",
    "ParkedSender",
    "Published",
    "Settled",
    "Worker",
    "defer_delay",
    "delay_queue_name",
    "list_dead_letters",
    "list_parked",
    "parked_queue_name",
    "purge_dead_letters",
    "resume_parked",
    "retry_dead_letters",
]
