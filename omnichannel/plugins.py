"""Finding, loading, blocking and describing plugins.

``get_plugin_manager()`` is a factory: every service builds its own manager,
and nothing is loaded at import time. It loads the ``omnichannel``
entry-point group one name at a time, in alphabetical order, so that the order
of hook implementations (and therefore of middleware) does not depend on how
the packages happen to be installed. A plugin that fails to import or to
register becomes a ``PluginError`` in ``pm.load_errors``; the others still load.

Rollout: a plugin configured with ``rollout = 25`` takes part in the send
pipeline for 25 % of recipients. Whether a recipient is in is decided by a
stable hash of (plugin name, recipient), so a recipient never flips between
behaviours, and each plugin draws its own sample.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "get_plugin_manager",
    "in_rollout",
    "register_plugin",
    "rollout_bucket",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
DEFAULT_PLUGINS: tuple[str, ...] = (
    "omnichannel._builtins",
    "omnichannel._settle_keys",
    "omnichannel._amqp_health",
)
"""Modules registered in every manager: the core's own hook implementations."""


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers where plugins came from and which failed."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.load_errors: list[PluginError] = []
        self.distributions: dict[str, tuple[str, str]] = {}
        """Plugin name -> (distribution name, version), for plugins from entry points."""
        self.generation = 0
        """Incremented by every change of the registered plugins or of the monitoring:
        a key for caches of hook plans."""
        self._monitors = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        registered = super().register(plugin, name)
        self.generation += 1
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        removed = super().unregister(plugin, name)
        self.generation += 1
        return removed

    def set_blocked(self, name: str) -> None:
        super().set_blocked(name)
        self.generation += 1

    @property
    def monitored(self) -> bool:
        """Whether something watches hook calls (``add_hookcall_monitoring``)."""
        return self._monitors > 0

    def add_hookcall_monitoring(
        self, before: Callable[..., None], after: Callable[..., None]
    ) -> Callable[[], None]:
        undo_monitoring = super().add_hookcall_monitoring(before, after)
        self._monitors += 1
        self.generation += 1

        def undo() -> None:
            undo_monitoring()
            self._monitors -= 1
            self.generation += 1

        return undo


@attrs.frozen
class PluginInfo:
    """What ``omnichannel plugins`` reports about one plugin."""

    name: str
    hooks: tuple[str, ...]
    version: str | None = None
    distribution: str | None = None
    channels: tuple[str, ...] = ()
    builtin: bool = False
    error: str | None = None


def register_plugin(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> str:
    """Register ``plugin`` under ``name``; return the name used.

    :raises PluginError: when pluggy rejects it (unknown hook argument, a wrapper
        that is not a generator, a name already taken).
    """
    display = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(display, str(exc)) from exc
    except ValueError as exc:
        raise PluginError(display, str(exc)) from exc
    if registered is None:  # blocked
        return display
    return registered


def _entry_points() -> Iterator[importlib.metadata.EntryPoint]:
    seen: set[str] = set()
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        # The same distribution can be visible twice (e.g. an editable install and a
        # build directory on sys.path); the first one found wins, as pluggy's own loader does.
        if ep.name not in seen:
            seen.add(ep.name)
            yield ep


def _load_entry_point(pm: PluginManager, ep: importlib.metadata.EntryPoint) -> None:
    try:
        plugin = ep.load()
    except Exception as exc:
        log.debug("plugin %r failed to import", ep.name, exc_info=True)
        raise PluginError(ep.name, f"failed to import {ep.value!r}: {exc!r}") from exc
    register_plugin(pm, plugin, ep.name)
    if ep.dist is not None:
        pm.distributions[ep.name] = (ep.dist.name, ep.dist.version)


def _check_pending(pm: PluginManager) -> None:
    """Unregister plugins that implement hooks that do not exist, recording why."""
    while True:
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.unregister(exc.plugin)
            pm.load_errors.append(PluginError(name, str(exc)))
        else:
            return


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    blocked: Iterable[str] = (),
    plugins: Iterable[object | tuple[str, object]] = (),
    strict: bool = False,
) -> PluginManager:
    """Build a plugin manager.

    :param load_entrypoints: load the plugins installed under the ``omnichannel``
        entry-point group (tests usually pass ``False`` and list ``plugins``).
    :param blocked: plugin names not to load.
    :param plugins: plugin objects (or ``(name, plugin)`` pairs) to register too.
    :param strict: raise the first load error instead of collecting it.
    :raises PluginError: in strict mode, or for an explicitly given plugin that
        pluggy rejects.
    """
    pm = PluginManager()
    for name in blocked:
        pm.set_blocked(name)
    if load_entrypoints:
        for ep in _entry_points():
            if pm.is_blocked(ep.name) or pm.has_plugin(ep.name):
                continue
            try:
                _load_entry_point(pm, ep)
            except PluginError as exc:
                pm.load_errors.append(exc)
    for item in plugins:
        name, plugin = item if isinstance(item, tuple) else (None, item)
        register_plugin(pm, plugin, name)
    for module_name in DEFAULT_PLUGINS:
        if not pm.has_plugin(module_name) and not pm.is_blocked(module_name):
            register_plugin(pm, importlib.import_module(module_name), module_name)
    _check_pending(pm)
    if strict and pm.load_errors:
        raise pm.load_errors[0]
    return pm


