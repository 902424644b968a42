"""``config check`` for ``[scale]``: what many machines need to share, and Celery installed.

Workers on several machines each assemble the framework from the same config, so
every piece of state must be one they all reach: the token store (one refresh
per user, one checkpoint per user and sink) and the sinks. A file token store or
a local file sink with a remote broker would give each machine its own copy: the
refresh tokens rotate apart and users are locked out, files land on whichever
machine ran the task. These are refused here, with the reason.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .settings import safe_url

INSTALL = "pip install 'privateshare[celery]'"


def _sql_url(spec: Any) -> str:
    url = spec.options.get("url")
    return url if isinstance(url, str) else ""


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def check(config: Any) -> list[str]:
    """Problems of ``config``'s ``[scale]`` table for the deployment it describes."""
    settings = getattr(config, "scale", None)
    if settings is None:
        return []
    problems: list[str] = []
    for module in ("celery", "sqlalchemy"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"[scale] needs {module}, which is not installed; run: {INSTALL}")
    if not settings.many_machines:
        return problems
    why = (
        f"the broker {safe_url(settings.broker)} is on another machine"
        if settings.machines == "auto"
        else '[scale] machines = "many"'
    )
    tokens = config.providers.get("tokens")
    if tokens is not None:
        url = _sql_url(tokens) if tokens.type == "sql" else ""
        if tokens.type != "sql":
            problems.append(
                f"[tokens] type = {tokens.type!r} cannot be shared by workers on several machines "
                f"({why}): each machine would keep its own copy of every token, the refresh "
                "tokens would rotate apart and users would be locked out; use the sql token "
                'store on PostgreSQL or MariaDB: [tokens] type = "sql", url = '
                '"postgresql://user@dbhost/privateshare" (or set [scale] machines = "one" if '
                "every worker runs on this machine)"
            )
        elif _is_sqlite(url) or not url:
            problems.append(
                f"[tokens] url is a SQLite file, which workers on several machines cannot share "
                f"({why}): its locks do not hold over a network filesystem; use PostgreSQL or "
                'MariaDB, e.g. url = "postgresql://user@dbhost/privateshare"'
            )
    for spec in config.sinks.values():
        if spec.type == "memory":
            problems.append(
                f"[{spec.name}] type = 'memory' keeps data in the worker's memory ({why}); "
                "use a sink every worker reaches (s3, sql on a server)"
            )
        elif spec.type == "file" and not settings.shared_filesystem:
            problems.append(
                f"[{spec.name}] type = 'file' writes to the disk of whichever machine runs the "
                f"task ({why}); use a shared sink (s3, sql on a server), or mount one "
                "filesystem on every worker at the same path and set [scale] "
                "shared_filesystem = true"
            )
        elif spec.type == "sql" and _is_sqlite(_sql_url(spec)):
            problems.append(
                f"[{spec.name}] url is a SQLite file ({why}); workers on several machines "
                "need PostgreSQL or MariaDB there"
            )
    return problems
