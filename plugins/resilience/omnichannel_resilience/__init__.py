"""Resilience middleware: circuit breaker, retry with backoff, rate limits, timeouts (in progress).

Not registered as a plugin yet: the ``resilience`` entry point is added when the
middleware is complete (see the resilience issue). Its building blocks are tested
on their own.
"""

from __future__ import annotations
