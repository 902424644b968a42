"""Finding and loading plugins: stevedore finds them by name, pluggy runs them.

Only the plugins the config names are imported (``NamedExtensionManager``), each
decodes its own options, and the instance is registered with pluggy under its
config name (``keys``, ``sinks.archive``). Hook-only plugins come from
``[plugins] modules`` and from the entry-point group ``privateshare``. A broken
third-party hook plugin is reported and skipped so it cannot take the others
down; ``strict`` re-raises instead, for plugin authors.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import msgspec
import pluggy
from stevedore import ExtensionManager, NamedExtensionManager

from ..config import Config, PluginSpec, decode_options
from ..errors import ConfigError, PluginError
from . import specs
from .families import FAMILIES, HOOK_GROUP, Family  # noqa: F401  (Family: old import path)
from .plugin import NoOptions, PluginContext, no_key_handle

log = logging.getLogger(__name__)


#: Built-in plugins that need an extra: (family, type) -> extra name (from the family table).
EXTRAS: dict[tuple[str, str], str] = {
    (f.key, kind): extra for f in FAMILIES.values() for kind, extra in f.extras.items()
}


@dataclass(frozen=True)
class PluginInfo:
    """An installed plugin, as ``privateshare plugins`` shows it."""

    family: str
    name: str
    distribution: str
    version: str
    target: Any = field(repr=False, default=None)

    @property
    def options(self) -> type[msgspec.Struct]:
        return getattr(self.target, "Options", NoOptions)

    @property
    def description(self) -> str:
        doc = getattr(self.target, "description", "") or (self.target.__doc__ or "")
        return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass(frozen=True)
class BrokenPlugin:
    family: str
    name: str
    distribution: str
    error: str


def _dist(entry_point: metadata.EntryPoint) -> tuple[str, str]:
    """The distribution that declares an entry point (stevedore's cache drops it)."""
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        dist = _entry_point_owners().get((entry_point.group, entry_point.name))
    if dist is None:
        return "unknown", "?"
    return dist.metadata["Name"] or dist.name, dist.version


def _entry_point_owners() -> dict[tuple[str, str], metadata.Distribution]:
    owners: dict[tuple[str, str], metadata.Distribution] = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group.startswith("privateshare"):
                owners.setdefault((ep.group, ep.name), dist)
    return owners


def installed_names(family: str) -> list[str]:
    """Names in a family's namespace, without importing anything."""
    group = FAMILIES[family].namespace if family in FAMILIES else family
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def discover(family: str) -> tuple[list[PluginInfo], list[BrokenPlugin]]:
    """Import every plugin of a family (for listing); broken ones are reported, not raised."""
    broken: list[BrokenPlugin] = []
    namespace = FAMILIES[family].namespace if family in FAMILIES else family

    def on_failure(_manager: Any, entry_point: metadata.EntryPoint, exc: BaseException) -> None:
        broken.append(
            BrokenPlugin(family, entry_point.name, _dist(entry_point)[0], _error_text(exc))
        )

    manager: ExtensionManager[Any] = ExtensionManager(
        namespace, invoke_on_load=False, on_load_failure_callback=on_failure
    )
    found = [
        PluginInfo(family, ext.name, *_dist(ext.entry_point), target=ext.plugin)
        for ext in manager.extensions
    ]
    return sorted(found, key=lambda p: p.name), broken


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def install_hint(family: str, kind: str) -> str:
    extra = EXTRAS.get((family, kind))
    if extra:
        return f"pip install 'privateshare[{extra}]'"
    return f"pip install privateshare-{kind} (or the package that provides it)"


def load_plugin_class(spec: PluginSpec, source: str) -> Any:
    """Import exactly the plugin ``spec`` names; errors list what is installed instead."""
    family = FAMILIES[spec.family]
    errors: list[BaseException] = []

    def on_failure(_manager: Any, _entry_point: Any, exc: BaseException) -> None:
        errors.append(exc)

    manager: NamedExtensionManager[Any] = NamedExtensionManager(
        family.namespace,
        names=[spec.type],
        invoke_on_load=False,
        on_missing_entrypoints_callback=lambda _names: None,  # we explain it ourselves
        on_load_failure_callback=on_failure,
    )
    if manager.extensions:
        return manager.extensions[0].plugin
    if errors:
        exc = errors[0]
        owner = _entry_point_owners().get((family.namespace, spec.type))
        builtin = owner is not None and owner.metadata["Name"] == "privateshare"
        if isinstance(exc, ImportError) and (not builtin or (spec.family, spec.type) in EXTRAS):
            hint = install_hint(spec.family, spec.type)
        elif builtin:
            hint = "this built-in plugin is broken: reinstall privateshare and report it"
        else:
            hint = "report it to the plugin's authors, or choose another plugin"
        raise PluginError(
            f"{source}: [{spec.name}] type = {spec.type!r}: the {family.label} plugin is "
            f"installed but fails to load ({_error_text(exc)}); {hint}"
        )
    installed = ", ".join(installed_names(spec.family)) or "none"
    raise ConfigError(
        f"[{spec.name}] type: unknown {family.label} plugin {spec.type!r}; installed "
        f"{family.label} plugins: {installed}. To add it: {install_hint(spec.family, spec.type)}",
        source,
    )


class PluginSet:
    """A pluggy manager holding the configured plugins and the user's hook plugins."""

    def __init__(
        self,
        config: Config,
        *,
        strict: bool | None = None,
        key_handle: Callable[[], Any] | None = None,
    ) -> None:
        self.config = config
        self.strict = config.plugins.strict if strict is None else strict
        self.pm = pluggy.PluginManager(specs.PROJECT)
        self.pm.add_hookspecs(specs)
        self.broken: list[BrokenPlugin] = []
        self.instances: dict[str, Any] = {}
        self._key_handle = key_handle

    # Loading ---------------------------------------------------------------

    def load(self, extra: dict[str, Any] | None = None) -> PluginSet:
        problems: list[str] = []
        for spec in self.config.plugin_specs():
            try:
                self._load_spec(spec)
            except ConfigError as exc:
                problems.extend(exc.problems)
            except PluginError as exc:
                if spec.family != "sinks" or self.strict:
                    raise
                self._report_broken(spec.family, spec.name, "?", str(exc))
        if problems:
            raise ConfigError(problems, self.config.source)
        for name, plugin in (extra or {}).items():
            self.pm.register(plugin, name=name)
        self._load_hook_modules()
        self._load_hook_entry_points()
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{exc}; check the hook's name against docs/hooks.md") from None
        return self

    def _load_spec(self, spec: PluginSpec) -> None:
        cls = load_plugin_class(spec, self.config.source)
        options_type = getattr(cls, "Options", NoOptions)
        options = decode_options(spec.options, options_type, f"[{spec.name}]", self.config.base_dir)
        context = PluginContext(
            name=spec.name,
            base_dir=self.config.base_dir,
            application_id=self.config.digime.application_id,
            contract_id=self.config.digime.contract_id,
            api=self.config.digime.api,
            key_handle=self._key_handle or no_key_handle,
        )
        try:
            instance = cls(options, context)
        except (ConfigError, PluginError):
            raise
        except Exception as exc:
            raise PluginError(
                f"{self.config.source}: [{spec.name}] the {spec.type!r} plugin failed to start: "
                f"{_error_text(exc)}"
            ) from exc
        try:
            self.pm.register(instance, name=spec.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"[{spec.name}] {exc}; check the hook names against docs/hooks.md"
            ) from None
        self.instances[spec.name] = instance

    def _load_hook_modules(self) -> None:
        for module_name in self.config.plugins.modules:
            try:
                module = importlib.import_module(module_name)
                self.pm.register(module, name=f"module:{module_name}")
            except Exception as exc:
                if self.strict:
                    raise PluginError(
                        f"{self.config.source}: [plugins] modules: {module_name!r} cannot be "
                        f"loaded: {_error_text(exc)}"
                    ) from exc
                self._report_broken("hooks", module_name, "(config)", _error_text(exc))

    def _load_hook_entry_points(self) -> None:
        disabled = set(self.config.plugins.disable)
        for entry_point in metadata.entry_points(group=HOOK_GROUP):
            if entry_point.name in disabled or self.pm.has_plugin(f"entry:{entry_point.name}"):
                continue
            try:
                self.pm.register(entry_point.load(), name=f"entry:{entry_point.name}")
            except Exception as exc:
                if self.strict:
                    raise PluginError(
                        f"the hook plugin {entry_point.name!r} ({_dist(entry_point)[0]}) is "
                        f"broken: {_error_text(exc)}"
                    ) from exc
                self._report_broken(
                    "hooks", entry_point.name, _dist(entry_point)[0], _error_text(exc)
                )

    def _report_broken(self, family: str, name: str, dist: str, error: str) -> None:
        log.warning("plugin %s (%s) is broken and was skipped: %s", name, family, error)
        self.broken.append(BrokenPlugin(family, name, dist, error))


def check_config(config: Config) -> list[str]:
    """Every problem in a config's plugin tables, found without starting any plugin."""
    problems: list[str] = []
    for spec in config.plugin_specs():
        try:
            cls = load_plugin_class(spec, config.source)
            decode_options(
                spec.options, getattr(cls, "Options", NoOptions), f"[{spec.name}]", config.base_dir
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
        except PluginError as exc:
            problems.append(str(exc).removeprefix(f"{config.source}: "))
    for module_name in config.plugins.modules:
        try:
            importlib.import_module(module_name)
        except Exception as exc:
            problems.append(
                f"[plugins] modules: {module_name!r} cannot be imported ({_error_text(exc)}); "
                "check the name and that it is on PYTHONPATH"
            )
    return problems
