"""Whose work a log line is about: the flow sets the user, the CLI's log handler names them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: The user whose files the current thread is working on (None outside a run).
current_user: ContextVar[str | None] = ContextVar("privateshare_current_user", default=None)


@contextmanager
def user_scope(user_id: str) -> Iterator[None]:
    """Within this block, log lines are about ``user_id``."""
    token = current_user.set(user_id)
    try:
        yield
    finally:
        current_user.reset(token)


__all__ = ["current_user", "user_scope"]
