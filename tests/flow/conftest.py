"""Fixtures for the flow tests: the testing kit's sandbox, under the names these tests use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from privateshare import PrivateShare
from privateshare.sandbox import Sandbox
from privateshare.testing.sandboxed import consent, sandbox_framework, sha256_tree

__all__ = ["consent", "delivered", "framework_for"]


@pytest.fixture
def start_sandbox(privateshare_sandbox: Callable[..., Sandbox]) -> Callable[..., Sandbox]:
    return privateshare_sandbox


@pytest.fixture
def sandbox(start_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return start_sandbox()


def framework_for(
    sandbox: Sandbox, root: Path, contract: str = "ongoing", **tables: Any
) -> PrivateShare:
    return sandbox_framework(sandbox, root, contract, **tables)


def delivered(root: Path, user: str) -> dict[str, str]:
    return sha256_tree(root / "data" / user)
