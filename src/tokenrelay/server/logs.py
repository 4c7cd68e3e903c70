"""Server logs as logfmt: one `key=value` line per record, for people and log pipelines alike.

Every line starts with `ts=<UTC ISO 8601> level=<level> logger=<name>`; an ordinary record
then has `msg="..."` (and `exc="..."` with a traceback, newlines escaped), a structured record
(`log_fields`) its own fields. Values with spaces, quotes, `=` or control characters are
quoted with JSON string escapes, so a line is always one line and splits unambiguously.

`logging_config(level)` is the `logging.config.dictConfig` that `tokenrelay serve` hands to
uvicorn (so uvicorn's own lines are logfmt too, in every worker); `configure_logging(level)`
is for a process that runs the app some other way (`uvicorn tokenrelay.server:app`) and has
no logging set up: it adds a handler only where there is none.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["LEVELS", "LogfmtFormatter", "configure_logging", "log_fields", "logfmt", "logging_config"]

LEVELS: Final = ("critical", "error", "warning", "info", "debug")

_PLAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+@,;()[]")


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format(value, ".6g")
    text = str(value)
    if text and all(c in _PLAIN for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def logfmt(fields: Mapping[str, object]) -> str:
    """`key=value ...` for the fields that are not None, in order."""
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)


def log_fields(logger: logging.Logger, level: int, fields: Mapping[str, object]) -> None:
    """Log a structured record: its message is the fields as logfmt (readable by any
    formatter), and `LogfmtFormatter` writes them as the line's own fields."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", logfmt(fields), extra={"logfmt": True})


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        level = record.levelname.lower()
        head = f"ts={stamp}.{int(record.msecs):03d}Z level={level} logger={_value(record.name)}"
        if getattr(record, "logfmt", False):
            line = f"{head} {record.getMessage()}"
        else:
            line = f"{head} msg={_value(record.getMessage())}"
        if record.exc_info:
            line += " exc=" + _value(self.formatException(record.exc_info))
        return line


def _level(level: str) -> str:
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    return level.upper()


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig: tokenrelay's and uvicorn's loggers, logfmt on stderr, at `level`."""
    upper = _level(level)
    handler = {"handlers": ["stderr"], "level": upper, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"logfmt": {"()": LogfmtFormatter}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "logfmt", "stream": "ext://sys.stderr"}
        },
        "loggers": {"tokenrelay": handler, "uvicorn": handler, "uvicorn.error": {"level": upper}},
    }


def configure_logging(level: str) -> None:
    """Send tokenrelay's logs to stderr as logfmt at `level`, unless logging is set up already."""
    logger = logging.getLogger("tokenrelay")
    logger.setLevel(_level(level))
    if logger.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    logger.addHandler(handler)
