"""Finding and loading plugins: stevedore finds them by name, pluggy runs them.

Only the plugins the config names are imported (``NamedExtensionManager``), each
decodes its own options, and the instance is registered with pluggy under its
config name (``keys``, ``sinks.archive``). Hook-only plugins come from
``[plugins] modules`` and from the entry-point group ``privateshare``. A broken
third-party hook plugin is reported and skipped so it cannot take the others
down; ``strict`` re-raises instead, for plugin authors.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import msgspec
import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version
from stevedore import ExtensionManager, NamedExtensionManager

from .. import DOCS_URL
from ..config import Config, PluginSpec, decode_options
from ..errors import ConfigError, PluginError
from . import specs
from .families import FAMILIES, HOOK_GROUP, Family, family_of_hook  # noqa: F401 (Family: old path)
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
    names = installed_names(spec.family)
    installed = ", ".join(names) or "none"
    close = difflib.get_close_matches(spec.type, names, n=1, cutoff=0.75)
    if close:  # a typo of an installed plugin: say so rather than suggest a package
        raise ConfigError(
            f"[{spec.name}] type: unknown {family.label} plugin {spec.type!r}; did you mean "
            f"{close[0]!r}? Installed {family.label} plugins: {installed}",
            source,
        )
    raise ConfigError(
        f"[{spec.name}] type: unknown {family.label} plugin {spec.type!r}; installed "
        f"{family.label} plugins: {installed}. To add it: {install_hint(spec.family, spec.type)}",
        source,
    )


def implemented_hooks(target: Any) -> list[str]:
    """The hooks a plugin class, instance or module implements (marked ``@hookimpl``)."""
    marker = f"{specs.PROJECT}_impl"
    found = []
    for name in dir(target):
        if name.startswith(f"{specs.PROJECT}_"):
            value = inspect.getattr_static(target, name, None)
            value = getattr(value, "__func__", value)  # staticmethod, classmethod
            if getattr(value, marker, None) is not None:
                found.append(name)
    return sorted(found)


def check_family_contract(cls: Any, spec: PluginSpec, source: str) -> None:
    """A family plugin implements its family's hooks and no other family's.

    General hooks (transforms, observers, ...) are open to every plugin; a hook of
    another family would make, say, a sink silently answer token hooks.
    """
    family = FAMILIES[spec.family]
    hooks = implemented_hooks(cls)
    where = f"{source}: [{spec.name}] type = {spec.type!r}"
    for hook in hooks:
        owner = family_of_hook(hook)
        if owner is not None and owner is not family:
            raise PluginError(
                f"{where}: the {family.label} plugin {_qualname(cls)} implements {hook}, a hook "
                f"of the {owner.label} family ({owner.table}); a {family.label} plugin may "
                f"implement only {family.label} hooks and general hooks. Report it to the "
                "plugin's authors (see " + DOCS_URL + "writing-plugins/)"
            )
    if not set(hooks) & set(family.hooks):
        raise PluginError(
            f"{where}: the {family.label} plugin {_qualname(cls)} implements none of the "
            f"{family.label} hooks ({', '.join(family.hooks)}); is it registered in the right "
            f"entry-point group ({family.namespace})?"
        )


def check_spec_version(target: Any, who: str) -> None:
    """Refuse a plugin whose ``requires_spec`` range excludes this privateshare's hook specs."""
    wanted = getattr(target, "requires_spec", None)
    if wanted is None:
        return
    try:
        accepted = SpecifierSet(str(wanted))
    except InvalidSpecifier:
        raise PluginError(
            f"{who}: requires_spec = {wanted!r} is not a version range; write it as e.g. "
            f'">={specs.SPEC_VERSION},<{Version(specs.SPEC_VERSION).major + 1}"'
        ) from None
    if Version(specs.SPEC_VERSION) not in accepted:
        raise PluginError(
            f"{who} needs hook spec version {accepted} but this privateshare has hook spec "
            f"{specs.SPEC_VERSION}; install a version of the plugin made for hook spec "
            f"{specs.SPEC_VERSION}, or a privateshare whose hook spec matches ({DOCS_URL}hooks/)"
        )


def check_plugin_class(cls: Any, spec: PluginSpec, source: str) -> None:
    """What loading checks of a family plugin's class before starting it."""
    check_spec_version(cls, f"{source}: [{spec.name}] the {spec.type!r} plugin")
    check_family_contract(cls, spec, source)


def _qualname(target: Any) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


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
            raise PluginError(f"{exc}; check the hook's name against {DOCS_URL}hooks/") from None
        return self

    def _load_spec(self, spec: PluginSpec) -> None:
        cls = load_plugin_class(spec, self.config.source)
        check_plugin_class(cls, spec, self.config.source)
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
                f"[{spec.name}] {exc}; check the hook names against {DOCS_URL}hooks/"
            ) from None
        self.instances[spec.name] = instance

    def _load_hook_modules(self) -> None:
        for module_name in self.config.plugins.modules:
            try:
                module = importlib.import_module(module_name)
                check_spec_version(module, f"[plugins] modules: {module_name!r}")
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
                hooks = entry_point.load()
                check_spec_version(
                    hooks, f"the hook plugin {entry_point.name!r} ({_dist(entry_point)[0]})"
                )
                self.pm.register(hooks, name=f"entry:{entry_point.name}")
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
            check_plugin_class(cls, spec, config.source)
            decode_options(
                spec.options, getattr(cls, "Options", NoOptions), f"[{spec.name}]", config.base_dir
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
        except PluginError as exc:
            problems.append(str(exc).removeprefix(f"{config.source}: "))
    for module_name in config.plugins.modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            problems.append(
                f"[plugins] modules: {module_name!r} cannot be imported ({_error_text(exc)}); "
                "check the name and that it is on PYTHONPATH"
            )
            continue
        try:
            check_spec_version(module, f"[plugins] modules: {module_name!r}")
        except PluginError as exc:
            problems.append(str(exc))
    return problems
