"""The constructors of the old ``privateshare.api`` / ``privateshare.api15`` clients (deprecated).

They took the whole hook facade; the clients now take narrow callables (send, key,
decrypt). Reached only through the deprecated paths (``privateshare._moved``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import DigimeConfig
from ..keys import KeyHandle
from ..retry import Retry
from .v15 import ClientV15
from .v17 import ClientV17


class DigimeClient(ClientV17):
    """Deprecated: :class:`privateshare.client.ClientV17`, built from the hook facade."""

    def __init__(
        self,
        config: DigimeConfig,
        hooks: Any,
        key: Callable[[], KeyHandle],
        *,
        retry: Retry | None = None,
    ) -> None:
        super().__init__(config, hooks.send, key, retry=retry)


class DigimeClientV15(ClientV15):
    """Deprecated: :class:`privateshare.client.ClientV15`, built from the hook facade."""

    def __init__(
        self,
        config: DigimeConfig,
        hooks: Any,
        key: Callable[[], KeyHandle],
        *,
        retry: Retry | None = None,
    ) -> None:
        super().__init__(config, hooks.send, key, decrypt=hooks.decrypt, retry=retry)


__all__ = ["DigimeClient", "DigimeClientV15"]
