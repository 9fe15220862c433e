"""Configuration: attrs classes, and ``load_config`` that fills them from three sources.

Precedence, lowest first: the defaults below; a TOML file; environment
variables; explicit arguments. Later sources override earlier ones key by key
(tables merge), except ``disabled_plugins``, which is the union of all sources.

* File: the ``path`` argument, else ``$OMNICHANNEL_CONFIG``, else
  ``./omnichannel.toml`` when it exists.
* Environment: ``OMNICHANNEL_<KEY>``, with ``__`` between nested keys:
  ``OMNICHANNEL_HTTP__TIMEOUT_S=5``, ``OMNICHANNEL_PLUGINS__WHATSAPP__ACCESS_TOKEN=...``.
  Values are parsed by the type of their key (numbers, ``true``/``false``,
  comma-separated lists). ``OMNICHANNEL_DISABLE_PLUGINS=a,b`` blocks plugins.
* Arguments: the ``overrides`` mapping, e.g. from the CLI.

Each plugin's section ``[plugins.<name>]`` holds two generic keys, ``enabled``
and ``rollout`` (percent of recipients), and the plugin's own settings, which
the service checks against the class the plugin declares (``register_config``).
A plugin's fields may also name legacy environment variables with ``setting(env=...)``.
The legacy service's feature flags (``WHATSAPP_ENHANCED_ROLLOUT``, ...) are not read:
when set, each is logged as a warning that says what replaces it.

Every problem is reported at once as a ``ConfigError`` line ``<path>: <problem>``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from .errors import ConfigError
from .serde import EnvStr, InvalidField, InvalidValue, Secret, _kind, format_errors, make_converter

__all__ = [
    "AmqpConfig",
    "HttpConfig",
    "PluginSettings",
    "ServerConfig",
    "ServiceConfig",
    "load_config",
    "setting",
    "structure_plugin_config",
]

log = logging.getLogger("omnichannel")

ENV_PREFIX = "OMNICHANNEL_"
_ENV_ALIASES = {"DISABLE_PLUGINS": "disabled_plugins"}
_NOT_SETTINGS = frozenset({"CONFIG"})

# The legacy service's feature flags picked between its old and new implementations per
# request. Nothing here has that meaning (a plugin's ``rollout`` takes recipients off its
# channel), so mapping them would change what gets sent: they are named, not read.
_IGNORED_LEGACY_FLAGS = {
    "WHATSAPP_ENHANCED_ENABLED": "there is no older implementation to fall back to; to turn a plugin "
    "off, set [plugins.<name>] enabled = false (OMNICHANNEL_PLUGINS__<NAME>__ENABLED)",
    "WHATSAPP_ENHANCED_ROLLOUT": "set [plugins.<name>] rollout = N (percent of recipients, "
    "OMNICHANNEL_PLUGINS__<NAME>__ROLLOUT) for the plugins to roll out",
    "WHATSAPP_COMMANDS_ENABLED": "the command bus is part of the core and always available",
    "WHATSAPP_EVENT_LISTENERS": "every enabled listener plugin runs; to turn one off, "
    "set [plugins.<name>] enabled = false",
}

T = TypeVar("T")


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise InvalidField(attribute.name, f"must be > 0, got {value}")


def _percent(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value <= 100:
        raise InvalidField(attribute.name, f"must be between 0 and 100, got {value}")


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        raise InvalidField(attribute.name, f"must be between 0 and 65535, got {value}")


def setting(*, env: str | Sequence[str] = (), env_scale: float = 1.0, **kwargs: Any) -> Any:
    """An ``attrs.field`` that may also be read from the environment variables ``env``.

    For plugin configuration classes, to keep legacy variable names working::

        @attrs.frozen
        class BreakerConfig:
            failure_threshold: int = setting(default=5, env="WHATSAPP_CIRCUIT_BREAKER_FAILURE_THRESHOLD")

    A variable is used only when the key is absent from the file and from
    ``OMNICHANNEL_...`` variables. ``env_scale`` converts a legacy unit: a number
    read from ``env`` is multiplied by it (``0.001`` for milliseconds into a ``*_s`` key).
    """
    names = (env,) if isinstance(env, str) else tuple(env)
    metadata = {**kwargs.pop("metadata", {}), "env": names, "env_scale": env_scale}
    return attrs.field(metadata=metadata, **kwargs)


@attrs.frozen
class HttpConfig:
    """The shared outbound HTTP session."""

    timeout_s: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    max_connections: int = attrs.field(default=100, validator=_positive)


@attrs.frozen
class ServerConfig:
    """``omnichannel serve``."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    shutdown_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    health_timeout_s: float = attrs.field(default=1.0, validator=_positive)
    """How long ``GET /health`` waits for each plugin's section."""


