"""The WhatsApp Cloud API channel (work in progress: wired up in the next commits)."""

from __future__ import annotations

from omnichannel import hookimpl

from .config import WhatsAppConfig

__all__ = ["WhatsAppConfig"]


@hookimpl
def register_config() -> type:
    return WhatsAppConfig
