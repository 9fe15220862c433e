"""RabbitMQ for commands: ``AmqpTransport`` publishes them, ``Worker`` runs them (``docs/queue.md``).

``aio_pika`` is imported only when a connection is opened, so importing this package
needs no broker client.
"""

from __future__ import annotations

from .dlq import DeadLetter, list_dead_letters, purge_dead_letters, retry_dead_letters
from .transport import AmqpTransport, Published, delay_queue_name
from .worker import Decision, Fate, Settled, Worker, defer_delay

__all__ = [
    "AmqpTransport",
    "DeadLetter",
    "Decision",
    "Fate",
    "Published",
    "Settled",
    "Worker",
    "defer_delay",
    "delay_queue_name",
    "list_dead_letters",
    "purge_dead_letters",
    "retry_dead_letters",
]
