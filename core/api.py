"""Deprecated: the API v1.7 client moved to :mod:`privateshare.client` (``client.v17``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .client.files import decode_file_list, decode_x_metadata
from .client.protocol import AuthorizeStart, ConsentDenied, FileDownload, check_state
from .client.tokens import decode_session, decode_token
from .client.v17 import ClientV17
from .client.wire import (
    JSON,
    MAX_ERROR_BYTES,
    error_body,
    file_path,
    needs_refresh,
    now_ms,
    redact,
    redacting,
    segment,
    server_error,
)
from .config import DigimeConfig
from .keys import KeyHandle
from .retry import Retry

warnings.warn(
    "privateshare.api is deprecated: import from privateshare.client "
    "(privateshare.client.ClientV17 replaces DigimeClient)",
    DeprecationWarning,
    stacklevel=2,
)


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


__all__ = [
    "JSON",
    "MAX_ERROR_BYTES",
    "AuthorizeStart",
    "ConsentDenied",
    "DigimeClient",
    "FileDownload",
    "check_state",
    "decode_file_list",
    "decode_session",
    "decode_token",
    "decode_x_metadata",
    "error_body",
    "file_path",
    "needs_refresh",
    "now_ms",
    "redact",
    "redacting",
    "segment",
    "server_error",
]
