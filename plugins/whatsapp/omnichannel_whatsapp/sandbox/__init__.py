"""A local stand-in for the WhatsApp Cloud API: Graph routes, faults, signed status webhooks.

Run one in-process with ``Sandbox`` (``async with Sandbox(settings) as sandbox:``,
then ``sandbox.url`` is the plugin's ``base_url``), or from the command line with
``omnichannel whatsapp sandbox``. The parts:

* ``state``: ``SandboxSettings`` and the shared ``SandboxState``;
* ``graph``: the Graph API routes; ``limits`` and ``seed``: its rules and templates;
* ``faults``: injected errors, latency, timeouts and dropped connections;
* ``webhooks``: the status webhooks (``WebhookDispatcher``);
* ``control``: the ``/_sandbox/`` API;
* ``app``: ``make_sandbox_app`` and ``Sandbox``; ``cli``: the command;
* ``thread``: ``SandboxThread``, a sandbox on its own thread and loop (for tests).
"""

from __future__ import annotations

from .app import Sandbox, make_sandbox_app
from .cli import sandbox_command
from .control import control_routes
from .faults import Fault, FaultPlan, InvalidFault, fault_middleware
from .state import RecordedMessage, SandboxSettings, SandboxState, WebhookRecord
from .thread import SandboxThread
from .webhooks import WebhookDispatcher

__all__ = [
    "Fault",
    "FaultPlan",
    "InvalidFault",
    "RecordedMessage",
    "Sandbox",
    "SandboxSettings",
    "SandboxState",
    "SandboxThread",
    "WebhookDispatcher",
    "WebhookRecord",
    "control_routes",
    "fault_middleware",
    "make_sandbox_app",
    "sandbox_command",
]
