"""The digi.me protocol clients, one per API profile (``[digime] api``).

- :mod:`.protocol` — :class:`Client`, the interface the flow depends on; :func:`need`
  for calls a profile may lack; the shared result types.
- :mod:`.wire` — sending a request, reading its answer, mapping errors, redacting secrets.
- :mod:`.signing` — request JWTs; :mod:`.tokens` — server tokens (JWKS) and token grants;
  :mod:`.files` — the file list, files and their metadata.
- :mod:`.v17`, :mod:`.v15` — the two profiles, each composed from those parts.

The wire protocol itself is described in docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import DigimeConfig
from ..keys import KeyHandle
from ..retry import Retry
from .protocol import (
    AuthorizeStart,
    Client,
    ConsentDenied,
    FileDownload,
    Missing,
    UnsupportedCall,
    check_state,
    has,
    need,
)
from .v15 import ClientV15, Decrypt
from .v17 import ClientV17
from .wire import Send, needs_refresh, server_error

__all__ = [
    "AuthorizeStart",
    "Client",
    "ClientV15",
    "ClientV17",
    "ConsentDenied",
    "FileDownload",
    "Missing",
    "UnsupportedCall",
    "check_state",
    "for_profile",
    "has",
    "need",
    "needs_refresh",
    "server_error",
]


def for_profile(
    config: DigimeConfig,
    *,
    send: Send,
    key: Callable[[], KeyHandle],
    decrypt: Decrypt,
    retry: Retry | None = None,
) -> Client:
    """The client of ``config.api``: only these callables, never the whole hook facade."""
    if config.api == "v1.5":
        return ClientV15(config, send, key, decrypt=decrypt, retry=retry)
    return ClientV17(config, send, key, retry=retry)