def _delays(_: object, attribute: attrs.Attribute[Any], value: tuple[float, ...]) -> None:
    if not value or any(d <= 0 for d in value):
        raise InvalidField(attribute.name, f"must be a non-empty list of numbers > 0, got {list(value)}")


def _default_dlq(config: AmqpConfig) -> str:
    return f"{config.queue}.dlq"


@attrs.frozen
class AmqpConfig:
    """``[amqp]``: the RabbitMQ broker that carries commands to ``omnichannel worker`` processes.

    :param url: the broker, ``amqp://user:password@host:5672/vhost``; a secret (the password
        is never printed; logs show it without user and password).
    :param queue: the durable queue commands are published to and workers consume.
    :param prefetch: messages the broker hands one worker before it acks any.
    :param concurrency: commands one worker runs at once.
    :param delays: seconds a deferred message waits, by delivery (1st failure: the first
        step, ...; the last step repeats); a provider's ``retry_after`` picks the first step
        that is at least as long. Each step is a queue ``<queue>.delay.<milliseconds>``.
    :param dead_letter_queue: where messages that cannot be sent go (default ``<queue>.dlq``).
    :param max_deliveries: deliveries of one message before a transient failure dead-letters it.
    :param lease_s: how long a worker holds a message's idempotency key while it sends.
    :param stop_timeout_s: how long a stopping worker lets in-flight messages finish before it
        returns them to the queue.
    :param ambiguous_policy: what to do with a send whose outcome is uncertain (it may have
        reached the provider): ``reconcile`` (wait ``reconcile_window_s`` for a status webhook
        to settle its key, then resend once), ``retry`` (resend at once) or ``dead_letter``
        (never resend).
    :param reconcile_window_s: how long ``reconcile`` waits for a webhook before resending.
    :param park_probe_s: how long a worker parks a sender's messages before it lets one
        through as a probe (success resumes the sender); 0: never probe.
    :param message_ttl_s: how long a message may take, from its first publish, deferrals and
        parking included; an older one is dead-lettered (``expired``) instead of sent.
    """

    url: Secret = attrs.field(factory=lambda: Secret("amqp://guest:guest@127.0.0.1:5672/"))
    queue: str = attrs.field(default="omnichannel.commands", validator=attrs.validators.min_len(1))
    prefetch: int = attrs.field(default=20, validator=_positive)
    concurrency: int = attrs.field(default=10, validator=_positive)
    delays: tuple[float, ...] = attrs.field(default=(5.0, 30.0, 120.0, 600.0, 1800.0), validator=_delays)
    dead_letter_queue: str = attrs.field(default=attrs.Factory(_default_dlq, takes_self=True))
    max_deliveries: int = attrs.field(default=5, validator=_positive)
    lease_s: float = attrs.field(default=600.0, validator=_positive)
    stop_timeout_s: float = attrs.field(default=30.0, validator=_positive)
    ambiguous_policy: str = attrs.field(default="reconcile")
    reconcile_window_s: float = attrs.field(default=30.0, validator=_positive)
    park_probe_s: float = attrs.field(default=300.0)
    message_ttl_s: float = attrs.field(default=86400.0, validator=_positive)

    @ambiguous_policy.validator
    def _check_policy(self, attribute: attrs.Attribute[Any], value: str) -> None:
        allowed = ("reconcile", "retry", "dead_letter")
        if value not in allowed:
            raise InvalidField(attribute.name, f"must be one of {', '.join(allowed)}, got {value!r}")

    @park_probe_s.validator
    def _check_probe(self, attribute: attrs.Attribute[Any], value: float) -> None:
        if value < 0:
            raise InvalidField(attribute.name, f"must be >= 0 (0: never probe), got {value}")


