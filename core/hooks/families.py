"""The plugin families: the one table every other list of families is derived from.

A family is a kind of plugin the config names in a table (``[keys]``,
``[sinks.archive]``): its entry-point group, the hooks its plugins answer, its
default type, the built-in types that need a pip extra. The config reader, the
loader, the typed hook calls, ``privateshare plugins`` and the scaffold all read
this table; adding a family means adding one row here (and its hook specs).

Hooks that belong to no family (transforms, observers, the CLI's hooks) are
general: any hook module (``[plugins] modules``, the ``privateshare`` entry-point
group) may implement them, and so may a family plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["FAMILIES", "HOOK_GROUP", "Family", "family_hooks", "family_of_hook"]

#: The entry-point group of hook modules: loaded into every framework, open to general hooks.
HOOK_GROUP = "privateshare"


@dataclass(frozen=True)
class Family:
    """One kind of configured plugin."""

    #: The config table: ``[keys]`` for a provider, ``[sinks.<name>]`` for sinks.
    key: str
    #: The entry-point group its plugins are found in.
    namespace: str
    #: What one plugin of the family is called in messages ("key store").
    label: str
    #: The hooks a plugin of this family answers, and only it.
    hooks: tuple[str, ...]
    #: Providers have exactly one plugin per config; sinks have any number.
    provider: bool = True
    #: The type used when a provider's table is absent; ``None`` makes the table required.
    default: str | None = None
    #: Built-in types that need a pip extra: type -> extra name.
    extras: Mapping[str, str] = field(default_factory=dict)
    #: The name ``privateshare new`` takes for it, when the scaffold has a template.
    scaffold: str | None = None

    @property
    def table(self) -> str:
        """The table a user adds to configure it, as shown in messages."""
        return f"[{self.key}]" if self.provider else f"[{self.key}.<name>]"


FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        f.key: f
        for f in (
            Family(
                "transport",
                "privateshare.transports",
                "transport",
                hooks=("privateshare_transport_send",),
                default="requests",
            ),
            Family(
                "keys",
                "privateshare.key_stores",
                "key store",
                hooks=("privateshare_key_handle",),
                extras={"kms": "kms", "pkcs11": "hsm"},
            ),
            Family(
                "tokens",
                "privateshare.token_stores",
                "token store",
                hooks=(
                    "privateshare_token_load",
                    "privateshare_token_save",
                    "privateshare_token_delete",
                    "privateshare_token_users",
                    "privateshare_token_lock",
                    "privateshare_checkpoint_load",
                    "privateshare_checkpoint_pieces",
                    "privateshare_checkpoint_save",
                    "privateshare_run_record_load",
                    "privateshare_run_record_save",
                ),
                default="file",
                extras={"sql": "sql"},
            ),
            Family(
                "decryption",
                "privateshare.decryptors",
                "decryptor",
                hooks=("privateshare_decrypt",),
                default="digime",
            ),
            Family(
                "sinks",
                "privateshare.sinks",
                "sink",
                hooks=(
                    "privateshare_sink_open_run",
                    "privateshare_sink_open_file",
                    "privateshare_sink_sync",
                    "privateshare_sink_close_run",
                ),
                provider=False,
                extras={"s3": "s3", "sql": "sql"},
                scaffold="sink",
            ),
        )
    }
)

_OWNER = MappingProxyType({hook: f for f in FAMILIES.values() for hook in f.hooks})


def family_of_hook(hook: str) -> Family | None:
    """The family a hook belongs to, or ``None`` for a general hook."""
    return _OWNER.get(hook)


def family_hooks() -> frozenset[str]:
    """Every hook that belongs to some family."""
    return frozenset(_OWNER)
