"""Old import paths, kept working as deprecated aliases of their new homes: the one table.

``MOVED`` maps an old path to its new one. A key is either a module
(``"privateshare.hookspecs"``) or a module's attribute (``"privateshare.commands:pull_command"``);
a value is a module or ``"module:attribute"``.

- A moved module: ``import privateshare.hookspecs`` warns (``DeprecationWarning`` naming the
  new path) and returns the new module itself.
- A module that is gone but whose names moved elsewhere (``privateshare.commands``) imports
  silently as a stand-in; each name warns when it is used, naming its new home.
- A gone module with a module entry *and* names (``privateshare.api``) warns on import, and
  its names then resolve silently.
- A name moved out of a module that still exists (``privateshare.checks:Problem``): the module
  calls :func:`attributes` for its ``__getattr__``, and the name warns when used.

Our own code never uses an old path (pytest turns these warnings into errors for the suite).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from importlib.abc import Loader

#: Old path -> new path: ``module`` or ``module:attribute`` on either side.
MOVED: dict[str, str] = {
    # The plugin machinery (issue 12).
    "privateshare.hookspecs": "privateshare.hooks.specs",
    "privateshare.manager": "privateshare.hooks.loading",
    "privateshare.facade": "privateshare.hooks.calls",
    "privateshare.plugin": "privateshare.hooks.plugin",
    "privateshare.plugins.sqlcommon": "privateshare.sqldb",
    # One problem type.
    "privateshare:Problem": "privateshare.errors:ConfigProblem",
    "privateshare.checks:Problem": "privateshare.errors:ConfigProblem",
    # The protocol clients: privateshare.client.
    "privateshare.api": "privateshare.client",
    "privateshare.api:DigimeClient": "privateshare.client.legacy:DigimeClient",
    "privateshare.api:JSON": "privateshare.client.wire:JSON",
    "privateshare.api:MAX_ERROR_BYTES": "privateshare.client.wire:MAX_ERROR_BYTES",
    "privateshare.api:error_body": "privateshare.client.wire:error_body",
    "privateshare.api:file_path": "privateshare.client.wire:file_path",
    "privateshare.api:needs_refresh": "privateshare.client.wire:needs_refresh",
    "privateshare.api:now_ms": "privateshare.client.wire:now_ms",
    "privateshare.api:redact": "privateshare.client.wire:redact",
    "privateshare.api:redacting": "privateshare.client.wire:redacting",
    "privateshare.api:segment": "privateshare.client.wire:segment",
    "privateshare.api:server_error": "privateshare.client.wire:server_error",
    "privateshare.api:AuthorizeStart": "privateshare.client.protocol:AuthorizeStart",
    "privateshare.api:ConsentDenied": "privateshare.client.protocol:ConsentDenied",
    "privateshare.api:FileDownload": "privateshare.client.protocol:FileDownload",
    "privateshare.api:check_state": "privateshare.client.protocol:check_state",
    "privateshare.api:decode_file_list": "privateshare.client.files:decode_file_list",
    "privateshare.api:decode_x_metadata": "privateshare.client.files:decode_x_metadata",
    "privateshare.api:decode_session": "privateshare.client.tokens:decode_session",
    "privateshare.api:decode_token": "privateshare.client.tokens:decode_token",
    "privateshare.api15": "privateshare.client",
    "privateshare.api15:DigimeClientV15": "privateshare.client.legacy:DigimeClientV15",
    "privateshare.api15:ACCOUNTS_FILE": "privateshare.client.v15:ACCOUNTS_FILE",
    "privateshare.api15:APP_CONSENT_LINK": "privateshare.client.v15:APP_CONSENT_LINK",
    "privateshare.api15:DEFAULT_BASE_URL": "privateshare.client.v15:DEFAULT_BASE_URL",
    "privateshare.api15:GUEST_PATH": "privateshare.client.v15:GUEST_PATH",
    "privateshare.api15:MAX_ACCOUNTS_FILE": "privateshare.client.v15:MAX_ACCOUNTS_FILE",
    "privateshare.api15:EstablishedSession": "privateshare.client.v15:EstablishedSession",
    "privateshare.api15:UnsupportedCall": "privateshare.client.protocol:UnsupportedCall",
    "privateshare.api15:decode_flat_token": "privateshare.client.tokens:decode_flat_token",
    # The CLI: one package, privateshare.cli.
    "privateshare.commands:COMMANDS": "privateshare.cli.run:COMMANDS",
    "privateshare.commands:authorize_command": "privateshare.cli.run:authorize_command",
    "privateshare.commands:pull_command": "privateshare.cli.run:pull_command",
    "privateshare.commands:accounts_command": "privateshare.cli.manage:accounts_group",
    "privateshare.commands:users_command": "privateshare.cli.run:users_command",
    "privateshare.commands:delete_user_command": "privateshare.cli.run:delete_user_command",
    "privateshare.commands:config_option": "privateshare.cli.options:config_option",
    "privateshare.commands:json_option": "privateshare.cli.options:json_option",
    "privateshare.commands:open_flow": "privateshare.cli.options:open_flow",
    "privateshare.commands:exit_for": "privateshare.cli.options:exit_for",
    "privateshare.demo:DEMO_USER": "privateshare.cli.demo:DEMO_USER",
    "privateshare.demo:run_demo": "privateshare.cli.demo:run_demo",
    "privateshare.demo:demo_command": "privateshare.cli.demo:demo_command",
    "privateshare.demo:consent_as_browser": "privateshare.testing.sandboxed:consent_as_browser",
    "privateshare.report:Reporter": "privateshare.cli.report:Reporter",
    "privateshare.report:summary_dict": "privateshare.cli.report:summary_dict",
    "privateshare.scaffold:FAMILIES": "privateshare.cli.scaffold:FAMILIES",
    "privateshare.scaffold:PluginNames": "privateshare.cli.scaffold:PluginNames",
    "privateshare.scaffold:plugin_group": "privateshare.cli.scaffold:plugin_group",
    "privateshare.scaffold:render": "privateshare.cli.scaffold:render",
    "privateshare.scaffold:scaffold": "privateshare.cli.scaffold:scaffold",
    "privateshare.schema:SECRET_SCHEMA": "privateshare.cli.schema:SECRET_SCHEMA",
    "privateshare.schema:config_schema": "privateshare.cli.schema:config_schema",
    "privateshare.schema:plugin_table_schema": "privateshare.cli.schema:plugin_table_schema",
    "privateshare.schema:struct_schema": "privateshare.cli.schema:struct_schema",
    # The keys group is the core's; its commands come from their plugins (loaded on use).
    "privateshare.keycommands:keys_group": "privateshare.cli.root:keys_group_with_plugins()",
    "privateshare.keycommands:wrap_command": "privateshare.plugins.keys_kms:wrap_command",
    "privateshare.keycommands:import_pkcs11_command": (
        "privateshare.plugins.keys_pkcs11:import_pkcs11_command"
    ),
}


def _names(module: str) -> dict[str, str]:
    """The moved names of ``module``: old attribute -> ``new.module:attribute``."""
    prefix = f"{module}:"
    return {old.removeprefix(prefix): new for old, new in MOVED.items() if old.startswith(prefix)}


def resolve(target: str) -> Any:
    """The object at ``module`` or ``module:attribute`` (``attribute()`` is called)."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    if not attribute:
        return module
    if attribute.endswith("()"):
        return getattr(module, attribute[:-2])()
    return getattr(module, attribute)


