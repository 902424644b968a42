"""One log handler for the command: levels from ``-v/-q/--log-level``, plain or JSON lines.

Installed on the root logger (so no record reaches logging's last-resort handler and
none is printed twice); while a rich progress display is live, lines go through its
console so they do not tear the bars.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error", "critical")

#: The console of the live progress display, when one is shown (set by the Reporter).
live_console: Any = None
#: True under ``--log-format json``: progress lines become log records too (level info).
json_mode = False
#: True under ``-q`` (or a level above warning): no progress lines either.
quiet = False


def _user(record: logging.LogRecord) -> str | None:
    from ..logcontext import current_user

    return getattr(record, "user_id", None) or current_user.get()


class PlainFormatter(logging.Formatter):
    """``warning: message`` (and the traceback at debug level); names the user of a run."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        user = _user(record)
        if user and f"user {user}" not in message:
            message = f"user {user}: {message}"
        text = f"{record.levelname.lower()}: {message}"
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        user = _user(record)
        if user:
            data["user_id"] = user
        for key in ("file", "event"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


class CommandHandler(logging.Handler):
    """Writes to the current stderr (or the live progress console)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if live_console is not None and not isinstance(self.formatter, JsonFormatter):
                live_console.print(text, markup=False, highlight=False)
            else:
                stream = sys.stderr
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def level_for(verbose: int, quiet: int, log_level: str | None) -> int:
    """``--log-level`` wins; else warning, ``-v`` info, ``-vv`` debug, ``-q`` error."""
    if log_level:
        level: int = getattr(logging, log_level.upper())
        return level
    if quiet:
        return logging.ERROR if quiet == 1 else logging.CRITICAL
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(level: int, fmt: str = "plain") -> CommandHandler:
    """Install the one handler (replacing one a previous command installed)."""
    global json_mode, quiet
    json_mode = fmt == "json"
    quiet = level > logging.WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, CommandHandler):
            root.removeHandler(handler)
    handler = CommandHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.setLevel(level)
    root.addHandler(handler)
    logging.getLogger("privateshare").setLevel(level)
    if root.level > level or root.level == logging.WARNING:
        root.setLevel(min(level, logging.WARNING))
    return handler


__all__ = ["LEVELS", "configure", "level_for"]
