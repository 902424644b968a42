"""Fixtures for the flow tests: the testing kit's sandbox, under the names these tests use.

``api`` runs a test on both protocol profiles (protocol.md: v1.7 and
v1.5): the sandbox serves both, and the flow must not care.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from privateshare import PrivateShare
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, sandbox_framework, sha256_tree

__all__ = ["consent", "delivered", "framework_for"]

PROFILES = ("v1.7", "v1.5")


@pytest.fixture(params=PROFILES)
def api(request: pytest.FixtureRequest) -> str:
    """The protocol profile under test: ``[digime] api``."""
    return str(request.param)


@pytest.fixture
def start_sandbox(privateshare_sandbox: Callable[..., Sandbox]) -> Callable[..., Sandbox]:
    return privateshare_sandbox


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


def framework_for(
    sandbox: Sandbox, root: Path, contract: str = "ongoing", *, api: str = "v1.7", **tables: Any
) -> PrivateShare:
    return sandbox_framework(sandbox, root, contract, api=api, **tables)


def delivered(root: Path, user: str) -> dict[str, str]:
    return sha256_tree(root / "data" / user)