def hook_impls(pm: pluggy.PluginManager, hook_name: str) -> list[pluggy.HookImpl]:
    """The implementations of ``hook_name``, in call order (last registered first)."""
    caller: pluggy.HookCaller = getattr(pm.hook, hook_name)
    return list(reversed(caller.get_hookimpls()))


def call_impl(impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
    """Call one implementation with the arguments it asks for."""
    return impl.function(*[kwargs[name] for name in impl.argnames])


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call every implementation of ``hook_name``; return ``(plugin name, result)`` pairs.

    Unlike ``pm.hook.<name>(...)``, this tells which plugin returned what.

    :raises PluginError: naming the plugin whose implementation raised.
    """
    results = []
    for impl in hook_impls(pm, hook_name):
        try:
            results.append((impl.plugin_name, call_impl(impl, kwargs)))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name, f"{hook_name} failed: {exc!r}") from exc
    return results


def rollout_bucket(plugin_name: str, recipient: str) -> float:
    """A stable number in [0, 100) for (plugin, recipient): the recipient's place in the rollout."""
    digest = hashlib.blake2b(f"{plugin_name}\0{recipient}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100


def in_rollout(percent: float, plugin_name: str, recipient: str) -> bool:
    """Whether ``recipient`` is among the ``percent`` % of traffic that gets ``plugin_name``."""
    if percent >= 100:
        return True
    if percent <= 0:
        return False
    return rollout_bucket(plugin_name, recipient) < percent


def plugin_infos(pm: PluginManager, channels: dict[str, list[str]] | None = None) -> list[PluginInfo]:
    """Describe every registered plugin (and every one that failed to load)."""
    channels = channels or {}
    infos = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist, version = pm.distributions.get(name, (None, None))
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        infos.append(
            PluginInfo(
                name=name,
                hooks=hooks,
                version=version,
                distribution=dist,
                channels=tuple(sorted(channels.get(name, ()))),
                builtin=name in DEFAULT_PLUGINS,
            )
        )
    infos.extend(PluginInfo(name=err.plugin_name, hooks=(), error=err.reason) for err in pm.load_errors)
    return infos


def trace_hook_calls(pm: pluggy.PluginManager, logger: logging.Logger) -> Callable[[], None]:
    """Log every hook call and its outcome; return the function that stops it."""

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        logger.debug("hook %s -> %s", hook_name, ", ".join(i.plugin_name for i in impls) or "(none)")

    def after(
        outcome: pluggy.Result[Any],
        hook_name: str,
        impls: Sequence[pluggy.HookImpl],
        kwargs: Mapping[str, Any],
    ) -> None:
        exc = outcome.exception
        logger.debug("hook %s <- %s", hook_name, f"raised {exc!r}" if exc else "ok")

    return pm.add_hookcall_monitoring(before, after)