def _key_store(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    from .idempotency.factory import check_key_store_url

    try:
        check_key_store_url(value)
    except ConfigError as exc:
        # "key_store: <problem>": the field's path is added by the error report.
        raise InvalidField(attribute.name, exc.errors[0].split(": ", 1)[1]) from None


@attrs.frozen
class PluginSettings:
    """One ``[plugins.<name>]`` section: the generic keys and the plugin's raw settings."""

    enabled: bool = True
    rollout: float = attrs.field(default=100.0, validator=_percent)
    # Raw until the plugin's class structures them: they may hold secrets, so no repr.
    settings: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class ServiceConfig:
    """The whole configuration of a service.

    :param default_route: channels to try, in order, for a message that names none.
    :param channels: picks the owning plugin of a channel that several plugins declare.
    :param disabled_plugins: plugins not to load.
    :param send_concurrency: default concurrency of ``send_many``.
    :param strict_plugins: make a plugin that fails to load a start-up error
        (by default it is reported and the others load).
    :param trace_plugins: log every hook call.
    :param key_store: where idempotency keys live: ``sqlite:///path`` (a file, the default),
        ``redis://...`` (shared by every worker) or ``memory://`` (this process only).
    :param amqp: the ``[amqp]`` broker (``AmqpConfig``); when set, ``service.bus`` publishes
        commands to it for ``omnichannel worker`` instead of running them in this process.
    """

    default_route: tuple[str, ...] = ()
    channels: Mapping[str, str] = attrs.field(factory=dict)
    disabled_plugins: tuple[str, ...] = ()
    send_concurrency: int = attrs.field(default=10, validator=_positive)
    strict_plugins: bool = False
    trace_plugins: bool = False
    key_store: str = attrs.field(default="sqlite:///omnichannel-keys.sqlite3", validator=_key_store)
    http: HttpConfig = attrs.field(factory=HttpConfig)
    server: ServerConfig = attrs.field(factory=ServerConfig)
    amqp: AmqpConfig | None = None
    plugins: Mapping[str, PluginSettings] = attrs.field(factory=dict)

    def blocked_plugins(self) -> frozenset[str]:
        """Names of the plugins not to load: ``disabled_plugins`` and sections with ``enabled = false``.

        Both spellings of each name are included: entry-point names are kebab-case,
        while environment variables can only spell ``_``.
        """
        names = set(self.disabled_plugins)
        names |= {name for name, section in self.plugins.items() if not section.enabled}
        return frozenset(variant for n in names for variant in (n, n.replace("_", "-"), n.replace("-", "_")))

    def plugin_settings(self, name: str) -> PluginSettings:
        """The section of plugin ``name`` (``-`` and ``_`` are interchangeable), or defaults."""
        wanted = name.replace("-", "_")
        for key, section in self.plugins.items():
            if key.replace("-", "_") == wanted:
                return section
        return PluginSettings()


def _unstructure_plugin_settings(value: PluginSettings) -> dict[str, Any]:
    return {"enabled": value.enabled, "rollout": value.rollout, **value.settings}


def register_config_hooks(converter: cattrs.Converter) -> cattrs.Converter:
    """Teach ``converter`` the flat layout of ``[plugins.<name>]`` sections."""
    generic_keys = ("enabled", "rollout")
    structure_generic = make_dict_structure_fn(PluginSettings, converter, _cattrs_forbid_extra_keys=True)

    def structure(value: object, _: type) -> PluginSettings:
        if not isinstance(value, Mapping):
            raise InvalidValue(f"expected a table, got {_kind(value)}")
        generic = {k: v for k, v in value.items() if k in generic_keys}
        settings = {k: v for k, v in value.items() if k not in generic_keys}
        return attrs.evolve(structure_generic(generic, PluginSettings), settings=settings)

    converter.register_structure_hook(PluginSettings, structure)
    converter.register_unstructure_hook(PluginSettings, _unstructure_plugin_settings)
    return converter


_CONVERTER = register_config_hooks(make_converter())


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None


def _from_environ(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the settings found in ``OMNICHANNEL_*`` variables and each one's path -> variable."""
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name.removeprefix(ENV_PREFIX)
        if key in _NOT_SETTINGS or not key:
            continue
        parts = [p.lower() for p in _ENV_ALIASES.get(key, key).split("__")]
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"{name}: conflicts with another OMNICHANNEL_ variable"])
        previous = node.get(parts[-1])
        if isinstance(previous, EnvStr) and parts == ["disabled_plugins"]:
            # OMNICHANNEL_DISABLE_PLUGINS and OMNICHANNEL_DISABLED_PLUGINS both count.
            node[parts[-1]] = EnvStr(f"{previous},{environ[name]}", name)
            continue
        node[parts[-1]] = EnvStr(environ[name], name)
        sources[".".join(parts)] = name
    return tree, sources


def _with_sources(lines: list[str], sources: Mapping[str, str]) -> list[str]:
    """Name the environment variable behind a bad key that did not come from the file."""
    out = []
    for line in lines:
        path, _, problem = line.partition(": ")
        var = sources.get(path)
        out.append(f"{line} (from ${var})" if var and f"${var}" not in problem else line)
    return out