def message(old: str, new: str, *, module_gone: bool = False) -> str:
    """The warning for using ``old`` (a module or ``module:attribute``), naming ``new``."""
    old_module, _, name = old.partition(":")
    new_module, _, new_name = new.partition(":")
    if not name:
        return f"{old} is deprecated; import {new} instead"
    subject = old_module if module_gone else f"{old_module}.{name}"
    if new_name.endswith("()"):
        return f"{subject} is deprecated; call {new_module}.{new_name} instead (for {name})"
    return f"{subject} is deprecated; import {new_name} from {new_module} instead" + (
        f" (it replaces {name})" if new_name != name else ""
    )


def attributes(
    module: str, *, module_gone: bool = False, stacklevel: int = 2
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that gives ``module``'s moved names, each with its warning.

    ``stacklevel`` 3 when another ``__getattr__`` calls it (the warning names the user's line).
    """
    names = _names(module)

    def __getattr__(name: str) -> Any:
        new = names.get(name)
        if new is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            message(f"{module}:{name}", new, module_gone=module_gone),
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return resolve(new)

    return __getattr__


class _AliasLoader:  # a loader by protocol: importlib.abc costs ~20 ms at start-up
    def __init__(self, old: str) -> None:
        self.old = old
        self.new = MOVED.get(old)
        self.real_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.new is not None:
            warnings.warn(
                message(self.old, self.new),
                DeprecationWarning,
                stacklevel=2,  # warnings skips importlib's frames: this is the import
            )
        names = _names(self.old)
        if not names:  # a moved module: the new module itself
            assert self.new is not None
            module = importlib.import_module(self.new)
            self.real_spec = module.__spec__
            return module
        # A gone module: a stand-in whose names are found in the table.
        stand_in = ModuleType(self.old, f"Deprecated: see {self.new or 'the warnings'}.")
        stand_in.__dict__["__all__"] = sorted(names)
        if self.new is None:  # each name warns when used
            stand_in.__dict__["__getattr__"] = attributes(self.old, module_gone=True)
        else:  # the import warned already

            def __getattr__(name: str) -> Any:
                if name not in names:
                    raise AttributeError(f"module {self.old!r} has no attribute {name!r}")
                return resolve(names[name])

            stand_in.__dict__["__getattr__"] = __getattr__
        return stand_in

    def exec_module(self, module: ModuleType) -> None:
        if self.real_spec is not None:
            # The import system stamped the alias's spec on the real module: give its own back.
            module.__spec__ = self.real_spec


class _AliasFinder:  # a meta path finder by protocol (find_spec)
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            if not _names(fullname):
                return None
            # Names moved out of a module that still exists: the module itself loads.
            search = cast("list[str] | None", path)
            if importlib.machinery.PathFinder.find_spec(fullname, search) is not None:
                return None
        loader = cast("Loader", _AliasLoader(fullname))  # a Loader by protocol
        return importlib.machinery.ModuleSpec(fullname, loader)


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
