"""Scale-out on Celery: many workers, on many machines, pull many users' data.

``pip install 'privateshare[celery]'`` and a ``[scale]`` table, then
``privateshare worker``, ``privateshare enqueue --all-users`` and ``privateshare
beat`` (docs/scale-out.md). From Python: :func:`create_app` for our Celery app,
:func:`register` to add our tasks to yours, :func:`enqueue_users`,
:func:`status` and :func:`check`. Celery is imported only by what needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checks import check
from .settings import ScaleSettings

if TYPE_CHECKING:
    from .app import Enqueued, Runtime, create_app, enqueue, enqueue_users, register, status
    from .db import ScaleError
    from .state import ScaleState, UserState

_LAZY = {
    "create_app": "app",
    "register": "app",
    "enqueue": "app",
    "enqueue_users": "app",
    "status": "app",
    "Enqueued": "app",
    "Runtime": "app",
    "ScaleState": "state",
    "ScaleError": "db",
    "UserState": "state",
}

__all__ = [
    "Enqueued",
    "Runtime",
    "ScaleError",
    "ScaleSettings",
    "ScaleState",
    "UserState",
    "check",
    "create_app",
    "enqueue",
    "enqueue_users",
    "register",
    "status",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'privateshare.scale' has no attribute {name!r}")
    from importlib import import_module

    try:
        return getattr(import_module(f"{__name__}.{module}"), name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("celery", "kombu", "sqlalchemy"):
            from ..errors import ConfigError

            raise ConfigError(
                f"privateshare.scale.{name} needs {exc.name}, which is not installed; "
                "run: pip install 'privateshare[celery]'"
            ) from None
        raise