def _disabled(raw: Mapping[str, Any]) -> list[Any] | None:
    """The names a layer disables, or ``None`` when its value is not a list (the converter says so)."""
    value = raw.get("disabled_plugins", ())
    if isinstance(value, EnvStr):
        return [EnvStr(v.strip(), value.source) for v in value.split(",") if v.strip()]
    return list(value) if isinstance(value, list | tuple) else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServiceConfig:
    """Read the configuration from the file, the environment and ``overrides`` (see the module doc).

    Logs a warning (logger ``omnichannel``) for each legacy feature flag set in ``environ``.

    :raises ConfigError: listing every problem, each with its path.
    """
    environ = os.environ if environ is None else environ
    for var, instead in _IGNORED_LEGACY_FLAGS.items():
        if var in environ:
            log.warning("%s is not read: %s", var, instead)
    file_path = path or environ.get(f"{ENV_PREFIX}CONFIG")
    if file_path is None and Path("omnichannel.toml").is_file():
        file_path = "omnichannel.toml"
    layers: list[Mapping[str, Any]] = []
    if file_path is not None:
        layers.append(_read_file(Path(file_path)))
    env_tree, sources = _from_environ(environ)
    layers.append(env_tree)
    layers.append(overrides or {})

    raw: dict[str, Any] = {}
    disabled: list[Any] = []
    malformed = False
    for layer in layers:
        names = _disabled(layer)
        malformed = malformed or names is None
        disabled += names or []
        raw = _merge(raw, layer)
    if disabled and not malformed:
        raw["disabled_plugins"] = list(dict.fromkeys(disabled))
    try:
        return _CONVERTER.structure(raw, ServiceConfig)
    except (cattrs.BaseValidationError, cattrs.errors.CattrsError, ValueError, TypeError) as exc:
        source = str(file_path) if file_path is not None else None
        raise ConfigError(_with_sources(format_errors(exc), sources), source=source) from None


def _attrs_class_in(tp: Any) -> type | None:
    """The attrs class that ``tp`` is, or that ``tp | None`` holds."""
    candidates = [tp, *get_args(tp)] if get_args(tp) else [tp]
    # Secret is an attrs class too, but a scalar in the configuration.
    found = [c for c in candidates if isinstance(c, type) and attrs.has(c) and c is not Secret]
    return found[0] if len(found) == 1 else None


def _env_defaults(cls: type, environ: Mapping[str, str], raw: Mapping[str, Any]) -> dict[str, Any]:
    """Fill keys absent from ``raw`` from the legacy variables their fields name, in nested tables too."""
    filled = dict(raw)
    attrs.resolve_types(cls)  # string annotations (``from __future__ import annotations``)
    for field in attrs.fields(cls):
        nested_cls = _attrs_class_in(field.type)
        if nested_cls is not None:
            if nested_cls is not field.type and field.name not in filled:
                continue  # an optional table that is not given stays absent
            nested = filled.get(field.name, {})
            if isinstance(nested, Mapping):
                found = _env_defaults(nested_cls, environ, nested)
                if found:
                    filled[field.name] = found
            continue
        if field.name in filled:
            continue
        for var in field.metadata.get("env", ()):
            if var in environ:
                filled[field.name] = _scaled(EnvStr(environ[var], var), field.metadata.get("env_scale", 1.0))
                break
    return filled


def _scaled(value: EnvStr, scale: float) -> EnvStr:
    """``value`` multiplied by ``scale`` when it is a number (else as is, for the usual error)."""
    if scale == 1.0:
        return value
    try:
        number = float(value.strip())
    except ValueError:
        return value
    return EnvStr(repr(number * scale), value.source)


def structure_plugin_config(
    converter: cattrs.Converter,
    cls: type[T],
    raw: Mapping[str, Any],
    *,
    plugin_name: str,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Structure the settings of plugin ``plugin_name`` into ``cls``.

    :raises ConfigError: with lines rooted at ``plugins.<plugin_name>``.
    """
    environ = os.environ if environ is None else environ
    data = _env_defaults(cls, environ, raw) if attrs.has(cls) else dict(raw)
    try:
        return converter.structure(data, cls)
    except (cattrs.BaseValidationError, cattrs.errors.CattrsError, ValueError, TypeError) as exc:
        raise ConfigError(format_errors(exc, f"plugins.{plugin_name}")) from None
