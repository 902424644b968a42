"""What the rest of privateshare calls into scale-out, without importing Celery first."""

from __future__ import annotations

from typing import Any


def after_consent(fw: Any, user_id: str, enqueue: bool | None) -> bool:
    """Enqueue the first pull of a new consent when asked (or ``[scale] enqueue_on_authorize``).

    Returns whether it was enqueued. ``enqueue=True`` without ``[scale]`` is a ConfigError.
    """
    settings = fw.config.scale
    wanted = enqueue if enqueue is not None else bool(settings and settings.enqueue_on_authorize)
    if not wanted:
        return False
    from .app import enqueue as send

    outcome = send(fw, users=[user_id])
    return user_id in outcome.enqueued
