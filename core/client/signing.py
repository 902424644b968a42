"""Request JWTs: every attempt signed afresh through the key handle (protocol.md#signing)."""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping
from typing import Any

from ..jws import sign_request
from ..keys import KeyHandle


class Signer:
    """Signs the claims of one call with ``client_id`` added, a new nonce per attempt.

    Takes ``key``, a callable, so the key is loaded (maybe from an HSM) on first use only.
    """

    def __init__(self, client_id: str, key: Callable[[], KeyHandle]) -> None:
        self.client_id = client_id
        self.key = key

    def __call__(self, claims: Mapping[str, Any]) -> Callable[[], str]:
        """A callback for :attr:`HttpRequest.authorize`: one fresh ``Bearer`` JWT per call."""
        fixed = {"client_id": self.client_id, **claims}

        def authorize() -> str:
            return "Bearer " + sign_request(self.key(), fixed)

        return authorize


def sdk_meta(agent_name: str, version: str) -> dict[str, Any]:
    """Who is calling: ``{name, version, meta}`` (v1.7 nests it as ``agent.sdk``, v1.5 sends
    it flat as ``sdkAgent``)."""
    return {"name": agent_name, "version": version, "meta": {"python": platform.python_version()}}
