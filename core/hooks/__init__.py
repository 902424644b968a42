"""The plugin machinery, in one place.

- :mod:`privateshare.hooks.specs` — every hook, its contract, and ``SPEC_VERSION``;
- :mod:`privateshare.hooks.families` — the one table of plugin families;
- :mod:`privateshare.hooks.plugin` — :class:`Plugin`, the base class plugin authors subclass;
- :mod:`privateshare.hooks.loading` — finding plugins (stevedore) and registering them (pluggy);
- :mod:`privateshare.hooks.calls` — :class:`Hooks`, the typed calls the core makes.

Plugin authors need ``hookimpl``, ``Plugin`` and ``PluginContext`` (also exported by
``privateshare``) and, to state the hook versions they need, ``SPEC_VERSION``.
"""

from __future__ import annotations

from .calls import Hooks
from .families import FAMILIES, HOOK_GROUP, Family, family_of_hook
from .plugin import NoOptions, Plugin, PluginContext
from .specs import PROJECT, SPEC_VERSION, hookimpl, hookspec

__all__ = [
    "FAMILIES",
    "HOOK_GROUP",
    "PROJECT",
    "SPEC_VERSION",
    "Family",
    "Hooks",
    "NoOptions",
    "Plugin",
    "PluginContext",
    "family_of_hook",
    "hookimpl",
    "hookspec",
]
