"""How the service calls the send pipeline's hooks for one channel: a cached plan.

For each channel owner (and each set of plugins a rollout leaves out) the
service builds a ``Plan`` once: the callers of ``validate``, ``build``,
``send`` and ``sender_id`` with the other channel plugins and the excluded plugins removed. Plans
are rebuilt when ``PluginManager.generation`` changes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Generator
from typing import Any

import attrs
import pluggy

from . import _builtins
from . import plugins as _plugins

_Impl = tuple[Callable[..., Any], Callable[[dict[str, Any]], tuple[Any, ...]]]
"""An implementation ready to call: its function, and what picks its arguments from the call's."""


def _ready(impl: pluggy.HookImpl) -> _Impl:
    """``impl`` with the picker of its arguments: an ``operator.itemgetter``, so that a call
    builds no list in Python (a hand-written picker for fewer than two arguments)."""
    names = tuple(impl.argnames)
    if len(names) > 1:
        return impl.function, operator.itemgetter(*names)
    if names:
        (name,) = names
        return impl.function, lambda kwargs: (kwargs[name],)
    return impl.function, lambda kwargs: ()


class DirectCall:
    """Calls plain hook implementations as pluggy does, without its dispatch machinery.

    pluggy's dispatch was a third of the core's cost per message. Where a hook has
    no wrapper and nothing monitors hook calls, the result is the same: the
    implementations in call order, stopping at the first non-None result for a
    firstresult hook, else the list of non-None results.
    """

    __slots__ = ("_firstresult", "_impls")

    def __init__(self, impls: list[pluggy.HookImpl], firstresult: bool) -> None:
        self._impls = [_ready(impl) for impl in impls]
        self._firstresult = firstresult

    def __call__(self, **kwargs: Any) -> Any:
        results = []
        for function, pick in self._impls:
            result = function(*pick(kwargs))
            if result is not None:
                if self._firstresult:
                    return result
                results.append(result)
        return None if self._firstresult else results


class WrappedCall:
    """Calls hook implementations and new-style wrappers (``wrapper=True``) as pluggy's
    ``_multicall`` does, without its per-call set-up.

    Used where nothing monitors hook calls and no implementation is an old-style
    ``hookwrapper`` or takes keyword-only arguments: the send pipeline with middleware.
    Each wrapper runs to its ``yield``, the plain implementations give the result, and
    the wrappers resume innermost first with that result, or with the exception thrown
    into them; what a wrapper returns (or raises) goes to the next one out.
    """

    __slots__ = ("_firstresult", "_impls", "_innermost")

    def __init__(
        self,
        impls: list[pluggy.HookImpl],
        firstresult: bool,
        innermost: Callable[[Any], Any] | None = None,
    ) -> None:
        self._impls = [(*_ready(impl), impl.wrapper) for impl in impls]
        self._firstresult = firstresult
        self._innermost = innermost
        """Applied to a non-None result before the wrappers resume: the innermost wrapper's work,
        for a wrapper that only wraps the result (the core's attempt counter), without a generator."""

    def __call__(self, **kwargs: Any) -> Any:
        results: list[Any] = []
        teardowns: list[Generator[None, Any, Any]] = []
        exception: BaseException | None = None
        try:
            for function, pick, wrapper in self._impls:
                outcome: Any = function(*pick(kwargs))
                if wrapper:
                    try:
                        next(outcome)
                    except StopIteration:
                        raise RuntimeError(f"wrapper {function!r} did not yield") from None
                    teardowns.append(outcome)
                elif outcome is not None:
                    results.append(outcome)
                    if self._firstresult:
                        break
        except BaseException as exc:
            exception = exc
        result: Any = (results[0] if results else None) if self._firstresult else results
        if self._innermost is not None and exception is None and result is not None:
            result = self._innermost(result)
        for teardown in reversed(teardowns):
            try:
                if exception is not None:
                    teardown.throw(exception)
                else:
                    teardown.send(result)
            except StopIteration as stop:
                result, exception = stop.value, None
                continue
            except BaseException as exc:
                exception = exc
                continue
            teardown.close()
            exception = RuntimeError(f"wrapper {teardown!r} has a second yield")
        if exception is not None:
            raise exception
        return result


def _no_answer(**_: Any) -> None:
    """A first-result hook nobody implements."""
    return None


def _no_answers(**_: Any) -> list[Any]:
    """A broadcast hook nobody implements."""
    return []


@attrs.frozen
class Plan:
    """The hook callers for one channel owner and one set of plugins out of rollout."""

    validate: Callable[..., Any]
    build: Callable[..., Any]
    send: Callable[..., Any]
    sender_id: Callable[..., Any]
    counts_attempts: bool
    """Whether middleware wraps the channel's sender: only then are attempts counted."""


def make_plan(
    pm: pluggy.PluginManager, channel_plugins: frozenset[object], owner: object, excluded: frozenset[object]
) -> Plan:
    """The plan for channels of ``owner`` when the plugins ``excluded`` sit out (rollout)."""
    # A channel plugin is asked only about its own channels.
    remove = (channel_plugins - {owner}) | excluded
    builtins = pm.get_plugin(_plugins.DEFAULT_PLUGINS[0])
    counts = any(
        impl.wrapper and impl.plugin not in remove and impl.plugin is not builtins
        for impl in pm.hook.send.get_hookimpls()
    )
    # Without middleware the channel's sender runs once: no need to count.
    send_remove = remove if counts or builtins is None else remove | {builtins}
    # Called directly, the core's counter (the innermost wrapper) is applied as a function.
    counter = (builtins, _builtins.count_attempts) if counts and builtins is not None else None
    return Plan(
        _caller(pm, "validate", remove),
        _caller(pm, "build", remove),
        _caller(pm, "send", send_remove, innermost=counter),
        _caller(pm, "sender_id", remove),
        counts,
    )


def _caller(
    pm: pluggy.PluginManager,
    hook: str,
    remove: frozenset[object],
    *,
    innermost: tuple[object, Callable[[Any], Any]] | None = None,
) -> Callable[..., Any]:
    """The caller of ``hook`` without the plugins ``remove``: direct when nothing monitors hooks.

    :param innermost: ``(plugin, function)``: on the direct path, ``plugin``'s wrapper (the
        innermost one) is left out and ``function`` applied to the result in its place.
    """
    caller: pluggy.HookCaller = getattr(pm.hook, hook)
    impls = [impl for impl in caller.get_hookimpls() if impl.plugin not in remove]
    monitored = getattr(pm, "monitored", True)
    if not monitored and not any(impl.hookwrapper or impl.kwargnames for impl in impls):
        firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
        if not impls:
            return _no_answer if firstresult else _no_answers
        if any(impl.wrapper for impl in impls):
            adapt = None
            if innermost is not None:
                plugin, adapt = innermost
                impls = [impl for impl in impls if impl.plugin is not plugin]
            return WrappedCall(impls[::-1], firstresult, adapt)
        return DirectCall(impls[::-1], firstresult)
    return pm.subset_hook_caller(hook, remove) if remove else caller
