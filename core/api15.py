"""Deprecated: the API v1.5 client moved to :mod:`privateshare.client` (``client.v15``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .client.protocol import UnsupportedCall
from .client.tokens import decode_flat_token
from .client.v15 import (
    ACCOUNTS_FILE,
    APP_CONSENT_LINK,
    DEFAULT_BASE_URL,
    GUEST_PATH,
    MAX_ACCOUNTS_FILE,
    ClientV15,
    EstablishedSession,
)
from .config import DigimeConfig
from .keys import KeyHandle
from .retry import Retry

warnings.warn(
    "privateshare.api15 is deprecated: import from privateshare.client "
    "(privateshare.client.ClientV15 replaces DigimeClientV15)",
    DeprecationWarning,
    stacklevel=2,
)


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


__all__ = [
    "ACCOUNTS_FILE",
    "APP_CONSENT_LINK",
    "DEFAULT_BASE_URL",
    "GUEST_PATH",
    "MAX_ACCOUNTS_FILE",
    "DigimeClientV15",
    "EstablishedSession",
    "UnsupportedCall",
    "decode_flat_token",
]
